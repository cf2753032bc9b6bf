"""Synthetic test videos written with PyAV, whose pixels say which second they come from.

Every frame shown during second ``k`` (``k <= t < k + 1``) has a background of the colour
:func:`colour_of_second` ``(k)``, so a test can read back, with :func:`second_of_frame`, the
second a decoded frame belongs to and catch off-by-one sampling. The colour code repeats
every :data:`SECONDS_PER_COLOUR_CYCLE` seconds (over an hour, so an hour-long video never
repeats). On top of the background:

* an orientation marker, a white square in the *stored* top-left corner, which tells where a
  decoder put that corner after applying rotation metadata;
* planted events, solid colour blocks over the central quarter of the frame during
  ``[start_s, end_s)``, for later stages to search for;
* a faint texture (zero-mean, +-4 levels, fixed within a second), so that media data and not
  the container index dominates the file size: a byte-truncated file then loses frames
  instead of its header.

Frames are encoded with libx264 when this PyAV build has it (libx264rgb for ``rgb24``),
else mpeg4 (``yuv420p`` only).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

RGB = tuple[int, int, int]
Event = tuple[float, float, RGB]

SECONDS_PER_COLOUR_CYCLE = 16**3
EVENTS_BACKGROUND: RGB = (128, 128, 128)
MARKER_RGB: RGB = (255, 255, 255)

_LEVEL_STEP = 16
_TEXTURE_AMPLITUDE = 4
# Frame times are drawn on a millisecond grid in variable-frame-rate files.
_VFR_TIME_BASE = Fraction(1, 1000)
_EPSILON_S = 1e-6
_MP4_LIKE = {".mp4", ".m4v", ".mov", ".m4a"}


def colour_of_second(second: int) -> RGB:
    """The background colour of second ``second`` in a ``"ramp"`` video.

    Three base-16 digits of ``second`` (mod :data:`SECONDS_PER_COLOUR_CYCLE`), one per
    channel, at levels 8, 24, ..., 248: 16 levels apart, so lossy coding (a few levels of
    error) never moves a channel to its neighbour's level."""
    k = second % SECONDS_PER_COLOUR_CYCLE
    digits = (k % 16, (k // 16) % 16, k // 256)
    return tuple(_LEVEL_STEP * d + _LEVEL_STEP // 2 for d in digits)  # type: ignore[return-value]


def second_of_frame(image: np.ndarray) -> int:
    """The second (mod :data:`SECONDS_PER_COLOUR_CYCLE`) a decoded ``"ramp"`` frame shows.

    ``image`` is ``(H, W, 3)`` uint8 RGB, at any size or rotation. Reads the median colour of
    the border ring, which events (central) never cover and where the corner marker is a few
    percent of the pixels."""
    ring = _border_ring(image).reshape(-1, 3).astype(np.float64)
    levels = np.clip(np.rint((np.median(ring, axis=0) - _LEVEL_STEP // 2) / _LEVEL_STEP), 0, 15)
    r, g, b = (int(v) for v in levels)
    return r + 16 * g + 256 * b


def marker_size(width: int, height: int) -> int:
    """Side in pixels of the orientation marker of a ``width`` x ``height`` frame."""
    return max(2, min(width, height) // 8)


def pick_encoder(pix_fmt: str) -> str:
    """The encoder :func:`write_video` uses for ``pix_fmt``; ValueError if none can."""
    candidates = ("libx264rgb",) if pix_fmt in ("rgb24", "bgr24", "bgr0") else ("libx264", "mpeg4")
    for name in candidates:
        if name in av.codecs_available and pix_fmt in _encoder_pix_fmts(name):
            return name
    raise ValueError(
        f"no encoder in this PyAV build writes pix_fmt {pix_fmt!r} (tried {', '.join(candidates)})"
    )


def write_video(
    path: str | Path,
    duration_s: float,
    fps: float = 10,
    size: tuple[int, int] = (64, 48),
    pattern: str = "ramp",
    events: Sequence[Event] = (),
    pix_fmt: str = "yuv420p",
    rotation_deg: int = 0,
    vfr: bool = False,
    seed: int = 0,
    *,
    preset: str = "veryfast",
    gop: int | None = None,
) -> Path:
    """Write a synthetic video and return its path.

    ``size`` is the stored ``(width, height)``. ``pattern`` is ``"ramp"`` (background colour
    codes the second) or ``"events"`` (constant grey background, so only the planted
    ``events`` change over time). ``rotation_deg`` (a multiple of 90) is written as the
    stream's display matrix: the counter-clockwise angle by which a player rotates the
    stored picture, as FFmpeg's ``av_display_rotation_get`` and PyAV's
    ``VideoFrame.rotation`` report it (phone portrait clips usually carry 270, i.e. -90).

    Constant frame rate (default): frames at ``j / fps`` for ``j < ceil(duration_s * fps)``,
    so the file lasts a whole number of frames. ``vfr=True``: one frame at every whole second
    plus a random number (0 to ``2 * fps - 2``) at random millisecond offsets within it, and
    the last frame lasts until ``duration_s`` (no B-frames, like most phone recordings).
    ``duration_s=0`` writes a file with no frames (MP4 then drops the video track).
    MP4-family files get ``+faststart`` (index first), as web uploads usually do.
    ``preset``/``gop`` tune libx264; a one-hour 64x48 video at 2 fps takes about a second
    with ``preset="ultrafast", gop=600``.
    """
    path = Path(path)
    width, height = size
    if pattern not in ("ramp", "events"):
        raise ValueError(f"pattern must be 'ramp' or 'events', got {pattern!r}")
    if rotation_deg % 90:
        raise ValueError(f"rotation_deg must be a multiple of 90, got {rotation_deg}")
    if not fps > 0 or not duration_s >= 0:
        raise ValueError(f"need fps > 0 and duration_s >= 0, got fps={fps}, duration_s={duration_s}")
    encoder = pick_encoder(pix_fmt)
    rate = Fraction(fps).limit_denominator(1001)
    time_base = _VFR_TIME_BASE if vfr else 1 / rate
    ticks = _vfr_frame_ticks(duration_s, fps, seed) if vfr else _cfr_frame_ticks(duration_s, fps)
    end_tick = round(Fraction(duration_s) / time_base) if vfr else len(ticks)

    options = {"movflags": "+faststart"} if path.suffix.lower() in _MP4_LIKE else {}
    encoder_options = {"preset": preset} if encoder.startswith("libx264") else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(encoder, rate=rate, options=encoder_options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = time_base
        if gop is not None:
            stream.codec_context.gop_size = gop
        if vfr:
            # MP4 ends a track at (last packet in decode order).dts + its duration; without
            # B-frames decode order is display order, so the last frame's duration sets the end.
            stream.codec_context.max_b_frames = 0
        if rotation_deg % 360:
            stream.set_display_rotation(rotation_deg)
        container.start_encoding()
        durations = dict(zip(ticks, np.diff([*ticks, end_tick]).tolist(), strict=True))
        for tick, image in zip(
            ticks, _frame_images(ticks, time_base, size, pattern, events, seed), strict=True
        ):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = tick, time_base
            _mux(container, stream, stream.encode(frame), durations)
        _mux(container, stream, stream.encode(None), durations)
    return path


def _cfr_frame_ticks(duration_s: float, fps: float) -> list[int]:
    return list(range(max(0, math.ceil(duration_s * fps - _EPSILON_S))))


def _vfr_frame_ticks(duration_s: float, fps: float, seed: int) -> list[int]:
    """Millisecond ticks: every whole second, plus random extra frames inside each second."""
    rng = np.random.default_rng(seed)
    end_ms = round(duration_s * 1000)
    ticks: list[int] = []
    for second_ms in range(0, end_ms, 1000):
        span = min(1000, end_ms - second_ms)
        extra = rng.integers(1, span, size=rng.integers(0, max(1, 2 * round(fps) - 1))) if span > 1 else []
        ticks += [second_ms, *sorted({second_ms + int(o) for o in extra})]
    return ticks


def _frame_images(
    ticks: Sequence[int],
    time_base: Fraction,
    size: tuple[int, int],
    pattern: str,
    events: Sequence[Event],
    seed: int,
) -> Iterator[np.ndarray]:
    """``(height, width, 3)`` uint8 RGB images for the frames at ``ticks``."""
    width, height = size
    cached_key: tuple | None = None
    cached: np.ndarray | None = None
    for tick in ticks:
        t = float(tick * time_base)
        second = math.floor(t + _EPSILON_S)
        active = tuple(i for i, (start, end, _) in enumerate(events) if start <= t < end)
        # Content depends only on (second, active events): reuse it, an hour has 3600 seconds
        # but 7200+ frames, and building a textured image costs more than encoding it.
        if (second, active) != cached_key:
            cached_key = (second, active)
            cached = _draw(width, height, second, pattern, [events[i][2] for i in active], seed)
        yield cached  # type: ignore[misc]


def _draw(
    width: int, height: int, second: int, pattern: str, event_colours: list[RGB], seed: int
) -> np.ndarray:
    background = colour_of_second(second) if pattern == "ramp" else EVENTS_BACKGROUND
    texture = np.random.default_rng([seed, second]).integers(
        -_TEXTURE_AMPLITUDE, _TEXTURE_AMPLITUDE + 1, size=(height, width, 1)
    )
    image = (np.asarray(background, np.int16) + texture).clip(0, 255).astype(np.uint8)
    for rgb in event_colours:
        image[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = rgb
    m = marker_size(width, height)
    image[:m, :m] = MARKER_RGB
    return image


def _mux(container: av.container.OutputContainer, stream, packets, durations: dict[int, int]) -> None:
    for packet in packets:
        # The encoder guesses each packet's duration from the nominal rate; set the real gap to
        # the next frame so VFR timing, and the last frame's end (the file's duration), hold.
        if packet.pts in durations:
            packet.duration = durations[packet.pts]
        container.mux(packet)


def _encoder_pix_fmts(name: str) -> set[str]:
    formats = av.Codec(name, "w").video_formats or ()
    return {f.name for f in formats}


def _border_ring(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    w = max(1, min(height, width) // 8)
    return np.concatenate(
        [
            image[:w].reshape(-1, 3),
            image[-w:].reshape(-1, 3),
            image[w:-w, :w].reshape(-1, 3),
            image[w:-w, -w:].reshape(-1, 3),
        ]
    )
