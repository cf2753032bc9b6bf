"""Training the feature projectors of SPR section 3.1.3 on frozen CLIP features.

* Inputs: TVR-Ranking-format query records (:mod:`spr.data.tvr_ranking`), each query's CLIP text
  feature (encoded once per query with ``ClipEncoder.encode_texts``, or precomputed), and the
  per-second frame features of the videos they name: from the frame-feature store through the
  catalog (:class:`CatalogFrameSource`), a TVR-layout HDF5 file (:class:`Hdf5FrameSource`) or
  a ``{video_name: FrameFeatures}`` mapping.
* Positives: the fixed-length segments (``segment_length_s``, 4 s) of a moment's video whose
  overlap with the moment covers at least ``positive_overlap`` (0.3, appendix B.2) of the
  segment. A moment with relevance 0 has none.
* Batches: B (query, positive segment) pairs, one per (query, moment) entry of the epoch with
  the segment drawn among that moment's positives. The B x B positive mask is "segment j is a
  positive of query i", so a row (a query with several moments in the batch) or a column (a
  segment that is a positive of several queries) may hold several positives.
* Loss: symmetric MIL-NCE (equation 1) on cosine similarities over a temperature.
* Schedule: AdamW, gradient clipping, linear warm-up then cosine (:mod:`spr.train.schedule`).
* Checkpoints: a resumable :class:`~spr.train.schedule.TrainState` after every epoch (and
  every ``save_every_steps``), and the final projectors with
  :func:`spr.models.projector.save_projectors`, which ingest, import and search load through
  ``projector.checkpoint``.

Data order is a pure function of ``(seed, epoch)`` and dropout draws from torch's generator,
saved in every state: a resumed run repeats the uninterrupted one step for step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from spr.features import FrameFeatures
from spr.models.checkpoints import PROJECTOR_CHECKPOINT, is_checkpoint
from spr.models.projector import (
    ProjectorShape,
    Projectors,
    build_projectors,
    save_projectors,
)
from spr.segments import SegmentRows, segment_bounds, segment_rows

from spr.data.tvr_ranking import QueryRecord
from .schedule import TrainState, build_optimizer, load_train_state, save_train_state, seed_everything, warmup_cosine

log = logging.getLogger(__name__)

__all__ = [
    "CatalogFrameSource",
    "FrameSource",
    "Hdf5FrameSource",
    "ProjectorTrainingData",
    "ProjectorTrainingOptions",
    "ProjectorTrainingSummary",
    "encode_query_texts",
    "mil_nce_loss",
    "positive_segments",
    "prepare_training_data",
    "read_resume_state",
    "state_path_for",
    "train_projectors",
]


# --- options ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectorTrainingOptions:
    """Everything a run depends on. Defaults: SPR section 4.2 (:class:`spr.config.TrainConfig`)
    and the paper's projector shape (768-d, 6 layers)."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 1e-3
    grad_clip: float = 5.0
    warmup_fraction: float = 0.1
    temperature: float = 0.05
    positive_overlap: float = 0.3
    segment_length_s: float = 4.0
    seed: int = 0
    device: str = "auto"
    # Projector shape (in_dim, text_in_dim and max_frames come from the data).
    dim: int = 768
    layers: int = 6
    heads: int = 8
    dropout: float = 0.1
    # Bookkeeping: not part of what a resumed run must match.
    log_every: int = 50
    save_every_steps: int = 0  # 0: a training state after each epoch only

    # Fields a resumed run must share with the run that wrote the state.
    RESUME_KEYS = (
        "epochs", "batch_size", "lr", "weight_decay", "grad_clip", "warmup_fraction", "temperature",
        "positive_overlap", "segment_length_s", "seed", "dim", "layers", "heads", "dropout",
    )

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> "ProjectorTrainingOptions":
        """Defaults from ``config.train`` and ``config.segments.length_s``; ``overrides`` that
        are not None win."""
        t = config.train
        values = dict(
            epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay, grad_clip=t.grad_clip,
            warmup_fraction=t.warmup_fraction, temperature=t.temperature, positive_overlap=t.positive_overlap,
            segment_length_s=config.segments.length_s, seed=t.seed, device=t.device,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch size must be at least 2 (in-batch negatives), got {self.batch_size}")
        if not (self.temperature > 0):
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not (0.0 <= self.positive_overlap <= 1.0):
            raise ValueError(f"positive_overlap must be in [0, 1], got {self.positive_overlap}")
        if not (self.segment_length_s > 0):
            raise ValueError(f"segment length must be positive, got {self.segment_length_s}")
        if not (self.grad_clip > 0):
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip}")
        if self.dim < 1 or self.layers < 1 or self.heads < 1 or self.dim % self.heads:
            raise ValueError(f"projector dim ({self.dim}) must be a positive multiple of heads ({self.heads}); layers >= 1")

    def resume_view(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.RESUME_KEYS}


