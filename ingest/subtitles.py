"""Subtitles: embedded subtitle streams and subtitle files -> one subtitles :class:`Transcript`.

Three places a video's subtitles come from, tried in this order (the first that has any text
is used, all of it; the later ones are not read):

1. the files a manifest row names (``VideoSource.subtitles``);
2. sidecar files beside the video with its stem: ``talk.srt``, ``talk.en.vtt``, ``talk.ass``
   beside ``talk.mp4`` (:func:`find_sidecars`);
3. the video's own text subtitle streams, SubRip, ASS/SSA, mov_text and WebVTT, decoded with
   PyAV (:func:`read_embedded_subtitles`). Picture subtitles (DVD, PGS, DVB) are not text and
   are not read.

Files are SubRip (``.srt``), WebVTT (``.vtt``) or ASS/SSA (``.ass``/``.ssa``), parsed here
(:func:`parse_subtitle_text`) rather than by FFmpeg's demuxers, so that a broken file is
reported with the line it breaks at. Bytes are UTF-8 (or UTF-16 with a BOM); anything else is
decoded by charset detection (old SubRip files are often cp1252 or Latin-1).

A broken file or stream never stops a video: :func:`read_subtitles` turns each into one warning
line and goes on with the others. Cue times are seconds on the video's clock (for embedded
streams: from the video stream's start, as frames and segments are counted).
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from spr.text_tracks import SUBTITLES, Cue, Transcript, clean_cues

from .sources import VideoSource

__all__ = [
    "EMBEDDED_CODECS",
    "SUBTITLE_SUFFIXES",
    "SubtitleError",
    "SubtitleSyntaxError",
    "ass_text",
    "decode_subtitle_bytes",
    "find_sidecars",
    "parse_subtitle_text",
    "read_embedded_subtitles",
    "read_subtitle_file",
    "read_subtitles",
    "srt_text",
    "srt_time",
    "subtitle_language",
]

# File suffix (lower case) -> the format name parse_subtitle_text takes.
SUBTITLE_SUFFIXES: dict[str, str] = {".srt": "srt", ".vtt": "vtt", ".ass": "ass", ".ssa": "ass"}
# FFmpeg decoder names of the text subtitle streams read (mkv's ASS is "ssa" or "ass").
EMBEDDED_CODECS = frozenset({"subrip", "srt", "ass", "ssa", "mov_text", "webvtt", "text"})
_FORMAT_NAMES = {"srt": "SubRip", "vtt": "WebVTT", "ass": "ASS/SSA"}
# A language tag in a file name (`talk.en.srt`, `talk.pt-BR.vtt`, `talk.eng.srt`): ISO 639-1/2
# letters and optional BCP 47 subtags. Other tags (`talk.sdh.srt` aside) are not languages.
_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")
# Any one dot-free tag between the stem and the suffix makes a sidecar (`talk.forced.srt`).
_SIDECAR_TAG = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# An embedded stream is broken when more than this share of its packets fail to decode (text in
# the wrong encoding fails at every accented cue); fewer bad packets are skipped with a warning.
_MAX_BAD_PACKET_SHARE = 0.1
# An embedded cue without a duration lasts until the next one starts, at most this long.
_OPEN_CUE_MAX_S = 10.0
_NO_END = 0xFFFFFFFF
# How much more "chaos" (charset_normalizer's mess ratio) cp1252 may show than the best guess
# and still be preferred (see decode_subtitle_bytes).
_CP1252_CHAOS_MARGIN = 0.2  # AVSubtitle.end_display_time when the decoder does not know


class SubtitleSyntaxError(ValueError):
    """Subtitle text that does not follow its format: ``line`` (1-based) and what is wrong."""

    def __init__(self, fmt: str, line: int, reason: str) -> None:
        self.format_name = _FORMAT_NAMES.get(fmt, fmt)
        self.line = line
        self.reason = reason
        super().__init__(f"not valid {self.format_name} (line {line}): {reason}")


class SubtitleError(ValueError):
    """A subtitle file or stream that cannot be read: ``path`` and ``reason``; the message
    (``subtitles: talk.srt: <reason>``) says what to do."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"subtitles: {Path(path).name}: {reason}")


