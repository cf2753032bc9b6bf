"""Broken and odd media files for the decoder and ingest tests (test fixtures, not shipped).

The well-formed synthetic videos come from :mod:`spr.ingest.synthetic_video` (``spr demo``
and the benchmarks write them too); these are the files ingest must survive.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_audio_only(path: str | Path, duration_s: float, sample_rate: int = 16_000) -> Path:
    """Write an AAC file with a 440 Hz tone and no video stream (use ``.m4a`` or ``.mp4``)."""
    path = Path(path)
    frame_samples = 1024
    total = round(duration_s * sample_rate)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        for start in range(0, total, frame_samples):
            t = (start + np.arange(frame_samples)) / sample_rate
            tone = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_corrupt(path: str | Path, n_bytes: int = 8192, seed: int = 0) -> Path:
    """Write ``n_bytes`` random bytes (give it a video extension: that is the point)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).bytes(n_bytes))
    return path


def truncate_copy(src: str | Path, dst: str | Path, fraction: float) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst``, like an interrupted download."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst
