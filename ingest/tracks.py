"""The text-track mapper: subtitles and speech of one video -> per-segment texts -> embeddings.

For each video, beside its frames:

* **subtitles** (:mod:`.subtitles`): the manifest's subtitle files, sidecar files beside the video
  and embedded subtitle streams, read in the decode worker (cheap);
* **speech** (:mod:`.speech`): the audio, decoded in its own task, transcribed by the ASR stage
  (a Ray actor of its own, ``num_gpus`` on GPU nodes, or this process for the inline executor).

:class:`TextTrackEncoder` turns each transcript into the text of every 4-s segment
(:func:`spr.text_tracks.segment_texts`) and embeds the non-empty ones with the sentence encoder.
A track that fails (a broken subtitle file, an ASR error) fails alone: its report says why and
the video is still indexed visually; a video without audio, or silent, simply has no speech text.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from spr.features import SPEECH, SUBTITLES, Modality
from spr.segments import segment_bounds
from spr.text_tracks import (
    TEXT_TRACKS,
    SegmentContext,
    SegmentText,
    TrackReport,
    TrackStatus,
    Transcript,
    clean_cues,
    segment_texts,
)

from .sources import VideoSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackSettings:
    """What the text-track stage needs; plain values so Ray can ship it."""

    speech: bool
    subtitles: bool
    subtitles_max_bytes: int
    text_model: str
    text_device: str
    text_batch_size: int
    context: str
    context_s: float
    segment_length_s: float

    @classmethod
    def from_config(cls, config: Any, speech: bool | None = None, subtitles: bool | None = None) -> "TrackSettings":
        """From ``config``; ``speech``/``subtitles`` override the configured switches (CLI flags)."""
        return cls(
            speech=config.speech.enabled if speech is None else speech,
            subtitles=config.subtitles.enabled if subtitles is None else subtitles,
            subtitles_max_bytes=config.subtitles.max_file_bytes,
            text_model=config.text.model,
            text_device=config.text.device,
            text_batch_size=config.text.batch_size,
            context=str(config.text.context),
            context_s=config.text.context_s,
            segment_length_s=config.segments.length_s,
        )

    @property
    def enabled(self) -> tuple[Modality, ...]:
        return tuple(t for t, on in ((SPEECH, self.speech), (SUBTITLES, self.subtitles)) if on)


@dataclass(frozen=True)
class TrackOutcome:
    """One video's text tracks: ``texts`` by track (only tracks with text), ``reports`` for every
    track, ``warnings`` for the catalog row."""

    texts: Mapping[Modality, SegmentText]
    reports: Mapping[Modality, TrackReport]
    warnings: tuple[str, ...]


class TextTrackEncoder:
    """The sentence encoder, loaded once; turns transcripts into publishable segment texts."""

    def __init__(self, settings: TrackSettings) -> None:
        self.settings = settings
        self._encoder = None

    @property
    def encoder(self) -> Any:
        """The sentence encoder, loaded on first use: a corpus without speech or subtitles
        never pays for it (loading transformers takes seconds)."""
        if self._encoder is None:
            from spr.models.text import load_sentence_encoder

            s = self.settings
            self._encoder = load_sentence_encoder(s.text_model, s.text_device, s.text_batch_size)
        return self._encoder

    def read_subtitles(self, source: VideoSource) -> tuple[Transcript | None, list[str], str]:
        """``(transcript or None, warnings, error)``: the video's subtitles; never raises."""
        if not self.settings.subtitles:
            return None, [], ""
        from .subtitles import read_subtitles

        try:
            transcript, warnings = read_subtitles(source, self.settings.subtitles_max_bytes)
            return transcript, list(warnings), ""
        except Exception as exc:  # the visual ingest must go on whatever a subtitle file holds
            log.warning("subtitles unreadable", extra={"video_key": source.key, "error": str(exc)})
            return None, [f"subtitles: {exc}"], f"{type(exc).__name__}: {exc}"

    def encode(
        self,
        duration_s: float,
        transcripts: Mapping[Modality, Transcript | None],
        errors: Mapping[Modality, str],
        warnings: list[str],
    ) -> TrackOutcome:
        """Segment texts and embeddings of every enabled track. ``transcripts`` by track (None:
        nothing found); ``errors`` by track (the track failed with this reason)."""
        s = self.settings
        bounds = segment_bounds(duration_s, s.segment_length_s)
        texts: dict[Modality, SegmentText] = {}
        reports: dict[Modality, TrackReport] = {}
        for track in TEXT_TRACKS:
            if track not in s.enabled:
                reports[track] = TrackReport(TrackStatus.OFF)
                continue
            if errors.get(track):
                reports[track] = TrackReport(TrackStatus.FAILED, error=errors[track])
                continue
            transcript = transcripts.get(track)
            if transcript is not None:
                transcript = Transcript(
                    track, clean_cues(transcript.cues, duration_s), transcript.words, transcript.language,
                    transcript.source,
                )
            if transcript is None or transcript.empty:
                source = transcript.source if transcript is not None else ""
                reports[track] = TrackReport(TrackStatus.EMPTY, source=source)
                continue
            per_segment = segment_texts(transcript, bounds.start_s, bounds.end_s, SegmentContext(s.context), s.context_s)
            wanted = [t for t in per_segment if t]
            if not wanted:
                reports[track] = TrackReport(TrackStatus.EMPTY, source=transcript.source, cues=len(transcript.cues))
                continue
            try:
                vectors = self.encoder.encode(wanted)
            except Exception as exc:
                reports[track] = TrackReport(TrackStatus.FAILED, source=transcript.source, error=f"embedding failed: {exc}")
                continue
            report = TrackReport(
                TrackStatus.INDEXED,
                source=transcript.source,
                cues=len(transcript.cues),
                segments=len(wanted),
                language=transcript.language,
            )
            reports[track] = report
            texts[track] = SegmentText(
                tuple(per_segment), np.asarray(vectors, np.float32), transcript, report, self.encoder.identity
            )
        for track, report in reports.items():
            if report.status is TrackStatus.FAILED:
                warnings.append(f"{track}: {report.error}")
        return TrackOutcome(texts, reports, tuple(dict.fromkeys(warnings)))