# --- text formats ----------------------------------------------------------------------------


def parse_subtitle_text(text: str, fmt: str) -> list[Cue]:
    """The cues of subtitle ``text`` in format ``fmt`` (``"srt"``, ``"vtt"``, ``"ass"``/``"ssa"``,
    or the suffix with its dot), cleaned (:func:`~spr.text_tracks.clean_cues`: in time order,
    markup removed, whitespace collapsed, empty cues dropped). Raises
    :class:`SubtitleSyntaxError` for text that does not follow the format, including non-blank
    text with no cue at all."""
    name = SUBTITLE_SUFFIXES.get(fmt.lower() if fmt.startswith(".") else f".{fmt.lower()}")
    if name is None:
        raise ValueError(f"unknown subtitle format {fmt!r}; give one of srt, vtt, ass, ssa")
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    parse = {"srt": _parse_srt, "vtt": _parse_vtt, "ass": _parse_ass}[name]
    cues = parse(lines)
    if cues is None:
        raise SubtitleSyntaxError(name, 1, "no cues found")
    return list(clean_cues(cues))


# `00:01:02,345 --> 00:01:04,000`; hours of any width, `.` for `,`, coordinates after.
_SRT_TIMING = re.compile(
    r"^\s*(\d+):([0-5]?\d):([0-5]?\d)[,.](\d{1,3})\s*-->\s*(\d+):([0-5]?\d):([0-5]?\d)[,.](\d{1,3})(?:\s.*)?$"
)
# `<i>`, `</font>`, `<font color="#fff">`, `<v Bob>`, `<c.yellow>`, `<00:00:01.000>` (VTT karaoke).
_TAG = re.compile(r"</?[A-Za-z][^<>]*>|<\d[\d:.]*>")
# `{\an8}`, `{\i1}` and any other `{...}` block (ASS overrides; SubRip files carry them too).
_ASS_BLOCK = re.compile(r"\{[^{}]*\}")


def _parse_srt(lines: list[str]) -> list[Cue] | None:
    """SubRip: ``[number]`` / timing / text lines; a cue's text runs to the next cue's number
    and timing (a blank line inside a cue's text stays text, as players take it). None when
    there is no cue at all."""
    cues: list[Cue] = []
    timing: tuple[float, float] | None = None  # of the cue whose text lines are being read
    text: list[str] = []
    for i, line in enumerate(lines):
        if line.strip().isdigit() and i + 1 < len(lines) and "-->" in lines[i + 1]:
            continue  # the next cue's number
        if "-->" in line:
            match = _SRT_TIMING.match(line)
            if match is None:
                raise SubtitleSyntaxError(
                    "srt", i + 1, f"expected a timing line 'HH:MM:SS,mmm --> HH:MM:SS,mmm', got {line.strip()[:80]!r}"
                )
            if timing is not None:
                cues.append(Cue(*timing, _markup_free(text)))
            g = match.groups()
            timing, text = (_hms(*g[:4]), _hms(*g[4:])), []
        elif timing is not None:
            text.append(line)
        elif line.strip():
            raise SubtitleSyntaxError(
                "srt", i + 1, f"expected a cue number and timing line before any text, got {line.strip()[:80]!r}"
            )
    if timing is None:
        return None
    cues.append(Cue(*timing, _markup_free(text)))
    return cues


# `[hh:]mm:ss.ttt --> [hh:]mm:ss.ttt [settings]`
_VTT_TIME = r"(?:(\d+):)?([0-5]\d):([0-5]\d)[.,](\d{3})"
_VTT_TIMING = re.compile(rf"^\s*{_VTT_TIME}\s+-->\s+{_VTT_TIME}(?:\s+.*)?$")
_VTT_SKIPPED_BLOCKS = ("NOTE", "STYLE", "REGION")


