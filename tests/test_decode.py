"""Frame sampling (spr.ingest.decode) on real files written by spr.ingest.synthetic_video.

Every synthetic frame's background colour encodes the second it belongs to
(``second_of_frame``), so these tests check *which* frame each sample shows, not just how
many samples there are.
"""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest

from spr.ingest.decode import (
    DecodeError,
    SampledFrame,
    count_expected_frames,
    decode_rate_fps,
    probe_video,
    sample_frames,
)
from spr.ingest.synthetic_video import (
    marker_size,
    pick_encoder,
    second_of_frame,
    write_video,
)
from videos import truncate_copy, write_audio_only, write_corrupt

WIDTH, HEIGHT = 64, 48


def sampled_seconds(samples: list[SampledFrame]) -> list[int]:
    return [second_of_frame(s.image) for s in samples]


def marker_corner(image: np.ndarray) -> str:
    """Which corner of ``image`` (``(H, W, 3)``) holds the white orientation marker."""
    m = marker_size(image.shape[1], image.shape[0])
    corners = {
        "top-left": image[:m, :m],
        "top-right": image[:m, -m:],
        "bottom-left": image[-m:, :m],
        "bottom-right": image[-m:, -m:],
    }
    white = [name for name, block in corners.items() if block.mean() > 200]
    assert len(white) == 1, f"expected the marker in exactly one corner, found it in {white}"
    return white[0]


@pytest.fixture(scope="module")
def twelve_seconds(tmp_path_factory) -> Path:
    """12 s at 10 fps, 64x48, libx264 with B-frames (display order != decode order)."""
    return write_video(tmp_path_factory.mktemp("videos") / "twelve.mp4", 12.0, fps=10)


# --- how many samples ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration_s", "fps", "expected"),
    [
        (10.0, 1, 10),
        (10.5, 1, 11),
        (10.000000001, 1, 10),
        (0.0, 1, 0),
        (10.0, 2, 20),
        (10.0, 0.5, 5),
        (0.2, 1, 1),
    ],
)
def test_expected_frames_is_ceil_of_duration_times_fps(duration_s: float, fps: float, expected: int) -> None:
    assert count_expected_frames(duration_s, fps) == expected


@pytest.mark.parametrize("bad", [(-1.0, 1.0), (10.0, 0.0), (math.inf, 1.0), (10.0, math.nan)])
def test_expected_frames_rejects_nonsense(bad: tuple[float, float]) -> None:
    with pytest.raises(ValueError):
        count_expected_frames(*bad)


# --- which frame each sample shows --------------------------------------------------------


def test_1fps_gives_one_frame_per_second_from_that_second(twelve_seconds: Path) -> None:
    samples = list(sample_frames(twelve_seconds, fps=1.0))

    assert [s.index for s in samples] == list(range(12))
    assert [s.time_s for s in samples] == [float(k) for k in range(12)]
    assert sampled_seconds(samples) == list(range(12))
    for s in samples:
        assert s.image.shape == (HEIGHT, WIDTH, 3) and s.image.dtype == np.uint8
        assert s.image.flags.c_contiguous


@pytest.mark.parametrize("fps", [2.0, 0.5, 3.0])
def test_other_rates_sample_at_i_over_fps(twelve_seconds: Path, fps: float) -> None:
    samples = list(sample_frames(twelve_seconds, fps=fps))

    assert len(samples) == count_expected_frames(12.0, fps)
    assert [s.time_s for s in samples] == [i / fps for i in range(len(samples))]
    assert sampled_seconds(samples) == [math.floor(i / fps + 1e-9) for i in range(len(samples))]


def test_partial_last_second_is_sampled(tmp_path: Path) -> None:
    path = write_video(tmp_path / "ten_and_a_half.mp4", 10.5, fps=10)

    samples = list(sample_frames(path))

    assert len(samples) == 11
    assert sampled_seconds(samples) == list(range(11))


