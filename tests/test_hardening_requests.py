"""Issue #14, points 2, 8 and 9: bad requests get clean, structured refusals, never INTERNAL.

* 2: a metadata filter is bounded (entries, key and value sizes from :mod:`spr.limits`) and is
  one indexed query on both catalogs (the old per-entry expression tree made SQLite refuse 999
  entries with "Expression tree is too large" and took seconds on PostgreSQL);
* 8: collection names follow the one rule (``check_collection_name``) at every entry point;
  request bytes that do not parse are INVALID_ARGUMENT, not grpcio's INTERNAL "Exception
  deserializing request!"; an embedding whose float32 norm overflows or vanishes is refused; a
  request with both ``text`` and ``embedding`` is answered by the last one on the wire;
* 9: refusals carry ``google.rpc`` ``ErrorInfo`` / ``BadRequest`` details with the field and the
  limit, INTERNAL errors the incident id in ``ErrorInfo``.

Everything runs against real services over loopback (the search service with the real refiner
service, Faiss and SQLite) and the real catalogs (SQLite and PostgreSQL).
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from spr.api.v1 import moments_pb2, refiner_pb2, search_pb2
from spr.catalog import SegmentCatalog
from spr.catalog.migrate import upgrade
from spr.catalog.segment_catalog import InvalidMetadataFilter
from spr.engine import InvalidSearch, MomentQuery, MomentSearch
from spr.limits import MAX_METADATA_FILTER_ENTRIES, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS
from spr.models.query import QueryEncoder
from spr.search.client import SearchClient
from spr.search.service import SearchServicer, serve_search, start_search_server
from spr.stores import open_vector_store
from test_search_service import DIM, PLANTED_KEY, Corpus, make_config, publish_corpus

# --- services --------------------------------------------------------------------------------------


# The search service's own fixtures (a module-scoped corpus, refiner, service and client of this
# module's own: pytest makes one of each per module that uses them).
from test_search_service import client, corpus, refiner_target, search_target  # noqa: E402,F401


@pytest.fixture(scope="module")
def channel(search_target: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(search_target) as ch:
        yield ch


@pytest.fixture(scope="module")
def refiner_channel(refiner_target: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(refiner_target) as ch:
        yield ch


@pytest.fixture(scope="module")
def engine(corpus: Corpus) -> Iterator[MomentSearch]:
    """The core engine itself, as `spr search` and `spr eval` use it (no refiner)."""
    config = corpus.config
    with MomentSearch(
        config, SegmentCatalog.from_config(config), open_vector_store(config), QueryEncoder.from_config(config), None
    ) as e:
        yield e


def raw_call(channel: grpc.Channel, method: str, body: bytes, stream: bool = False) -> grpc.RpcError:
    """``body`` sent as is to ``method`` (no client-side serialization); the error it gets."""
    identity = lambda b: b  # noqa: E731
    if stream:
        call = channel.unary_stream(method, request_serializer=identity, response_deserializer=identity)
        with pytest.raises(grpc.RpcError) as info:
            list(call(body, timeout=30))
    else:
        call = channel.unary_unary(method, request_serializer=identity, response_deserializer=identity)
        with pytest.raises(grpc.RpcError) as info:
            call(body, timeout=30)
    return info.value


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def details(error: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.BadRequest | None]:
    """The ErrorInfo (required) and the BadRequest (if any) of a refusal's google.rpc.Status."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status details on {error.code()}: {error.details()}"
    info, bad = None, None
    for any_ in status.details:
        if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_.Unpack(info)
        elif any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_.Unpack(bad)
    assert info is not None and info.domain == "spr.v1"
    return info, bad


