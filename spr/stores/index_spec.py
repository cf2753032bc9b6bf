"""Index specs that mean the same thing on every backend.

One frozen dataclass per index kind. Each produces its Faiss ``index_factory`` string and
its Milvus ``index_params``; search-time knobs (``nprobe``, ``ef``) come out of
:meth:`search_params` the same way for both backends, so a parity test can hold them to
the same recall.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Union

from ..config import IndexConfig

METRICS = ("IP", "L2")


@dataclass(frozen=True)
class SearchParams:
    """Per-query overrides; ``None`` means the spec's default."""

    nprobe: int | None = None
    ef: int | None = None

    def __post_init__(self) -> None:
        for name in ("nprobe", "ef"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= 65536:
                raise ValueError(f"search parameter {name}={value} out of range [1, 65536]")


@dataclass(frozen=True)
class Flat:
    """Exact search."""

    kind = "FLAT"

    def faiss_factory(self) -> str:
        return "Flat"

    def milvus_index_params(self) -> dict[str, Any]:
        return {"index_type": "FLAT", "params": {}}

    def search_params(self, override: SearchParams | None = None) -> dict[str, int]:
        return {}

    def min_train_points(self) -> int:
        return 0


@dataclass(frozen=True)
class IvfFlat:
    """Inverted lists over ``nlist`` k-means cells; ``nprobe`` cells visited per query."""

    nlist: int = 1024
    nprobe: int = 16
    kind = "IVF_FLAT"

    def __post_init__(self) -> None:
        _check_range("nlist", self.nlist, 1, 65536)
        _check_range("nprobe", self.nprobe, 1, self.nlist)

    def faiss_factory(self) -> str:
        return f"IVF{self.nlist},Flat"

    def milvus_index_params(self) -> dict[str, Any]:
        return {"index_type": "IVF_FLAT", "params": {"nlist": self.nlist}}

    def search_params(self, override: SearchParams | None = None) -> dict[str, int]:
        nprobe = override.nprobe if override and override.nprobe else self.nprobe
        return {"nprobe": min(nprobe, self.nlist)}

    def min_train_points(self) -> int:
        return self.nlist


@dataclass(frozen=True)
class IvfPq:
    """IVF with product-quantised residuals: ``m`` sub-quantisers of ``nbits`` bits each."""

    nlist: int = 1024
    m: int = 64
    nbits: int = 8
    nprobe: int = 16
    kind = "IVF_PQ"

    def __post_init__(self) -> None:
        _check_range("nlist", self.nlist, 1, 65536)
        _check_range("nprobe", self.nprobe, 1, self.nlist)
        _check_range("m", self.m, 1, 4096)
        _check_range("nbits", self.nbits, 1, 16)

    def faiss_factory(self) -> str:
        # "np": no polysemous training. index_factory turns it on for IVF-PQ, where it only
        # reorders codes for polysemous filtering (off at search) and took 195 s of a 196-s
        # build of 20K 768-d vectors (m=64); Milvus does not do it either.
        return f"IVF{self.nlist},PQ{self.m}x{self.nbits}np"

    def milvus_index_params(self) -> dict[str, Any]:
        return {"index_type": "IVF_PQ", "params": {"nlist": self.nlist, "m": self.m, "nbits": self.nbits}}

    def search_params(self, override: SearchParams | None = None) -> dict[str, int]:
        nprobe = override.nprobe if override and override.nprobe else self.nprobe
        return {"nprobe": min(nprobe, self.nlist)}

    def min_train_points(self) -> int:
        return max(self.nlist, 1 << self.nbits)


@dataclass(frozen=True)
class Hnsw:
    """Graph index: ``M`` links per node, ``ef_construction`` at build, ``ef`` at search."""

    M: int = 16
    ef_construction: int = 200
    ef: int = 64
    kind = "HNSW"

    def __post_init__(self) -> None:
        _check_range("M", self.M, 2, 2048)
        _check_range("ef_construction", self.ef_construction, 1, 65536)
        _check_range("ef", self.ef, 1, 65536)

    def faiss_factory(self) -> str:
        return f"HNSW{self.M},Flat"

    def milvus_index_params(self) -> dict[str, Any]:
        return {"index_type": "HNSW", "params": {"M": self.M, "efConstruction": self.ef_construction}}

    def search_params(self, override: SearchParams | None = None) -> dict[str, int]:
        return {"ef": override.ef if override and override.ef else self.ef}

    def min_train_points(self) -> int:
        return 0


IndexSpec = Union[Flat, IvfFlat, IvfPq, Hnsw]
_KINDS: dict[str, type] = {cls.kind: cls for cls in (Flat, IvfFlat, IvfPq, Hnsw)}


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"index parameter {name}={value!r} out of range [{lo}, {hi}]")


def index_spec_from_dict(raw: Mapping[str, Any]) -> IndexSpec:
    """Build a spec from ``{"kind": "IVF_PQ", "nlist": 1024, "m": 64, ...}``; extra keys are errors."""
    kind = str(raw.get("kind", "")).upper()
    if kind not in _KINDS:
        raise ValueError(f"unknown index kind {raw.get('kind')!r}; choose one of {sorted(_KINDS)}")
    cls = _KINDS[kind]
    params = {k: v for k, v in raw.items() if k != "kind"}
    allowed = {f.name for f in fields(cls)}
    extra = sorted(set(params) - allowed)
    if extra:
        raise ValueError(f"index kind {kind} takes {sorted(allowed)}, not {extra}")
    return cls(**params)


def index_spec_from_config(cfg: IndexConfig) -> IndexSpec:
    """The spec named by ``[vectors.index]``; parameters of other kinds are ignored."""
    kind = cfg.kind.upper()
    if kind == "FLAT":
        return Flat()
    if kind == "IVF_FLAT":
        return IvfFlat(nlist=cfg.nlist, nprobe=cfg.nprobe)
    if kind == "IVF_PQ":
        return IvfPq(nlist=cfg.nlist, m=cfg.m, nbits=cfg.nbits, nprobe=cfg.nprobe)
    if kind == "HNSW":
        return Hnsw(M=cfg.hnsw_m, ef_construction=cfg.ef_construction, ef=cfg.ef)
    raise ValueError(f"unknown index kind {cfg.kind!r} in [vectors.index]; choose one of {sorted(_KINDS)}")


def index_spec_to_dict(spec: IndexSpec) -> dict[str, Any]:
    return {"kind": spec.kind, **asdict(spec)}


def index_spec_to_json(spec: IndexSpec) -> str:
    return json.dumps(index_spec_to_dict(spec), sort_keys=True)


def check_metric(metric: str) -> str:
    metric = metric.upper()
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    return metric