def video_tracks(
    encoder: TextTrackEncoder,
    source: VideoSource,
    duration_s: float,
    speech: tuple[Transcript | None, str] | None,
) -> TrackOutcome:
    """One video's :class:`TrackOutcome`: its subtitles read here, its speech as the ASR stage
    answered ``(transcript or None, error)`` (None: speech is off)."""
    subtitles, warnings, error = encoder.read_subtitles(source)
    transcripts: dict[Modality, Transcript | None] = {SUBTITLES: subtitles}
    errors: dict[Modality, str] = {SUBTITLES: error}
    if speech is not None:
        transcripts[SPEECH], errors[SPEECH] = speech
    return encoder.encode(duration_s, transcripts, errors, warnings)


def transcribe_file(transcriber: Any, path: str, max_s: float | None = None) -> tuple[Transcript | None, str]:
    """Decode ``path``'s audio and transcribe it in this process: ``(transcript, "")``, or
    ``(None, reason)`` when the track failed. No audio is an empty transcript, not a failure."""
    from .speech import decode_audio

    try:
        audio = decode_audio(path, max_s=max_s)
    except Exception as exc:
        return None, f"audio could not be decoded: {exc}"
    return transcribe_audio(transcriber, audio)


def transcribe_audio(transcriber: Any, audio: np.ndarray | None) -> tuple[Transcript | None, str]:
    """``(transcript, "")`` or ``(None, reason)``: one ASR call that fails alone."""
    try:
        return transcriber.transcribe(audio), ""
    except Exception as exc:
        log.warning("speech recognition failed", extra={"error": str(exc)})
        return None, f"speech recognition failed: {exc}"
