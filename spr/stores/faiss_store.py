"""The local Faiss vector store: the embedded default and the fallback backend.

Each collection is a directory under the store root::

    <root>/<name>/CURRENT            -> "gen-000007" (swapped atomically by flush)
    <root>/<name>/gen-000007/meta.json, index.faiss, ids.npy, owners.npy, keys.json

Indexes come from ``faiss.index_factory`` with the strings of :func:`index_param`, inner
product on L2-normalised vectors. IVF indexes need training; until a collection holds
``nlist * train_points_per_list`` vectors they sit in an exact buffer that is searched
alongside (the same thing Milvus does with segments too small to index), then the index is
trained on a random sample of that size and the buffer moves in. That first training set is
whatever arrived first (an import's first videos), so the collection remembers how many vectors
it was trained on: :meth:`FaissStore.build_index` (which ``spr import`` calls when it is done)
retrains on a uniform sample of the whole collection once it holds ``RETRAIN_GROWTH`` times
that many, and :meth:`FaissStore.retrain` (``spr reindex``) retrains now. Search uses the GPU
when faiss-gpu sees one; persistence is always the CPU index.

One process owns a store directory; readers in other processes see what was last flushed
when they open it.

Concurrency: searches share a reader/writer lock (:class:`spr.locks.RWLock`), so concurrent
queries run side by side (Faiss search is safe for concurrent readers and releases the GIL);
writes (upsert, delete, train, build_index, retrain, drop, refresh, close) take it alone, so a
search never sees a half-applied write. ``flush`` writes the files under the read lock plus a
persist lock: searches go on while an index is written out. The GPU clone, which Faiss does not
let threads share, is searched one query at a time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from ..locks import RWLock
from .base import (
    CollectionExists,
    CollectionInfo,
    CollectionNotFound,
    IndexState,
    SearchResult,
    BackendTagged,
    check_collection_name,
    check_queries,
    check_vectors,
)
from .index_spec import (
    Flat,
    Hnsw,
    IndexSpec,
    IvfFlat,
    IvfPq,
    SearchParams,
    check_dimension,
    check_metric,
    effective_search,
    index_spec_from_dict,
    index_spec_to_dict,
)

log = logging.getLogger(__name__)

# build_index retrains an IVF_FLAT collection once it holds this many times the vectors it was
# trained on: k-means centroids of the first arrivals (one import's first ~2,300 videos, seen on
# 147K real segments) fit the rest of a corpus poorly. IVF_PQ is only retrained on request
# (retrain / `spr reindex`): its vectors can only be rebuilt from their lossy codes.
RETRAIN_GROWTH = 2.0
__all__ = ["FaissStore", "check_collection_name", "index_param", "min_train_points", "search_param"]


# -- the Faiss vocabulary of an index spec ------------------------------------------------


def index_param(spec: IndexSpec) -> str:
    """The ``faiss.index_factory`` string of ``spec``."""
    if isinstance(spec, IvfFlat):
        return f"IVF{spec.nlist},Flat"
    if isinstance(spec, IvfPq):
        # "np": no polysemous training. index_factory turns it on for IVF-PQ, where it only
        # reorders codes for polysemous filtering (off at search) and took 195 s of a 196-s
        # build of 20K 768-d vectors (m=64); Milvus does not do it either.
        return f"IVF{spec.nlist},PQ{spec.m}x{spec.nbits}np"
    if isinstance(spec, Hnsw):
        return f"HNSW{spec.M},Flat"
    return "Flat"


def search_param(spec: IndexSpec, override: SearchParams | None = None) -> faiss.SearchParameters:
    """Faiss search parameters of one search of ``spec``'s index (see :func:`effective_search`)."""
    knobs = effective_search(spec, override)
    if knobs.nprobe is not None:
        return faiss.SearchParametersIVF(nprobe=knobs.nprobe)
    if knobs.ef is not None:
        return faiss.SearchParametersHNSW(efSearch=knobs.ef)
    return faiss.SearchParameters()


