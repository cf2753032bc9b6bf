"""Specification of the segment catalog (spr.catalog), run on SQLite and on PostgreSQL.

Every behavioural test takes ``catalog_url`` (tests/conftest.py), so it runs once on a SQLite
file and once on a fresh PostgreSQL schema; PostgreSQL-only behaviour (COPY) takes
``postgres_url``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.exc import IntegrityError

from spr import ids as spr_ids
from spr.catalog import (
    CatalogUnavailable,
    RunNotFound,
    SegmentCatalog,
    SegmentLocation,
    VideoNotFound,
    bulk_insert_method,
    current_revision,
    head_revision,
)
from spr.catalog import bulk
from spr.catalog.models import Base
from spr.config import Config

TABLES = {"videos", "segments", "collections", "ingest_runs"}


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[SegmentCatalog]:
    with SegmentCatalog.open(catalog_url) as cat:
        yield cat


def add_video(cat: SegmentCatalog, key: str, n_segments: int, length_s: float = 4.0, ready: bool = True) -> np.ndarray:
    """Register ``key`` with ``n_segments`` back-to-back segments; returns their ids."""
    video = cat.register_video(key, f"s3://bucket/{key}.mp4", n_segments * length_s, fps=30.0)
    ordinals = np.arange(n_segments)
    ids = cat.replace_segments(video.id, ordinals, ordinals * length_s, (ordinals + 1) * length_s)
    if ready:
        cat.mark_ready(video.id)
    return ids


class StatementLog:
    """SQL statements any engine sends while active (transaction control excluded)."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.autocommit: list[bool] = []

    def __call__(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.strip().upper() in ("BEGIN", "COMMIT", "ROLLBACK"):
            return
        self.statements.append(statement)
        self.autocommit.append(bool(getattr(conn.connection.dbapi_connection, "autocommit", False)))


@pytest.fixture
def sql_log() -> Iterator[StatementLog]:
    log = StatementLog()
    event.listen(Engine, "before_cursor_execute", log)
    try:
        yield log
    finally:
        event.remove(Engine, "before_cursor_execute", log)


# --- schema and migrations -------------------------------------------------------------------


def test_opening_migrates_an_empty_database_to_the_head_revision(catalog: SegmentCatalog) -> None:
    assert TABLES <= set(inspect(catalog.engine).get_table_names())
    with catalog.engine.connect() as conn:
        assert current_revision(conn) == head_revision()


def test_models_match_the_migrations_exactly(catalog: SegmentCatalog) -> None:
    with catalog.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_opening_twice_is_idempotent_and_keeps_the_data(catalog_url: str) -> None:
    with SegmentCatalog.open(catalog_url) as first:
        video = first.register_video("v", "file:///v.mp4", 10.0)
    with SegmentCatalog.open(catalog_url) as second:
        assert second.get_video("v") == video
        with second.engine.connect() as conn:
            assert current_revision(conn) == head_revision()


def test_opening_without_migrate_creates_no_tables(catalog_url: str) -> None:
    with SegmentCatalog.open(catalog_url, migrate=False) as cat:
        assert not TABLES & set(inspect(cat.engine).get_table_names())


def test_alembic_version_table_lives_in_the_tests_own_schema(postgres_url: str) -> None:
    with SegmentCatalog.open(postgres_url) as cat, cat.engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        where = conn.execute(
            text("SELECT table_schema FROM information_schema.tables WHERE table_name = 'alembic_version'")
        ).scalars()
        assert schema.startswith("spr_test_")
        assert schema in set(where)


def test_sqlite_catalog_creates_its_directory_and_enforces_foreign_keys_in_wal_mode(tmp_path) -> None:
    path = tmp_path / "deep" / "er" / "catalog.db"
    with SegmentCatalog.open(f"sqlite:///{path}") as cat, cat.engine.connect() as conn:
        assert path.is_file()
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_from_config_opens_the_configured_catalog(tmp_path) -> None:
    config = Config(data_dir=str(tmp_path / "data"))
    with SegmentCatalog.from_config(config) as cat:
        cat.register_video("v", "u", 1.0)
    assert (tmp_path / "data" / "catalog.db").is_file()


def test_an_unreachable_database_raises_an_error_naming_the_url_without_its_password() -> None:
    url = "postgresql+psycopg2://spr:s3cret@127.0.0.1:1/catalog"
    with pytest.raises(CatalogUnavailable) as info:
        SegmentCatalog.open(url)
    message = str(info.value)
    assert "postgresql+psycopg2://spr:***@127.0.0.1:1/catalog" in message
    assert "s3cret" not in message
    assert "check that the database server is running" in message


# --- videos ----------------------------------------------------------------------------------


def test_registering_a_video_inserts_a_pending_row(catalog: SegmentCatalog) -> None:
    video = catalog.register_video(
        "news/0001", "s3://b/0001.mp4", 125.5, fps=29.97, content_hash="sha256:ab", metadata={"lang": "en"}
    )
    assert video.id >= 1
    assert (video.key, video.uri, video.duration_s, video.fps) == ("news/0001", "s3://b/0001.mp4", 125.5, 29.97)
    assert (video.content_hash, video.status, video.error, video.metadata) == ("sha256:ab", "pending", None, {"lang": "en"})
    assert video.created_at.tzinfo is not None and video.updated_at.tzinfo is not None
    assert catalog.get_video("news/0001") == video
    assert catalog.get_video_by_id(video.id) == video
    assert catalog.get_video("missing") is None and catalog.get_video_by_id(video.id + 1) is None


def test_re_registering_a_key_resets_it_to_pending_and_keeps_its_id(catalog: SegmentCatalog) -> None:
    first = catalog.register_video("v", "file:///old.mp4", 10.0, fps=25.0, content_hash="h1", metadata={"a": 1})
    catalog.mark_failed(first.id, "decoder crashed")
    again = catalog.register_video("v", "file:///new.mp4", 12.0, content_hash="h2")
    assert again.id == first.id
    assert (again.uri, again.duration_s, again.fps, again.content_hash) == ("file:///new.mp4", 12.0, None, "h2")
    assert (again.status, again.error, again.metadata) == ("pending", None, {})
    assert again.created_at == first.created_at
    assert catalog.count_by_status()["pending"] == 1


def test_videos_are_found_by_content_hash_and_listed_by_status(catalog: SegmentCatalog) -> None:
    a = catalog.register_video("a", "u/a", 1.0, content_hash="same")
    b = catalog.register_video("b", "u/b", 1.0, content_hash="same")
    c = catalog.register_video("c", "u/c", 1.0, content_hash="other")
    catalog.mark_ready(b.id)
    assert [v.key for v in catalog.find_by_content_hash("same")] == ["a", "b"]
    assert catalog.find_by_content_hash("none") == []
    assert [v.key for v in catalog.list_videos()] == ["a", "b", "c"]
    assert [v.key for v in catalog.list_videos(status="pending")] == ["a", "c"]
    assert [v.key for v in catalog.list_videos(limit=2)] == ["a", "b"]
    assert [v.id for v in catalog.list_videos(status="ready")] == [b.id]
    assert c.id not in {v.id for v in catalog.list_videos(status="failed")}
    with pytest.raises(ValueError):
        catalog.list_videos(status="bogus")


def test_status_transitions_are_recorded_and_counted(catalog: SegmentCatalog) -> None:
    assert catalog.count_by_status() == {"pending": 0, "ready": 0, "failed": 0, "deleted": 0}
    ids = [catalog.register_video(f"v{i}", "u", 1.0).id for i in range(5)]
    catalog.mark_ready(ids[0])
    catalog.mark_ready(ids[1])
    catalog.mark_failed(ids[2], "no video stream")
    catalog.mark_deleted(ids[3])
    assert catalog.count_by_status() == {"pending": 1, "ready": 2, "failed": 1, "deleted": 1}
    failed = catalog.get_video_by_id(ids[2])
    assert failed is not None and (failed.status, failed.error) == ("failed", "no video stream")
    catalog.mark_ready(ids[2])  # a retry that succeeded clears the error
    retried = catalog.get_video_by_id(ids[2])
    assert retried is not None and (retried.status, retried.error) == ("ready", None)


def test_marking_an_unknown_video_raises_video_not_found(catalog: SegmentCatalog) -> None:
    for mark in (catalog.mark_ready, catalog.mark_deleted):
        with pytest.raises(VideoNotFound):
            mark(404)
    with pytest.raises(VideoNotFound):
        catalog.mark_failed(404, "x")


def test_purging_a_video_removes_it_and_its_segments(catalog: SegmentCatalog) -> None:
    gone = add_video(catalog, "gone", 30)
    kept = add_video(catalog, "kept", 20)
    video_id = spr_ids.split_segment_id(int(gone[0]))[0]
    assert catalog.purge_video(video_id) is True
    assert catalog.get_video("gone") is None
    assert catalog.segment_count(video_id) == 0
    assert catalog.segment_count() == 20
    assert catalog.lookup_segments(np.concatenate([gone, kept])).keys() == set(kept.tolist())
    assert catalog.purge_video(video_id) is False


def test_deleting_a_video_row_cascades_to_its_segments_in_the_database(catalog: SegmentCatalog) -> None:
    ids = add_video(catalog, "v", 10)
    with catalog.engine.begin() as conn:
        conn.execute(text("DELETE FROM videos"))
    assert catalog.segment_count() == 0
    assert catalog.lookup_segments(ids, ready_only=False) == {}


# --- segments --------------------------------------------------------------------------------


def test_replace_segments_returns_the_ids_of_spr_ids(catalog: SegmentCatalog) -> None:
    video = catalog.register_video("v", "u", 40.0)
    ordinals = np.arange(10)
    ids = catalog.replace_segments(video.id, ordinals, ordinals * 4.0, ordinals * 4.0 + 4.0)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, spr_ids.segment_ids(video.id, 10))
    assert catalog.segment_count(video.id) == 10


