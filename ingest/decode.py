"""Streaming frame sampling with PyAV: a video file -> upright RGB frames at a fixed rate.

Sampling rule: for ``fps`` samples per second, sample ``i`` (``i = 0 .. n - 1`` with
``n = count_expected_frames(duration_s, fps)``) is taken at ``t_i = i / fps`` seconds after
the video stream's start, and shows **the frame on screen at t_i**: the last decoded frame
whose presentation time is ``<= t_i`` (1 ms of slack absorbs timestamp rounding). Before the
first frame, the first frame stands in. After the last frame, the last frame stays on screen
until the end. Presentation timestamps, not frame counts, decide, so variable frame rate
and B-frame reordering need no special handling.

Decoding is sequential (``container.decode``) and holds two decoded frames (the one on
screen and the one just decoded) at a time, so memory does not grow with the video's
length; a frame is converted to RGB only when sampled.

Rotation: FFmpeg exposes a video's display matrix (phone clips shot in portrait) as frame
side data; PyAV 18.1 reads it as ``VideoFrame.rotation``, the counter-clockwise angle in
degrees in [-180, 180] (there is no stream-level accessor). Sampled images are rotated by
it, so they come out upright.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np

__all__ = [
    "DecodeError",
    "SampledFrame",
    "VideoProbe",
    "count_expected_frames",
    "decode_rate_fps",
    "probe_video",
    "sample_frames",
]

# A duration like 10.000000001 s (container rounding) must not add a sample at t = 10.
_EPSILON_S = 1e-6
# Timestamps in coarse time bases (1/90000, ms) land a hair after the exact target time.
_PTS_SLACK_S = 1e-3
# How far short of the claimed duration the frames may end before the file counts as
# truncated. A video stream's own duration is exact (MP4: the sum of its sample durations);
# a container's also counts audio, which often outlasts the video by a fraction of a second.
_TRUNCATION_SLACK_S = 1.0
_CONTAINER_DURATION_SLACK = 0.05


class DecodeError(Exception):
    """A video cannot be decoded (fully); ``reason`` says what is wrong and what to do."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode {self.path}: {reason}")

    def __reduce__(self):  # keep picklable across process pools
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class VideoProbe:
    """What a video file holds, read from its metadata and first frame.

    ``width``/``height`` are the stored (coded) size; ``rotation_deg`` in {0, 90, 180, 270}
    is the counter-clockwise display rotation, so the picture is shown ``display_size``.
    For a file without a video stream, ``has_video`` is False, the size 0 and ``codec`` ""."""

    duration_s: float
    width: int
    height: int
    rotation_deg: int
    avg_fps: float | None
    codec: str
    has_video: bool

    @property
    def display_size(self) -> tuple[int, int]:
        """``(width, height)`` after rotation."""
        if self.rotation_deg in (90, 270):
            return self.height, self.width
        return self.width, self.height


class SampledFrame(NamedTuple):
    """Sample ``index`` of a video: ``time_s = index / fps`` and the frame on screen then,
    ``image``: ``(H, W, 3)`` uint8 RGB, upright, C-contiguous."""

    index: int
    time_s: float
    image: np.ndarray


def count_expected_frames(duration_s: float, fps: float) -> int:
    """Samples in a ``duration_s`` video at ``fps``: ``ceil(duration_s * fps)`` (a 10.0 s
    video at 1 fps gives 10, at t = 0 .. 9; a 10.5 s one gives 11)."""
    if not fps > 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if not duration_s >= 0 or not math.isfinite(duration_s):
        raise ValueError(f"duration must be a finite number of seconds >= 0, got {duration_s}")
    return max(0, math.ceil(duration_s * fps - _EPSILON_S))


def probe_video(path: str | os.PathLike[str]) -> VideoProbe:
    """Read a video's duration, size, rotation, frame rate and codec.

    Duration: the video stream's, else the container's, else (no metadata) the end of the
    last video packet, found by demuxing the whole file without decoding. Rotation needs
    the first frame decoded. Raises DecodeError when the file cannot be opened or its video
    stream has no decodable frame; an audio-only file gives ``has_video=False``."""
    with _open(path) as container:
        stream = _video_stream(container)
        if stream is None:
            duration = container.duration / av.time_base if container.duration else 0.0
            return VideoProbe(duration, 0, 0, 0, None, "", has_video=False)
        duration, _ = _metadata_duration(container, stream)
        first = _first_frame(container, stream, path)
        if duration is None:
            duration = _demuxed_duration(container, stream, path)
        return VideoProbe(
            duration_s=duration,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            rotation_deg=first.rotation % 360,
            avg_fps=float(stream.average_rate) if stream.average_rate else None,
            codec=stream.codec_context.name,
            has_video=True,
        )