@dataclass
class ProjectorTrainingSummary:
    steps: int
    epochs: int
    final_loss: float  # mean training loss of the last epoch
    last_loss: float  # loss of the last step
    val_loss: float | None
    steps_per_s: float
    seconds: float
    checkpoint: str
    state_path: str
    device: str
    resumed_from: str | None
    data: dict[str, int]
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- the loss ---------------------------------------------------------------------------------


def mil_nce_loss(similarity: torch.Tensor, positive: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Symmetric MIL-NCE (SPR equation 1) of a ``(B, B)`` query x segment similarity matrix.

    ``positive[i, j]`` says segment j is a positive of query i; rows and columns may hold
    several. Per row: ``-log(sum_{j in P_i} e^{s_ij / t} / sum_j e^{s_ij / t})``, averaged over
    rows with a positive; the same over columns; the result is the mean of both directions."""
    if similarity.ndim != 2 or similarity.shape != positive.shape:
        raise ValueError(f"similarity {tuple(similarity.shape)} and positive {tuple(positive.shape)} must be one (B, B') shape")
    logits = similarity.float() / temperature
    positive = positive.bool()

    def direction(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        rows = pos.any(dim=1)
        if not bool(rows.any()):
            return x.sum() * 0.0
        pos_lse = torch.logsumexp(x.masked_fill(~pos, -math.inf), dim=1)
        return (torch.logsumexp(x, dim=1) - pos_lse)[rows].mean()

    return 0.5 * (direction(logits, positive) + direction(logits.t(), positive.t()))


def positive_segments(
    start_s: float, end_s: float, duration_s: float, segment_length_s: float = 4.0, min_overlap: float = 0.3
) -> np.ndarray:
    """Ordinals of the ``segment_length_s`` segments of a ``duration_s`` video whose overlap with
    the moment ``[start_s, end_s]`` is positive and covers at least ``min_overlap`` of the
    segment (of its actual length: the last segment of a video may be shorter)."""
    bounds = segment_bounds(duration_s, segment_length_s)
    if not len(bounds) or not end_s > start_s:
        return np.empty(0, dtype=np.int64)
    overlap = np.minimum(bounds.end_s, end_s) - np.maximum(bounds.start_s, start_s)
    length = bounds.end_s - bounds.start_s
    keep = (overlap > 0) & (overlap >= min_overlap * length - 1e-9)
    return bounds.ordinals[keep]


# --- frame sources ----------------------------------------------------------------------------


class FrameSource(Protocol):
    """Per-second features of a video by name, or None when it has none."""

    def get(self, video_name: str) -> FrameFeatures | None: ...


class CatalogFrameSource:
    """Frame features through the catalog (``get_video(name).id``, ``ready`` rows only) and the
    frame-feature store, as ingest and ``spr import`` wrote them."""

    def __init__(self, config: Any) -> None:
        from spr.catalog import SegmentCatalog, VideoStatus
        from spr.features import FrameFeatureStore

        self._ready = VideoStatus.READY.value
        self.catalog = SegmentCatalog.from_config(config)
        self.store = FrameFeatureStore.from_config(config)

    def get(self, video_name: str) -> FrameFeatures | None:
        from spr.features import FeatureNotFound

        video = self.catalog.get_video(video_name)
        if video is None or video.status != self._ready:
            return None
        try:
            return self.store.read(video.id)
        except FeatureNotFound:
            return None

    def close(self) -> None:
        self.catalog.close()


class Hdf5FrameSource:
    """A TVR / ReLoCLNet HDF5 file: one ``(T, D)`` dataset per video (or a group holding a
    ``features`` dataset), each row ``clip_length_s`` seconds."""

    def __init__(self, path: str | os.PathLike[str], clip_length_s: float = 1.0) -> None:
        import h5py

        if not (clip_length_s > 0):
            raise ValueError(f"clip length must be a positive number of seconds, got {clip_length_s}")
        self.path = os.fspath(path)
        self.rate = 1.0 / float(clip_length_s)
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise ValueError(f"cannot read {self.path} as HDF5: {exc}") from None

    def get(self, video_name: str) -> FrameFeatures | None:
        import h5py

        entry = self._h5.get(video_name)
        if entry is None:
            return None
        if isinstance(entry, h5py.Group):
            entry = entry.get("features")
            if entry is None:
                return None
        array = np.asarray(entry[()])
        if array.ndim != 2 or min(array.shape) == 0:
            raise ValueError(f"{self.path}: video {video_name!r} has features of shape {array.shape}; expected (T, D)")
        return FrameFeatures(0, array, self.rate)

    def close(self) -> None:
        self._h5.close()


# --- training data ----------------------------------------------------------------------------


@dataclass
class ProjectorTrainingData:
    """The positive segments of every (query, moment) entry, ready for batching.

    ``frames`` ``(S, F, D)`` float16 and ``mask`` ``(S, F)`` hold each distinct positive
    segment's rows; ``text`` ``(Q, D_text)`` each query's text feature; entry ``e`` is query
    ``entry_query[e]`` with candidate segments ``entry_segments[entry_start[e]:entry_start[e + 1]]``;
    ``positive_keys`` is the sorted ``query * S + segment`` of every positive pair."""

    query_ids: list[str]
    text: np.ndarray
    frames: np.ndarray
    mask: np.ndarray
    segment_keys: list[tuple[str, int]]
    entry_query: np.ndarray
    entry_start: np.ndarray
    entry_segments: np.ndarray
    positive_keys: np.ndarray
    rate: float
    stats: dict[str, int]

    @property
    def entries(self) -> int:
        return len(self.entry_query)

    @property
    def segments(self) -> int:
        return len(self.segment_keys)

    def fingerprint(self) -> dict[str, int]:
        return {"queries": len(self.query_ids), "entries": self.entries, "segments": self.segments,
                "positive_pairs": int(len(self.positive_keys))}

    def is_positive(self, queries: np.ndarray, segments: np.ndarray) -> np.ndarray:
        """``(len(queries), len(segments))`` bool: segment j is a positive of query i."""
        keys = queries.astype(np.int64)[:, None] * self.segments + segments.astype(np.int64)[None, :]
        at = np.minimum(np.searchsorted(self.positive_keys, keys), len(self.positive_keys) - 1)
        return self.positive_keys[at] == keys


def prepare_training_data(
    records: Sequence[QueryRecord],
    frames: FrameSource | Mapping[str, FrameFeatures],
    text_features: Mapping[str, np.ndarray],
    segment_length_s: float = 4.0,
    positive_overlap: float = 0.3,
    what: str = "training",
) -> ProjectorTrainingData:
    """Positive segments and their frame rows for ``records``. Each video is read once and
    only its positive segments' rows are kept. Videos without features and moments without a
    positive segment are skipped and counted in ``stats`` (logged)."""
    missing_text = [r.query_id for r in records if r.query_id not in text_features]
    if missing_text:
        raise ValueError(f"no text feature for {len(missing_text)} {what} queries (first: {missing_text[0]!r})")
    stats: Counter = Counter()
    # Pass 1: the usable moments, grouped by video.
    moments = [(r, m) for r in range(len(records)) for m in range(len(records[r].moments))]
    by_video: dict[str, list[int]] = {}
    for k, (r, m) in enumerate(moments):
        moment = records[r].moments[m]
        stats["moments"] += 1
        if moment.relevance <= 0:
            stats["moments_irrelevant"] += 1
            continue
        by_video.setdefault(moment.video_name, []).append(k)
    # Pass 2: one read per video; each moment's positive segments (deduplicated across moments).
    chosen: dict[int, list[int]] = {}
    segment_index: dict[tuple[str, int], int] = {}
    pooled_rows: list[np.ndarray] = []  # each distinct positive segment's feature rows
    rates: Counter = Counter()
    in_dim = None
    for video, ks in by_video.items():
        feats = frames.get(video)
        if feats is None:
            stats["videos_missing"] += 1
            stats["moments_without_features"] += len(ks)
            continue
        stats["videos"] += 1
        rates[float(feats.rate)] += 1
        if in_dim is None:
            in_dim = feats.features.shape[1]
        elif feats.features.shape[1] != in_dim:
            raise ValueError(f"video {video!r} has {feats.features.shape[1]}-d features, others {in_dim}-d")
        total = len(feats.features)
        covered_s = feats.first_s + total / feats.rate
        plans: dict[float, SegmentRows] = {}  # by duration: records of one video may disagree
        for k in ks:
            r, m = moments[k]
            moment = records[r].moments[m]
            duration = moment.duration_s if moment.duration_s is not None else covered_s
            picked = []
            for o in positive_segments(moment.start_s, moment.end_s, duration, segment_length_s, positive_overlap).tolist():
                start = o * segment_length_s
                if start >= covered_s - 1e-6:
                    continue  # the features end before this segment starts
                index = segment_index.get((video, o))
                if index is None:
                    # The rows ingest and search pool for this segment (spr.segments.segment_rows).
                    plan = plans.get(duration)
                    if plan is None:
                        plan = plans[duration] = segment_rows(
                            total, feats.rate, duration, segment_length_s, first_s=feats.first_s
                        )
                    lo, hi = int(plan.starts[o]), int(plan.stops[o])
                    index = segment_index[(video, o)] = len(pooled_rows)
                    pooled_rows.append(np.array(feats.features[lo:hi], dtype=np.float16))
                picked.append(index)
            if picked:
                chosen[k] = picked
            else:
                stats["moments_without_positive"] += 1
    # Pass 3: entries in file order; queries without any are dropped.
    query_ids: list[str] = []
    text_rows: list[np.ndarray] = []
    entry_query: list[int] = []
    entry_segments: list[np.ndarray] = []
    positive_pairs: set[tuple[int, int]] = set()
    k = 0
    for record in records:
        q = len(query_ids)
        entries = 0
        for _ in record.moments:
            if k in chosen:
                entry_query.append(q)
                entry_segments.append(np.asarray(chosen[k], dtype=np.int64))
                positive_pairs.update((q, s) for s in chosen[k])
                entries += 1
            k += 1
        if entries:
            query_ids.append(record.query_id)
            text_rows.append(np.asarray(text_features[record.query_id], dtype=np.float32).reshape(-1))
        else:
            stats["queries_without_positive"] += 1
    if not entry_query:
        raise ValueError(
            f"no {what} moment has a positive segment: check that the videos' features are available "
            f"({stats['videos_missing']} of {stats['videos'] + stats['videos_missing']} videos have none) and the "
            f"moments' timestamps"
        )
    dims = {t.shape[0] for t in text_rows}
    if len(dims) != 1:
        raise ValueError(f"the {what} queries' text features differ in size: {sorted(dims)}")
    width = max(len(rows) for rows in pooled_rows)
    frames_arr = np.zeros((len(pooled_rows), width, in_dim), dtype=np.float16)
    mask = np.zeros((len(pooled_rows), width), dtype=bool)
    for i, rows in enumerate(pooled_rows):
        frames_arr[i, : len(rows)] = rows
        mask[i, : len(rows)] = True
    n_seg = len(pooled_rows)
    keys = np.unique(np.fromiter((q * n_seg + s for q, s in positive_pairs), dtype=np.int64, count=len(positive_pairs)))
    starts = np.zeros(len(entry_segments) + 1, dtype=np.int64)
    starts[1:] = np.cumsum([len(c) for c in entry_segments])
    stats.update(queries=len(query_ids), entries=len(entry_query), segments=n_seg)
    summary = {k: int(v) for k, v in sorted(stats.items())}
    if stats["videos_missing"] or stats["moments_without_positive"]:
        log.warning(f"some {what} moments give no positive segment and are skipped", extra={"data": what, **summary})
    else:
        log.info(f"{what} data ready", extra={"data": what, **summary})
    return ProjectorTrainingData(
        query_ids=query_ids,
        text=np.stack(text_rows),
        frames=frames_arr,
        mask=mask,
        segment_keys=list(segment_index),
        entry_query=np.asarray(entry_query, dtype=np.int64),
        entry_start=starts,
        entry_segments=np.concatenate(entry_segments),
        positive_keys=keys,
        rate=float(rates.most_common(1)[0][0]),
        stats=summary,
    )


def encode_query_texts(
    records: Sequence[QueryRecord], encode: Callable[[Sequence[str]], np.ndarray], batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Each query's text feature, encoded once per distinct query text (``encode`` is
    ``ClipEncoder.encode_texts`` or any ``texts -> (N, D)`` callable)."""
    texts = list(dict.fromkeys(r.query for r in records))
    encoded: dict[str, np.ndarray] = {}
    for lo in range(0, len(texts), batch_size):
        chunk = texts[lo : lo + batch_size]
        out = np.asarray(encode(chunk), dtype=np.float32)
        if out.shape[0] != len(chunk):
            raise ValueError(f"the text encoder returned {out.shape[0]} features for {len(chunk)} texts")
        encoded.update(zip(chunk, out))
    return {r.query_id: encoded[r.query] for r in records}


# --- batching ---------------------------------------------------------------------------------


def _steps_per_epoch(entries: int, batch_size: int) -> int:
    # A last batch of one pair has no negative: it is dropped.
    full, rest = divmod(entries, batch_size)
    return full + (1 if rest >= 2 else 0)


def _epoch_plan(data: ProjectorTrainingData, seed: int, epoch: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's entry order and each entry's drawn segment: a pure function of
    ``(seed, epoch)`` so a resumed run draws the same batches (``stream`` 1: validation)."""
    rng = np.random.default_rng([int(seed) % 2**63, int(epoch), int(stream)])
    order = rng.permutation(data.entries)
    counts = np.diff(data.entry_start)
    draw = data.entry_start[:-1] + np.floor(rng.random(data.entries) * counts).astype(np.int64)
    return order, data.entry_segments[draw]


class _Batcher:
    """Gathers a batch's text features, segment frames and positive mask on the device.

    An epoch's query and segment indices go to the device once (:meth:`plan`): a per-step
    host-to-device copy of pageable memory would make every step wait for the previous one."""

    def __init__(self, data: ProjectorTrainingData, device: torch.device) -> None:
        self.data = data
        self.device = device
        self.text = torch.from_numpy(data.text).to(device)
        frames = torch.from_numpy(data.frames)
        mask = torch.from_numpy(data.mask)
        # The whole table on the GPU when it is small next to the card (TVR-Ranking's ~300K
        # positive segments x 4 x 768 fp16: under 2 GB): no host-to-device copy per step.
        if device.type == "cuda" and frames.numel() * 2 < 0.25 * torch.cuda.get_device_properties(device).total_memory:
            frames, mask = frames.to(device), mask.to(device)
        self.frames, self.mask = frames, mask
        self.positive_keys = torch.from_numpy(data.positive_keys).to(device)
        self.entry_query = torch.from_numpy(data.entry_query).to(device)

    def plan(self, order: np.ndarray, drawn: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """An epoch's ``(queries, segments)`` in batch order, on the device."""
        index = torch.from_numpy(order).to(self.device)
        return self.entry_query[index], torch.from_numpy(drawn[order]).to(self.device)

    def __call__(self, queries: torch.Tensor, segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = segments if self.frames.device == segments.device else segments.to(self.frames.device)
        frames = self.frames[rows].to(self.device, non_blocking=True).float()
        mask = self.mask[rows].to(self.device, non_blocking=True)
        text = self.text[queries]
        # "segment j is a positive of query i": look the B x B keys up in the sorted positives.
        keys = queries.unsqueeze(1) * self.data.segments + segments.unsqueeze(0)
        at = torch.searchsorted(self.positive_keys, keys).clamp_max(len(self.positive_keys) - 1)
        positive = self.positive_keys[at] == keys
        return text, frames, mask, positive


def _batch_loss(projectors: Projectors, batcher: _Batcher, queries: torch.Tensor, segments: torch.Tensor, temperature: float) -> torch.Tensor:
    text, frames, mask, positive = batcher(queries, segments)
    q = projectors.text(text)
    s = projectors.visual(frames, mask)
    return mil_nce_loss(q @ s.t(), positive, temperature)


def _evaluate_loss(projectors: Projectors, data: ProjectorTrainingData, batcher: _Batcher, options: ProjectorTrainingOptions) -> float:
    """Mean MIL-NCE over fixed batches of ``data`` (the same draws every epoch)."""
    queries, segments = batcher.plan(*_epoch_plan(data, options.seed, 0, stream=1))
    was_training = projectors.visual.training
    projectors.eval()
    total, weight = 0.0, 0
    with torch.inference_mode():
        for b in range(_steps_per_epoch(data.entries, options.batch_size)):
            lo, hi = b * options.batch_size, min((b + 1) * options.batch_size, data.entries)
            loss = _batch_loss(projectors, batcher, queries[lo:hi], segments[lo:hi], options.temperature)
            total += float(loss) * (hi - lo)
            weight += hi - lo
    if was_training:
        projectors.visual.train()
        projectors.text.train()
    return total / max(weight, 1)


# --- training ---------------------------------------------------------------------------------


def state_path_for(checkpoint: str | os.PathLike[str]) -> str:
    """Where the resumable training state of a run writing ``checkpoint`` lives."""
    return f"{os.fspath(checkpoint)}.state"


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but torch sees no GPU; use 'auto' or 'cpu'")
    return torch.device(device)


def read_resume_state(path: str) -> TrainState:
    """The training state at ``path``; a projector checkpoint is followed to its ``.state``."""
    try:
        return load_train_state(path)
    except ValueError:
        beside = state_path_for(path)
        if os.path.isfile(beside) and _is_projector_checkpoint(path):
            return load_train_state(beside)
        raise


def _is_projector_checkpoint(path: str) -> bool:
    return is_checkpoint(path, PROJECTOR_CHECKPOINT)


def train_projectors(
    train_records: Sequence[QueryRecord],
    frames: FrameSource | Mapping[str, FrameFeatures],
    text_features: Mapping[str, np.ndarray],
    out: str | os.PathLike[str],
    options: ProjectorTrainingOptions = ProjectorTrainingOptions(),
    val_records: Sequence[QueryRecord] | None = None,
    val_text_features: Mapping[str, np.ndarray] | None = None,
    resume: str | os.PathLike[str] | None = None,
    state_path: str | os.PathLike[str] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    **meta: Any,
) -> tuple[Projectors, ProjectorTrainingSummary]:
    """Train a visual and a text projector on ``train_records`` and write them to ``out``.

    ``frames`` gives each video's per-second CLIP features, ``text_features`` each query id's
    CLIP text feature. The training state goes to ``state_path`` (``<out>.state``) after every
    epoch; ``resume`` continues from such a state (or from a checkpoint beside its ``.state``),
    which must come from a run with the same options and data. ``meta`` (``clip_model``, the
    data files...) is stored in the checkpoint with ``step``, ``epoch``, ``segment_length_s``
    and ``frame_rate``. ``on_step(step, loss)`` runs after every optimiser step."""
    options.validate()
    t_start = time.perf_counter()
    out = os.fspath(out)
    state_file = os.fspath(state_path) if state_path is not None else state_path_for(out)
    device = _resolve_device(options.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    data = prepare_training_data(train_records, frames, text_features, options.segment_length_s, options.positive_overlap)
    val = None
    if val_records:
        val = prepare_training_data(
            val_records, frames, val_text_features if val_text_features is not None else text_features,
            options.segment_length_s, options.positive_overlap, what="validation",
        )
        if val.entries < 2:
            log.warning("fewer than two validation pairs: no validation loss")
            val = None
    shape = ProjectorShape(
        in_dim=int(data.frames.shape[2]),
        text_in_dim=int(data.text.shape[1]),
        dim=options.dim,
        layers=options.layers,
        heads=options.heads,
        max_frames=max(32, int(data.frames.shape[1])),
        dropout=options.dropout,
    )
    steps_per_epoch = _steps_per_epoch(data.entries, options.batch_size)
    if steps_per_epoch < 1:
        raise ValueError(f"only {data.entries} training pair(s): a batch needs at least two")
    total_steps = steps_per_epoch * options.epochs

    seed_everything(options.seed)
    projectors = build_projectors(shape).to(str(device))
    modules = {"visual": projectors.visual, "text": projectors.text}
    params = [p for m in modules.values() for p in m.parameters()]
    optimizer = build_optimizer(params, lr=options.lr, weight_decay=options.weight_decay)
    scheduler = warmup_cosine(optimizer, total_steps, options.warmup_fraction)
    step, epoch, history = 0, 0, []
    resumed_from = None
    if resume is not None:
        state = read_resume_state(os.fspath(resume))
        _check_resume(state, options, shape, data, os.fspath(resume))
        state.restore(modules, optimizer, scheduler)
        step, epoch = state.step, state.epoch
        history = list(state.extra.get("history", []))
        resumed_from = os.fspath(resume)
        log.info("resuming projector training", extra={"state": resumed_from, "step": step, "epoch": epoch})

    def snapshot(completed_epochs: int) -> None:
        extra = {"history": history, "data": data.fingerprint(), "shape": dataclasses.asdict(shape)}
        save_train_state(
            state_file, TrainState.capture(modules, optimizer, scheduler, step, completed_epochs, options.resume_view(), extra)
        )

    batcher = _Batcher(data, device)
    val_batcher = _Batcher(val, device) if val is not None else None
    log.info(
        "projector training",
        extra={"device": str(device), "steps": total_steps, "steps_per_epoch": steps_per_epoch, "start_step": step,
               "shape": dataclasses.asdict(shape), **data.fingerprint()},
    )
    projectors.visual.train()
    projectors.text.train()
    steps_here = 0
    step_seconds = 0.0  # time in optimiser steps only: not validation, not checkpoints
    last_loss = float("nan")
    window_loss, window_steps, t_window = torch.zeros((), device=device), 0, time.perf_counter()
    for epoch_index in range(epoch, options.epochs):
        queries, segments = batcher.plan(*_epoch_plan(data, options.seed, epoch_index))
        # Losses add up on the device: no host sync per step (on_step and log lines excepted).
        epoch_loss, epoch_steps = torch.zeros((), device=device), 0
        t_steps = time.perf_counter()
        for b in range(step - epoch_index * steps_per_epoch, steps_per_epoch):
            lo, hi = b * options.batch_size, (b + 1) * options.batch_size
            loss = _batch_loss(projectors, batcher, queries[lo:hi], segments[lo:hi], options.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            steps_here += 1
            detached = loss.detach()
            epoch_loss += detached
            epoch_steps += 1
            window_loss += detached
            window_steps += 1
            if on_step is not None:
                last_loss = float(detached)
                on_step(step, last_loss)
            if options.log_every and step % options.log_every == 0:
                now = time.perf_counter()
                rate = window_steps / max(now - t_window, 1e-9)
                mean = float(window_loss) / window_steps
                log.info(
                    f"projector training step {step}/{total_steps}: loss {mean:.4f}, {rate:.1f} steps/s",
                    extra={"step": step, "of": total_steps, "epoch": epoch_index + 1, "loss": mean,
                           "lr": scheduler.get_last_lr()[0], "steps_per_s": rate},
                )
                window_loss, window_steps, t_window = torch.zeros((), device=device), 0, time.perf_counter()
            if options.save_every_steps and step % options.save_every_steps == 0 and b + 1 < steps_per_epoch:
                last_loss = float(detached)  # syncs: the step's time is complete
                step_seconds += time.perf_counter() - t_steps
                snapshot(epoch_index)
                t_steps = t_window = time.perf_counter()
        if epoch_steps:
            last_loss = float(detached)
        mean_loss = float(epoch_loss) / max(epoch_steps, 1)
        step_seconds += time.perf_counter() - t_steps
        record = {"epoch": epoch_index + 1, "step": step, "loss": mean_loss}
        if val is not None:
            record["val_loss"] = _evaluate_loss(projectors, val, val_batcher, options)
        history.append(record)
        snapshot(epoch_index + 1)
        val_text = f", validation loss {record['val_loss']:.4f}" if "val_loss" in record else ""
        log.info(
            f"projector epoch {epoch_index + 1}/{options.epochs} done: loss {record['loss']:.4f}{val_text}",
            extra={**record, "seconds": time.perf_counter() - t_start},
        )
        t_window = time.perf_counter()

    projectors.eval()
    final_meta = {
        "step": step,
        "epoch": options.epochs,
        "segment_length_s": options.segment_length_s,
        "frame_rate": data.rate,
        "positive_overlap": options.positive_overlap,
        "temperature": options.temperature,
        **meta,
    }
    save_projectors(out, projectors, **final_meta)
    projectors.source = out
    projectors.meta = final_meta
    final = history[-1] if history else {}
    summary = ProjectorTrainingSummary(
        steps=step,
        epochs=options.epochs,
        final_loss=float(final.get("loss", float("nan"))),
        last_loss=last_loss,
        val_loss=final.get("val_loss"),
        steps_per_s=steps_here / step_seconds if step_seconds > 0 and steps_here else 0.0,
        seconds=time.perf_counter() - t_start,
        checkpoint=out,
        state_path=state_file,
        device=str(device),
        resumed_from=resumed_from,
        data=data.fingerprint(),
        history=history,
    )
    log.info("projector training done", extra={k: v for k, v in summary.to_dict().items() if k != "history"})
    return projectors, summary


def _check_resume(state: TrainState, options: ProjectorTrainingOptions, shape: ProjectorShape, data: ProjectorTrainingData, path: str) -> None:
    saved = state.options
    now = options.resume_view()
    differ = {k: (saved.get(k), now[k]) for k in now if saved.get(k) != now[k]}
    if differ:
        detail = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in differ.items())
        raise ValueError(f"cannot resume from {path}: it was written with other options ({detail})")
    if state.extra.get("data") != data.fingerprint():
        raise ValueError(
            f"cannot resume from {path}: it was trained on other data ({state.extra.get('data')} vs {data.fingerprint()}); "
            f"resume with the same training file and features"
        )
    if state.extra.get("shape") not in (None, dataclasses.asdict(shape)):
        raise ValueError(f"cannot resume from {path}: its projector shape {state.extra.get('shape')} differs from {dataclasses.asdict(shape)}")