def test_replacing_segments_removes_the_old_rows(catalog: SegmentCatalog) -> None:
    video = catalog.register_video("v", "u", 40.0)
    catalog.replace_segments(video.id, np.arange(10), np.arange(10) * 4.0, np.arange(10) * 4.0 + 4)
    new = catalog.replace_segments(video.id, np.arange(4), np.arange(4) * 10.0, np.arange(4) * 10.0 + 10)
    catalog.mark_ready(video.id)
    assert catalog.segment_count(video.id) == 4
    found = catalog.lookup_segments(spr_ids.segment_ids(video.id, 10))
    assert sorted(found) == new.tolist()
    assert [found[i].end_s for i in new.tolist()] == [10.0, 20.0, 30.0, 40.0]


def test_a_failing_replace_leaves_the_previous_segments_intact(catalog: SegmentCatalog) -> None:
    old = add_video(catalog, "v", 8)
    video_id = spr_ids.split_segment_id(int(old[0]))[0]
    duplicate_ordinals = np.array([0, 1, 2, 2])
    with pytest.raises(IntegrityError):
        catalog.replace_segments(video_id, duplicate_ordinals, np.zeros(4), np.ones(4))
    assert catalog.segment_count(video_id) == 8
    found = catalog.lookup_segments(old)
    assert sorted(found) == old.tolist()
    assert found[int(old[7])].start_s == 28.0


