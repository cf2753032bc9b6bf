"""Index specs: what an index is, as plain data that means the same thing on every backend.

One frozen dataclass per index kind: its ``kind`` and its parameters, validated on
construction. Nothing here knows a backend's vocabulary: the Faiss store turns a spec into a
factory string and Faiss search parameters, the Milvus store into ``index_params`` and search
params (``index_param`` / ``search_param`` in :mod:`.faiss_store` and :mod:`.milvus_store`).
What the search-time knobs mean (defaults, per-query overrides, ``nprobe`` capped at
``nlist``) is decided once, by :func:`effective_search`, so both backends search alike and a
parity test can hold them to the same recall.

:func:`parse_index_spec` is the one strict parser of a spec's dict form: ``[vectors.index]``
of the configuration, the catalog's ``index_spec`` column and each backend's stored metadata.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Mapping, Union


class IndexKind(enum.StrEnum):
    FLAT = "FLAT"
    IVF_FLAT = "IVF_FLAT"
    IVF_PQ = "IVF_PQ"
    HNSW = "HNSW"


class Metric(enum.StrEnum):
    IP = "IP"
    L2 = "L2"


METRICS = tuple(m.value for m in Metric)


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

    kind: ClassVar[IndexKind] = IndexKind.FLAT


@dataclass(frozen=True)
class IvfFlat:
    """Inverted lists over ``nlist`` k-means cells; ``nprobe`` cells visited per query."""

    nlist: int = 1024
    nprobe: int = 16
    kind: ClassVar[IndexKind] = IndexKind.IVF_FLAT

    def __post_init__(self) -> None:
        _check_range("nlist", self.nlist, 1, 65536)
        _check_range("nprobe", self.nprobe, 1, self.nlist)


@dataclass(frozen=True)
class IvfPq:
    """IVF with product-quantised residuals: ``m`` sub-quantisers of ``nbits`` bits each."""

    nlist: int = 1024
    m: int = 64
    nbits: int = 8
    nprobe: int = 16
    kind: ClassVar[IndexKind] = IndexKind.IVF_PQ

    def __post_init__(self) -> None:
        _check_range("nlist", self.nlist, 1, 65536)
        _check_range("nprobe", self.nprobe, 1, self.nlist)
        _check_range("m", self.m, 1, 4096)
        _check_range("nbits", self.nbits, 1, 16)


@dataclass(frozen=True)
class Hnsw:
    """Graph index: ``M`` links per node, ``ef_construction`` at build, ``ef`` at search."""

    M: int = 16
    ef_construction: int = 200
    ef: int = 64
    kind: ClassVar[IndexKind] = IndexKind.HNSW

    def __post_init__(self) -> None:
        _check_range("M", self.M, 2, 2048)
        _check_range("ef_construction", self.ef_construction, 1, 65536)
        _check_range("ef", self.ef, 1, 65536)


IndexSpec = Union[Flat, IvfFlat, IvfPq, Hnsw]
SPEC_TYPES: dict[IndexKind, type] = {cls.kind: cls for cls in (Flat, IvfFlat, IvfPq, Hnsw)}
# Configuration spellings of a field: environment variables are lower-cased, so HNSW's ``M``
# is ``hnsw_m`` in ``[vectors.index]`` (``m`` is IVF_PQ's sub-quantiser count).
_ALIASES: dict[IndexKind, dict[str, str]] = {IndexKind.HNSW: {"hnsw_m": "M"}}


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"index parameter {name}={value!r} out of range [{lo}, {hi}]")


def _index_kind(value: Any, where: str) -> IndexKind:
    text = str(value).strip().upper() if value is not None else ""
    try:
        return IndexKind(text)
    except ValueError:
        allowed = ", ".join(k.value for k in IndexKind)
        raise ValueError(f"unknown index kind {value!r} in {where}.kind; allowed: {allowed}") from None


def _int_param(value: Any, key: str) -> int:
    """An integer parameter, also from its text form (environment variables are strings)."""
    if isinstance(value, bool):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{key} must be an integer, got {value!r}") from None


def parse_index_spec(raw: Mapping[str, Any], where: str = "index", default_kind: IndexKind | None = None) -> IndexSpec:
    """Build a spec from ``{"kind": "IVF_PQ", "nlist": 1024, "m": 64, ...}``, strictly.

    ``kind`` (any case) is required unless ``default_kind`` is given; every other key must be a
    parameter of that kind (HNSW's ``M`` may be spelled ``hnsw_m``), integer-valued, in range.
    Anything else is a ``ValueError`` naming ``where`` (``vectors.index`` for the
    configuration), the offending keys and the ones the kind takes."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be a table with a kind, got {raw!r}")
    if "kind" in raw:
        kind, kind_note = _index_kind(raw["kind"], where), ""
    elif default_kind is not None:
        kind, kind_note = default_kind, " (kind not set, the default)"
    else:
        raise ValueError(f"{where} needs a kind; allowed: {', '.join(k.value for k in IndexKind)}")
    cls = SPEC_TYPES[kind]
    allowed = [f.name for f in fields(cls)]
    aliases = _ALIASES.get(kind, {})
    params: dict[str, int] = {}
    unknown = []
    for key, value in raw.items():
        if key == "kind":
            continue
        name = aliases.get(key, key)
        if name not in allowed:
            unknown.append(key)
        elif name in params:
            raise ValueError(f"{where} sets {name} twice (as {name} and {key}); keep one")
        else:
            params[name] = _int_param(value, f"{where}.{key}")
    if unknown:
        spelled = {name: alias for alias, name in aliases.items()}
        takes = ", ".join(f"{spelled[n]} (or {n})" if n in spelled else n for n in allowed) or "no parameters"
        verb = "does" if len(unknown) == 1 else "do"
        raise ValueError(
            f"{where}: {', '.join(sorted(unknown))} {verb} not apply to kind {kind.value}{kind_note}, which takes {takes}"
        )
    try:
        return cls(**params)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def index_spec_from_dict(raw: Mapping[str, Any]) -> IndexSpec:
    """A spec from its dict form (catalog, stored metadata); see :func:`parse_index_spec`."""
    return parse_index_spec(raw)