def assert_field_refused(error: grpc.RpcError, field: str, limit: str, in_message: str) -> None:
    """INVALID_ARGUMENT naming ``in_message``, with ErrorInfo (field, limit) and BadRequest (field)."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert in_message in error.details()
    info, bad = details(error)
    assert info.metadata["field"] == field and limit in info.metadata["limit"]
    assert bad is not None and [v.field for v in bad.field_violations] == [field]
    assert bad.field_violations[0].description == error.details()


# --- 2: metadata filters -----------------------------------------------------------------------------


TOO_LARGE_FILTERS = {
    # 999 was SQLite's "Expression tree is too large" (INTERNAL); 10,000 kept a server busy 14 s.
    "entries-65": ({f"k{i}": "v" for i in range(MAX_METADATA_FILTER_ENTRIES + 1)}, f"at most {MAX_METADATA_FILTER_ENTRIES}"),
    "entries-999": ({f"k{i}": "v" for i in range(999)}, f"at most {MAX_METADATA_FILTER_ENTRIES}"),
    "entries-10000": ({f"k{i}": "v" for i in range(10_000)}, "10000 entries"),
    "long-key": ({"k" * (MAX_METADATA_KEY_CHARS + 1): "v"}, f"at most {MAX_METADATA_KEY_CHARS}"),
    "long-value": ({"show": "v" * (MAX_METADATA_VALUE_CHARS + 1)}, f"at most {MAX_METADATA_VALUE_CHARS}"),
}


@pytest.mark.parametrize("name", list(TOO_LARGE_FILTERS))
def test_a_metadata_filter_over_the_limits_is_refused_naming_the_limit(
    client: SearchClient, corpus: Corpus, engine: MomentSearch, name: str
):
    metadata, message = TOO_LARGE_FILTERS[name]
    error = refused(lambda: client.search(embedding=corpus.event, metadata=metadata, refine=False))
    assert_field_refused(error, "metadata", "", message)
    assert details(error)[0].reason == "LIMIT_EXCEEDED"
    # The core refuses it too (spr search, spr eval), before any work.
    with pytest.raises(InvalidSearch, match=re.escape(message)) as info:
        engine.search(MomentQuery(embedding=corpus.event, metadata=metadata, refine=False))
    assert info.value.field == "metadata" and info.value.limit


def test_a_metadata_filter_at_the_limits_is_answered(client: SearchClient, corpus: Corpus):
    # 64 pairs, the longest key and value: no video holds them, so nothing matches, cleanly.
    metadata = {f"k{i}": "v" for i in range(MAX_METADATA_FILTER_ENTRIES - 2)}
    metadata["k" * MAX_METADATA_KEY_CHARS] = "x"
    metadata["show"] = "v" * MAX_METADATA_VALUE_CHARS
    response = client.search(embedding=corpus.event, metadata=metadata, refine=False)
    assert len(response.moments) == 0 and not response.degraded
    # A filter that does match still narrows the search.
    house = client.search(embedding=corpus.event, top_k=50, metadata={"show": "house", "season": "2"}, refine=False)
    assert {m.video_key for m in house.moments} == {"house/e02", "house/e03"}


class Statements:
    """The statements (but BEGIN) every engine executes while the block runs."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.parameters: list = []

    def _hear(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if not statement.lstrip().upper().startswith("BEGIN"):  # not the SQLite engine's own BEGIN
            self.seen.append(statement)
            self.parameters.append(parameters)

    def __enter__(self) -> "Statements":
        event.listen(Engine, "before_cursor_execute", self._hear)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(Engine, "before_cursor_execute", self._hear)


def test_a_metadata_filter_is_one_indexed_query_on_both_catalogs(catalog_url: str):
    many = {f"field{i:02d}": f"value {i}" for i in range(MAX_METADATA_FILTER_ENTRIES)}
    with SegmentCatalog.open(catalog_url) as catalog:
        for key, metadata in {"all": many, "most": dict(list(many.items())[:-1]), "other": {"field00": "x"}}.items():
            catalog.mark_ready(catalog.register_video(key, f"file:///{key}.mp4", 10.0, metadata=metadata).id)
        with Statements() as one:
            assert catalog.video_keys_matching({"field00": "value 0"}) == ["all", "most"]
        with Statements() as full:
            assert catalog.video_keys_matching(many) == ["all"]
        # One statement each, and the same SQL text whatever the number of pairs: no expression
        # per pair (the old filter built 64 JSON comparisons here and hit SQLite's tree limit at 999).
        assert len(one.seen) == 1 and one.seen == full.seen
        # The pairs are looked up in the (key, value) index (the statement replayed under EXPLAIN).
        with catalog.engine.connect() as conn:
            if catalog.dialect == "sqlite":
                plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {full.seen[0]}", full.parameters[0]).all()
            else:
                conn.execute(text("SET enable_seqscan = off"))  # a 3-row table would be scanned anyway
                plan = conn.exec_driver_sql(f"EXPLAIN {full.seen[0]}", full.parameters[0]).all()
        assert "ix_video_metadata_key_value_video_id" in " ".join(str(row[-1]) for row in plan), plan
        with pytest.raises(InvalidMetadataFilter, match=f"at most {MAX_METADATA_FILTER_ENTRIES}"):
            catalog.video_keys_matching({f"k{i}": "v" for i in range(999)})


def test_filterable_pairs_follow_the_metadata_on_both_catalogs(catalog_url: str):
    with SegmentCatalog.open(catalog_url) as catalog:
        video = catalog.register_video("v", "file:///v.mp4", 10.0, metadata={"show": "a", "season": 3, "note": None})
        catalog.mark_ready(video.id)
        assert catalog.video_keys_matching({"show": "a", "season": "3"}) == ["v"]
        assert catalog.video_keys_matching({"note": "None"}) == [] and catalog.video_keys_matching({"note": ""}) == []
        # A re-ingest replaces the metadata: the old pairs no longer match.
        catalog.register_video(
            "v", "file:///v.mp4", 10.0,
            metadata={"show": "b", "long": "x" * MAX_METADATA_VALUE_CHARS, "longer": "y" * (MAX_METADATA_VALUE_CHARS + 1)},
        )
        catalog.mark_ready(video.id)
        assert catalog.video_keys_matching({"show": "a"}) == []
        assert catalog.video_keys_matching({"show": "b", "long": "x" * MAX_METADATA_VALUE_CHARS}) == ["v"]
        assert catalog.get_video("v").metadata["longer"] == "y" * (MAX_METADATA_VALUE_CHARS + 1)  # kept, unfilterable
        catalog.purge_video(video.id)
        with catalog.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM video_metadata")).scalar_one() == 0


def test_the_migration_fills_the_pairs_of_existing_videos(catalog_url: str):
    """A catalog at revision 0003 with videos upgrades to filters that find them."""
    with SegmentCatalog.open(catalog_url, migrate=False) as catalog:
        with catalog.engine.begin() as conn:
            upgrade(conn, "0003")
            doc = '{"show": "friends", "season": 3, "hd": true, "gone": null}'
            cast = "CAST(:m AS jsonb)" if catalog.dialect == "postgresql" else ":m"
            conn.execute(
                text(
                    "INSERT INTO videos (key, uri, duration_s, status, metadata, tracks, warnings) "
                    f"VALUES ('old', 'file:///old.mp4', 10.0, 'ready', {cast}, '{{}}', '[]')"
                ),
                {"m": doc},
            )
            upgrade(conn)
        assert catalog.video_keys_matching({"show": "friends", "season": "3", "hd": "true"}) == ["old"]
        assert catalog.video_keys_matching({"gone": "None"}) == []


# --- 8: collection names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x" * 100_000, "../evil", "a/b", "9lives"], ids=["100k", "dotdot", "slash", "digit"])
def test_collection_names_follow_the_one_rule_everywhere(
    client: SearchClient, corpus: Corpus, engine: MomentSearch, name: str
):
    # 100,000 characters reached the file system ("File name too long", INTERNAL).
    error = refused(lambda: client.search(embedding=corpus.event, collection=name, refine=False))
    assert_field_refused(error, "collection", "letters, digits", "invalid collection name")
    assert len(error.details()) < 300  # the name is not echoed back in full
    stats = refused(lambda: client.collection_stats(name))
    assert_field_refused(stats, "collection", "letters, digits", "invalid collection name")
    with pytest.raises(InvalidSearch, match="invalid collection name"):
        engine.search(MomentQuery(embedding=corpus.event, collection=name, refine=False))
    with pytest.raises(InvalidSearch, match="invalid collection name"):
        engine.collection_stats(name)


# --- 8: undecodable requests ----------------------------------------------------------------------------

BAD_UTF8 = b"\x0a\x02\xc3\x28"  # field 1 (a string in these requests) holding invalid UTF-8
GARBAGE = b"\xff\xff\xff\xff\xff"


@pytest.mark.parametrize(
    ("method", "body", "stream"),
    [
        ("/spr.v1.SearchService/Search", BAD_UTF8, False),
        ("/spr.v1.SearchService/Search", GARBAGE, False),
        ("/spr.v1.SearchService/CollectionStats", BAD_UTF8, False),
        ("/spr.v1.SearchService/GetVideo", BAD_UTF8, False),
        ("/spr.v1.SearchService/ReadMedia", GARBAGE, True),
        ("/spr.v1.SearchService/GetThumbnail", GARBAGE, False),
    ],
    ids=["search-utf8", "search-garbage", "stats-utf8", "video-utf8", "media-garbage", "thumbnail-garbage"],
)
def test_undecodable_search_requests_are_invalid_argument(
    channel: grpc.Channel, client: SearchClient, corpus: Corpus, caplog, method: str, body: bytes, stream: bool
):
    with caplog.at_level(logging.ERROR):
        error = raw_call(channel, method, body, stream)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "does not parse" in error.details() and method.rsplit("/", 2)[1] in error.details()
    assert details(error)[0].reason == "UNDECODABLE_REQUEST"
    assert "Exception deserializing request" not in caplog.text  # no traceback in the log either
    # The server is unharmed.
    assert client.search(embedding=corpus.event, top_k=1, refine=False).moments[0].video_key == PLANTED_KEY


@pytest.mark.parametrize("body", [GARBAGE, b"\x0a\x03\x0a\x01\xff"], ids=["garbage", "truncated-embedding"])
def test_undecodable_refine_requests_are_invalid_argument(refiner_channel: grpc.Channel, caplog, body: bytes):
    with caplog.at_level(logging.ERROR):
        error = raw_call(refiner_channel, "/spr.v1.RefinerService/Refine", body)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert details(error)[0].reason == "UNDECODABLE_REQUEST"
    assert "Exception deserializing request" not in caplog.text


# --- 8: embeddings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [np.full(DIM, 3e38), np.full(DIM, 1e-45)],
    ids=["norm-overflows", "norm-underflows"],
)
def test_embeddings_whose_norm_overflows_or_vanishes_are_refused(
    client: SearchClient, engine: MomentSearch, values: np.ndarray
):
    # All 3e38 used to be accepted, and every score came back 0.
    error = refused(lambda: client.search(embedding=values, refine=False))
    assert_field_refused(error, "embedding", "norm", "L2 norm")
    with pytest.raises(InvalidSearch, match="L2 norm"):
        engine.search(MomentQuery(embedding=values, refine=False))


