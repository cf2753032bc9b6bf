"""A synthetic moment-retrieval benchmark for CI: small, seeded, and learnable.

The world has K event types. Each has a caption (a short English sentence, "a dog runs
across a park") and a visual prototype (a random unit vector in the feature space). A video is
a sequence of per-second features (1 row per second, L2-normalised): a slowly drifting
background of its own, with a few planted event instances, each the prototype of its type plus
noise for several seconds at a random time.

Every planted instance gives one query: its type's caption. Its ground truth is the instance
itself (relevance 4) and the other instances of the same type (relevance 2): the query cannot
tell them apart, so a good ranking puts all of them first and the planted one anywhere among
them. Videos are split into train / val / test; a training query's moments lie in training
videos only (training never sees the other videos' features), while a val / test query lists
its type's instances across the whole corpus, so it can be evaluated against a catalog holding
every video.

Text features come from a given text encoder (tests pass the ``spr-tiny`` CLIP's
``encode_texts`` with random weights): nothing relates them to the prototypes until the
projectors are trained, which is what training must fix. The same caption always maps to the
same type and so to the same prototype, so the mapping can be learnt.

:meth:`SyntheticBenchmark.write` produces the files the real pipeline reads: the features in the
TVR HDF5 layout (``features.h5``, one ``(T, D)`` dataset per video, 1-s rows: ``spr import
features.h5 --manifest durations.jsonl``), the duration manifest, ``train.jsonl`` /
``val.jsonl`` / ``test.jsonl`` in TVR-Ranking format, the query features
(``query_features.h5``, keyed by query id) and ``benchmark.json`` describing it all.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spr.features import FrameFeatures

from spr.data.tvr_ranking import QueryRecord, TrainingMoment, write_query_features, write_query_records

__all__ = ["EventType", "PlantedEvent", "SyntheticBenchmark", "make_synthetic_benchmark", "SPLITS"]

SPLITS = ("train", "val", "test")
PLANTED_RELEVANCE = 4.0
SAME_TYPE_RELEVANCE = 2.0

_SUBJECTS = (
    "a red car", "a dog", "a woman", "an old man", "a child", "a black cat", "a young man", "a chef",
    "a small bird", "a girl", "a police officer", "a horse",
)
_ACTIONS = (
    "drives past", "runs across", "walks into", "waits outside", "jumps over", "sits down in",
    "dances in", "looks around", "rides through", "climbs up", "sleeps in", "hides behind",
)
_PLACES = (
    "a house", "a park", "the kitchen", "a bus stop", "a fence", "the living room", "the street",
    "a small boat", "the forest", "a ladder", "the garden", "a wall",
)


@dataclass(frozen=True)
class EventType:
    index: int
    caption: str
    prototype: np.ndarray  # (dim,) unit vector


@dataclass(frozen=True)
class PlantedEvent:
    """One instance: ``[start_s, end_s)`` of ``video_name`` shows type ``kind``."""

    video_name: str
    kind: int
    start_s: float
    end_s: float
    split: str


@dataclass
class SyntheticBenchmark:
    """The generated world and its splits, in memory (:meth:`write` puts it on disk)."""

    seed: int
    dim: int
    types: list[EventType]
    videos: dict[str, FrameFeatures]
    durations: dict[str, float]
    events: list[PlantedEvent]
    splits: dict[str, list[QueryRecord]]
    video_splits: dict[str, str]
    query_features: dict[str, np.ndarray] = field(default_factory=dict)
    text_encoder: str = ""

    @property
    def rate(self) -> float:
        return 1.0

    def split_videos(self, split: str) -> list[str]:
        """Names of the videos in ``split``, sorted."""
        return sorted(name for name, s in self.video_splits.items() if s == split)

    def describe(self) -> dict[str, Any]:
        return {
            "format": "spr-synthetic/1",
            "seed": self.seed,
            "dim": self.dim,
            "rate": self.rate,
            "clip_length_s": 1.0 / self.rate,
            "videos": len(self.videos),
            "videos_per_split": {s: len(self.split_videos(s)) for s in SPLITS},
            "hours": round(sum(self.durations.values()) / 3600, 3),
            "events": len(self.events),
            "types": [{"index": t.index, "caption": t.caption} for t in self.types],
            "queries": {s: len(r) for s, r in self.splits.items()},
            "text_encoder": self.text_encoder,
            "relevance": {"planted": PLANTED_RELEVANCE, "same_type": SAME_TYPE_RELEVANCE},
        }

    def write(self, outdir: str | os.PathLike[str]) -> dict[str, str]:
        """Write the benchmark's files under ``outdir``; returns ``{role: path}``."""
        import h5py

        root = Path(outdir).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        paths = {
            "features": root / "features.h5",
            "manifest": root / "durations.jsonl",
            **{split: root / f"{split}.jsonl" for split in SPLITS},
            "benchmark": root / "benchmark.json",
        }
        tmp = f"{paths['features']}.tmp-{os.getpid()}"
        with h5py.File(tmp, "w") as h5:
            for name in sorted(self.videos):
                h5.create_dataset(name, data=np.asarray(self.videos[name].features, dtype=np.float32))
        os.replace(tmp, paths["features"])
        rows = [json.dumps({"key": n, "video_name": n, "duration": round(self.durations[n], 3)}) for n in sorted(self.videos)]
        paths["manifest"].write_text("\n".join(rows) + "\n")
        for split in SPLITS:
            write_query_records(paths[split], self.splits[split])
        if self.query_features:
            paths["query_features"] = root / "query_features.h5"
            write_query_features(paths["query_features"], self.query_features)
        described = self.describe()
        described["files"] = {k: p.name for k, p in paths.items()}
        paths["benchmark"].write_text(json.dumps(described, indent=2) + "\n")
        return {k: str(p) for k, p in paths.items()}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _captions(count: int, rng: np.random.Generator) -> list[str]:
    combos = len(_SUBJECTS) * len(_ACTIONS) * len(_PLACES)
    if count > combos:
        raise ValueError(f"at most {combos} event types, got {count}")
    # Distinct subjects and actions first, so that captions differ in several words.
    picks = rng.choice(combos, size=count, replace=False)
    out = []
    for i, p in enumerate(picks.tolist()):
        subject = _SUBJECTS[i % len(_SUBJECTS)] if count <= len(_SUBJECTS) else _SUBJECTS[p % len(_SUBJECTS)]
        action = _ACTIONS[(p // len(_SUBJECTS)) % len(_ACTIONS)]
        place = _PLACES[p // (len(_SUBJECTS) * len(_ACTIONS))]
        out.append(f"{subject} {action} {place}")
    if len(set(out)) < count:  # rare collisions of the readable scheme: fall back to the raw product
        out = [
            f"{_SUBJECTS[p % len(_SUBJECTS)]} {_ACTIONS[(p // len(_SUBJECTS)) % len(_ACTIONS)]} "
            f"{_PLACES[p // (len(_SUBJECTS) * len(_ACTIONS))]}"
            for p in picks.tolist()
        ]
    return out


def make_synthetic_benchmark(
    videos: int = 60,
    types: int = 8,
    dim: int = 64,
    seed: int = 0,
    text_encoder: Callable[[Sequence[str]], np.ndarray] | None = None,
    text_encoder_name: str = "",
    duration_s: tuple[float, float] = (48.0, 96.0),
    events_per_video: tuple[int, int] = (1, 3),
    event_s: tuple[int, int] = (6, 14),
    event_strength: float = 1.0,
    noise: float = 1.0,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> SyntheticBenchmark:
    """Generate the benchmark (see the module docstring). ``text_encoder(texts) -> (N, D_text)``
    gives the query features; without one, :attr:`SyntheticBenchmark.query_features` is empty and
    the queries are encoded at training time."""
    if videos < 3:
        raise ValueError(f"need at least 3 videos (one per split), got {videos}")
    if types < 2:
        raise ValueError(f"need at least 2 event types, got {types}")
    if dim < 2:
        raise ValueError(f"feature dimension must be at least 2, got {dim}")
    lo_d, hi_d = duration_s
    lo_e, hi_e = event_s
    if not (0 < lo_e <= hi_e) or not (lo_d <= hi_d) or lo_d < hi_e * events_per_video[1] + 2:
        raise ValueError(
            f"videos of {lo_d}-{hi_d} s cannot hold {events_per_video[1]} events of up to {hi_e} s; "
            f"lengthen the videos or shorten the events"
        )
    rng = np.random.default_rng(seed)
    captions = _captions(types, rng)
    kinds = [EventType(i, c, _unit(rng.standard_normal(dim)).astype(np.float32)) for i, c in enumerate(captions)]

    names = [f"synth_{i:04d}" for i in range(videos)]
    order = rng.permutation(videos)
    n_train = max(1, int(round(split_fractions[0] * videos)))
    n_val = max(1, int(round(split_fractions[1] * videos)))
    n_train = min(n_train, videos - 2)
    n_val = min(n_val, videos - n_train - 1)
    split_of = {}
    for rank, v in enumerate(order.tolist()):
        split_of[names[v]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"

    frames: dict[str, FrameFeatures] = {}
    durations: dict[str, float] = {}
    events: list[PlantedEvent] = []
    for v, name in enumerate(names):
        duration = float(np.round(rng.uniform(lo_d, hi_d), 2))
        rows = int(math.ceil(duration))
        # Background: the video's own base vector plus a slow AR(1) drift.
        base = rng.standard_normal(dim)
        drift = np.empty((rows, dim))
        state = rng.standard_normal(dim)
        for t in range(rows):
            state = 0.9 * state + math.sqrt(1 - 0.81) * rng.standard_normal(dim)
            drift[t] = state
        feats = _unit(base + 0.7 * drift)
        count = int(rng.integers(events_per_video[0], events_per_video[1] + 1))
        taken = np.zeros(rows, dtype=bool)
        for _ in range(count):
            for _attempt in range(50):
                length = int(rng.integers(lo_e, hi_e + 1))
                start = int(rng.integers(0, int(math.floor(duration)) - length + 1))
                if not taken[max(0, start - 1) : start + length + 1].any():
                    break
            else:
                continue
            taken[start : start + length] = True
            kind = int(rng.integers(types))
            # Noise of expected norm ``noise`` around the prototype (norm ``event_strength``).
            planted = event_strength * kinds[kind].prototype + noise * rng.standard_normal((length, dim)) / math.sqrt(dim)
            feats[start : start + length] = _unit(planted + 0.3 * feats[start : start + length])
            events.append(PlantedEvent(name, kind, float(start), float(start + length), split_of[name]))
        frames[name] = FrameFeatures(v, feats.astype(np.float32), 1.0)
        durations[name] = duration

    events.sort(key=lambda e: (e.video_name, e.start_s))
    splits: dict[str, list[QueryRecord]] = {s: [] for s in SPLITS}
    for q, event in enumerate(events):
        query_id = str(q)
        same = [
            e for e in events
            if e.kind == event.kind and e is not event and (event.split != "train" or e.split == "train")
        ]
        moments = [TrainingMoment(event.video_name, event.start_s, event.end_s, PLANTED_RELEVANCE, durations[event.video_name])]
        moments += [TrainingMoment(e.video_name, e.start_s, e.end_s, SAME_TYPE_RELEVANCE, durations[e.video_name]) for e in same]
        splits[event.split].append(QueryRecord(query_id, kinds[event.kind].caption, tuple(moments)))

    query_features: dict[str, np.ndarray] = {}
    if text_encoder is not None:
        encoded = np.asarray(text_encoder([k.caption for k in kinds]), dtype=np.float32)
        if encoded.shape[0] != types:
            raise ValueError(f"the text encoder returned {encoded.shape[0]} features for {types} captions")
        by_caption = {k.caption: encoded[k.index] for k in kinds}
        query_features = {r.query_id: by_caption[r.query] for rs in splits.values() for r in rs}
    return SyntheticBenchmark(seed, dim, kinds, frames, durations, events, splits, split_of, query_features, text_encoder_name)
