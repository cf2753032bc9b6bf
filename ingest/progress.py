"""Live progress of an ingest: videos done / total, video-seconds per second, segments per
second, ETA and failures, on one line (redrawn on a terminal, a line every few seconds in a
log file)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class IngestProgress:
    """Counts what the writer reports and draws it. ``stream=None`` keeps it silent."""

    def __init__(self, total: int, stream: TextIO | None = sys.stderr, every_s: float = 5.0) -> None:
        self.total = total
        self.stream = stream
        self.every_s = every_s
        self.done = self.failed = self.skipped = self.segments = self.frames = 0
        self.video_s = 0.0
        self._t0 = time.monotonic()
        self._last = 0.0
        self._tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.skipped

    def rates(self) -> tuple[float, float, float]:
        """``(video-seconds/s, segments/s, videos/s)`` since the start."""
        wall = max(time.monotonic() - self._t0, 1e-9)
        return self.video_s / wall, self.segments / wall, self.done / wall

    def eta_s(self) -> float | None:
        left = self.total - self.finished
        if left <= 0:
            return 0.0
        processed = self.done + self.failed
        if processed == 0:
            return None
        per_video = (time.monotonic() - self._t0) / processed
        return left * per_video

    def line(self) -> str:
        vs, segs, _ = self.rates()
        return (
            f"ingest {self.finished}/{self.total} videos ({self.skipped} skipped, {self.failed} failed) | "
            f"{vs:.1f} video-s/s | {segs:.1f} segments/s | ETA {format_eta(self.eta_s())}"
        )

    def update(self, done: int = 0, failed: int = 0, skipped: int = 0, video_s: float = 0.0, segments: int = 0, frames: int = 0) -> None:
        self.done += done
        self.failed += failed
        self.skipped += skipped
        self.video_s += video_s
        self.segments += segments
        self.frames += frames
        self.refresh(force=self._tty)

    def refresh(self, force: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.5 if self._tty else self.every_s):
            return
        self._last = now
        if self._tty:
            self.stream.write("\r\x1b[2K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.stream is None:
            return
        self.stream.write(("\r\x1b[2K" if self._tty else "") + self.line() + "\n")
        self.stream.flush()
