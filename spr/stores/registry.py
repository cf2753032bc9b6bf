"""The vector-store backends by name: ``vectors.backend`` -> a factory that opens the store.

Each factory imports its backend module only when called, so opening a Milvus store never
imports Faiss (and the reverse). The command line, the services, the benchmarks and the tests
open stores through :func:`open_vector_store`; nothing else needs to know which classes exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .base import VectorStore

if TYPE_CHECKING:  # spr.config imports this package (for the index specs): no import cycle
    from ..config import Config

StoreFactory = Callable[["Config"], VectorStore]

_FACTORIES: dict[str, StoreFactory] = {}


def register_backend(name: str, factory: StoreFactory) -> None:
    """Make ``vectors.backend = name`` open stores with ``factory(config)``."""
    _FACTORIES[name.lower()] = factory


def backend_names() -> list[str]:
    """The registered backend names, sorted."""
    return sorted(_FACTORIES)


def open_vector_store(config: "Config") -> VectorStore:
    """The store named by ``config.vectors.backend``, opened with its section of ``config``."""
    name = str(config.vectors.backend).lower()
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(
            f"unknown vector backend {config.vectors.backend!r}; set vectors.backend to one of {backend_names()}"
        )
    return factory(config)


def _open_faiss(config: "Config") -> VectorStore:
    from .faiss_store import FaissStore

    f = config.faiss
    return FaissStore(config.faiss_path, threads=f.threads, use_gpu=f.use_gpu, train_points_per_list=f.train_points_per_list)


def _open_milvus(config: "Config") -> VectorStore:
    from .milvus_store import MilvusStore

    m = config.milvus
    return MilvusStore(
        m.uri, token=m.token, db_name=m.db_name, consistency_level=str(m.consistency_level), timeout_s=m.timeout_s
    )


register_backend("faiss", _open_faiss)
register_backend("milvus", _open_milvus)
