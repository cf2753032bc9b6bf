"""Videos with real synthetic speech: espeak-ng sentences at known seconds, in an AAC track.

Speech is espeak-ng's (the Debian package): robotic but real enough that Whisper recognises it,
and fully offline. :func:`write_spoken_video` places each sentence's speech at a given second
over a synthetic video (frames from :func:`.synthetic_video.write_video`, which writes no
audio, so its video packets are remuxed beside an AAC track written here) and returns the spans
during which each sentence is actually audible, measured from the samples. ``spr demo`` and the
speech tests use it; :func:`espeak_available` says whether it can run here.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import Any

import av
import numpy as np

from .synthetic_video import write_video

ESPEAK = "espeak-ng"
# espeak-ng writes 22.05 kHz mono 16-bit WAV; the AAC track keeps that rate, so the decoder
# under test has to resample (to 16 kHz) as it would for a real file.
AUDIO_RATE = 22_050
_FRAME_SAMPLES = 1024  # one AAC frame
# A sample counts as audible above this (16-bit espeak output is exactly 0 between words).
_AUDIBLE = 1e-3

Span = tuple[float, float, str]


def espeak_available() -> bool:
    """True when the espeak-ng command is installed (``apt-get install espeak-ng``)."""
    return shutil.which(ESPEAK) is not None


def speak(text: str, path: str | Path, wpm: int = 150) -> Path:
    """Write ``text`` spoken by espeak-ng (English, ``wpm`` words per minute) to the WAV ``path``."""
    path = Path(path)
    subprocess.run([ESPEAK, "-v", "en-us", "-s", str(wpm), "-w", str(path), text], check=True, capture_output=True)
    return path


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """``((n,) float32 in [-1, 1], sample rate)`` of a mono 16-bit WAV."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise ValueError(f"{path}: expected mono 16-bit PCM")
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return pcm.astype(np.float32) / 32768.0, wav.getframerate()


def spoken_audio(
    duration_s: float, sentences: list[tuple[float, str]], wpm: int = 150, rate: int = AUDIO_RATE
) -> tuple[np.ndarray, list[Span]]:
    """``(samples, spans)``: ``(round(duration_s * rate),)`` float32 with each ``(start_s, text)``
    spoken from ``start_s`` (silence elsewhere), and the ``(start, end, text)`` seconds during
    which each sentence is audible. ValueError when sentences overlap or run past the end."""
    samples = np.zeros(round(duration_s * rate), np.float32)
    spans: list[Span] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (at_s, text) in enumerate(sorted(sentences)):
            speech, wav_rate = read_wav(speak(text, Path(tmp) / f"{i}.wav", wpm))
            if wav_rate != rate:
                raise ValueError(f"espeak-ng wrote {wav_rate} Hz, expected {rate}")
            lo = round(at_s * rate)
            if spans and at_s < spans[-1][1]:
                raise ValueError(f"sentence at {at_s} s starts before the previous one ends ({spans[-1][1]:.2f} s)")
            if lo + len(speech) > len(samples):
                raise ValueError(f"sentence at {at_s} s lasts {len(speech) / rate:.2f} s, past the end ({duration_s} s)")
            samples[lo : lo + len(speech)] = speech
            audible = np.nonzero(np.abs(speech) > _AUDIBLE)[0]
            first, last = (audible[0], audible[-1] + 1) if len(audible) else (0, 0)
            spans.append(((lo + first) / rate, (lo + last) / rate, text))
    return samples, spans


def write_spoken_video(
    path: str | Path,
    duration_s: float,
    sentences: list[tuple[float, str]],
    size: tuple[int, int] = (160, 120),
    fps: float = 5,
    wpm: int = 150,
    **video: Any,
) -> list[Span]:
    """Write a video of ``duration_s`` (frames by :func:`write_video`, ``video`` its options:
    ``pattern``, ``events``, ``seed``...) with an AAC track speaking each ``(start_s, text)`` of
    ``sentences`` from ``start_s``; return the audible spans ``[(start_s, end_s, text)]`` in
    time order."""
    samples, spans = spoken_audio(duration_s, sentences, wpm)
    write_video_with_audio(path, duration_s, samples, size, fps, **video)
    return spans


def write_silent_video(
    path: str | Path, duration_s: float, size: tuple[int, int] = (160, 120), fps: float = 5
) -> Path:
    """Write a video whose AAC track is all silence (a muted recording)."""
    write_video_with_audio(path, duration_s, np.zeros(round(duration_s * AUDIO_RATE), np.float32), size, fps)
    return Path(path)


def write_video_with_audio(
    path: str | Path,
    duration_s: float,
    samples: np.ndarray,
    size: tuple[int, int],
    fps: float,
    rate: int = AUDIO_RATE,
    **video: Any,
) -> Path:
    """``write_video``'s frames (``video``: its options) remuxed beside an AAC track of
    ``samples`` (``(n,)`` float32 at ``rate``)."""
    path = Path(path)
    video = {"preset": "ultrafast", **video}
    with tempfile.TemporaryDirectory() as tmp:
        frames_only = write_video(Path(tmp) / f"frames{path.suffix}", duration_s, fps=fps, size=size, **video)
        with av.open(str(frames_only)) as source, av.open(str(path), "w") as out:
            video_in = source.streams.video[0]
            video_out = out.add_stream_from_template(video_in)
            audio_out = out.add_stream("aac", rate=rate, layout="mono")
            for packet in source.demux(video_in):
                if packet.dts is None:  # the demuxer's end-of-stream flush packet
                    continue
                packet.stream = video_out
                out.mux(packet)
            _encode_audio(out, audio_out, samples, rate)
    return path


def _encode_audio(container, stream, samples: np.ndarray, rate: int) -> None:
    for start in range(0, len(samples), _FRAME_SAMPLES):
        frame = av.AudioFrame.from_ndarray(samples[None, start : start + _FRAME_SAMPLES].copy(), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
