"""TVR-Ranking annotation files and precomputed query features.

An annotation file is JSONL (one record per line), a JSON array of records, or a JSON object
holding one such array (``{"data": [...]}``). A record is one query-moment pair::

    {"query_id": 54251, "query": "A man and a woman are talking ...",
     "video_name": "house_s07e03_seg02_clip_24", "timestamp": [63.47, 77.42],
     "duration": 90.02, "relevance": 4}

``relevance`` (0-4) is required in the annotated validation and test sets and optional in the
pseudo-training sets, which rank a query's moments by ``similarity`` (query-caption SimCSE
score) instead; ``pair_id``, ``caption``, ``similarity`` and other fields are kept only where
noted. Records are grouped by query into :class:`QueryRecord` s. A pseudo-training set of the
top N moments per query (SPR appendix B.2: top 40 beat top 20) is ``top_n=N``.

Every validation error names the file and the line (JSONL) or the line where the record starts
(JSON), so a bad record in a 70,000-query file can be found.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spr.metrics import GroundTruthMoment
from spr.rowfiles import RowFileError, read_json_rows

__all__ = [
    "AnnotationError",
    "QueryRecord",
    "TrainingMoment",
    "load_query_features",
    "load_query_records",
    "read_annotation_rows",
    "write_query_features",
    "write_query_records",
]

MAX_RELEVANCE = 4.0


class AnnotationError(ValueError):
    """An annotation or query-feature file is unreadable or holds a malformed record; the
    message names the file and line."""


@dataclass(frozen=True)
class TrainingMoment(GroundTruthMoment):
    """A ground-truth moment (a :class:`spr.metrics.GroundTruthMoment`, so metrics take it as
    it is) plus what training uses besides: the video's ``duration_s`` (None when the record
    has none) and the pseudo-training ``similarity`` (None when absent)."""

    duration_s: float | None = None
    similarity: float | None = None


@dataclass(frozen=True)
class QueryRecord:
    """One query and its moments, in file order (or best first with ``top_n``)."""

    query_id: str
    query: str
    moments: tuple[TrainingMoment, ...]

    @property
    def videos(self) -> list[str]:
        """Distinct video names of the moments, in first-seen order."""
        return list(dict.fromkeys(m.video_name for m in self.moments))


# --- reading ----------------------------------------------------------------------------------


def read_annotation_rows(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, record)`` for every record of a JSONL, JSON-array or JSON-object file (the
    row-file reader of :mod:`spr.rowfiles`; its errors come as :class:`AnnotationError`)."""
    try:
        yield from read_json_rows(path, "annotation file", record_keys=("query_id",))
    except RowFileError as exc:
        raise AnnotationError(str(exc)) from None


def load_query_records(
    path: str | os.PathLike[str],
    top_n: int | None = None,
    require_relevance: bool = False,
) -> list[QueryRecord]:
    """Group an annotation file by query, in first-seen order.

    ``top_n`` keeps each query's N best moments: most relevant first, then highest
    ``similarity``, then file order. ``require_relevance`` (evaluation sets) rejects a record
    without ``relevance``; otherwise a missing relevance counts as 1. Raises
    :class:`AnnotationError` naming the file and line of the first bad record."""
    if top_n is not None and (isinstance(top_n, bool) or int(top_n) < 1):
        raise ValueError(f"top_n must be a positive number of moments per query, got {top_n!r}")
    file = Path(path).expanduser()
    queries: dict[str, tuple[str, list[TrainingMoment]]] = {}
    first_line: dict[str, int] = {}
    for line, row in read_annotation_rows(file):
        where = f"{file}:{line}"
        query_id, query, moment = _parse_record(row, where, require_relevance)
        if query_id in queries:
            if queries[query_id][0] != query:
                raise AnnotationError(
                    f"{where}: query {query_id!r} has the text {query!r} here but {queries[query_id][0]!r} "
                    f"at line {first_line[query_id]}; one query id must have one text"
                )
            queries[query_id][1].append(moment)
        else:
            queries[query_id] = (query, [moment])
            first_line[query_id] = line
    if not queries:
        raise AnnotationError(f"{file} holds no records")
    out = []
    for query_id, (query, moments) in queries.items():
        if top_n is not None:
            order = sorted(
                range(len(moments)),
                key=lambda i: (-moments[i].relevance, -(moments[i].similarity if moments[i].similarity is not None else 0.0), i),
            )
            moments = [moments[i] for i in order[: int(top_n)]]
        out.append(QueryRecord(query_id, query, tuple(moments)))
    return out