def _parse_vtt(lines: list[str]) -> list[Cue] | None:
    """WebVTT: a ``WEBVTT`` header, then blank-line separated blocks: cues (optional id line,
    timing line with optional settings, text) and NOTE/STYLE/REGION blocks (skipped)."""
    if not lines or not re.match(r"^WEBVTT(?:[ \t].*)?$", lines[0].rstrip()):
        raise SubtitleSyntaxError("vtt", 1, f"a WebVTT file starts with 'WEBVTT', got {lines[0].strip()[:80]!r}")
    cues: list[Cue] = []
    for first, block in _blocks(lines[1:], offset=2):
        if block[0].split(maxsplit=1)[0] in _VTT_SKIPPED_BLOCKS and "-->" not in block[0]:
            continue
        at = 0 if "-->" in block[0] else 1  # after an optional cue identifier
        if at >= len(block) or "-->" not in block[at]:
            continue  # not a cue (header lines like `Kind: captions`): the format says skip it
        match = _VTT_TIMING.match(block[at])
        if match is None:
            raise SubtitleSyntaxError(
                "vtt", first + at, f"expected a cue timing line '[hh:]mm:ss.ttt --> [hh:]mm:ss.ttt', got {block[at].strip()[:80]!r}"
            )
        g = match.groups()
        text = html.unescape(_markup_free(block[at + 1 :]))
        cues.append(Cue(_hms(g[0] or "0", *g[1:4]), _hms(g[4] or "0", *g[5:8]), text))
    return cues or None


def _parse_ass(lines: list[str]) -> list[Cue] | None:
    """ASS/SSA: the ``[Events]`` section's ``Format:`` line names the fields of each
    ``Dialogue:`` line (Text last, so commas in it stay); Comment lines are skipped."""
    section = ""
    fields = ["layer", "start", "end", "style", "name", "marginl", "marginr", "marginv", "effect", "text"]
    cues: list[Cue] = []
    seen_events = False
    for i, raw in enumerate(lines):
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            seen_events = seen_events or section == "events"
            continue
        if section != "events" or ":" not in line:
            continue
        kind, _, rest = line.partition(":")
        kind = kind.strip().lower()
        if kind == "format":
            fields = [f.strip().lower() for f in rest.split(",")]
            if not {"start", "end", "text"} <= set(fields) or fields[-1] != "text":
                raise SubtitleSyntaxError("ass", i + 1, f"the Format line must name Start, End and, last, Text; got {rest.strip()[:120]!r}")
        elif kind == "dialogue":
            values = rest.lstrip().split(",", len(fields) - 1)
            if len(values) != len(fields):
                raise SubtitleSyntaxError("ass", i + 1, f"a Dialogue line needs {len(fields)} comma-separated fields ({', '.join(fields)}), got {len(values)}")
            row = dict(zip(fields, values))
            try:
                start, end = _ass_time(row["start"]), _ass_time(row["end"])
            except ValueError:
                raise SubtitleSyntaxError("ass", i + 1, f"times must be H:MM:SS.cc, got {row['start'].strip()!r} and {row['end'].strip()!r}") from None
            cues.append(Cue(start, end, ass_text(row["text"])))
    if not seen_events:
        if any(line.strip() for line in lines):
            raise SubtitleSyntaxError("ass", 1, "no [Events] section (where the Dialogue lines go)")
        return None
    return cues or None


def ass_text(text: str) -> str:
    """The plain text of an ASS ``Text`` field: override blocks ``{\\...}`` and drawings
    (``{\\p1}...{\\p0}``) removed, ``\\N``/``\\n``/``\\h`` as spaces."""
    out = []
    drawing = False
    pos = 0
    for block in _ASS_BLOCK.finditer(text):
        if not drawing:
            out.append(text[pos : block.start()])
        scale = re.findall(r"\\p(\d+)", block.group())
        if scale:
            drawing = scale[-1] != "0"
        pos = block.end()
    if not drawing:
        out.append(text[pos:])
    plain = "".join(out)
    return re.sub(r"\\[Nnh]", " ", plain)