def sample_frames(
    path: str | os.PathLike[str], fps: float = 1.0, size: int | None = None
) -> Iterator[SampledFrame]:
    """Stream the samples of a video at ``fps`` per second (see the module's sampling rule).

    ``size``: scale each sampled frame (before rotation) so that its shorter side is
    ``size`` pixels, aspect ratio kept, during the RGB conversion; None keeps the stored
    size. Errors surface on iteration, as DecodeError: at the first ``next`` for a missing,
    corrupt, audio-only or frame-less file; after the samples it could decode for a
    truncated one, with the time decoding stopped at.
    """
    if not fps > 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if size is not None and size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    with _open(path) as container:
        stream = _video_stream(container)
        if stream is None:
            raise DecodeError(path, _no_video_reason(container))
        stream.thread_type = "AUTO"
        duration, duration_source = _metadata_duration(container, stream)
        yield from _sample(path, container, stream, fps, size, duration, duration_source)


def decode_rate_fps(path: str | os.PathLike[str]) -> float:
    """Decode every frame of the video, without RGB conversion; return frames per second of
    wall time: the ceiling :func:`sample_frames` can reach on this machine."""
    with _open(path) as container:
        stream = _video_stream(container)
        if stream is None:
            raise DecodeError(path, _no_video_reason(container))
        stream.thread_type = "AUTO"
        frames = 0
        start = time.perf_counter()
        try:
            for _ in container.decode(stream):
                frames += 1
        except Exception as exc:
            raise DecodeError(path, f"decoding failed after {frames} frames: {_describe(exc)}") from exc
        elapsed = time.perf_counter() - start
    if frames == 0:
        raise DecodeError(path, "no frames could be decoded: file is corrupt or truncated")
    return frames / max(elapsed, 1e-9)


def _sample(
    path: str | os.PathLike[str],
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    fps: float,
    size: int | None,
    duration: float | None,
    duration_source: str,
) -> Iterator[SampledFrame]:
    n_expected = count_expected_frames(duration, fps) if duration is not None else None
    origin = _seconds(stream.start_time, stream)
    nominal_frame_s = 1 / float(stream.average_rate) if stream.average_rate else 0.0

    frames = container.decode(stream)
    shown: av.VideoFrame | None = None  # the last frame decoded: on screen from shown_time
    shown_time = 0.0
    rotation: int | None = None
    i = 0
    failure: Exception | None = None
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            break
        except Exception as exc:  # av.error.*, and anything else the decoder raises
            failure = exc
            break
        if rotation is None:
            # The display matrix is a stream property: read it once so all samples share a shape.
            rotation = frame.rotation
            if origin is None:
                origin = _seconds(frame.pts, stream) or 0.0
        frame_time = _frame_time(frame, stream, origin, shown_time, nominal_frame_s, first=shown is None)
        while n_expected is None or i < n_expected:
            target = i / fps
            if frame_time <= target + _PTS_SLACK_S:
                break  # this frame, or a later one, is on screen at target
            yield _sample_at(path, i, target, shown if shown is not None else frame, size, rotation)
            i += 1
        shown, shown_time = frame, frame_time
        if n_expected is not None and i >= n_expected:
            # Every sample is out: the rest of the file (past the last sample time) is not
            # needed, and an error there would not change any sample.
            return

    if shown is None or rotation is None:
        reason = "no frames could be decoded: file is corrupt or truncated"
        if failure is not None:
            reason += f" ({_describe(failure)})"
        raise DecodeError(path, reason + "; re-download or re-encode it")

    shown_end = shown_time + _frame_duration_s(shown, stream, nominal_frame_s)
    cut_short = duration is not None and shown_end < duration - _truncation_slack_s(duration, duration_source)
    if failure is None and not cut_short:
        # The last frame stays on screen to the end, even if the metadata says a bit longer.
        end = duration if duration is not None else shown_end
    else:
        # Only what the decoded frames cover is known; the rest of the timeline is lost.
        end = shown_end if duration is None else min(shown_end, duration)
    for j in range(i, count_expected_frames(end, fps)):
        yield _sample_at(path, j, j / fps, shown, size, rotation)

    if failure is not None:
        raise DecodeError(
            path,
            f"decoding failed after the frame at {shown_time:.3f} s (last good frame) of "
            f"{_fmt(duration)}: {_describe(failure)}; the file is corrupt or truncated, "
            f"re-download or re-encode it",
        ) from failure
    if cut_short:
        raise DecodeError(
            path,
            f"frames end at {shown_end:.3f} s (last good frame at {shown_time:.3f} s) but the "
            f"{duration_source} says the video lasts {duration:.3f} s: the file is truncated; "
            f"re-download or re-encode it",
        )