def _parse_record(row: Mapping[str, Any], where: str, require_relevance: bool) -> tuple[str, str, TrainingMoment]:
    def field(name: str) -> Any:
        if name not in row or row[name] is None:
            raise AnnotationError(f"{where}: missing field {name!r} (a record needs query_id, query, video_name, timestamp)")
        return row[name]

    raw_id = field("query_id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (int, str)) or str(raw_id).strip() == "":
        raise AnnotationError(f"{where}: query_id must be an integer or a non-empty string, got {raw_id!r}")
    query_id = str(raw_id).strip()
    query = field("query")
    if not isinstance(query, str) or not query.strip():
        raise AnnotationError(f"{where}: query {query_id!r} has no text (field 'query' must be a non-empty string)")
    video = field("video_name")
    if not isinstance(video, str) or not video.strip():
        raise AnnotationError(f"{where}: video_name must be a non-empty string, got {video!r}")
    stamp = field("timestamp")
    if not isinstance(stamp, (list, tuple)) or len(stamp) != 2:
        raise AnnotationError(f"{where}: timestamp must be [start_s, end_s], got {stamp!r}")
    start, end = (_number(x, f"{where}: timestamp", lowest=0.0) for x in stamp)
    if end < start:
        raise AnnotationError(f"{where}: moment in video {video!r} ends before it starts: timestamp {list(stamp)}")
    duration = None
    if row.get("duration") is not None:
        duration = _number(row["duration"], f"{where}: duration", lowest=0.0)
        if duration <= 0:
            raise AnnotationError(f"{where}: duration must be a positive number of seconds, got {row['duration']!r}")
        if start > duration + 1e-3:
            raise AnnotationError(f"{where}: moment [{start}, {end}] starts after the end of the {duration}-s video {video!r}")
    if row.get("relevance") is None:
        if require_relevance:
            raise AnnotationError(f"{where}: missing field 'relevance' (0-4); evaluation sets must grade every moment")
        relevance = 1.0
    else:
        relevance = _number(row["relevance"], f"{where}: relevance", lowest=0.0)
        if relevance > MAX_RELEVANCE:
            raise AnnotationError(f"{where}: relevance must be in [0, {MAX_RELEVANCE:g}], got {row['relevance']!r}")
    similarity = None
    if row.get("similarity") is not None:
        similarity = _number(row["similarity"], f"{where}: similarity")
    moment = TrainingMoment(video.strip(), start, end, relevance, duration, similarity)
    return query_id, query.strip(), moment


def _number(value: Any, where: str, lowest: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise AnnotationError(f"{where} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise AnnotationError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(number) or (lowest is not None and number < lowest):
        bound = f" >= {lowest:g}" if lowest is not None else ""
        raise AnnotationError(f"{where} must be a finite number{bound}, got {value!r}")
    return number


# --- writing ----------------------------------------------------------------------------------


def write_query_records(path: str | os.PathLike[str], records: Sequence[QueryRecord]) -> None:
    """Write ``records`` as TVR-Ranking JSONL (one line per query-moment pair), atomically."""
    lines = []
    pair = 0
    for record in records:
        for m in record.moments:
            row: dict[str, Any] = {
                "pair_id": pair,
                "query_id": int(record.query_id) if record.query_id.isdigit() else record.query_id,
                "query": record.query,
                "video_name": m.video_name,
                "timestamp": [round(m.start_s, 3), round(m.end_s, 3)],
                "duration": None if m.duration_s is None else round(m.duration_s, 3),
                "relevance": int(m.relevance) if float(m.relevance).is_integer() else m.relevance,
            }
            if m.similarity is not None:
                row["similarity"] = m.similarity
            lines.append(json.dumps(row))
            pair += 1
    _atomic_write_text(path, "\n".join(lines) + "\n")


def _atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    final = os.fspath(path)
    tmp = f"{final}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, final)


# --- query features ---------------------------------------------------------------------------


def load_query_features(path: str | os.PathLike[str], query_ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """``{query_id: (D,) float32}`` from an HDF5 file with one 1-D dataset per query id (a
    ``(1, D)`` dataset is accepted as its row). With ``query_ids`` only those are read, and a
    missing one is an error naming it."""
    import h5py

    file = Path(path).expanduser()
    if not file.is_file():
        raise AnnotationError(f"query feature file {file} does not exist")
    try:
        h5 = h5py.File(file, "r")
    except OSError as exc:
        raise AnnotationError(f"cannot read {file} as HDF5: {exc}") from None
    out: dict[str, np.ndarray] = {}
    dim = None
    with h5:
        keys = list(h5.keys()) if query_ids is None else [str(q) for q in query_ids]
        for key in keys:
            if key not in h5:
                raise AnnotationError(f"{file} has no features for query {key!r}; compute them for every query of the file")
            entry = h5[key]
            if not isinstance(entry, h5py.Dataset):
                raise AnnotationError(f"{file}: entry {key!r} is a group; expected one 1-D dataset per query id")
            array = np.asarray(entry[()], dtype=np.float32)
            if array.ndim == 2 and array.shape[0] == 1:
                array = array[0]
            if array.ndim != 1 or array.shape[0] == 0:
                raise AnnotationError(
                    f"{file}: query {key!r} has features of shape {tuple(array.shape)}; expected one sentence-level "
                    f"vector (D,) per query (token-level (L, D) features need pooling first)"
                )
            if dim is None:
                dim = array.shape[0]
            elif array.shape[0] != dim:
                raise AnnotationError(f"{file}: query {key!r} has {array.shape[0]}-d features, others {dim}-d")
            if not np.isfinite(array).all():
                raise AnnotationError(f"{file}: query {key!r} has NaN or infinite features")
            out[key] = array
    return out


def write_query_features(path: str | os.PathLike[str], features: Mapping[str, np.ndarray]) -> None:
    """Write ``{query_id: (D,)}`` as an HDF5 file readable by :func:`load_query_features`."""
    import h5py

    final = os.fspath(path)
    tmp = f"{final}.tmp-{os.getpid()}"
    with h5py.File(tmp, "w") as h5:
        for key, value in features.items():
            h5.create_dataset(str(key), data=np.asarray(value, dtype=np.float32))
    os.replace(tmp, final)
