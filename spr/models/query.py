"""The query encoder: text -> CLIP text feature -> projected, L2-normalised query embedding.

The search engine (:mod:`spr.engine`) encodes one query per request with it; ``spr eval``
encodes a whole query file in batches (:meth:`QueryEncoder.encode_many`). The CLIP feature is
what the refiner reads, the projected embedding what the index is searched with.

:meth:`QueryEncoder.encode` keeps the last ``cache_size`` queries' results (``clip.query_cache_size``):
at batch 1 the text tower's cost is reading its weights (tens of ms for ViT-L-14 on 2 cores),
and the same query text recurs (dashboards, retries, paging through results).

Queries that miss the cache while another one is in the tower are encoded together, in one
forward pass (:class:`CombinedCalls`): at batch 1 the tower reads all its weights for one
query, so 16 concurrent queries cost about what 2 do instead of 16. A query alone is never
delayed (no batching window); one that arrives while a pass runs waits for it, then goes in the
next pass with whatever else arrived meanwhile. With int8 or bf16 weights a query's feature
then depends slightly on its batch-mates (within the precision's tolerance; a query alone is
deterministic).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from spr.limits import QUERY_EMBED_BATCH
from spr.stores import l2_normalize

if TYPE_CHECKING:
    from spr.config import Config

__all__ = ["CombinedCalls", "QueryEncoder"]

# Queries per combined pass: a pass of 16 ViT-L-14 queries is compute-bound already.
_COMBINE_MAX = 16


class _Call:
    __slots__ = ("item", "result", "error", "done")

    def __init__(self, item: Any) -> None:
        self.item, self.result, self.error, self.done = item, None, None, False


class CombinedCalls:
    """``fn(items) -> results`` (one result per item, in order) called for single items from many
    threads: whoever finds no pass running runs one over everything waiting (at most
    ``max_batch``); the others wait for theirs. No timer, so a lone call runs at once."""

    def __init__(self, fn: Any, max_batch: int = _COMBINE_MAX) -> None:
        self._fn = fn
        self._max = max_batch
        self._cond = threading.Condition()
        self._waiting: list[_Call] = []
        self._running = False
        self.passes = 0  # passes run (for tests and metrics)

    def __call__(self, item: Any) -> Any:
        call = _Call(item)
        with self._cond:
            self._waiting.append(call)
        while True:
            with self._cond:
                while not call.done and self._running:
                    self._cond.wait()
                if call.done:
                    if call.error is not None:
                        raise call.error
                    return call.result
                batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
                self._running = True
            try:
                results = self._fn([c.item for c in batch])
                for c, r in zip(batch, results):
                    c.result = r
            except BaseException as exc:  # every caller in the pass hears about it
                for c in batch:
                    c.error = exc
            finally:
                with self._cond:
                    for c in batch:
                        c.done = True
                    self._running = False
                    self.passes += 1
                    self._cond.notify_all()


@dataclass
class QueryEncoder:
    """The CLIP text tower and the text projector, loaded once per process.

    ``clip_dim`` is the CLIP text feature size (what the refiner gets), ``dim`` the projected
    query size (what the index holds)."""

    clip: Any  # spr.models.clip.ClipEncoder
    projectors: Any  # spr.models.projector.Projectors
    # Queries whose (feature, embedding) :meth:`encode` keeps, least recently used out first; 0: none.
    cache_size: int = 1024
    _cache: "OrderedDict[tuple[str, str], tuple[np.ndarray, np.ndarray]]" = field(
        default_factory=OrderedDict, init=False, repr=False, compare=False
    )
    _cache_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    # (id(clip), id(projectors), identity): the identity is hashed once, not per query (a
    # checkpoint file's identity is its digest), and again only when the models are swapped.
    _cache_owner: tuple[int, int, str] | None = field(default=None, init=False, repr=False, compare=False)
    _combined: CombinedCalls | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.cache_size < 0:
            raise ValueError(f"cache_size must be >= 0 (0 = no cache), got {self.cache_size}")
        self._combined = CombinedCalls(self._encode_batch)

    def _encode_batch(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One tower pass over ``texts`` (concurrent cache misses) -> per text (feature, embedding)."""
        features = self.clip.encode_texts(texts, batch_size=len(texts))  # (N, clip_dim)
        embeddings = l2_normalize(self.projectors.project_texts(features))  # (N, dim)
        return [(f.astype(np.float32), np.asarray(e, dtype=np.float32)) for f, e in zip(features, embeddings)]

    @classmethod
    def from_config(cls, config: "Config") -> "QueryEncoder":
        """CLIP from ``config.clip`` (its text tower at ``clip.text_precision``), the projector from ``config.projector.checkpoint`` (empty:
        the untrained pass-through projector)."""
        from spr.models.clip import load_clip
        from spr.models.projector import load_projectors

        clip = load_clip(
            config.clip.model,
            config.clip.pretrained,
            config.clip.device,
            config.clip.precision,
            text_precision=config.clip.text_precision,
        )
        projectors = load_projectors(
            config.projector.checkpoint, clip.dim, device=clip.device, clip_model=clip.model_name, uses=("queries",)
        )
        return cls(clip, projectors, cache_size=config.clip.query_cache_size)

    @property
    def clip_dim(self) -> int:
        return int(self.clip.dim)

    @property
    def dim(self) -> int:
        return int(self.projectors.dim)

    @property
    def random_weights(self) -> bool:
        """True when CLIP has random weights or the projector is the untrained fallback."""
        return bool(self.clip.random_weights or not self.projectors.trained)

    @property
    def identity(self) -> str:
        """``<clip identity> + <projector identity>``: which weights encoded the queries."""
        return f"{self.clip.identity} + {self.projectors.identity}"

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """``text`` -> (CLIP text feature ``(clip_dim,)``, L2-normalised query embedding ``(dim,)``).

        A text seen among the last ``cache_size`` ones (exactly the same string, with the same
        models) is answered from the cache: the same values, in arrays of the caller's own."""
        key = (self._model_identity(), text) if self.cache_size else None
        if key is not None:
            with self._cache_lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
            if hit is not None:
                return hit[0].copy(), hit[1].copy()
        result = self._combined(text)  # one pass with the other queries waiting for the tower
        if key is not None:
            with self._cache_lock:
                self._cache[key] = (result[0].copy(), result[1].copy())
                self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return result

    @property
    def cached_queries(self) -> int:
        """How many queries the cache holds now (at most ``cache_size``)."""
        with self._cache_lock:
            return len(self._cache)

    def _model_identity(self) -> str:
        owner = self._cache_owner
        if owner is None or owner[0] != id(self.clip) or owner[1] != id(self.projectors):
            owner = (id(self.clip), id(self.projectors), self.identity)
            self._cache_owner = owner
        return owner[2]

    def encode_many(self, texts: list[str], batch: int = QUERY_EMBED_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """``N`` texts -> (CLIP text features ``(N, clip_dim)`` float32, L2-normalised query
        embeddings ``(N, dim)``), ``batch`` texts per CLIP forward pass."""
        # One call: the tower sorts the texts by token count and runs ``batch`` at a time, each
        # pass padded only to its longest query. Not cached: a bulk run rarely repeats a query.
        if not texts:
            return np.empty((0, self.clip_dim), np.float32), np.empty((0, self.dim), np.float32)
        features = self.clip.encode_texts(texts, batch_size=batch)
        projected = np.concatenate(
            [self.projectors.project_texts(features[i : i + 1024]) for i in range(0, len(features), 1024)]
        )
        return features.astype(np.float32), l2_normalize(projected)
