"""Subtitle files and videos with embedded subtitle streams, for the subtitle tests (test fixtures).

The files are written by hand here, not by the reader under test. The videos are
:func:`~spr.ingest.synthetic_video.write_video`'s frames remuxed beside a subtitle stream that
FFmpeg's own demuxers read from such a file (SubRip, ASS, WebVTT), or that PyAV's subtitle
encoder re-encodes (mov_text, which MP4 needs), so the stream is what real tools write.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av

from spr.ingest.subtitles import srt_text, srt_time
from spr.ingest.synthetic_video import write_video

Cue = tuple[float, float, str]  # (start_s, end_s, text): the text may carry the format's markup

# The subtitle codec -> (the file written and demuxed, the container suffixes it goes into).
_CODECS = {
    "subrip": (".srt", (".mkv",)),
    "ass": (".ass", (".mkv",)),
    "webvtt": (".vtt", (".mkv",)),
    "mov_text": (".srt", (".mp4", ".mov", ".m4v")),
}
_ASS_HEADER = """[Script Info]
ScriptType: v4.00+
PlayResX: 384
PlayResY: 288

[V4+ Styles]
Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, \
Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, \
MarginV, Encoding
Style: Default,Arial,16,&H00FFFFFF,&H00FFFFFF,&H00000000,&H00000000,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,1

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
"""


def vtt_time(seconds: float) -> str:
    return srt_time(seconds).replace(",", ".")


def ass_time(seconds: float) -> str:
    cs = round(seconds * 100)
    return f"{cs // 360_000}:{cs // 6000 % 60:02d}:{cs // 100 % 60:02d}.{cs % 100:02d}"


def write_srt(path: str | Path, cues: Sequence[Cue], encoding: str = "utf-8") -> Path:
    path = Path(path)
    path.write_bytes(srt_text(cues).encode(encoding))
    return path


def write_vtt(path: str | Path, cues: Sequence[Cue]) -> Path:
    """WebVTT with a header, a NOTE and a STYLE block, cue identifiers and cue settings."""
    body = ["WEBVTT - test\n", "NOTE written by tests/subtitled.py\n", "STYLE\n::cue { color: yellow }\n"]
    for i, (s, e, t) in enumerate(cues, start=1):
        body.append(f"cue-{i}\n{vtt_time(s)} --> {vtt_time(e)} align:start position:10%\n{t}\n")
    path = Path(path)
    path.write_text("\n".join(body), encoding="utf-8")
    return path


def write_ass(path: str | Path, cues: Sequence[Cue]) -> Path:
    """ASS (v4.00+) with one style; ``\\n`` in a cue's text as ``\\N``."""
    lines = [
        f"Dialogue: 0,{ass_time(s)},{ass_time(e)},Default,,0,0,0,,{t.replace(chr(10), chr(92) + 'N')}\n"
        for s, e, t in cues
    ]
    path = Path(path)
    path.write_text(_ASS_HEADER + "".join(lines), encoding="utf-8")
    return path


def write_video_with_subtitles(
    path: str | Path,
    duration_s: float,
    cues: Sequence[Cue],
    codec: str,
    language: str = "eng",
    size: tuple[int, int] = (160, 120),
    fps: float = 5,
) -> Path:
    """A ``duration_s`` video (``write_video``'s ramp frames) with one subtitle stream of
    ``codec`` (``"subrip"``, ``"ass"``, ``"webvtt"``: ``.mkv``; ``"mov_text"``: ``.mp4``)
    holding ``cues``, its ``language`` in the stream metadata."""
    path = Path(path)
    if codec not in _CODECS:
        raise ValueError(f"codec must be one of {sorted(_CODECS)}, got {codec!r}")
    file_suffix, containers = _CODECS[codec]
    if path.suffix.lower() not in containers:
        raise ValueError(f"{codec} subtitles go into {'/'.join(containers)} here, not {path.suffix!r}")
    writer = {".srt": write_srt, ".ass": write_ass, ".vtt": write_vtt}[file_suffix]
    with tempfile.TemporaryDirectory() as tmp:
        frames = write_video(Path(tmp) / f"frames{path.suffix}", duration_s, fps=fps, size=size, preset="ultrafast")
        subtitles = writer(Path(tmp) / f"cues{file_suffix}", cues)
        with av.open(str(frames)) as video_in, av.open(str(subtitles)) as subs_in, av.open(str(path), "w") as out:
            _remux(video_in, subs_in, out, codec, language)
    return path


def write_video_with_subtitle_packets(
    path: str | Path, duration_s: float, packets: Sequence[tuple[float, float, bytes]], language: str = "eng"
) -> Path:
    """An ``.mkv`` video with a SubRip stream of raw ``packets`` ``(start_s, end_s, bytes)``:
    what a muxer that did not convert a Latin-1 file to UTF-8 writes."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        frames = write_video(Path(tmp) / "frames.mkv", duration_s, fps=5, size=(160, 120), preset="ultrafast")
        template = write_srt(Path(tmp) / "template.srt", [(0.0, 1.0, "template")])
        with av.open(str(frames)) as video_in, av.open(str(template)) as subs_in, av.open(str(path), "w") as out:
            video_out = out.add_stream_from_template(video_in.streams.video[0])
            subs_out = out.add_stream_from_template(subs_in.streams.subtitles[0])
            subs_out.metadata["language"] = language
            _copy_video(video_in, video_out, out)
            time_base = Fraction(1, 1000)
            for start, end, data in packets:
                packet = av.Packet(data)
                packet.pts = packet.dts = round(start * 1000)
                packet.duration = round((end - start) * 1000)
                packet.time_base = time_base
                packet.stream = subs_out
                out.mux(packet)
    return path


def _remux(video_in, subs_in, out, codec: str, language: str) -> None:
    video_out = out.add_stream_from_template(video_in.streams.video[0])
    subs = subs_in.streams.subtitles[0]
    if codec == "mov_text":
        # MP4 has no SubRip: re-encode. The mov_text encoder needs the ASS header the SubRip
        # decoder makes when it is opened.
        subs.codec_context.open()
        subs_out = out.add_stream("mov_text")
        subs_out.time_base = subs.time_base
        subs_out.codec_context.subtitle_header = subs.codec_context.subtitle_header
    else:
        subs_out = out.add_stream_from_template(subs)
    subs_out.metadata["language"] = language
    _copy_video(video_in, video_out, out)
    for packet in subs_in.demux(subs):
        if packet.dts is None:  # the demuxer's end-of-stream flush packet
            continue
        if codec == "mov_text":
            encoded = subs_out.codec_context.encode_subtitle(subs.decode2(packet))
            encoded.pts, encoded.dts, encoded.duration = packet.pts, packet.dts, packet.duration
            encoded.time_base = subs.time_base
            packet = encoded
        packet.stream = subs_out
        out.mux(packet)


def _copy_video(video_in, video_out, out) -> None:
    for packet in video_in.demux(video_in.streams.video[0]):
        if packet.dts is None:
            continue
        packet.stream = video_out
        out.mux(packet)