def test_add_segments_appends_and_rejects_ordinals_already_present(catalog: SegmentCatalog) -> None:
    video = catalog.register_video("v", "u", 40.0)
    catalog.add_segments(video.id, np.arange(5), np.arange(5) * 4.0, np.arange(5) * 4.0 + 4)
    more = catalog.add_segments(video.id, np.arange(5, 10), np.arange(5, 10) * 4.0, np.arange(5, 10) * 4.0 + 4)
    np.testing.assert_array_equal(more, spr_ids.segment_ids(video.id, 10)[5:])
    assert catalog.segment_count(video.id) == 10
    with pytest.raises(IntegrityError):
        catalog.add_segments(video.id, np.array([3]), np.array([0.0]), np.array([1.0]))
    assert catalog.segment_count(video.id) == 10


def test_segments_of_an_unknown_video_are_rejected(catalog: SegmentCatalog) -> None:
    with pytest.raises(IntegrityError):
        catalog.replace_segments(999, np.arange(3), np.zeros(3), np.ones(3))
    assert catalog.segment_count() == 0


@pytest.mark.parametrize(
    ("ordinals", "start_s", "end_s", "message"),
    [
        (np.arange(3), np.zeros(2), np.ones(3), "differ in length"),
        (np.arange(4).reshape(2, 2), np.zeros(4), np.ones(4), "1-D"),
        (np.arange(3), np.ones(3), np.zeros(3), "end_s >= start_s"),
        (np.array([0.5]), np.zeros(1), np.ones(1), "integers"),
        (np.array([spr_ids.MAX_ORDINAL + 1]), np.zeros(1), np.ones(1), "out of range"),
    ],
)
def test_malformed_segment_arrays_are_rejected_before_writing(
    catalog: SegmentCatalog, ordinals, start_s, end_s, message
) -> None:
    video = catalog.register_video("v", "u", 4.0)
    with pytest.raises(ValueError, match=message):
        catalog.replace_segments(video.id, ordinals, start_s, end_s)