def _markup_free(lines: Sequence[str]) -> str:
    """Cue text lines as one string, HTML-ish tags and ``{...}`` blocks removed."""
    return " ".join(_ASS_BLOCK.sub("", _TAG.sub("", line)).strip() for line in lines)


def _blocks(lines: Sequence[str], offset: int) -> Iterable[tuple[int, list[str]]]:
    """``(first line number, lines)`` of each run of non-blank lines; ``offset`` is the
    number of ``lines[0]``."""
    block: list[str] = []
    first = offset
    for i, line in enumerate(lines):
        if line.strip():
            if not block:
                first = offset + i
            block.append(line)
        elif block:
            yield first, block
            block = []
    if block:
        yield first, block


def _hms(hours: str, minutes: str, seconds: str, fraction: str) -> float:
    """Seconds of ``h:m:s.fraction`` (``fraction``: 1-3 digits, ``"5"`` = 0.5 s), to the ms."""
    millis = int(fraction.ljust(3, "0")[:3])
    return (((int(hours) * 60 + int(minutes)) * 60 + int(seconds)) * 1000 + millis) / 1000


def _ass_time(value: str) -> float:
    """Seconds of an ASS time ``H:MM:SS.cc``."""
    match = re.fullmatch(r"\s*(\d+):(\d{1,2}):(\d{1,2})(?:[.,](\d{1,3}))?\s*", value)
    if match is None:
        raise ValueError(value)
    h, m, sec, frac = match.groups()
    return _hms(h, m, sec, frac or "0")


# --- files -----------------------------------------------------------------------------------


