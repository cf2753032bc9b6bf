"""An end-to-end smoke run of the core: catalog + vector store + proposals, on any backend.

It publishes a synthetic corpus (segment embeddings, no video decoding and no CLIP: those
come with ingest) with planted events, then looks each event up with a noisy copy of its
embedding through the real coarse path (ANN top-k -> one catalog round trip -> proposals ->
tau_C padding) and checks that the best proposal is the planted moment. Everything runs
against the configured stores: SQLite + Faiss by default, PostgreSQL + Milvus by
configuration. Re-running replaces the same videos (same keys, same ids): no duplicates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .catalog import SegmentCatalog, masked_url
from .config import Config
from .metrics import temporal_iou
from .proposals import Proposal, gap_rule_from_config
from .publish import ensure_collection, publish_video
from .retrieval import retrieve_proposals
from .segments import segment_count
from .stores import VectorStore, index_spec_from_config, l2_normalize, open_vector_store

KEY_PREFIX = "smoke/"


@dataclass(frozen=True)
class PlantedEvent:
    video_key: str
    start_s: float
    end_s: float
    query: np.ndarray  # (dim,) L2-normalised


@dataclass(frozen=True)
class SmokeQuery:
    event: PlantedEvent
    proposals: list[Proposal]  # best first, unpadded
    padded: list[Proposal]
    timings_ms: dict[str, float]

    @property
    def top_iou(self) -> float:
        """IoU of the best proposal with the planted event (0 when it is in another video)."""
        if not self.proposals or self.proposals[0].video_key != self.event.video_key:
            return 0.0
        best = self.proposals[0]
        return temporal_iou(best.start_s, best.end_s, self.event.start_s, self.event.end_s)


@dataclass(frozen=True)
class SmokeReport:
    backend: str
    catalog: str
    collection: str
    videos: int
    segments: int
    video_hours: float
    publish_s: float
    queries: list[SmokeQuery]

    @property
    def found(self) -> int:
        """Queries whose best proposal overlaps the planted event at IoU >= 0.5."""
        return sum(q.top_iou >= 0.5 for q in self.queries)


def synthetic_corpus(
    videos: int, dim: int, events: int, segment_length_s: float = 4.0, seed: int = 0
) -> tuple[list[tuple[str, float, np.ndarray]], list[PlantedEvent]]:
    """``videos`` videos of 1-30 min (one of an hour when there are four or more) as
    ``(key, duration_s, embeddings (n, dim))``, and ``events`` planted events of 2-6
    segments, each with a query embedding near it."""
    if videos < 1 or events < 0 or dim < 2:
        raise ValueError(f"need videos >= 1, events >= 0 and dim >= 2 (got {videos}, {events}, {dim})")
    rng = np.random.default_rng(seed)
    durations = rng.uniform(60, 1800, size=videos).round(1)
    if videos >= 4:
        durations[0] = 3600.0
    corpus = []
    for i, duration in enumerate(durations):
        n = segment_count(float(duration), segment_length_s)
        # Each video drifts around its own topic, as real footage does.
        topic = rng.standard_normal(dim)
        corpus.append((f"{KEY_PREFIX}video-{i:04d}", float(duration), topic + 1.5 * rng.standard_normal((n, dim))))
    planted = []
    for e in range(events):
        key, duration, emb = corpus[e % videos]
        n = len(emb)
        length = int(min(n, rng.integers(2, 7)))
        first = int(rng.integers(0, n - length + 1))
        event = rng.standard_normal(dim)
        emb[first : first + length] = event + 0.5 * rng.standard_normal((length, dim))
        end_s = min(duration, (first + length) * segment_length_s)
        query = l2_normalize(event + 0.5 * rng.standard_normal(dim))
        planted.append(PlantedEvent(key, first * segment_length_s, end_s, query))
    return [(k, d, l2_normalize(e)) for k, d, e in corpus], planted


def run_smoke(config: Config, videos: int = 20, events: int = 5, seed: int = 0, collection: str = "smoke") -> SmokeReport:
    """Publish the synthetic corpus into ``collection`` and query each planted event."""
    dim = config.vectors.dim
    spec = index_spec_from_config(config.vectors.index)
    corpus, planted = synthetic_corpus(videos, dim, events, config.segments.length_s, seed)
    store: VectorStore = open_vector_store(config)
    catalog = SegmentCatalog.from_config(config)
    try:
        ensure_collection(catalog, store, collection, dim, "synthetic", spec, config.vectors.metric)
        t0 = time.perf_counter()
        segments = 0
        for key, duration, emb in corpus:
            published = publish_video(
                catalog, store, collection, key, f"synthetic://{key}", duration, emb, config.segments.length_s,
                metadata={"synthetic": True},
            )
            segments += len(published.segment_ids)
        publish_s = time.perf_counter() - t0
        pc = config.proposals
        gap_rule = gap_rule_from_config(
            pc.gap_rule, pc.max_missing_segments, pc.adaptive_alpha,
            merge_score_window=pc.merge_score_window, max_length_s=pc.max_length_s,
        )
        queries = []
        for event in planted:
            coarse = retrieve_proposals(
                store, catalog, collection, event.query, config.proposals.top_k_segments,
                gap_rule=gap_rule, pad_s=config.proposals.pad_s,
            )
            queries.append(SmokeQuery(event, coarse.proposals, coarse.padded, coarse.timings_ms))
        return SmokeReport(
            backend=store.backend,
            catalog=masked_url(config.catalog_url),
            collection=collection,
            videos=len(corpus),
            segments=segments,
            video_hours=sum(d for _, d, _ in corpus) / 3600,
            publish_s=publish_s,
            queries=queries,
        )
    finally:
        catalog.close()
        store.close()