def _sample_at(
    path: str | os.PathLike[str],
    index: int,
    time_s: float,
    frame: av.VideoFrame,
    size: int | None,
    rotation: int,
) -> SampledFrame:
    """Sample ``index`` showing ``frame``. A frame on screen for several samples is converted
    for each: repeats are rare (sampling faster than the video's rate) and the samples are
    then independent arrays, safe to edit in place."""
    try:
        image = _to_rgb(frame, size, rotation)
    except Exception as exc:
        raise DecodeError(
            path, f"cannot convert the frame at {time_s:.3f} s to RGB: {_describe(exc)}"
        ) from exc
    return SampledFrame(index, time_s, image)


def _to_rgb(frame: av.VideoFrame, size: int | None, rotation: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of ``frame``, scaled to shorter side ``size``, rotated upright."""
    width, height = frame.width, frame.height
    if size is not None:
        scale = size / min(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    image = frame.to_ndarray(format="rgb24", width=width, height=height)
    quarter_turns = round(rotation / 90) % 4
    if quarter_turns:
        # np.rot90 turns counter-clockwise for k > 0, the same sense as frame.rotation. It
        # returns a strided view; torch.from_numpy and most consumers want contiguous memory.
        image = np.ascontiguousarray(np.rot90(image, k=quarter_turns))
    return image


def _open(path: str | os.PathLike[str]) -> av.container.InputContainer:
    if not Path(path).exists():
        raise DecodeError(path, "file does not exist; check the path")
    if Path(path).is_dir():
        raise DecodeError(path, "path is a directory, not a video file")
    if Path(path).stat().st_size == 0:
        raise DecodeError(path, "file is empty (0 bytes): the upload or copy did not complete")
    try:
        return av.open(str(path), "r")
    except Exception as exc:
        raise DecodeError(
            path,
            f"not a readable media file ({_describe(exc)}): it is corrupt, truncated, or not a "
            f"video; re-download or re-encode it",
        ) from exc


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The first real video stream: cover art in music files is a one-picture 'video' too."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _no_video_reason(container: av.container.InputContainer) -> str:
    if not container.streams:
        return "file has no audio or video streams (an empty or unfinished recording?); re-export it"
    return "file has no video stream (audio only?); there are no frames to sample"


def _metadata_duration(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> tuple[float | None, str]:
    if stream.duration is not None and stream.duration > 0 and stream.time_base is not None:
        return float(stream.duration * stream.time_base), "video stream"
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base, "container"
    return None, "no metadata"


def _demuxed_duration(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: str | os.PathLike[str]
) -> float:
    """End of the last video packet; packets are not decoded, so this costs a file read."""
    first: int | None = None
    end = 0
    try:
        container.seek(0)
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            first = packet.pts if first is None else min(first, packet.pts)
            end = max(end, packet.pts + (packet.duration or 0))
    except Exception as exc:
        raise DecodeError(path, f"cannot read the file to find its duration: {_describe(exc)}") from exc
    if first is None:
        return 0.0
    return float((end - first) * stream.time_base)


def _first_frame(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: str | os.PathLike[str]
) -> av.VideoFrame:
    try:
        for frame in container.decode(stream):
            return frame
    except Exception as exc:
        raise DecodeError(
            path,
            f"no frames could be decoded ({_describe(exc)}): file is corrupt or truncated; "
            f"re-download or re-encode it",
        ) from exc
    raise DecodeError(
        path, "no frames could be decoded: file is corrupt or truncated; re-download or re-encode it"
    )


def _frame_time(
    frame: av.VideoFrame,
    stream: av.video.stream.VideoStream,
    origin: float,
    previous: float,
    nominal_frame_s: float,
    first: bool,
) -> float:
    """Presentation time of ``frame`` relative to the stream start, never going backwards."""
    t = _seconds(frame.pts, stream)
    if t is None:
        return 0.0 if first else previous + nominal_frame_s
    return max(t - origin, 0.0 if first else previous)


def _frame_duration_s(
    frame: av.VideoFrame, stream: av.video.stream.VideoStream, nominal_frame_s: float
) -> float:
    if frame.duration and stream.time_base is not None:
        return float(frame.duration * stream.time_base)
    return nominal_frame_s


def _seconds(ticks: int | None, stream: av.video.stream.VideoStream) -> float | None:
    if ticks is None or stream.time_base is None:
        return None
    return float(ticks * stream.time_base)


def _truncation_slack_s(duration: float, source: str) -> float:
    if source == "container":
        return max(_TRUNCATION_SLACK_S, _CONTAINER_DURATION_SLACK * duration)
    return _TRUNCATION_SLACK_S


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__name__}: {exc}"


def _fmt(duration: float | None) -> str:
    return f"{duration:.3f} s" if duration is not None else "an unknown duration"
