"""Text tracks: what is said (speech) and what is written (subtitles) in a video, with timings.

A :class:`Transcript` is one track of one video: timed :class:`Cue` s (a subtitle cue, or one
sentence of speech as the recogniser split it) and, for speech, the timed :class:`Word` s. Ingest
makes them (``spr.ingest.subtitles`` from embedded streams and sidecar files, ``spr.ingest.speech``
from the audio), the feature store keeps them with their timings, the catalog keeps the text of
each segment (:func:`segment_texts`), and the text collections keep that text's embeddings.

A track's name is a :data:`~spr.features.Modality` (:data:`SPEECH`, :data:`SUBTITLES`): it names
the collection its segment embeddings go into (:func:`track_collection`) and the feature-store
file its transcript goes into.

Speech runs across segment boundaries, so a segment's text is every cue that overlaps it
(``context="sentence"``: the whole sentence a word of it belongs to), optionally widened by
``context_s`` seconds on both sides; ``context="words"`` takes only the words spoken inside it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .features import SPEECH, SUBTITLES, VISUAL, Modality, check_modality

__all__ = [
    "SPEECH",
    "SUBTITLES",
    "TEXT_TRACKS",
    "Cue",
    "SegmentContext",
    "Transcript",
    "TrackStatus",
    "Word",
    "segment_texts",
    "track_collection",
]

# The text tracks, in the order they are reported.
TEXT_TRACKS: tuple[Modality, ...] = (SPEECH, SUBTITLES)
# A text collection's name is the visual collection's, this, and the track: `segments__speech`.
# (Milvus allows only letters, digits and '_' in names, so no '.'.)
_COLLECTION_SEPARATOR = "__"
# A cue longer than this is cut: one segment's text must stay a few sentences, and a broken
# subtitle file must not put megabytes into one catalog row.
MAX_CUE_CHARS = 2_000
MAX_SEGMENT_TEXT_CHARS = 4_000


class SegmentContext(enum.StrEnum):
    """How much text a segment takes from the cues around it."""

    SENTENCE = "sentence"  # every cue (sentence) overlapping the segment, whole
    WORDS = "words"  # only the words spoken inside it (speech; subtitles fall back to cues)


class TrackStatus(enum.StrEnum):
    """What happened to one track of one video (the catalog row's ``tracks``)."""

    INDEXED = "indexed"  # text found and embedded
    EMPTY = "empty"  # looked and found none (no audio, silence, no subtitles): not an error
    FAILED = "failed"  # the track failed (broken subtitle file, ASR error); ``error`` says why
    OFF = "off"  # turned off by configuration or flag


@dataclass(frozen=True)
class Word:
    """One recognised word: ``[start_s, end_s)`` seconds."""

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Cue:
    """One subtitle cue or one spoken sentence: ``[start_s, end_s)`` seconds and its text."""

    start_s: float
    end_s: float
    text: str

    def overlaps(self, start_s: float, end_s: float) -> bool:
        return self.start_s < end_s and start_s < self.end_s


@dataclass(frozen=True)
class Transcript:
    """One text track of one video. ``cues`` in time order; ``words`` (speech only) in time
    order; ``language`` an ISO code when known; ``source`` where it came from, for people
    (``"sidecar talk.en.srt"``, ``"stream 2 (subrip)"``, ``"faster-whisper tiny.en"``)."""

    track: Modality
    cues: tuple[Cue, ...]
    words: tuple[Word, ...] = ()
    language: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        check_modality(self.track)
        if self.track == VISUAL:
            raise ValueError("a transcript is a text track (speech, subtitles), not the visual modality")

    @property
    def empty(self) -> bool:
        return not any(c.text.strip() for c in self.cues)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"track", "language", "source", "cues": [[start, end, text]...], "words": [...]}``."""
        return {
            "track": self.track,
            "language": self.language,
            "source": self.source,
            "cues": [[c.start_s, c.end_s, c.text] for c in self.cues],
            "words": [[w.start_s, w.end_s, w.text] for w in self.words],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Transcript":
        return cls(
            track=str(data["track"]),
            cues=tuple(Cue(float(s), float(e), str(t)) for s, e, t in data.get("cues", ())),
            words=tuple(Word(float(s), float(e), str(t)) for s, e, t in data.get("words", ())),
            language=str(data.get("language", "")),
            source=str(data.get("source", "")),
        )


def clean_cues(cues: Iterable[Cue], duration_s: float | None = None) -> tuple[Cue, ...]:
    """``cues`` sorted by start, without empty text, with non-finite or reversed times dropped,
    clipped to ``[0, duration_s]`` and each cut to :data:`MAX_CUE_CHARS`."""
    out = []
    for c in cues:
        text = " ".join(c.text.split())[:MAX_CUE_CHARS]
        start, end = float(c.start_s), float(c.end_s)
        if not text or not (math.isfinite(start) and math.isfinite(end)) or end < start:
            continue
        start = max(0.0, start)
        if duration_s is not None:
            if start >= duration_s:
                continue
            end = min(end, float(duration_s))
        out.append(Cue(start, max(end, start), text))
    return tuple(sorted(out, key=lambda c: (c.start_s, c.end_s)))


def segment_texts(
    transcript: Transcript,
    start_s: np.ndarray | Sequence[float],
    end_s: np.ndarray | Sequence[float],
    context: SegmentContext | str = SegmentContext.SENTENCE,
    context_s: float = 0.0,
) -> list[str]:
    """The text of each segment ``[start_s[i], end_s[i])`` (``(n,)`` seconds): the cues (or, with
    ``context="words"`` and words present, the words) overlapping ``[start - context_s,
    end + context_s)``, joined in time order; ``""`` where none does. A zero-length cue counts
    where its start falls."""
    context = SegmentContext(context)
    starts = np.asarray(start_s, dtype=np.float64)
    ends = np.asarray(end_s, dtype=np.float64)
    if starts.shape != ends.shape or starts.ndim != 1:
        raise ValueError(f"segment starts and ends must be (n,) arrays of one length; got {starts.shape}, {ends.shape}")
    if context_s < 0 or not math.isfinite(context_s):
        raise ValueError(f"context_s must be a finite number of seconds >= 0, got {context_s}")
    pieces: Sequence[Cue | Word] = transcript.cues
    if context is SegmentContext.WORDS and transcript.words:
        pieces = transcript.words
    pieces = sorted(pieces, key=lambda p: p.start_s)
    p_start = np.array([p.start_s for p in pieces], dtype=np.float64)
    p_end = np.array([max(p.end_s, p.start_s + 1e-6) for p in pieces], dtype=np.float64)
    out = []
    for lo, hi in zip(starts - context_s, ends + context_s):
        hit = np.nonzero((p_start < hi) & (p_end > lo))[0]
        text = " ".join(pieces[i].text.strip() for i in hit if pieces[i].text.strip())
        out.append(text[:MAX_SEGMENT_TEXT_CHARS])
    return out


def track_collection(base: str, track: Modality) -> str:
    """The collection of ``track`` beside the visual collection ``base``: ``base`` itself for
    :data:`VISUAL`, ``<base>__<track>`` otherwise (``segments__speech``)."""
    check_modality(track)
    return base if track == VISUAL else f"{base}{_COLLECTION_SEPARATOR}{track}"


@dataclass(frozen=True)
class TrackReport:
    """One track's outcome for one video, as the catalog row's ``tracks[track]`` records it."""

    status: TrackStatus
    source: str = ""
    error: str = ""
    cues: int = 0
    segments: int = 0  # segments with text
    language: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"status": self.status.value}
        for name in ("source", "error", "language"):
            if getattr(self, name):
                d[name] = getattr(self, name)
        if self.cues:
            d["cues"] = self.cues
        if self.segments:
            d["segments"] = self.segments
        return d


@dataclass(frozen=True)
class SegmentText:
    """One text track of one video ready to publish: ``texts`` ``(n,)`` one per segment
    (ordinal order, ``""`` = no text there); ``embeddings`` ``(m, d)`` float32 unit vectors of
    the ``m`` non-empty ones, in ordinal order; the ``transcript`` they came from.

    Imported text features come without their text: then ``vector_ordinals`` ``(m,)`` says
    which segments the embeddings belong to, and ``texts`` may be all ``""``."""

    texts: tuple[str, ...]
    embeddings: np.ndarray
    transcript: Transcript
    report: TrackReport = field(default_factory=lambda: TrackReport(TrackStatus.INDEXED))
    model: str = ""  # the sentence encoder's identity: recorded with the track's collection
    vector_ordinals: np.ndarray | None = None

    @property
    def ordinals(self) -> np.ndarray:
        """``(m,)`` int64 ordinals of the segments the embeddings belong to (those with text)."""
        if self.vector_ordinals is not None:
            return np.asarray(self.vector_ordinals, dtype=np.int64)
        return self.text_ordinals

    @property
    def text_ordinals(self) -> np.ndarray:
        """``(k,)`` int64 ordinals of the segments that have text."""
        return np.array([i for i, t in enumerate(self.texts) if t], dtype=np.int64)

    @property
    def nbytes(self) -> int:
        return int(np.asarray(self.embeddings).nbytes) + sum(len(t) for t in self.texts)
