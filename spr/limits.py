"""The limits of the query path, in one place: every adapter (the gRPC search and refiner
services, ``spr eval``, an HTTP gateway) and the core engine read them from here, so a request
refused by one is refused by all, with the same numbers in the message.

They bound one request's memory and time; none of them is a tuning knob (those live in
:mod:`spr.config`).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_TOP_K",
    "MAX_REFINE_PROPOSALS",
    "MAX_SEGMENTS_K",
    "MAX_TEXT_CHARS",
    "MAX_TOP_K",
    "MAX_METADATA_FILTER_ENTRIES",
    "MAX_METADATA_KEY_CHARS",
    "MAX_METADATA_VALUE_CHARS",
    "MAX_VIDEO_KEY_LENGTH",
    "QUERY_EMBED_BATCH",
    "REFINE_WAIT_S",
    "default_batch_frames",
    "default_batch_proposals",
    "default_batch_wait_ms",
]

# --- one search --------------------------------------------------------------------------------

# Characters of a text query: CLIP reads 77 tokens, so anything longer is a mistake or abuse.
MAX_TEXT_CHARS = 1000
# Moments a search answers (0 in a request means DEFAULT_TOP_K).
DEFAULT_TOP_K = 10
MAX_TOP_K = 1000
# Segments one ANN search may return: the most both vector stores accept (Milvus's topk cap;
# spr.stores.base.check_queries refuses more).
MAX_SEGMENTS_K = 16384
# Proposals one refine call carries. A query has ~100 (top-200 segments merged); the engine sends
# the best-ranked ones, the rest could never make a top_k <= MAX_TOP_K anyway, and the refiner
# refuses more.
MAX_REFINE_PROPOSALS = MAX_TOP_K

# A search's metadata filter (``SearchRequest.metadata``, ``spr search --meta``): pairs that must
# all hold. Unbounded, 10,000 pairs kept a server busy 14 s (SQLite refused 999 with "Expression
# tree is too large"); a real filter names a handful of fields. The catalog indexes a video's
# metadata pairs whose key and value fit these sizes (spr.catalog: ``video_metadata``), so a
# longer stored value can never match a filter: raising them needs a migration refilling it.
MAX_METADATA_FILTER_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_CHARS = 256

# --- keys ---------------------------------------------------------------------------------------

# A video key's length: the catalog's String(512) column counts characters, Milvus's VARCHAR field
# UTF-8 bytes; ingest checks the bytes, which bounds both.
MAX_VIDEO_KEY_LENGTH = 512

# --- the refiner ---------------------------------------------------------------------------------

# Without a caller's deadline, a refine call still gives up eventually rather than hold a thread.
REFINE_WAIT_S = 60.0
# Proposals per dynamic batch when refiner.max_batch_proposals is 0 (auto): on a GPU a
# 500-proposal batch took 13 ms and the queue, not the model, limited throughput.
_BATCH_PROPOSALS_GPU = 4096
# On a CPU a batch shares no work between queries (a windowed refiner's query half is per
# query; an online one pads more): about one query's proposals per batch.
_BATCH_PROPOSALS_CPU = 128
# refiner.max_wait_ms = -1: a GPU batch waits 2 ms to fill; a CPU one does not wait.
_BATCH_WAIT_MS_GPU = 2.0
_BATCH_WAIT_MS_CPU = 0.0
# refiner.max_batch_frames = 0: padded frames per online forward pass. On a CPU 1024 makes
# plan_chunks cut proposals into length buckets (measured: 1.5 s -> 0.9 s fp32, 100 proposals).
_BATCH_FRAMES_GPU = 65_536
_BATCH_FRAMES_CPU = 1024

# --- spr eval ------------------------------------------------------------------------------------

# Query texts per CLIP forward pass when a whole query file is embedded up front.
QUERY_EMBED_BATCH = 64


def default_batch_proposals(device: str) -> int:
    """The dynamic batcher's proposal cap on ``device`` ("cuda", "cuda:1", "cpu", ...) when the
    configuration leaves it to us (``refiner.max_batch_proposals = 0``)."""
    return _BATCH_PROPOSALS_GPU if str(device).startswith("cuda") else _BATCH_PROPOSALS_CPU


def default_batch_wait_ms(device: str) -> float:
    """``refiner.max_wait_ms = -1`` (auto) on ``device``."""
    return _BATCH_WAIT_MS_GPU if str(device).startswith("cuda") else _BATCH_WAIT_MS_CPU


def default_batch_frames(device: str) -> int:
    """``refiner.max_batch_frames = 0`` (auto) on ``device``."""
    return _BATCH_FRAMES_GPU if str(device).startswith("cuda") else _BATCH_FRAMES_CPU