def test_refiner_refuses_a_query_whose_norm_overflows(refiner_channel: grpc.Channel):
    request = refiner_pb2.RefineRequest(
        query=moments_pb2.Embedding(values=[3e38] * DIM),
        proposals=[refiner_pb2.RefineProposal(video_id=1, start_s=0.0, end_s=10.0, video_duration_s=60.0)],
    )
    call = refiner_channel.unary_unary(
        "/spr.v1.RefinerService/Refine",
        request_serializer=refiner_pb2.RefineRequest.SerializeToString,
        response_deserializer=refiner_pb2.RefineResponse.FromString,
    )
    error = refused(lambda: call(request, timeout=30))
    assert_field_refused(error, "query", "norm", "L2 norm")


def test_text_and_embedding_together_the_last_one_on_the_wire_wins(channel: grpc.Channel, corpus: Corpus):
    """proto3 keeps the last member of a oneof that arrives (documented in search.proto and
    docs/search.md): text first, then the embedding, is an embedding search."""
    body = (
        search_pb2.SearchRequest(text="a man opens a door").SerializeToString()
        + search_pb2.SearchRequest(embedding=moments_pb2.Embedding(values=corpus.event.tolist())).SerializeToString()
        + search_pb2.SearchRequest(top_k=1, refine=False).SerializeToString()
    )
    call = channel.unary_unary(
        "/spr.v1.SearchService/Search", request_serializer=lambda b: b, response_deserializer=search_pb2.SearchResponse.FromString
    )
    response = call(body, timeout=60)
    assert [m.video_key for m in response.moments] == [PLANTED_KEY]