def test_replacing_with_no_segments_empties_the_video(catalog: SegmentCatalog) -> None:
    ids = add_video(catalog, "v", 5)
    video_id = spr_ids.split_segment_id(int(ids[0]))[0]
    empty = catalog.replace_segments(video_id, np.array([], dtype=np.int64), np.array([]), np.array([]))
    assert empty.shape == (0,) and empty.dtype == np.int64
    assert catalog.segment_count(video_id) == 0


def test_sqlite_bulk_inserts_are_executemany_in_batches_of_insert_batch_rows(tmp_path, sql_log: StatementLog) -> None:
    with SegmentCatalog.open(f"sqlite:///{tmp_path / 'c.db'}", insert_batch_rows=7) as cat:
        assert cat.bulk_method == bulk_insert_method(cat.engine.dialect) == "executemany"
        video = cat.register_video("v", "u", 80.0)
        sql_log.statements.clear()
        cat.replace_segments(video.id, np.arange(20), np.arange(20) * 4.0, np.arange(20) * 4.0 + 4)
        inserts = [s for s in sql_log.statements if s.lstrip().upper().startswith("INSERT")]
        assert len(inserts) == 3  # 7 + 7 + 6 rows
        assert cat.segment_count(video.id) == 20


def test_postgresql_bulk_inserts_use_copy(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    copies: list[int] = []
    real_copy = bulk.copy_segment_rows

    def counting_copy(conn, video_id, ids, *rest):
        copies.append(len(ids))
        real_copy(conn, video_id, ids, *rest)

    monkeypatch.setattr(bulk, "copy_segment_rows", counting_copy)
    n = 100_000
    with SegmentCatalog.open(postgres_url) as cat:
        assert cat.bulk_method == bulk_insert_method(cat.engine.dialect) == "copy"
        video = cat.register_video("long", "u", n * 4.0)
        ordinals = np.arange(n)
        starts = ordinals * 4.0 + 0.1  # not exactly representable: checks the CSV round trip
        ids = cat.replace_segments(video.id, ordinals, starts, starts + 4.0)
        cat.mark_ready(video.id)
        assert copies == [n]
        assert cat.segment_count(video.id) == n
        sample = ids[[0, 1, 777, n - 1]]
        found = cat.lookup_segments(sample)
        assert [found[int(i)].start_s for i in sample] == starts[[0, 1, 777, n - 1]].tolist()
        assert found[int(ids[-1])].ordinal == n - 1


# --- lookup ----------------------------------------------------------------------------------


def test_lookup_of_200_ids_returns_their_locations_in_one_statement(
    catalog: SegmentCatalog, sql_log: StatementLog
) -> None:
    a = add_video(catalog, "a", 150)
    b = add_video(catalog, "b", 150, length_s=2.0)
    wanted = np.random.default_rng(0).permutation(np.concatenate([a[:100], b[:100]]))
    sql_log.statements.clear()
    sql_log.autocommit.clear()
    found = catalog.lookup_segments(wanted)
    assert len(sql_log.statements) == 1
    if catalog.dialect == "postgresql":
        assert sql_log.autocommit == [True]  # no BEGIN/ROLLBACK round trips around it
    assert sorted(found) == sorted(wanted.tolist())
    video_b = catalog.get_video("b")
    assert video_b is not None
    sid = int(b[42])
    assert found[sid] == SegmentLocation(
        segment_id=sid,
        video_id=video_b.id,
        video_key="b",
        uri="s3://bucket/b.mp4",
        ordinal=42,
        start_s=84.0,
        end_s=86.0,
        video_duration_s=300.0,
    )


def test_lookup_locations_match_what_was_written(catalog: SegmentCatalog) -> None:
    ids = add_video(catalog, "v", 50)
    found = catalog.lookup_segments(ids.tolist())
    assert all(isinstance(k, int) for k in found)
    for ordinal, sid in enumerate(ids.tolist()):
        loc = found[sid]
        assert (loc.video_key, loc.ordinal, loc.start_s, loc.end_s, loc.video_duration_s) == (
            "v",
            ordinal,
            ordinal * 4.0,
            ordinal * 4.0 + 4.0,
            200.0,
        )


def test_lookup_omits_unknown_ids_and_search_padding(catalog: SegmentCatalog) -> None:
    ids = add_video(catalog, "v", 5)
    unknown = [int(ids[-1]) + 1, spr_ids.segment_id(9_999, 0), -1, -1]
    found = catalog.lookup_segments(np.array(ids.tolist() + unknown, dtype=np.int64))
    assert sorted(found) == ids.tolist()
    assert catalog.lookup_segments([]) == {}
    assert catalog.lookup_segments([-1, -1]) == {}


def test_lookup_accepts_more_ids_than_one_sqlite_statement_can_bind(catalog: SegmentCatalog) -> None:
    ids = add_video(catalog, "long", 33_000)  # SQLite binds at most 32766 parameters
    found = catalog.lookup_segments(ids)
    assert len(found) == 33_000
    assert found[int(ids[-1])].ordinal == 32_999


def test_lookup_hides_videos_that_are_not_ready_unless_asked(catalog: SegmentCatalog) -> None:
    ready = add_video(catalog, "ready", 3)
    pending = add_video(catalog, "pending", 3, ready=False)
    failed = add_video(catalog, "failed", 3, ready=False)
    deleted = add_video(catalog, "deleted", 3)
    catalog.mark_failed(spr_ids.split_segment_id(int(failed[0]))[0], "boom")
    catalog.mark_deleted(spr_ids.split_segment_id(int(deleted[0]))[0])
    everything = np.concatenate([ready, pending, failed, deleted])
    assert sorted(catalog.lookup_segments(everything)) == ready.tolist()
    assert sorted(catalog.lookup_segments(everything, ready_only=False)) == sorted(everything.tolist())


def test_re_registering_a_ready_video_hides_it_until_it_is_ready_again(catalog: SegmentCatalog) -> None:
    ids = add_video(catalog, "v", 3)
    catalog.register_video("v", "s3://bucket/v2.mp4", 12.0)
    assert catalog.lookup_segments(ids) == {}
    video = catalog.get_video("v")
    assert video is not None
    catalog.mark_ready(video.id)
    assert {loc.uri for loc in catalog.lookup_segments(ids).values()} == {"s3://bucket/v2.mp4"}


# --- collections -----------------------------------------------------------------------------


def test_registering_the_same_collection_twice_is_idempotent(catalog: SegmentCatalog) -> None:
    spec = {"kind": "IVF_FLAT", "nlist": 1024}
    first = catalog.register_collection("segments", "faiss", 768, "IP", spec, feature_model="ViT-L-14/openai")
    again = catalog.register_collection("segments", "faiss", 768, "IP", spec, feature_model="ViT-L-14/openai")
    assert again == first
    assert (first.name, first.backend, first.dim, first.metric, first.index_spec) == (
        "segments",
        "faiss",
        768,
        "IP",
        spec,
    )
    assert catalog.get_collection("segments") == first
    assert catalog.list_collections() == [first]


@pytest.mark.parametrize(("backend", "dim", "metric"), [("milvus", 768, "IP"), ("faiss", 512, "IP"), ("faiss", 768, "L2")])
def test_registering_a_collection_name_with_another_shape_raises(
    catalog: SegmentCatalog, backend: str, dim: int, metric: str
) -> None:
    catalog.register_collection("segments", "faiss", 768, "IP", {"kind": "FLAT"})
    with pytest.raises(ValueError, match="segments"):
        catalog.register_collection("segments", backend, dim, metric, {"kind": "FLAT"})


def test_re_registering_a_collection_with_a_new_index_spec_updates_it(catalog: SegmentCatalog) -> None:
    first = catalog.register_collection("c", "milvus", 256, "IP", {"kind": "FLAT"}, feature_model="m1")
    rebuilt = catalog.register_collection("c", "milvus", 256, "IP", {"kind": "HNSW", "M": 16})
    assert rebuilt.id == first.id
    assert rebuilt.index_spec == {"kind": "HNSW", "M": 16}
    assert rebuilt.feature_model == "m1"  # None means "unchanged"


def test_dropping_a_collection_forgets_it(catalog: SegmentCatalog) -> None:
    catalog.register_collection("a", "faiss", 8, "IP", {"kind": "FLAT"})
    catalog.register_collection("b", "faiss", 8, "IP", {"kind": "FLAT"})
    assert catalog.drop_collection("a") is True
    assert catalog.drop_collection("a") is False
    assert catalog.get_collection("a") is None
    assert [c.name for c in catalog.list_collections()] == ["b"]


# --- ingest runs -----------------------------------------------------------------------------


def test_an_ingest_run_goes_from_running_to_finished_with_its_counters(catalog: SegmentCatalog) -> None:
    run_id = catalog.start_run({"segments": {"length_s": 4.0}, "videos": ["a", "b"]}, videos_total=2)
    run = catalog.get_run(run_id)
    assert run is not None
    assert (run.status, run.videos_total, run.videos_done, run.segments_written, run.finished_at) == (
        "running",
        2,
        0,
        0,
        None,
    )
    assert run.config == {"segments": {"length_s": 4.0}, "videos": ["a", "b"]}
    catalog.update_run(run_id, videos_done=1, segments_written=900)
    catalog.increment_run(run_id, videos_done=1, segments_written=450)
    catalog.increment_run(run_id, videos_failed=1)
    catalog.finish_run(run_id)
    done = catalog.get_run(run_id)
    assert done is not None
    assert (done.status, done.videos_done, done.videos_failed, done.segments_written, done.error) == (
        "finished",
        2,
        1,
        1350,
        None,
    )
    assert done.finished_at is not None and done.finished_at >= run.started_at


def test_a_failed_ingest_run_keeps_its_error(catalog: SegmentCatalog) -> None:
    run_id = catalog.start_run({})
    catalog.finish_run(run_id, status="failed", error="ray cluster lost")
    run = catalog.get_run(run_id)
    assert run is not None and (run.status, run.error) == ("failed", "ray cluster lost")


def test_ingest_run_misuse_is_rejected(catalog: SegmentCatalog) -> None:
    run_id = catalog.start_run({})
    with pytest.raises(ValueError, match="unknown ingest-run counter"):
        catalog.update_run(run_id, videos_lost=1)
    with pytest.raises(ValueError):
        catalog.finish_run(run_id, status="running")
    with pytest.raises(RunNotFound):
        catalog.update_run(run_id + 100, videos_done=1)
    assert catalog.get_run(run_id + 100) is None