def read_subtitle_file(path: str | os.PathLike[str], max_bytes: int) -> Transcript:
    """The subtitles track of one subtitle file (format by suffix, case-insensitive): source
    ``"sidecar <name>"``, language from a ``talk.en.srt``-style tag. A blank file gives a
    transcript without cues. Raises :class:`SubtitleError` for a missing, unreadable,
    too big (over ``max_bytes``), undecodable or unparseable file, or an unknown suffix."""
    path = Path(path)
    fmt = SUBTITLE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise SubtitleError(
            path, f"unknown subtitle format {path.suffix or '(no suffix)'!r}; give a .srt, .vtt, .ass or .ssa file"
        )
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise SubtitleError(
                path,
                f"the file is {size:,} bytes, over the {max_bytes:,}-byte limit (subtitles.max_file_bytes); "
                f"raise the limit if it really is a subtitle file",
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise SubtitleError(path, f"{path} does not exist; fix the path or remove it from the manifest") from None
    except OSError as exc:
        raise SubtitleError(path, f"cannot read the file ({exc.strerror or exc}); check its permissions") from None
    text = decode_subtitle_bytes(data)
    if text is None:
        raise SubtitleError(path, "the bytes are not text in any encoding detected; re-save the file as UTF-8")
    try:
        cues = parse_subtitle_text(text, fmt) if text.strip() else []
    except SubtitleSyntaxError as exc:
        raise SubtitleError(path, f"{exc}; fix the file or re-export it") from None
    return Transcript(SUBTITLES, tuple(cues), language=subtitle_language(path), source=f"sidecar {path.name}")


def decode_subtitle_bytes(data: bytes) -> str | None:
    """``data`` as text: UTF-8 (BOM or not), UTF-16/32 with a BOM, else the encoding
    charset_normalizer detects (cp1252, Latin-1, ...); None when it is not text."""
    for bom, encoding in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
                          (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if b"\x00" in data:
        return None  # binary (a video renamed .srt), or UTF-16 without a BOM: not guessed at
    import charset_normalizer  # only for the rare non-UTF-8 file

    matches = list(charset_normalizer.from_bytes(data))
    if not matches:
        return None
    # Short Western European text (a few accented letters among the timings) looks as plausible
    # in cp1250 or cp1257 as in cp1252, and charset_normalizer then often ranks the wrong one
    # first; cp1252 (which Latin-1 files also decode as) is by far the most common legacy
    # encoding of subtitle files, so it wins unless it is clearly worse.
    best = matches[0]
    western = next((m for m in matches if m.encoding == "cp1252" and m.chaos <= best.chaos + _CP1252_CHAOS_MARGIN), None)
    return str(western or best)


def subtitle_language(path: str | os.PathLike[str]) -> str:
    """The language tag of a subtitle file name (``talk.en.srt`` -> ``"en"``, ``talk.pt-BR.vtt``
    -> ``"pt-BR"``), ``""`` when it has none."""
    parts = Path(path).name.split(".")
    if len(parts) >= 3 and _LANGUAGE_TAG.match(parts[-2]):
        return parts[-2]
    return ""


def find_sidecars(video_path: str | os.PathLike[str]) -> list[Path]:
    """Subtitle files beside ``video_path`` named for it, sorted: its stem, optionally one
    dot-free tag (a language: ``talk.en.vtt``), and a subtitle suffix in any case
    (``talk.srt``, ``talk.ASS``)."""
    video = Path(video_path)
    stem = video.stem
    try:
        entries = list(video.parent.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        name = entry.name
        suffix = entry.suffix
        if suffix.lower() not in SUBTITLE_SUFFIXES or not name.startswith(stem + "."):
            continue
        middle = name[len(stem) : len(name) - len(suffix)]  # "" or ".<tag>"
        if (middle == "" or (middle.startswith(".") and _SIDECAR_TAG.match(middle[1:]))) and entry.is_file():
            found.append(entry)
    return sorted(found)


# --- embedded streams ------------------------------------------------------------------------


@dataclass
class _StreamRead:
    """What one embedded stream gave: its transcript, or why it is broken, and skipped packets."""

    transcript: Transcript | None = None
    error: SubtitleError | None = None
    warning: str = ""


def read_embedded_subtitles(path: str | os.PathLike[str]) -> list[Transcript]:
    """One subtitles track per text subtitle stream of the video at ``path`` (SubRip, ASS/SSA,
    mov_text, WebVTT), in stream order: source ``"stream <index> (<codec>)"``, language from the
    stream's metadata, times from the video stream's start. Picture subtitle streams are not
    read. Raises :class:`SubtitleError` when the file cannot be opened or a stream is broken."""
    reads, _ = _read_embedded(path)
    for read in reads:
        if read.error is not None:
            raise read.error
    return [read.transcript for read in reads if read.transcript is not None]


def _read_embedded(path: str | os.PathLike[str]) -> tuple[list[_StreamRead], list[str]]:
    """``(one read per text stream, notes on picture streams not read)``; raises
    :class:`SubtitleError` only when the file cannot be opened or demuxed."""
    try:
        container = av.open(str(path), "r")
    except Exception as exc:  # av.error.*: missing, not a media file, ...
        raise SubtitleError(path, f"cannot open the video to read its subtitle streams ({_describe(exc)})") from None
    with container:
        text_streams = [s for s in container.streams.subtitles if s.codec_context.name in EMBEDDED_CODECS]
        notes = [
            f"subtitles: {Path(path).name}: stream {s.index} ({s.codec_context.name}) holds pictures, not text; "
            f"it is not read (convert it to .srt with an OCR tool to search it)"
            for s in container.streams.subtitles
            if s.codec_context.name not in EMBEDDED_CODECS
        ]
        if not text_streams:
            return [], notes
        origin = _video_origin_s(container)
        decoded = {s.index: _StreamDecode(path, s, origin) for s in text_streams}
        try:
            for packet in container.demux(*text_streams):
                if packet.size:  # not the end-of-stream flush packet
                    decoded[packet.stream.index].add(packet)
        except Exception as exc:  # a demuxer error: the container itself is damaged there
            for d in decoded.values():
                d.demux_error = exc
        return [d.result() for d in decoded.values()], notes


class _StreamDecode:
    """Decodes one subtitle stream's packets into cues and counts the ones that fail."""

    def __init__(self, path: str | os.PathLike[str], stream: av.subtitles.stream.SubtitleStream, origin_s: float) -> None:
        self.path = path
        self.stream = stream
        self.name = f"stream {stream.index} ({stream.codec_context.name})"
        self.origin_s = origin_s
        self.time_base = stream.time_base or Fraction(1, 1000)
        self.raw: list[tuple[float, float | None, str]] = []  # (start, end or None, text)
        self.packets = 0
        self.bad: list[tuple[float | None, BaseException]] = []
        self.demux_error: BaseException | None = None

    def add(self, packet: av.Packet) -> None:
        self.packets += 1
        pts_s = None if packet.pts is None else float(packet.pts * self.time_base) - self.origin_s
        try:
            subtitle = self.stream.decode2(packet)
        except Exception as exc:  # av.error.InvalidDataError (bad UTF-8, bad mov_text box), ...
            self.bad.append((pts_s, exc))
            return
        if subtitle is None or pts_s is None:
            return  # mov_text's empty gap packets clear the screen: no cue
        text = " ".join(_rect_text(rect) for rect in subtitle)
        start = pts_s + subtitle.start_display_time / 1000
        if packet.duration:
            end: float | None = pts_s + float(packet.duration * self.time_base)
        elif subtitle.end_display_time not in (0, _NO_END):
            end = pts_s + subtitle.end_display_time / 1000
        else:
            end = None
        self.raw.append((start, end, text))

    def result(self) -> _StreamRead:
        where = f"{self.name}: "
        if self.demux_error is not None:
            error = SubtitleError(self.path, where + f"reading the file failed ({_describe(self.demux_error)}); re-mux or re-download it")
            return _StreamRead(error=error)
        if self.bad and (not self.raw or self._too_many_bad()):
            at, exc = self.bad[0]
            error = SubtitleError(
                self.path,
                where + f"{len(self.bad)} of {self.packets} packets cannot be decoded (first at {_at(at)}: "
                f"{_describe(exc)}); give the subtitles as a UTF-8 .srt beside the video instead",
            )
            return _StreamRead(error=error)
        warning = ""
        if self.bad:
            at, exc = self.bad[0]
            warning = (
                f"subtitles: {Path(self.path).name}: {where}{len(self.bad)} of {self.packets} packets cannot be decoded "
                f"and were skipped (first at {_at(at)}: {_describe(exc)})"
            )
        language = str(self.stream.metadata.get("language", "") or "")
        if language == "und":
            language = ""
        transcript = Transcript(SUBTITLES, clean_cues(_close_open_cues(self.raw)), language=language, source=self.name)
        return _StreamRead(transcript=transcript, warning=warning)

    def _too_many_bad(self) -> bool:
        return len(self.bad) > _MAX_BAD_PACKET_SHARE * self.packets


def _rect_text(rect: av.subtitles.subtitle.Subtitle) -> str:
    """The plain text of one decoded subtitle rectangle (FFmpeg gives text streams as ASS)."""
    kind = getattr(rect, "type", b"")
    if kind == b"ass":
        dialogue = rect.dialogue
        if not dialogue:  # older FFmpeg: the Dialogue line's fields, Text last
            dialogue = rect.ass.split(b",", 8)[-1]
        return ass_text(dialogue.decode("utf-8", "replace"))
    if kind == b"text":
        return _markup_free([rect.text.decode("utf-8", "replace")])
    return ""  # a bitmap


def _close_open_cues(raw: list[tuple[float, float | None, str]]) -> list[Cue]:
    """Cues; one without an end lasts until the next one starts (at most ``_OPEN_CUE_MAX_S``)."""
    raw = sorted(raw, key=lambda r: r[0])
    cues = []
    for i, (start, end, text) in enumerate(raw):
        if end is None:
            following = raw[i + 1][0] if i + 1 < len(raw) else start + _OPEN_CUE_MAX_S
            end = min(following, start + _OPEN_CUE_MAX_S)
        cues.append(Cue(start, end, text))
    return cues


def _video_origin_s(container: av.container.InputContainer) -> float:
    """Seconds of the first video stream's start (where frame and segment times count from),
    else the container's start, else 0."""
    for stream in container.streams.video:
        if stream.start_time is not None and stream.time_base:
            return float(stream.start_time * stream.time_base)
    if container.start_time is not None:
        return container.start_time / av.time_base
    return 0.0


def _at(seconds: float | None) -> str:
    return "an unknown time" if seconds is None or not math.isfinite(seconds) else f"{seconds:.3f} s"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# --- a video's subtitles ---------------------------------------------------------------------


def read_subtitles(source: VideoSource, max_bytes: int) -> tuple[Transcript | None, list[str]]:
    """``(transcript, warnings)``: the video's subtitles as one track, and one line per broken
    file or stream (``"subtitles: talk.srt: not valid SubRip (line 7): ..."``). Never raises
    for a broken file or stream.

    Uses all of the first of these that has any text: the manifest's files, the sidecar files
    (:func:`find_sidecars`), the embedded text streams; their cues merged in time order
    (exact duplicates once), ``source`` naming each used (``"sidecar talk.en.srt, sidecar
    talk.fr.srt"``), ``language`` their languages joined by ``,``. The later kinds are not read.
    None when none has any text."""
    warnings: list[str] = []
    kinds: tuple[Callable[[], list[Transcript]], ...] = (
        lambda: _read_files(source.subtitles, max_bytes, "manifest", warnings),
        lambda: _read_files(find_sidecars(source.path), max_bytes, "sidecar", warnings),
        lambda: _read_streams(source.path, warnings),
    )
    for read in kinds:
        found = [t for t in read() if not t.empty]
        if found:
            return _merge(found), warnings
    return None, warnings


def _read_files(
    paths: Iterable[str | os.PathLike[str]], max_bytes: int, kind: str, warnings: list[str]
) -> list[Transcript]:
    out = []
    for path in paths:
        try:
            transcript = read_subtitle_file(path, max_bytes)
        except SubtitleError as exc:
            warnings.append(str(exc))
            continue
        out.append(Transcript(SUBTITLES, transcript.cues, language=transcript.language, source=f"{kind} {Path(path).name}"))
    return out


def _read_streams(path: str, warnings: list[str]) -> list[Transcript]:
    try:
        reads, notes = _read_embedded(path)
    except SubtitleError as exc:
        warnings.append(str(exc))
        return []
    warnings.extend(notes)
    out = []
    for read in reads:
        if read.error is not None:
            warnings.append(str(read.error))
        if read.warning:
            warnings.append(read.warning)
        if read.transcript is not None:
            out.append(read.transcript)
    return out


def _merge(transcripts: Sequence[Transcript]) -> Transcript:
    """One transcript of all cues (time order, exact duplicates once)."""
    cues = tuple(dict.fromkeys(clean_cues(c for t in transcripts for c in t.cues)))
    languages = ",".join(dict.fromkeys(t.language for t in transcripts if t.language))
    source = ", ".join(t.source for t in transcripts)
    return Transcript(SUBTITLES, cues, language=languages, source=source)


# --- writing -----------------------------------------------------------------------------------


def srt_time(seconds: float) -> str:
    """A SubRip timestamp, ``hh:mm:ss,mmm``."""
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def srt_text(cues: Sequence[tuple[float, float, str]]) -> str:
    """``(start_s, end_s, text)`` cues as SubRip: numbered blocks, ``\\n`` in a text as a line break."""
    return "".join(f"{i}\n{srt_time(s)} --> {srt_time(e)}\n{t}\n\n" for i, (s, e, t) in enumerate(cues, start=1))
