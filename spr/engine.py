"""The moment search engine: one query -> ranked moments (SPR sections 3.1.2, 3.2 and 3.3),
with no transport in it. The gRPC search service, ``spr eval`` and an HTTP gateway are thin
adapters over :class:`MomentSearch`: they turn their requests into a :class:`MomentQuery` and a
:class:`SearchResult` into their answers, and map :class:`SearchRefused` to their error codes.

One search runs these stages, each timed into :attr:`SearchResult.timings_ms`:

``embed``
    for the visual modality, text through the CLIP text tower and the text projector
    (:class:`spr.models.query.QueryEncoder`, loaded once), a client's ready embedding checked
    against the collection's dimension, or a query the caller encoded itself
    (:class:`EncodedQuery`, e.g. ``spr eval``'s batches); for each text track (speech,
    subtitles), the text through the sentence encoder (``embed.<track>``);
``filter``
    only with metadata filters: the catalog's matching ready videos;
``ann``
    ANN top-``segments_k`` in each searched modality's collection (``segments``,
    ``segments__speech``, ``segments__subtitles``), side by side (``ann.<modality>``);
``fusion``
    the ranked lists fused per segment (:mod:`spr.fusion`: weighted reciprocal-rank fusion or
    a weighted sum of normalised scores) before proposals merge. A modality whose encoder has
    random weights is left out when a real one can answer, unless asked for by weight; each
    modality's part is in :attr:`SearchResult.modalities`;
``catalog``, ``proposals``
    :func:`spr.retrieval.propose_from_hits`: one catalog round trip (``ready`` videos only),
    adjacent segments merged and padded by tau_C;
``refine``
    when the visual modality was searched (the refiner scores frames against the CLIP query;
    otherwise :attr:`SearchResult.refine_note` says why not), the best
    :data:`spr.limits.MAX_REFINE_PROPOSALS` padded proposals through the
    :class:`spr.refinement.Refiner` (in this process or over gRPC). A refiner that is down,
    fails or is late never fails the search: the coarse proposals come back, ``degraded``, with
    the reason.

Limits come from :mod:`spr.limits`. Bad queries raise :class:`InvalidSearch`, an unknown
collection :class:`UnknownCollection`, a query this engine cannot answer (no text encoder, a
collection of another size or backend) :class:`UnservableSearch`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from spr.catalog import SegmentCatalog
from spr.catalog.segment_catalog import InvalidMetadataFilter, check_metadata_filter
from spr.config import Config, FusionMethod
from spr.features import SPEECH, SUBTITLES, VISUAL, Modality
from spr.fusion import Contribution, fuse
from spr.ids import MAX_ORDINAL, segment_id, split_segment_id
from spr.limits import DEFAULT_TOP_K, MAX_REFINE_PROPOSALS, MAX_SEGMENTS_K, MAX_TEXT_CHARS, MAX_TOP_K
from spr.proposals import GapRule, Proposal, gap_rule_from_config
from spr.refinement import Moment, RefineCandidate, RefineFailed, Refinement, Refiner, RefineRequest
from spr.retrieval import CoarseResult, propose_from_hits, propose_from_hits_many
from spr.stores import CollectionNotFound, SearchParams, VectorStore, index_spec_to_dict, l2_normalize
from spr.stores.base import check_collection_name
from spr.text_tracks import TEXT_TRACKS, track_collection

if TYPE_CHECKING:
    from spr.models.query import QueryEncoder
    from spr.models.text import SentenceEncoder

log = logging.getLogger(__name__)

__all__ = [
    "COLLECTION_CACHE_S",
    "STORE_REFRESH_S",
    "CollectionSummary",
    "CorpusStats",
    "EncodedQuery",
    "InvalidSearch",
    "MODALITIES",
    "ModalitySearch",
    "MomentQuery",
    "MomentSearch",
    "PreparedSearch",
    "SearchRefused",
    "SearchResult",
    "UnknownCollection",
    "UnservableSearch",
    "coarse_moments",
    "refine_request",
]

# Collection shapes are looked up once per this many seconds, not once per query: on Milvus
# a describe is a network round trip, and a collection's dimension never changes in place.
COLLECTION_CACHE_S = 30.0
# How often a local store (Faiss) looks for collections an ingest process flushed meanwhile;
# a check is one small file read per collection, a reload happens only on change.
STORE_REFRESH_S = 5.0
# Of a caller's deadline, what the refiner wait leaves for the rest of the answer (snippets,
# the reply on the wire): at most this, and at most this share of the time the search had.
REPLY_MARGIN_S = 0.1
REPLY_MARGIN_SHARE = 0.2


# Every modality a search can fuse, in the order responses list them.
MODALITIES: tuple[Modality, ...] = (VISUAL, *TEXT_TRACKS)
# Snippets: the text of at most this many segments per moment, cut to this many characters.
_SNIPPET_SEGMENTS = 8
_SNIPPET_CHARS = 400
# The smallest query embedding norm searched: l2_normalize floors norms at 1e-12.
_MIN_EMBEDDING_NORM = 1e-12


# --- errors --------------------------------------------------------------------------------------


class SearchRefused(Exception):
    """A search the engine refuses; ``message`` is for whoever sent it, ``field`` the request
    field at fault ("" when none is), ``limit`` the bound it broke in words ("" when none),
    ``reason`` a stable UPPER_SNAKE code (adapters put the three in structured error details)."""

    reason = "REFUSED"

    def __init__(self, message: str, *, field: str = "", limit: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.limit = limit
        if reason:
            self.reason = reason


class InvalidSearch(SearchRefused):
    """The query itself is wrong (empty text, NaN, out-of-range ``top_k``, ...)."""

    reason = "INVALID_QUERY"

    def __init__(self, message: str, *, field: str = "", limit: str = "", reason: str = "") -> None:
        super().__init__(message, field=field, limit=limit, reason=reason or ("LIMIT_EXCEEDED" if limit else ""))


class UnknownCollection(SearchRefused):
    """No such collection."""

    reason = "UNKNOWN_COLLECTION"


class UnservableSearch(SearchRefused):
    """A valid query this engine cannot answer as set up (no text encoder, a text encoder of
    another size than the collection, a collection in another vector store)."""

    reason = "UNSERVABLE_SEARCH"


# --- queries and results -------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedQuery:
    """A query ready to search: ``embedding`` ``(dim,)`` the unit vector the index is searched
    with; ``refiner_query`` what the refiner gets (the CLIP text feature ``(clip_dim,)`` for a
    text, the embedding itself when ``projected``); ``embed_ms`` what encoding it cost."""

    embedding: np.ndarray
    refiner_query: np.ndarray
    projected: bool
    embed_ms: float = 0.0


@dataclass(frozen=True)
class MomentQuery:
    """One search. Exactly one of ``text``, ``embedding`` (a ready joint-space query embedding of
    the collection's dimension) or ``encoded`` (a query the caller encoded); or ``encoded`` for
    the visual modality with ``text`` for the text tracks.

    ``collection`` "" = the configured one; ``top_k`` moments and ``segments_k`` segments, 0 =
    the defaults; ``nprobe``/``ef`` index search breadth (None or 0 = the index's); only videos
    in ``video_keys`` (empty = all) whose catalog metadata has every ``metadata`` pair;
    ``refine`` None = refine when a refiner is configured, True = a missing refiner degrades."""

    text: str | None = None
    embedding: Sequence[float] | np.ndarray | None = None
    encoded: EncodedQuery | None = None
    collection: str = ""
    top_k: int = 0
    segments_k: int = 0
    nprobe: int | None = None
    ef: int | None = None
    video_keys: Sequence[str] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    refine: bool | None = None
    # Per-modality fusion weights (``visual``, ``speech``, ``subtitles``); 0 = off, a modality
    # not named keeps the configured weight. ``fusion`` "rrf" or "sum" ("" = configured).
    weights: Mapping[str, float] = field(default_factory=dict)
    fusion: str = ""


@dataclass(frozen=True)
class ModalitySearch:
    """One modality in one search: its ``collection``, the ``weight`` it was fused with,
    whether it was ``searched`` (with ``hits`` ANN hits), and ``note`` why not or what to know
    (random weights, no such track, no text encoder)."""

    modality: Modality
    collection: str
    weight: float
    searched: bool
    hits: int = 0
    note: str = ""
    random_weights: bool = False


@dataclass
class SearchResult:
    """What a search answers: ``moments`` best first (refined when ``refined``, else the coarse
    proposals scored by their best segment); ``degraded_reason`` why refinement was wanted and
    did not happen (empty: it did, or was not wanted); per-stage ``timings_ms``.

    ``coarse`` (the proposals, unpadded and padded; None when filters matched no video) and
    ``refinement`` (the refiner's own answer, also when it dropped every proposal) are there for
    callers that need more than the moments, such as ``spr eval``."""

    collection: str
    moments: list[Moment] = field(default_factory=list)
    refined: bool = False
    degraded_reason: str = ""
    random_weights: bool = False
    segments_retrieved: int = 0
    proposals: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    coarse: CoarseResult | None = None
    refinement: Refinement | None = None
    modalities: list[ModalitySearch] = field(default_factory=list)
    fusion: str = ""
    refine_note: str = ""  # why refinement was skipped without being a degradation

    @property
    def degraded(self) -> bool:
        return bool(self.degraded_reason)


@dataclass
class PreparedSearch:
    """A search between its two halves (:meth:`MomentSearch.prepare_many`, then
    :meth:`MomentSearch.complete`): the checked ``query``, its ``result`` so far (``coarse`` set
    once the coarse half ran), the ``encoded`` visual query (None when the visual modality is
    not searched) and what the rest needs. ``finished``: filters matched no video, so the
    result is final as it is."""

    query: MomentQuery
    result: SearchResult
    encoded: EncodedQuery | None
    top_k: int
    segments_k: int
    params: SearchParams | None
    video_keys: list[str] | None
    searched: list[ModalitySearch]
    method: FusionMethod
    t_start: float
    deadline: float | None
    finished: bool = False
    contributions: dict[int, tuple[Contribution, ...]] = field(default_factory=dict)

    @property
    def batchable(self) -> bool:
        """Searches the visual modality alone, with an embedding: its ANN call can be shared."""
        return (
            not self.finished
            and self.encoded is not None
            and len(self.searched) == 1
            and self.searched[0].modality == VISUAL
        )


@dataclass(frozen=True)
class CollectionSummary:
    """One collection as the catalog registered it and the store sees it; ``vectors`` is -1 when
    this engine's store cannot count it (another backend, or missing)."""

    name: str
    backend: str
    dim: int
    metric: str
    index_kind: str
    index_params: dict[str, str]
    vectors: int
    feature_model: str


@dataclass(frozen=True)
class CorpusStats:
    """Collections, videos per catalog status, and catalog segments."""

    collections: list[CollectionSummary]
    videos: dict[str, int]
    segments: int
    # The collection a query without one searches, and the modalities it has.
    default_collection: str = ""
    modalities: tuple[Modality, ...] = ()


# --- the engine ----------------------------------------------------------------------------------


class MomentSearch:
    """Answers :class:`MomentQuery` s over one catalog, one vector store, an optional text
    ``encoder`` and an optional ``refiner``; thread-safe (one engine serves many threads). It owns
    all four: :meth:`close` closes them."""

    def __init__(
        self,
        config: Config,
        catalog: SegmentCatalog,
        store: VectorStore,
        encoder: "QueryEncoder | None" = None,
        refiner: Refiner | None = None,
        text_encoder: "SentenceEncoder | None" = None,
    ) -> None:
        pc = config.proposals
        try:
            self.gap_rule: GapRule = gap_rule_from_config(
                pc.gap_rule, pc.max_missing_segments, pc.adaptive_alpha,
                merge_score_window=pc.merge_score_window, max_length_s=pc.max_length_s,
            )
        except ValueError as exc:
            raise ValueError(f"proposals.gap_rule: {exc}") from None
        self.config = config
        self.catalog = catalog
        self.store = store
        self.encoder = encoder
        self.refiner = refiner
        self.text_encoder = text_encoder
        # One thread per modality: the ANN searches of one query run side by side.
        self._pool = ThreadPoolExecutor(max_workers=2 * len(MODALITIES), thread_name_prefix="search-modality")
        self._dims: dict[str, tuple[int, float]] = {}  # collection -> (dim, looked up at)
        self._dims_lock = threading.Lock()
        self._closing = threading.Event()
        self._refresher: threading.Thread | None = None

    @classmethod
    def open(
        cls,
        config: Config,
        encoder: "QueryEncoder | None" = None,
        refiner: Refiner | None = None,
        text_encoder: "SentenceEncoder | None" = None,
    ) -> "MomentSearch":
        """The engine over the catalog and the vector store of ``config``."""
        from spr.stores import open_vector_store

        catalog = SegmentCatalog.from_config(config)
        try:
            store = open_vector_store(config)
            try:
                return cls(config, catalog, store, encoder, refiner, text_encoder)
            except BaseException:
                store.close()
                raise
        except BaseException:
            catalog.close()
            raise

    @property
    def random_weights(self) -> bool:
        """True when the text encoder runs on untrained or random weights."""
        return bool(self.encoder is not None and self.encoder.random_weights)

    # -- lifecycle ------------------------------------------------------------------------------

    def start_refreshing(self, interval_s: float = STORE_REFRESH_S) -> None:
        """Pick up new ingests every ``interval_s`` seconds in a background thread, off the
        query path (:meth:`refresh_store`); stopped by :meth:`close`."""
        if self._refresher is None and interval_s > 0:
            self._refresher = threading.Thread(
                target=self._refresh_loop, args=(interval_s,), name="search-refresh", daemon=True
            )
            self._refresher.start()

    def refresh_store(self) -> list[str]:
        """Reload the collections other processes flushed since we loaded them; their names."""
        reloaded = self.store.refresh()
        for name in reloaded:
            self._forget(name)
        if reloaded:
            log.info("reloaded collections changed by another process", extra={"collections": reloaded})
        return reloaded

    def _refresh_loop(self, interval_s: float) -> None:
        while not self._closing.wait(interval_s):
            try:
                self.refresh_store()
            except Exception:
                log.warning("refreshing the vector store failed; searching the copy already loaded", exc_info=True)

    def close(self) -> None:
        self._closing.set()
        if self._refresher is not None:
            self._refresher.join()
        if self.refiner is not None:
            self.refiner.close()
        self._pool.shutdown(wait=True)
        self.store.close()
        self.catalog.close()

    def __enter__(self) -> "MomentSearch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- search ---------------------------------------------------------------------------------

    def search(
        self, query: MomentQuery, timeout_s: float | None = None, arrived_at: float | None = None
    ) -> SearchResult:
        """The whole query path for one query (raises :class:`SearchRefused` to refuse it).

        ``timeout_s``: the caller's time left (a gRPC client's deadline); the refiner then waits
        at most until a reply margin before it (:data:`REPLY_MARGIN_S`), so a late refiner
        degrades the answer instead of the caller's deadline passing. None: no deadline.
        ``arrived_at``: when (``time.perf_counter()``) the request arrived, if it then waited
        for a worker; ``timings_ms.total`` counts from there and ``timings_ms.queue`` is the wait."""
        prepared = self._begin(query, timeout_s, arrived_at)
        if not prepared.finished:
            lists = self._search_modalities(
                query, prepared.searched, prepared.encoded, prepared.segments_k, prepared.params,
                prepared.video_keys, prepared.result.timings_ms,
            )
            hits = self._fuse(prepared, lists)
            self._propose(prepared, propose_from_hits(self.catalog, hits, self.gap_rule, self.config.proposals.pad_s))
        return self.complete(prepared)

    def search_many(self, queries: Sequence[MomentQuery]) -> list[SearchResult]:
        """``[self.search(q) for q in queries]``, the same answers, with the coarse half batched
        (:meth:`prepare_many`); refinement and snippets run per query, one after the other
        (:meth:`complete` them on a thread pool instead to let the refiner batch them)."""
        return [self.complete(p) for p in self.prepare_many(queries)]

    def prepare_many(self, queries: Sequence[MomentQuery]) -> list["PreparedSearch"]:
        """The coarse half of each of ``queries`` (ANN, fusion, catalog, proposals), batched:
        the queries that search the visual modality alone with an embedding, of one collection,
        ``segments_k``, search breadth and video filter, share one ``store.search`` of their
        ``(B, dim)`` embeddings; every query's hits share one catalog lookup (of the union of
        their segment ids). Other queries (text tracks, fusion) search as :meth:`search` does.
        Each query's ``timings_ms.ann`` and ``catalog`` are its share of the shared calls (the
        call's time over the queries in it), ``ann_batch`` the number of queries in its ANN
        call. Refuses (raises :class:`SearchRefused`) as :meth:`search` would, for the first
        query it refuses. Finish each with :meth:`complete` (thread-safe; the refiner batches
        concurrent ones)."""
        prepared = [self._begin(q, None, None) for q in queries]
        open_ = [p for p in prepared if not p.finished]
        groups: dict[tuple[Any, ...], list[PreparedSearch]] = {}
        hits_of: dict[int, list[tuple[int, float]]] = {}
        for p in open_:
            if p.batchable:
                key = (p.searched[0].collection, p.segments_k, p.params, None if p.video_keys is None else tuple(p.video_keys))
                groups.setdefault(key, []).append(p)
            else:
                lists = self._search_modalities(
                    p.query, p.searched, p.encoded, p.segments_k, p.params, p.video_keys, p.result.timings_ms
                )
                hits_of[id(p)] = self._fuse(p, lists)
        for group in groups.values():
            for p, hits in zip(group, self._search_visual_batch(group)):
                hits_of[id(p)] = self._fuse(p, {VISUAL: hits})
        coarse = propose_from_hits_many(
            self.catalog, [hits_of[id(p)] for p in open_], self.gap_rule, self.config.proposals.pad_s
        )
        for p, c in zip(open_, coarse):
            self._propose(p, c)
        return prepared

    def complete(self, prepared: "PreparedSearch") -> SearchResult:
        """The rest of a prepared search: refinement (when asked and possible) and snippets."""
        result, query, coarse = prepared.result, prepared.query, prepared.result.coarse
        if prepared.finished or coarse is None:
            return _finish(result, prepared.t_start)
        timings = result.timings_ms
        refinement = None
        if prepared.encoded is not None:
            refinement = self._refine(query, prepared.encoded, coarse, result, prepared.deadline, prepared.top_k)
        elif query.refine is not False and self.refiner is not None and coarse.padded:
            # The refiner scores frames against the CLIP query: without the visual modality it
            # would re-rank what speech or subtitles found by a modality that was left out.
            result.refine_note = "not refined: refinement is visual and the visual modality was not searched"
        if refinement is not None:
            moments = list(refinement.moments[: prepared.top_k])
            result.refined = True
        else:
            moments = coarse_moments(coarse, prepared.top_k)
        t0 = time.perf_counter()
        result.moments = self._annotate(moments, coarse, prepared.contributions)
        timings["snippets"] = (time.perf_counter() - t0) * 1e3
        return _finish(result, prepared.t_start)

    def _begin(self, query: MomentQuery, timeout_s: float | None, arrived_at: float | None) -> "PreparedSearch":
        """Checks, the plan, the query encoding and the video filter of one search."""
        t_start = time.perf_counter()
        deadline = _reply_deadline(t_start, timeout_s)
        top_k = _bounded("top_k", query.top_k, DEFAULT_TOP_K, MAX_TOP_K)
        segments_k = _bounded("segments_k", query.segments_k, self.config.proposals.top_k_segments, MAX_SEGMENTS_K)
        params = _search_params(query.nprobe, query.ef)
        _check_query(query)
        _metadata_filter(query.metadata)
        method = _fusion_method(query.fusion, self.config.fusion.method)
        weights = _weights(query.weights, self.config.fusion)
        collection = _collection_name(query.collection or self.config.vectors.collection)
        dim = self.collection_dim(collection)
        plan = self._plan(query, collection, weights)

        timings = {"embed": 0.0, "ann": 0.0, "catalog": 0.0, "proposals": 0.0, "refine": 0.0}
        if arrived_at is not None and arrived_at <= t_start:
            # The wait for a worker is part of what the caller waited: total starts there.
            timings["queue"] = (t_start - arrived_at) * 1e3
            t_start = arrived_at
        result = SearchResult(collection=collection, timings_ms=timings, modalities=plan, fusion=method.value)
        searched = [m for m in plan if m.searched]
        visual = any(m.modality == VISUAL for m in searched)
        encoded = self._encode(query, collection, dim) if visual else None
        result.random_weights = visual and self.random_weights
        timings["embed"] = encoded.embed_ms if encoded is not None else 0.0
        video_keys = self._video_filter(query, timings)
        # Filters that match no video: nothing to search, and nothing has failed.
        finished = video_keys is not None and not video_keys
        return PreparedSearch(
            query, result, encoded, top_k, segments_k, params, video_keys, searched, method, t_start, deadline, finished
        )

    def _search_visual_batch(self, group: Sequence["PreparedSearch"]) -> list[list[tuple[int, float]]]:
        """One ``store.search`` for the embeddings of ``group`` (queries of one collection,
        ``segments_k``, params and video filter that search the visual modality alone): each
        one's hits under ``fusion.min_score_visual`` dropped, and its share of the call's time."""
        first = group[0]
        name = first.searched[0].collection
        embeddings = np.stack([np.asarray(p.encoded.embedding, dtype=np.float32) for p in group])
        t0 = time.perf_counter()
        try:
            found = self.store.search(name, embeddings, first.segments_k, first.params, first.video_keys)
        except CollectionNotFound as exc:
            self._forget(name)  # dropped since we cached its shape
            raise UnknownCollection(str(exc)) from None
        share_ms = (time.perf_counter() - t0) * 1e3 / len(group)
        floor = float(getattr(self.config.fusion, f"min_score_{VISUAL}", -math.inf))
        out = []
        for row, p in enumerate(group):
            out.append([(sid, score) for sid, score in found.hits(row) if score >= floor])
            timings = p.result.timings_ms
            timings[f"ann.{VISUAL}"] = timings["ann"] = share_ms
            timings["ann_batch"] = float(len(group))
        return out

    def _fuse(self, prepared: "PreparedSearch", lists: Mapping[Modality, list[tuple[int, float]]]) -> list[tuple[int, float]]:
        """The searched modalities' hits as one ranked list (fused when more than one); sets
        the prepared search's per-segment contributions and the modalities' hit counts."""
        result, searched = prepared.result, prepared.searched
        result.modalities = [dataclasses.replace(m, hits=len(lists.get(m.modality, ()))) for m in result.modalities]
        t0 = time.perf_counter()
        if len(searched) == 1:
            only = searched[0].modality
            hits = list(lists[only])
            contributions = {sid: (Contribution(only, rank, score),) for rank, (sid, score) in enumerate(hits)}
        else:
            # The text tracks share the sentence encoder, so their scores compare directly.
            groups = {m: "text" for m in TEXT_TRACKS}
            fused = fuse(
                prepared.method.value, lists, {m.modality: m.weight for m in searched}, self.config.fusion.rrf_k, groups
            )
            fused = fused[: prepared.segments_k]
            hits = [(h.segment_id, h.score) for h in fused]
            contributions = {h.segment_id: h.contributions for h in fused}
        result.timings_ms["fusion"] = (time.perf_counter() - t0) * 1e3
        prepared.contributions = contributions
        return hits

    def _propose(self, prepared: "PreparedSearch", coarse: CoarseResult) -> None:
        result = prepared.result
        result.timings_ms["catalog"] = coarse.timings_ms["catalog"]
        result.timings_ms["proposals"] = coarse.timings_ms["proposals"]
        result.coarse = coarse
        result.segments_retrieved = coarse.segment_count
        result.proposals = len(coarse.proposals)

    # -- modalities -----------------------------------------------------------------------------

    def available_modalities(self, collection: str) -> list[Modality]:
        """The modalities collection ``collection`` has: visual, and each text track whose
        collection (``<collection>__speech``...) exists in the store."""
        return [VISUAL] + [m for m in TEXT_TRACKS if self._has_collection(track_collection(collection, m))]

    def _has_collection(self, name: str) -> bool:
        try:
            self.collection_dim(name)
            return True
        except (UnknownCollection, UnservableSearch):
            return False

    def _plan(self, query: MomentQuery, collection: str, weights: dict[Modality, float]) -> list[ModalitySearch]:
        """Which modalities this query searches, with what weight, and why the others not."""
        explicit = {m for m, w in query.weights.items() if w > 0}
        plan: dict[Modality, ModalitySearch] = {}
        for m in MODALITIES:
            name = track_collection(collection, m)
            w = weights[m]
            note = ""
            random = False
            if w == 0:
                note = "off (weight 0)"
            elif m == VISUAL:
                if query.text is not None and query.encoded is None and self.encoder is None:
                    note = "this search has no text encoder; search with an embedding"
                random = self.random_weights and query.text is not None and query.encoded is None
            elif query.text is None:
                note = "needs a text query (an embedding searches the visual modality only)"
            elif self.text_encoder is None:
                note = "no text encoder configured for this service"
            elif not self._has_collection(name):
                note = f"collection {collection!r} has no {m} track"
            elif self.collection_dim(name) != self.text_encoder.dim:
                note = (
                    f"{name!r} holds {self.collection_dim(name)}-d vectors but the text encoder "
                    f"({self.text_encoder.identity}) gives {self.text_encoder.dim}-d ones"
                )
            plan[m] = ModalitySearch(m, name, w, not note, note=note, random_weights=random)
        visual = plan[VISUAL]
        others = [p for p in plan.values() if p.searched and p.modality != VISUAL]
        if visual.searched and visual.random_weights and others and VISUAL not in explicit and not self.config.fusion.include_random:
            # Random visual scores fused with real spoken ones would bury them.
            plan[VISUAL] = dataclasses.replace(
                visual,
                searched=False,
                note="left out: the CLIP text encoder has random weights (ask for it with a visual weight > 0)",
            )
        if not any(p.searched for p in plan.values()):
            if all(w == 0 for w in weights.values()):
                raise InvalidSearch("every modality has weight 0; give at least one a weight > 0")
            reasons = "; ".join(f"{p.modality}: {p.note}" for p in plan.values() if p.note)
            raise UnservableSearch(f"no modality can answer this query ({reasons})")
        return [plan[m] for m in MODALITIES]

    def _search_modalities(
        self,
        query: MomentQuery,
        searched: Sequence[ModalitySearch],
        encoded: EncodedQuery | None,
        segments_k: int,
        params: SearchParams | None,
        video_keys: list[str] | None,
        timings: dict[str, float],
    ) -> dict[Modality, list[tuple[int, float]]]:
        """Each searched modality's ANN hits ``[(segment id, score), ...]`` best first, those
        under its ``fusion.min_score_<m>`` dropped; the modalities run side by side. Timings
        ``ann.<m>`` per modality and ``ann`` the slowest of them; ``embed.<track>`` the text
        query's one encoding, which every text track shares."""
        # The text tracks share one sentence encoder: the query is encoded once, not per track.
        text_vector = None
        if any(m.modality != VISUAL for m in searched):
            t0 = time.perf_counter()
            text_vector = self.text_encoder.encode_query(query.text)
            text_ms = (time.perf_counter() - t0) * 1e3
            timings["embed"] += text_ms
            timings.update({f"embed.{m.modality}": text_ms for m in searched if m.modality != VISUAL})

        def one(m: ModalitySearch) -> tuple[list[tuple[int, float]], float]:
            """``(hits, ANN ms)`` of one modality."""
            vector = encoded.embedding if m.modality == VISUAL else text_vector
            t0 = time.perf_counter()
            try:
                found = self.store.search(
                    m.collection, np.asarray(vector, dtype=np.float32).reshape(1, -1), segments_k, params, video_keys
                )
            except CollectionNotFound as exc:
                self._forget(m.collection)  # dropped since we cached its shape
                raise UnknownCollection(str(exc)) from None
            return list(found.hits(0)), (time.perf_counter() - t0) * 1e3

        answers = [one(searched[0])] if len(searched) == 1 else list(self._pool.map(one, searched))
        lists = {}
        for m, (hits, ann_ms) in zip(searched, answers):
            floor = float(getattr(self.config.fusion, f"min_score_{m.modality}", -math.inf))
            lists[m.modality] = [(sid, score) for sid, score in hits if score >= floor]
            timings[f"ann.{m.modality}"] = ann_ms
        # Side by side: the query's ANN stage takes as long as its slowest modality.
        timings["ann"] = max(ann_ms for _, ann_ms in answers)
        return lists

    def _annotate(
        self, moments: list[Moment], coarse: CoarseResult, contributions: Mapping[int, tuple[Contribution, ...]]
    ) -> list[Moment]:
        """``moments`` with the modalities that found their proposal's segments and the text of
        what was said or written during them (one catalog round trip for all)."""
        if not moments:
            return moments
        wanted: dict[int, list[int]] = {}
        spans = []
        length = self.config.segments.length_s
        for i, moment in enumerate(moments):
            proposal = coarse.proposals[moment.coarse_rank] if moment.coarse_rank < len(coarse.proposals) else None
            if proposal is None:
                spans.append(((), (), 0, 0))
                continue
            location = coarse.location_of(proposal)
            video_id = location.video_id
            first = int(math.floor(moment.start_s / length))
            last = max(first, int(math.ceil(moment.end_s / length)) - 1)
            ids = [segment_id(video_id, o) for o in range(first, min(last, first + _SNIPPET_SEGMENTS - 1) + 1)]
            wanted[i] = ids
            best: dict[Modality, Contribution] = {}
            for sid in proposal.segment_ids:
                for c in contributions.get(sid, ()):
                    if c.modality not in best or c.rank < best[c.modality].rank:
                        best[c.modality] = c
            spans.append((ids, tuple(best[m] for m in MODALITIES if m in best), video_id, _shown_segment(moment, video_id, length)))
        texts: Mapping[int, Mapping[str, str]] = {}
        all_ids = [sid for ids in wanted.values() for sid in ids]
        if all_ids:
            texts = self.catalog.segment_texts(all_ids)
        out = []
        for moment, (ids, found_by, video_id, shown) in zip(moments, spans):
            snippet, track = "", ""
            for t in (SPEECH, SUBTITLES):
                pieces = list(dict.fromkeys(texts.get(sid, {}).get(t, "") for sid in ids))
                line = " ".join(p for p in pieces if p)
                if line:
                    snippet, track = _cut(line, _SNIPPET_CHARS), t
                    break
            out.append(
                dataclasses.replace(
                    moment, modalities=found_by, snippet=snippet, snippet_track=track, video_id=video_id, segment_id=shown
                )
            )
        return out

    def _encode(self, query: MomentQuery, collection: str, dim: int) -> EncodedQuery:
        """The checked query as a ``(dim,)`` unit vector for a collection of ``dim``-d vectors."""
        t0 = time.perf_counter()
        if query.encoded is not None:
            if np.shape(query.encoded.embedding) != (dim,):
                raise InvalidSearch(
                    f"encoded query has {np.size(query.encoded.embedding)} values; collection {collection!r} needs {dim}"
                )
            return query.encoded
        if query.text is not None:
            encoder = self.encoder
            if encoder is None:
                raise UnservableSearch("this search has no text encoder; search with an embedding")
            if encoder.dim != dim:
                raise UnservableSearch(
                    f"collection {collection!r} holds {dim}-d vectors but this service's text encoder "
                    f"gives {encoder.dim}-d queries; search it with an embedding or serve it "
                    f"with the CLIP model and projector that built it",
                )
            feature, embedding = encoder.encode(query.text)
            return EncodedQuery(embedding, feature, False, (time.perf_counter() - t0) * 1e3)
        values = np.asarray(query.embedding, dtype=np.float32)
        if values.shape != (dim,):
            raise InvalidSearch(f"embedding has {values.size} values; collection {collection!r} needs {dim}")
        embedding = l2_normalize(values)
        return EncodedQuery(embedding, embedding, True, (time.perf_counter() - t0) * 1e3)

    def _video_filter(self, query: MomentQuery, timings: dict[str, float]) -> list[str] | None:
        """The videos a query may see: its ``video_keys`` intersected with the ready videos
        whose metadata matches (None when it sets neither: all videos)."""
        keys = list(dict.fromkeys(query.video_keys)) if query.video_keys else None
        if keys is not None and not all(keys):
            raise InvalidSearch("video_keys contains an empty key")
        if not query.metadata:
            return keys
        t0 = time.perf_counter()
        matching = self.catalog.video_keys_matching(_metadata_filter(query.metadata))
        timings["filter"] = (time.perf_counter() - t0) * 1e3
        if keys is None:
            return matching
        allowed = set(matching)
        return [k for k in keys if k in allowed]

    def _refine(
        self,
        query: MomentQuery,
        encoded: EncodedQuery,
        coarse: CoarseResult,
        result: SearchResult,
        deadline: float | None = None,
        top_k: int = 0,
    ) -> Refinement | None:
        """The refiner's answer, or None (``result.degraded_reason`` set when it was wanted and
        did not come). The refiner waits at most until ``deadline`` (``time.perf_counter()``
        time; None: its own timeout, which also bounds a later deadline); ``timings_ms.refine``
        is the time spent waiting, also when it failed."""
        if query.refine is False:
            return None
        if self.refiner is None:
            if query.refine:
                result.degraded_reason = "no refiner configured"
            return None
        if not coarse.padded:
            return None  # nothing to refine
        t0 = time.perf_counter()
        # min(refiner.timeout_ms, the caller's time left - the reply margin)
        timeout_s = None if deadline is None else min(deadline - t0, self.config.refiner.timeout_ms / 1e3)
        if timeout_s is not None and timeout_s <= 0:
            result.degraded_reason = "no time left to refine within the caller's deadline"
            return None
        try:
            # Only top_k moments are returned, and ranking needs only the refiner's scores: it
            # sharpens the boundaries of those alone.
            refinement = self.refiner.refine(refine_request(encoded, coarse, top_k), timeout_s=timeout_s)
        except RefineFailed as exc:
            result.degraded_reason = exc.message
            return None
        finally:
            result.timings_ms["refine"] = (time.perf_counter() - t0) * 1e3  # waited, answered or not
        result.refinement = refinement
        if not refinement.moments:
            result.degraded_reason = f"the refiner dropped all {len(coarse.padded)} proposals (no frame features)"
            return None
        result.random_weights = result.random_weights or refinement.random_weights
        return refinement

    # -- collections ----------------------------------------------------------------------------

    def collection_dim(self, name: str) -> int:
        """The vector size of collection ``name``; :class:`UnknownCollection` when neither the
        catalog nor the store knows it, :class:`UnservableSearch` when it lives in another store."""
        now = time.monotonic()
        with self._dims_lock:
            cached = self._dims.get(name)
        if cached is not None and now - cached[1] < COLLECTION_CACHE_S:
            return cached[0]
        record = self.catalog.get_collection(name)
        if record is not None and not self.store.holds(record):
            raise UnservableSearch(
                f"collection {name!r} lives in the {record.backend} vector store; this service reads {self.store.backend}",
            )
        try:
            dim = self.store.describe(name).dim
        except CollectionNotFound:
            raise UnknownCollection(
                f"collection {name!r} does not exist; ingest videos into it (`spr ingest`) or search another",
            ) from None
        with self._dims_lock:
            self._dims[name] = (int(dim), now)
        return int(dim)

    def _forget(self, name: str) -> None:
        with self._dims_lock:
            self._dims.pop(name, None)

    def collection_stats(self, collection: str = "") -> CorpusStats:
        """Every collection (or only ``collection``; :class:`UnknownCollection` when there is no
        such one), the catalog's videos per status and its segment count."""
        if collection:
            _collection_name(collection)
        records = {r.name: r for r in self.catalog.list_collections()}
        names = sorted(set(records) | set(self.store.list_collections()))
        if collection:
            if collection not in names:
                raise UnknownCollection(f"collection {collection!r} does not exist")
            names = [collection]
        return CorpusStats(
            collections=[self._summary(name, records.get(name)) for name in names],
            videos=dict(self.catalog.count_by_status()),
            segments=self.catalog.segment_count(),
            default_collection=self.config.vectors.collection,
            modalities=tuple(self.available_modalities(self.config.vectors.collection)),
        )

    def _summary(self, name: str, record: Any) -> CollectionSummary:
        """Catalog record (when registered) plus the store's own view."""
        info = None
        if (record is None or self.store.holds(record)) and self.store.has_collection(name):
            info = self.store.describe(name)
        spec = dict(record.index_spec) if record is not None else index_spec_to_dict(info.index)
        return CollectionSummary(
            name=name,
            backend=record.backend if record is not None else self.store.backend,
            dim=record.dim if record is not None else info.dim,
            metric=record.metric if record is not None else info.metric,
            index_kind=str(spec.pop("kind", "")),
            index_params={k: str(v) for k, v in spec.items()},
            vectors=info.count if info is not None else -1,
            feature_model=(record.feature_model or "") if record is not None else "",
        )


# --- helpers -------------------------------------------------------------------------------------


def refine_request(encoded: EncodedQuery, coarse: CoarseResult, top_k: int = 0) -> RefineRequest:
    """The best :data:`~spr.limits.MAX_REFINE_PROPOSALS` padded proposals of ``coarse`` with their
    catalog video ids, ``coarse_rank`` = position in the coarse ranking; ``top_k`` moments wanted
    back (0: all)."""
    candidates = []
    pairs = zip(coarse.proposals[:MAX_REFINE_PROPOSALS], coarse.padded[:MAX_REFINE_PROPOSALS])
    for rank, (proposal, padded) in enumerate(pairs):
        location = coarse.location_of(proposal)
        candidates.append(
            RefineCandidate(
                video_id=location.video_id,
                video_key=proposal.video_key,
                uri=location.uri,
                start_s=padded.start_s,
                end_s=padded.end_s,
                coarse_rank=rank,
                video_duration_s=proposal.video_duration_s,
                coarse_start_s=proposal.start_s,
                coarse_end_s=proposal.end_s,
            )
        )
    return RefineRequest(
        np.asarray(encoded.refiner_query, dtype=np.float32), candidates, encoded.projected, top_k=min(top_k, len(candidates))
    )


def coarse_moments(coarse: CoarseResult, top_k: int) -> list[Moment]:
    """The first ``top_k`` unpadded proposals as moments, scored by their best segment."""
    return [_coarse_moment(rank, p, coarse.location_of(p).uri) for rank, p in enumerate(coarse.proposals[:top_k])]


def _coarse_moment(rank: int, proposal: Proposal, uri: str) -> Moment:
    return Moment(
        video_key=proposal.video_key,
        uri=uri,
        start_s=proposal.start_s,
        end_s=proposal.end_s,
        score=float(proposal.best_score),
        coarse_rank=rank,
        coarse_start_s=proposal.start_s,
        coarse_end_s=proposal.end_s,
        video_duration_s=proposal.video_duration_s,
    )


def _bounded(name: str, value: int, default: int, maximum: int) -> int:
    """``value`` when in ``[1, maximum]``, ``default`` for 0, :class:`InvalidSearch` otherwise."""
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise InvalidSearch(
            f"{name}={value} is out of range; use 1..{maximum} (0 = default {default})", field=name, limit=f"1..{maximum}"
        )
    return value


def _collection_name(name: str) -> str:
    """``name`` if it is a valid collection name (:func:`spr.stores.base.check_collection_name`,
    the one rule of the CLI, the services and the stores), else :class:`InvalidSearch`: a
    100,000-character name must not reach the file system or Milvus."""
    try:
        return check_collection_name(name)
    except ValueError as exc:
        # The rule's own message repeats the name: not a 100,000-character one.
        shown = str(exc) if len(name) <= 80 else str(exc).replace(repr(name), f"of {len(name)} characters")
        raise InvalidSearch(shown, field="collection", limit="1-200 letters, digits, '_' or '-'") from None


def _metadata_filter(metadata: Mapping[str, str]) -> dict[str, str]:
    """The metadata filter as the catalog takes it, or :class:`InvalidSearch` naming the
    :mod:`spr.limits` bound it broke (checked before any work, so every adapter refuses alike)."""
    try:
        return check_metadata_filter(metadata)
    except InvalidMetadataFilter as exc:
        raise InvalidSearch(str(exc), field="metadata", limit=exc.limit) from None


def _search_params(nprobe: int | None, ef: int | None) -> SearchParams | None:
    if nprobe is None and ef is None:
        return None
    try:
        return SearchParams(nprobe=nprobe or None, ef=ef or None)
    except ValueError as exc:
        raise InvalidSearch(str(exc)) from None


def _check_query(query: MomentQuery) -> None:
    """What can be checked without the collection: one query, sane text, finite values."""
    given = [name for name in ("text", "embedding", "encoded") if getattr(query, name) is not None]
    if not given:
        raise InvalidSearch("no query: set `text` or `embedding`")
    # text + encoded: the caller encoded the visual query itself (spr eval), the text tracks
    # are searched with the text.
    if len(given) > 1 and given != ["text", "encoded"]:
        raise InvalidSearch(f"one query per search; got {' and '.join(given)}")
    if query.encoded is not None:
        values = np.asarray(query.encoded.embedding, dtype=np.float32)
        if not np.isfinite(values).all():
            raise InvalidSearch("embedding contains NaN or infinity")
    if query.text is not None:
        if not query.text.strip():
            raise InvalidSearch("query text is empty")
        if len(query.text) > MAX_TEXT_CHARS:
            raise InvalidSearch(
                f"query text has {len(query.text)} characters; at most {MAX_TEXT_CHARS} are allowed",
                field="text", limit=f"{MAX_TEXT_CHARS} characters",
            )
        return
    values = np.asarray(query.encoded.embedding if query.encoded is not None else query.embedding, dtype=np.float32)
    if not np.isfinite(values).all():
        raise InvalidSearch("embedding contains NaN or infinity", field="embedding")
    if values.size and not np.any(values):
        raise InvalidSearch("embedding is all zeros", field="embedding")
    # Searches normalise in float32: a norm that overflows (every value 3e38) turns every score
    # into 0, one that underflows (subnormal values) divides by the 1e-12 floor.
    with np.errstate(over="ignore"):
        norm = float(np.linalg.norm(values)) if values.size else 1.0
    if not math.isfinite(norm) or norm < _MIN_EMBEDDING_NORM:
        raise InvalidSearch(
            f"embedding's L2 norm is {norm:g} in float32; it must be finite and at least {_MIN_EMBEDDING_NORM:g}",
            field="embedding", limit=f"finite float32 norm >= {_MIN_EMBEDDING_NORM:g}",
        )


def _fusion_method(requested: str, default: FusionMethod) -> FusionMethod:
    if not requested:
        return default
    try:
        return FusionMethod(requested.strip().lower())
    except ValueError:
        raise InvalidSearch(
            f"fusion {requested!r} is not a fusion method; use one of {', '.join(m.value for m in FusionMethod)}"
        ) from None


def _weights(requested: Mapping[str, float], fusion: Any) -> dict[Modality, float]:
    """The configured weight of every modality, overridden by the request's."""
    weights = {m: float(getattr(fusion, m)) for m in MODALITIES}
    for name, value in requested.items():
        if name not in weights:
            raise InvalidSearch(f"unknown modality {name!r} in weights; the modalities are {', '.join(MODALITIES)}")
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise InvalidSearch(f"weight of {name} is {value}; a weight is a finite number >= 0 (0 = off)")
        weights[name] = value
    return weights


def _shown_segment(moment: Moment, video_id: int, length_s: float) -> int:
    """The id of the segment holding ``moment``'s midpoint (its thumbnail), clamped to the
    video's last segment."""
    middle = 0.5 * (moment.start_s + moment.end_s)
    if moment.video_duration_s > 0:
        middle = min(middle, math.nextafter(moment.video_duration_s, 0.0))
    ordinal = min(max(0, int(math.floor(middle / length_s))), MAX_ORDINAL)
    return segment_id(video_id, ordinal)


def _cut(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


def _reply_deadline(t_start: float, timeout_s: float | None) -> float | None:
    """When (``time.perf_counter()`` time) the refiner must have answered for a search started at
    ``t_start`` with ``timeout_s`` left to still reply in time (None: no deadline)."""
    if timeout_s is None or not math.isfinite(timeout_s):
        return None
    margin = min(REPLY_MARGIN_S, REPLY_MARGIN_SHARE * max(timeout_s, 0.0))
    return t_start + timeout_s - margin


def _finish(result: SearchResult, t_start: float) -> SearchResult:
    result.timings_ms["total"] = (time.perf_counter() - t_start) * 1e3
    return result