def index_spec_from_config(spec: IndexSpec | Mapping[str, Any]) -> IndexSpec:
    """The spec of ``[vectors.index]``. ``load_config`` already parsed it into a spec (which is
    returned as is); a mapping is parsed with the configuration's strict rules."""
    if isinstance(spec, tuple(SPEC_TYPES.values())):
        return spec
    return parse_index_spec(spec, "vectors.index")


def index_spec_to_dict(spec: IndexSpec) -> dict[str, Any]:
    return {"kind": spec.kind.value, **asdict(spec)}


def check_metric(metric: str) -> str:
    text = str(metric).upper()
    if text not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    return text


def check_dimension(spec: IndexSpec, dim: int) -> None:
    """Refuse a spec that cannot index ``dim``-d vectors (PQ splits a vector into ``m`` parts)."""
    if dim < 1:
        raise ValueError(f"dimension must be positive, got {dim}")
    if isinstance(spec, IvfPq) and dim % spec.m:
        raise ValueError(f"IVF_PQ needs m to divide the dimension: m={spec.m}, dim={dim}")


def effective_search(spec: IndexSpec, override: SearchParams | None = None) -> SearchParams:
    """The knobs one search runs with: the spec's defaults, replaced by ``override`` where it
    sets them; only the knobs of the spec's kind are set. ``nprobe`` beyond ``nlist`` means
    "all lists", which both backends accept only as ``nlist``."""
    if isinstance(spec, (IvfFlat, IvfPq)):
        nprobe = override.nprobe if override and override.nprobe else spec.nprobe
        return SearchParams(nprobe=min(nprobe, spec.nlist))
    if isinstance(spec, Hnsw):
        return SearchParams(ef=override.ef if override and override.ef else spec.ef)
    return SearchParams()