# --- 9: structured errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "field", "limit"),
    [
        (dict(top_k=1001), "top_k", "1..1000"),
        (dict(segments_k=16385), "segments_k", "1..16384"),
        (dict(text="x" * 1001), "text", "1000 characters"),
    ],
    ids=["top_k", "segments_k", "text"],
)
def test_refusals_carry_bad_request_and_error_info(client: SearchClient, corpus: Corpus, arguments, field, limit):
    query = {"embedding": corpus.event} if "text" not in arguments else {}
    error = refused(lambda: client.search(**query, **arguments, refine=False))
    assert_field_refused(error, field, limit, field if field != "text" else "characters")
    assert details(error)[0].reason == "LIMIT_EXCEEDED"


def test_unknown_collection_carries_error_info(client: SearchClient, corpus: Corpus):
    error = refused(lambda: client.search(embedding=corpus.event, collection="no_such_collection", refine=False))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert details(error)[0].reason == "UNKNOWN_COLLECTION"


def test_internal_errors_keep_the_incident_id_in_error_info(tmp_path: Path, corpus: Corpus):
    """A catalog broken under a running service (its segments table gone) is INTERNAL; the
    incident id of the message (and of the log line) is in ErrorInfo."""
    config = make_config(tmp_path)
    publish_corpus(config)
    search_engine = MomentSearch(
        config, SegmentCatalog.from_config(config), open_vector_store(config), QueryEncoder.from_config(config), None
    )
    server, port = start_search_server(config, SearchServicer(search_engine), port=0, max_workers=2, refresh_s=0)
    try:
        with sqlite3.connect(Path(config.data_dir) / "catalog.db") as db:
            db.execute("ALTER TABLE segments RENAME TO segments_gone")
        with SearchClient(f"127.0.0.1:{port}", timeout_s=60) as c:
            error = refused(lambda: c.search(embedding=corpus.event, refine=False))
        assert error.code() == grpc.StatusCode.INTERNAL
        info, bad = details(error)
        assert info.reason == "INTERNAL" and bad is None
        assert re.fullmatch(r"[0-9a-f]{12}", info.metadata["incident"])
        assert f"incident {info.metadata['incident']}" in error.details() and info.metadata["method"] == "Search"
    finally:
        server.stop(0).wait()