def min_train_points(spec: IndexSpec) -> int:
    """The fewest vectors k-means can train ``spec`` on: a point per list, per PQ centroid."""
    if isinstance(spec, IvfFlat):
        return spec.nlist
    if isinstance(spec, IvfPq):
        return max(spec.nlist, 1 << spec.nbits)
    return 0


def _metric_type(metric: str) -> int:
    return faiss.METRIC_INNER_PRODUCT if metric == "IP" else faiss.METRIC_L2


def _new_index(dim: int, metric: str, spec: IndexSpec) -> faiss.Index:
    check_dimension(spec, dim)
    if isinstance(spec, (Flat, Hnsw)):
        # Flat and HNSW keep sequential ids; the IDMap2 wrapper maps them to segment ids.
        index = faiss.index_factory(dim, index_param(spec), _metric_type(metric))
        if isinstance(spec, Hnsw):
            index.hnsw.efConstruction = spec.ef_construction
        return faiss.IndexIDMap2(index)
    return faiss.index_factory(dim, index_param(spec), _metric_type(metric))


@dataclass
class _Collection:
    name: str
    dim: int
    metric: str
    spec: IndexSpec
    index: faiss.Index
    # Exact buffer for IVF collections not yet trained (None once trained or for Flat/HNSW).
    pending: faiss.Index | None
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    owners: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    keys: list[str] = field(default_factory=list)
    key_codes: dict[str, int] = field(default_factory=dict)
    gpu_index: faiss.Index | None = None
    # Vectors the collection held when its IVF index was trained (0: untrained, or not IVF).
    trained_on: int = 0
    dirty: bool = True
    generation: str = ""  # the on-disk generation this copy was loaded from or saved as

    @property
    def count(self) -> int:
        return int(self.index.ntotal + (self.pending.ntotal if self.pending is not None else 0))

    def info(self) -> CollectionInfo:
        return CollectionInfo(self.name, self.dim, self.metric, self.spec, self.count)

    def code_of(self, key: str) -> int:
        code = self.key_codes.get(key)
        if code is None:
            code = self.key_codes[key] = len(self.keys)
            self.keys.append(key)
        return code