def test_sampling_faster_than_the_video_repeats_frames_as_independent_arrays(tmp_path: Path) -> None:
    path = write_video(tmp_path / "slow.mp4", 3.0, fps=2)

    seconds = []
    for sample in sample_frames(path, fps=8):
        assert sample.image.max() == 255, "an earlier sample's edit leaked into this one"
        seconds.append(second_of_frame(sample.image))
        sample.image[:] = 0  # a consumer editing in place

    assert seconds == [i // 8 for i in range(24)]


@pytest.mark.parametrize("fps", [1.0, 4.0])
def test_variable_frame_rate_is_sampled_by_presentation_time(tmp_path: Path, fps: float) -> None:
    path = write_video(tmp_path / "vfr.mp4", 10.0, fps=10, vfr=True, seed=3)
    with av.open(str(path)) as container:
        pts = [p.pts for p in container.demux(video=0) if p.pts is not None]
    gaps = set(np.diff(sorted(pts)).tolist())
    assert len(gaps) > 5, "the fixture should have irregular frame spacing"

    samples = list(sample_frames(path, fps=fps))

    assert len(samples) == count_expected_frames(10.0, fps)
    assert sampled_seconds(samples) == [math.floor(s.time_s) for s in samples]


@pytest.mark.parametrize("suffix", [".mkv", ".ts", ".mov"])
def test_other_containers_sample_the_same_seconds(tmp_path: Path, suffix: str) -> None:
    # MPEG-TS starts its clock at 1.4 s and Matroska stores no stream duration: times are
    # relative to the stream start, and the container duration stands in.
    path = write_video(tmp_path / f"clip{suffix}", 6.0, fps=10)

    assert sampled_seconds(list(sample_frames(path))) == list(range(6))


# --- rotation, size, pixel formats --------------------------------------------------------


@pytest.mark.parametrize(
    ("rotation_deg", "shape", "corner"),
    [
        (0, (HEIGHT, WIDTH, 3), "top-left"),
        # Counter-clockwise quarter turn: the stored top-left corner ends bottom-left.
        (90, (WIDTH, HEIGHT, 3), "bottom-left"),
        (180, (HEIGHT, WIDTH, 3), "bottom-right"),
        # A portrait phone clip (display matrix -90): stored top-left ends top-right.
        (270, (WIDTH, HEIGHT, 3), "top-right"),
    ],
)
def test_rotation_metadata_is_applied_so_frames_come_out_upright(
    tmp_path: Path, rotation_deg: int, shape: tuple[int, int, int], corner: str
) -> None:
    path = write_video(tmp_path / "phone.mp4", 3.0, rotation_deg=rotation_deg)

    probe = probe_video(path)
    samples = list(sample_frames(path))

    assert probe.rotation_deg == rotation_deg
    assert (probe.width, probe.height) == (WIDTH, HEIGHT)
    assert probe.display_size == (shape[1], shape[0])
    assert all(s.image.shape == shape for s in samples)
    assert marker_corner(samples[0].image) == corner
    assert sampled_seconds(samples) == [0, 1, 2]


@pytest.mark.parametrize(("rotation_deg", "shape"), [(0, (32, 43, 3)), (90, (43, 32, 3))])
def test_size_scales_the_shorter_side_keeping_aspect(tmp_path: Path, rotation_deg: int, shape: tuple) -> None:
    path = write_video(tmp_path / "scaled.mp4", 2.0, rotation_deg=rotation_deg)

    samples = list(sample_frames(path, size=32))

    assert [s.image.shape for s in samples] == [shape, shape]
    assert sampled_seconds(samples) == [0, 1]


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv444p", "yuvj420p", "yuv422p10le", "rgb24", "gray"])
def test_pixel_formats_decode_to_rgb_uint8(tmp_path: Path, pix_fmt: str) -> None:
    try:
        pick_encoder(pix_fmt)
    except ValueError as exc:
        pytest.skip(str(exc))
    path = write_video(tmp_path / f"{pix_fmt}.mp4", 2.0, pix_fmt=pix_fmt)

    samples = list(sample_frames(path))

    assert [s.image.shape for s in samples] == [(HEIGHT, WIDTH, 3)] * 2
    assert all(s.image.dtype == np.uint8 for s in samples)
    if pix_fmt == "gray":
        channels = samples[1].image.astype(int)
        assert np.abs(channels - channels[..., :1]).max() <= 2, "grey must stay grey"
    else:
        assert sampled_seconds(samples) == [0, 1]


def test_events_are_drawn_in_the_centre_during_their_interval(tmp_path: Path) -> None:
    red = (230, 20, 20)
    path = write_video(tmp_path / "events.mp4", 6.0, pattern="events", events=[(2.0, 4.0, red)])

    centres = [s.image[HEIGHT // 2, WIDTH // 2].astype(int) for s in sample_frames(path)]

    is_red = [bool(np.abs(c - red).max() < 24) for c in centres]
    assert is_red == [False, False, True, True, False, False]


# --- probing ------------------------------------------------------------------------------


def test_probe_reads_duration_size_rate_and_codec(twelve_seconds: Path) -> None:
    probe = probe_video(twelve_seconds)

    assert probe.duration_s == pytest.approx(12.0)
    assert (probe.width, probe.height, probe.rotation_deg) == (WIDTH, HEIGHT, 0)
    assert probe.avg_fps == pytest.approx(10.0)
    assert probe.codec in ("h264", "mpeg4")
    assert probe.has_video


def test_probe_of_audio_only_file_says_it_has_no_video(tmp_path: Path) -> None:
    probe = probe_video(write_audio_only(tmp_path / "speech.m4a", 2.0))

    assert not probe.has_video
    assert probe.duration_s == pytest.approx(2.0, abs=0.1)


def test_decode_rate_counts_every_frame(twelve_seconds: Path) -> None:
    assert decode_rate_fps(twelve_seconds) > 0


# --- broken files ---------------------------------------------------------------------------


def decode_error(path: Path) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        list(sample_frames(path))
    assert info.value.path == str(path)
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in str(decode_error(tmp_path / "nope.mp4"))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.touch()

    assert "empty (0 bytes)" in str(decode_error(path))


def test_random_bytes(tmp_path: Path) -> None:
    error = decode_error(write_corrupt(tmp_path / "noise.mp4"))

    assert "not a readable media file" in str(error)
    assert isinstance(error.__cause__, av.error.FFmpegError)


def test_audio_only(tmp_path: Path) -> None:
    error = decode_error(write_audio_only(tmp_path / "podcast.mp4", 1.0))

    assert "no video stream (audio only?)" in str(error)
    with pytest.raises(DecodeError, match="audio only"):
        decode_rate_fps(tmp_path / "podcast.mp4")


def test_recording_without_frames(tmp_path: Path) -> None:
    # MP4 drops a track that never got a packet: the file has no streams at all.
    error = decode_error(write_video(tmp_path / "zero.mp4", 0.0))

    assert "no audio or video streams" in str(error)


def test_video_stream_without_a_decodable_frame(tmp_path: Path, twelve_seconds: Path) -> None:
    data = twelve_seconds.read_bytes()
    # Keep the index (faststart: before the media data) and a sliver of the first frame.
    cut = data.index(b"mdat") + 64
    path = tmp_path / "headers_only.mp4"
    path.write_bytes(data[:cut])

    assert "no frames could be decoded" in str(decode_error(path))
    with pytest.raises(DecodeError, match="no frames could be decoded"):
        probe_video(path)


def test_truncated_file_yields_what_decoded_then_raises(tmp_path: Path) -> None:
    source = write_video(tmp_path / "full.mp4", 20.0, fps=10)
    path = truncate_copy(source, tmp_path / "half.mp4", 0.5)

    samples: list[SampledFrame] = []
    with pytest.raises(DecodeError) as info:
        for sample in sample_frames(path):
            samples.append(sample)

    assert 1 <= len(samples) < 20
    assert sampled_seconds(samples) == list(range(len(samples)))
    message = str(info.value)
    assert "truncated" in message and "last good frame at" in message and "20.000 s" in message


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_garbled_media_data_never_escapes_as_a_pyav_error(
    tmp_path: Path, twelve_seconds: Path, seed: int
) -> None:
    data = bytearray(twelve_seconds.read_bytes())
    start = data.index(b"mdat") + 8
    rng = np.random.default_rng(seed)
    at = rng.integers(start, len(data) - 512, size=8)
    for offset in at:
        data[offset : offset + 64] = rng.bytes(64)
    path = tmp_path / "garbled.mp4"
    path.write_bytes(bytes(data))

    try:
        samples = list(sample_frames(path))
    except DecodeError:
        return  # the decoder gave up: fine, as long as it says so with a DecodeError
    assert len(samples) == 12  # or concealed the damage and went on


def test_decode_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(DecodeError("/videos/a.mp4", "file is empty")))

    assert (error.path, error.reason) == ("/videos/a.mp4", "file is empty")
    assert str(error) == "cannot decode /videos/a.mp4: file is empty"


# --- an hour-long video ---------------------------------------------------------------------

# Run in a child so its peak RSS is the decode's alone, not the test session's.
_DECODE_AND_REPORT_RSS = textwrap.dedent(
    """
    import json, resource, sys
    from spr.ingest.decode import sample_frames
    from spr.ingest.synthetic_video import second_of_frame

    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    count = mismatches = 0
    for sample in sample_frames(sys.argv[1], fps=1.0, size=224):
        count += 1
        mismatches += second_of_frame(sample.image) != sample.index
    after_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"count": count, "mismatches": mismatches, "growth_kb": after_kb - before_kb}))
    """
)


@pytest.fixture(scope="module")
def hour_long(tmp_path_factory) -> Path:
    """One hour at 2 fps, 64x48: 7200 frames, about 6 MB, written in a few seconds."""
    path = tmp_path_factory.mktemp("hour") / "hour.mp4"
    return write_video(path, 3600.0, fps=2, preset="ultrafast", gop=600)


@pytest.mark.slow
def test_hour_long_video_streams_3600_frames_in_bounded_memory(hour_long: Path) -> None:
    assert probe_video(hour_long).duration_s == pytest.approx(3600.0)

    child = subprocess.run(
        [sys.executable, "-c", _DECODE_AND_REPORT_RSS, str(hour_long)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )

    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report["count"] == 3600
    assert report["mismatches"] == 0
    # Kept, the 3600 samples (224x298 RGB) would take 720 MB; streaming holds a couple.
    assert report["growth_kb"] < 300 * 1024, f"peak RSS grew by {report['growth_kb'] / 1024:.0f} MB"