class FaissStore:
    """Vector store on local Faiss indexes (see the module docstring for the layout)."""

    backend = "faiss"

    def __init__(
        self,
        root: str | os.PathLike[str],
        threads: int = 1,
        use_gpu: bool = True,
        train_points_per_list: int = 64,
        exclusive_search: bool = False,
    ):
        """``threads``: OpenMP threads per search (0: Faiss's default, every core, in each
        searching thread at once). ``exclusive_search``: searches take the lock alone, one at a
        time, as before the reader/writer lock (kept for the benchmark's side-by-side run)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.train_points_per_list = train_points_per_list
        self._gpus = faiss.get_num_gpus() if use_gpu and hasattr(faiss, "get_num_gpus") else 0
        self._threads = threads
        if threads > 0:
            faiss.omp_set_num_threads(threads)
        self._collections: dict[str, _Collection] = {}
        self._lock = RWLock()
        self._exclusive_search = exclusive_search
        # flush writes files under the read lock: one persist at a time.
        self._persist_lock = threading.Lock()
        self._gpu_lock = threading.Lock()

    def holds(self, record: BackendTagged) -> bool:
        return record.backend == self.backend

    # -- collections -------------------------------------------------------------------

    def create_collection(self, name: str, dim: int, index: IndexSpec, metric: str = "IP") -> CollectionInfo:
        check_collection_name(name)
        metric = check_metric(metric)
        check_dimension(index, dim)
        with self._lock.write():
            if self.has_collection(name):
                existing = self._get(name)
                if (existing.dim, existing.metric, existing.spec) != (dim, metric, index):
                    raise CollectionExists(
                        f"collection {name!r} exists with dim={existing.dim}, metric={existing.metric}, "
                        f"index={index_spec_to_dict(existing.spec)}; drop it or choose another name"
                    )
                return existing.info()
            base = _new_index(dim, metric, index)
            pending = None
            if not base.is_trained:
                pending = faiss.IndexIDMap2(faiss.IndexFlat(dim, _metric_type(metric)))
            coll = _Collection(name, dim, metric, index, base, pending)
            self._collections[name] = coll
            self._persist(coll)
            return coll.info()

    def has_collection(self, name: str) -> bool:
        return name in self._collections or (self.root / name / "CURRENT").is_file()

    def list_collections(self) -> list[str]:
        on_disk = {p.parent.name for p in self.root.glob("*/CURRENT")}
        return sorted(on_disk | set(self._collections))

    def describe(self, name: str) -> CollectionInfo:
        with self._reading(name) as coll:
            return coll.info()

    def count(self, name: str) -> int:
        with self._reading(name) as coll:
            return coll.count

    def drop_collection(self, name: str) -> None:
        with self._lock.write():
            self._collections.pop(name, None)
            shutil.rmtree(self.root / name, ignore_errors=True)

    # -- writes ------------------------------------------------------------------------

    def upsert(self, name: str, ids: np.ndarray, vectors: np.ndarray, video_keys: Sequence[str]) -> int:
        with self._lock.write():
            coll = self._get(name)
            ids, vectors = check_vectors(ids, vectors, video_keys, coll.dim)
            if len(ids) == 0:
                return 0
            self._remove(coll, np.isin(coll.ids, ids))
            target = coll.pending if coll.pending is not None else coll.index
            target.add_with_ids(vectors, ids)
            codes = np.fromiter((coll.code_of(k) for k in video_keys), dtype=np.int32, count=len(ids))
            coll.ids = np.concatenate([coll.ids, ids])
            coll.owners = np.concatenate([coll.owners, codes])
            self._changed(coll)
            if coll.pending is not None and coll.pending.ntotal >= self._train_size(coll):
                self._train(coll)
            return len(ids)

    def delete_videos(self, name: str, video_keys: Sequence[str]) -> None:
        with self._lock.write():
            coll = self._get(name)
            codes = [coll.key_codes[k] for k in video_keys if k in coll.key_codes]
            if codes:
                self._remove(coll, np.isin(coll.owners, codes))

    def delete_ids(self, name: str, ids: np.ndarray) -> None:
        with self._lock.write():
            coll = self._get(name)
            self._remove(coll, np.isin(coll.ids, np.asarray(ids, dtype=np.int64)))

    def train(self, name: str) -> None:
        """Train an IVF collection now on what it holds (at least ``min_train_points``)."""
        with self._lock.write():
            coll = self._get(name)
            if coll.pending is None:
                return
            need = min_train_points(coll.spec)
            if coll.pending.ntotal < need:
                raise ValueError(
                    f"collection {name!r} holds {coll.pending.ntotal} vectors; {coll.spec.kind} with these "
                    f"parameters needs at least {need} to train"
                )
            self._train(coll)

    def build_index(self, name: str) -> None:
        """Train an untrained IVF collection now (:meth:`train`), or retrain an IVF_FLAT one that
        has grown to ``RETRAIN_GROWTH`` times its training set; Flat and HNSW need nothing."""
        with self._lock.write():
            coll = self._get(name)
            if coll.pending is not None:
                self.train(name)
            elif isinstance(coll.spec, IvfFlat) and coll.count >= RETRAIN_GROWTH * max(1, coll.trained_on):
                log.info(
                    "collection %s holds %d vectors, %.1fx the %d its IVF index was trained on: retraining",
                    name, coll.count, coll.count / max(1, coll.trained_on), coll.trained_on,
                )
                self._retrain(coll)

    def retrain(self, name: str) -> bool:
        """Train the IVF index again on a uniform sample of everything the collection holds
        (``spr reindex``); False for Flat and HNSW, which have nothing to train. IVF_PQ vectors
        are rebuilt from their codes, so its new codebooks learn from the old approximations."""
        with self._lock.write():
            coll = self._get(name)
            if not isinstance(coll.spec, (IvfFlat, IvfPq)):
                return False
            if coll.pending is not None:
                self.train(name)
            else:
                self._retrain(coll)
            return True

    def index_state(self, name: str) -> IndexState:
        """How much of ``name`` its index covers; an untrained IVF collection is searched exactly."""
        with self._reading(name) as coll:
            if coll.pending is None:
                return IndexState(coll.count, coll.count, trained_on=coll.trained_on)
            return IndexState(
                int(coll.index.ntotal), coll.count,
                note=f"untrained: searched exactly until {self._train_size(coll)} vectors or `spr reindex`",
            )

    def wait_until_indexed(self, name: str, timeout_s: float = 300.0) -> None:
        """Train (if still untrained) and flush; synchronous, so ``timeout_s`` is not needed."""
        self.build_index(name)
        self.flush(name)

    def flush(self, name: str) -> None:
        # Writing files only reads the collection: searches go on, writers wait (read lock);
        # the persist lock keeps two flushes from writing generations at once.
        with self._reading(name) as coll, self._persist_lock:
            if coll.dirty:
                self._persist(coll)

    def close(self) -> None:
        with self._lock.write():
            for coll in self._collections.values():
                if coll.dirty:
                    self._persist(coll)
            self._collections.clear()

    # -- search ------------------------------------------------------------------------

    def search(
        self,
        name: str,
        queries: np.ndarray,
        k: int,
        params: SearchParams | None = None,
        video_keys: Sequence[str] | None = None,
    ) -> SearchResult:
        if self._threads > 0:
            # OpenMP's thread count is per calling thread: a search from a pool or gRPC thread
            # would use every core (measured: 136 ms instead of 26 ms for 1M x 384 FLAT).
            faiss.omp_set_num_threads(self._threads)
        with self._reading(name, exclusive=self._exclusive_search) as coll:
            queries = check_queries(queries, coll.dim, k)
            selector = None
            if video_keys is not None:
                codes = [coll.key_codes[k_] for k_ in video_keys if k_ in coll.key_codes]
                allowed = coll.ids[np.isin(coll.owners, codes)]
                if len(allowed) == 0:
                    return _empty_result(len(queries), k)
                selector = faiss.IDSelectorBatch(allowed)
            parts = []
            if coll.index.ntotal:
                parts.append(self._search_one(coll, coll.index, queries, k, params, selector, main=True))
            if coll.pending is not None and coll.pending.ntotal:
                parts.append(self._search_one(coll, coll.pending, queries, k, None, selector, main=False))
            if not parts:
                return _empty_result(len(queries), k)
            return _merge(parts, k, coll.metric)

    def _search_one(self, coll, index, queries, k, params, selector, main: bool):
        # The exact buffer beside an untrained IVF index takes no knobs.
        sp = search_param(coll.spec, params) if main else faiss.SearchParameters()
        if selector is not None:
            sp.sel = selector
        use = index
        if main and selector is None and self._gpus and coll.gpu_index is not None:
            use = coll.gpu_index
            nprobe = effective_search(coll.spec, params).nprobe
            # GPU indexes are not safe for concurrent use, and nprobe is set on the index.
            with self._gpu_lock:
                if nprobe is not None:
                    faiss.GpuParameterSpace().set_index_parameter(use, "nprobe", nprobe)
                scores, ids = use.search(queries, k)
        elif isinstance(index, faiss.IndexIDMap2) and isinstance(coll.spec, Hnsw) and main:
            # IDMap's search forwards params, but HNSW parameters must reach the inner index.
            scores, ids = index.search(queries, k, params=sp)
        else:
            scores, ids = use.search(queries, k, params=sp)
        return ids, scores

    def refresh(self) -> list[str]:
        """Reload collections another process flushed since this one loaded them (a search
        service beside an ingest); returns their names. Collections with unflushed writes of
        this process are left alone. Costs one small file read per loaded collection."""
        reloaded = []
        with self._lock.read():
            loaded = [(name, coll, coll.generation) for name, coll in self._collections.items() if not coll.dirty]
        for name, coll, generation in loaded:
            on_disk = _read_current(self.root / name)
            if on_disk == generation:
                continue
            fresh = None
            if on_disk:
                # Read outside the lock: loading a large index takes seconds, searches go on.
                try:
                    fresh = self._load(name)
                except FileNotFoundError:
                    continue  # a writer swapped generations mid-read: next refresh
            with self._lock.write():
                if self._collections.get(name) is not coll or coll.dirty or coll.generation != generation:
                    continue  # changed here meanwhile: this process's copy wins
                if fresh is None:
                    del self._collections[name]  # dropped elsewhere
                else:
                    self._collections[name] = fresh
                reloaded.append(name)
        return reloaded

    # -- internals ---------------------------------------------------------------------

    @contextmanager
    def _reading(self, name: str, exclusive: bool = False) -> Iterator[_Collection]:
        """Collection ``name`` under the read lock (the write lock with ``exclusive``); one not
        loaded yet is loaded first under the write lock (loading changes the store's map)."""
        while True:
            with self._lock.write() if exclusive else self._lock.read():
                coll = self._collections.get(name)
                if coll is not None:
                    yield coll
                    return
            with self._lock.write():
                self._get(name)  # CollectionNotFound when there is none
            # Dropped again before we read it: the next turn loads it or raises.

    def _get(self, name: str) -> _Collection:
        coll = self._collections.get(name)
        if coll is None:
            coll = self._load(name)
            self._collections[name] = coll
        return coll

    def _train_size(self, coll: _Collection) -> int:
        nlist = getattr(coll.spec, "nlist", 1)
        # PQ codebooks are k-means too: Faiss wants 39 points per centroid for them.
        pq_points = 39 << coll.spec.nbits if isinstance(coll.spec, IvfPq) else 0
        return max(min_train_points(coll.spec), nlist * self.train_points_per_list, pq_points)

    def _train(self, coll: _Collection) -> None:
        pending = coll.pending
        n = pending.ntotal
        stored = faiss.vector_to_array(pending.id_map).astype(np.int64)
        vectors = pending.index.reconstruct_n(0, n)
        self._fit(coll, coll.index, vectors)
        coll.index.add_with_ids(vectors, stored)
        coll.pending = None
        coll.trained_on = n
        self._changed(coll)

    def _fit(self, coll: _Collection, index: faiss.Index, vectors: np.ndarray) -> None:
        """Train ``index`` on a uniform random sample (seeded) of ``vectors``, every row of the
        collection: never on a prefix in arrival order."""
        n = len(vectors)
        size = min(n, self._train_size(coll))
        sample = vectors[np.sort(np.random.default_rng(0).choice(n, size=size, replace=False))] if size < n else vectors
        log.info("training %s index of collection %s on %d of %d vectors", coll.spec.kind, coll.name, size, n)
        index.train(sample)

    def _retrain(self, coll: _Collection) -> None:
        ids = coll.ids.copy()
        ivf = faiss.extract_index_ivf(coll.index)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct by segment id
        try:
            vectors = coll.index.reconstruct_batch(ids) if len(ids) else np.empty((0, coll.dim), np.float32)
        finally:
            ivf.set_direct_map_type(faiss.DirectMap.NoMap)
        fresh = _new_index(coll.dim, coll.metric, coll.spec)
        self._fit(coll, fresh, vectors)
        fresh.add_with_ids(vectors, ids)
        coll.index = fresh
        coll.trained_on = len(ids)
        self._changed(coll)

    def _remove(self, coll: _Collection, mask: np.ndarray) -> None:
        if not mask.any():
            return
        gone = coll.ids[mask]
        selector = faiss.IDSelectorBatch(gone)
        if coll.pending is not None:
            coll.pending.remove_ids(selector)
        if isinstance(coll.spec, Hnsw):
            # HNSW cannot remove nodes: rebuild from the vectors that remain.
            keep = ~np.isin(faiss.vector_to_array(coll.index.id_map).astype(np.int64), gone)
            vectors = coll.index.index.reconstruct_n(0, coll.index.ntotal)[keep]
            kept_ids = faiss.vector_to_array(coll.index.id_map).astype(np.int64)[keep]
            coll.index = _new_index(coll.dim, coll.metric, coll.spec)
            if len(kept_ids):
                coll.index.add_with_ids(vectors, kept_ids)
        elif coll.index.ntotal:
            coll.index.remove_ids(selector)
        coll.ids = coll.ids[~mask]
        coll.owners = coll.owners[~mask]
        self._changed(coll)

    def _changed(self, coll: _Collection) -> None:
        coll.dirty = True
        coll.gpu_index = None
        if self._gpus and coll.pending is None and not isinstance(coll.spec, Hnsw) and coll.index.ntotal:
            try:
                coll.gpu_index = faiss.index_cpu_to_all_gpus(coll.index)
            except Exception as exc:  # a GPU clone is an optimisation: fall back to CPU
                log.warning("could not move collection %s to the GPU (%s); searching on CPU", coll.name, exc)

    def _persist(self, coll: _Collection) -> None:
        """Write a new generation directory, then swap CURRENT to it atomically."""
        cdir = self.root / coll.name
        cdir.mkdir(parents=True, exist_ok=True)
        current = _read_current(cdir)
        number = int(current.split("-")[1]) + 1 if current else 1
        gen = f"gen-{number:06d}"
        gdir = cdir / gen
        shutil.rmtree(gdir, ignore_errors=True)
        gdir.mkdir()
        index = coll.pending if coll.pending is not None else coll.index
        faiss.write_index(index, str(gdir / "index.faiss"))
        np.save(gdir / "ids.npy", coll.ids)
        np.save(gdir / "owners.npy", coll.owners)
        (gdir / "keys.json").write_text(json.dumps(coll.keys))
        meta = {
            "dim": coll.dim,
            "metric": coll.metric,
            "index": index_spec_to_dict(coll.spec),
            "trained": coll.pending is None,
            "trained_on": coll.trained_on,
            "count": coll.count,
        }
        (gdir / "meta.json").write_text(json.dumps(meta, indent=2))
        _fsync_dir(gdir)
        tmp = cdir / "CURRENT.tmp"
        tmp.write_text(gen)
        os.replace(tmp, cdir / "CURRENT")
        _fsync_dir(cdir)
        for old in cdir.glob("gen-*"):
            if old.name != gen:
                shutil.rmtree(old, ignore_errors=True)
        coll.dirty = False
        coll.generation = gen

    def _load(self, name: str) -> _Collection:
        cdir = self.root / name
        current = _read_current(cdir)
        if not current:
            raise CollectionNotFound(f"collection {name!r} does not exist in the Faiss store at {self.root}")
        gdir = cdir / current
        meta = json.loads((gdir / "meta.json").read_text())
        spec = index_spec_from_dict(meta["index"])
        stored = faiss.read_index(str(gdir / "index.faiss"))
        if meta["trained"]:
            index, pending = stored, None
        else:
            index, pending = _new_index(meta["dim"], meta["metric"], spec), stored
        keys = json.loads((gdir / "keys.json").read_text())
        coll = _Collection(
            name,
            meta["dim"],
            meta["metric"],
            spec,
            index,
            pending,
            ids=np.load(gdir / "ids.npy"),
            owners=np.load(gdir / "owners.npy"),
            keys=keys,
            key_codes={k: i for i, k in enumerate(keys)},
            # Collections saved before it was recorded: as if trained on what they hold now.
            trained_on=int(meta.get("trained_on", meta["count"] if meta["trained"] else 0)),
        )
        self._changed(coll)
        coll.dirty = False
        coll.generation = current
        return coll


def _read_current(cdir: Path) -> str:
    try:
        return (cdir / "CURRENT").read_text().strip()
    except FileNotFoundError:
        return ""


def _fsync_dir(path: Path) -> None:
    for file in [*path.iterdir(), path] if path.is_dir() else [path]:
        if file.is_dir() and file != path:
            continue
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _empty_result(nq: int, k: int) -> SearchResult:
    return SearchResult(np.full((nq, k), -1, np.int64), np.full((nq, k), -np.inf, np.float32))


def _merge(parts: list[tuple[np.ndarray, np.ndarray]], k: int, metric: str) -> SearchResult:
    """Combine per-index top-k lists into one, best first; L2 distances become negated scores."""
    ids = np.concatenate([p[0] for p in parts], axis=1)
    scores = np.concatenate([p[1] for p in parts], axis=1).astype(np.float32)
    if metric == "L2":
        scores = -scores
    scores = np.where(ids < 0, -np.inf, scores)
    if len(parts) > 1:
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        ids = np.take_along_axis(ids, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
    return SearchResult(ids[:, :k].copy(), scores[:, :k].copy())
