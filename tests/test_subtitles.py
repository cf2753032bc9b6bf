"""Subtitle reading: SubRip / WebVTT / ASS files, sidecar discovery, embedded streams, the
manifest's ``subtitles`` field, and one subtitles track per video with warnings for what is
broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spr.ingest.decode import sample_frames
from spr.ingest.sources import SourceError, VideoSource, sources_from_manifest
from spr.ingest.subtitles import (
    SubtitleError,
    SubtitleSyntaxError,
    find_sidecars,
    parse_subtitle_text,
    read_embedded_subtitles,
    read_subtitle_file,
    read_subtitles,
)
from spr.ingest.synthetic_video import second_of_frame, write_video
from spr.text_tracks import SUBTITLES, Cue
from subtitled import (
    write_ass,
    write_srt,
    write_video_with_subtitle_packets,
    write_video_with_subtitles,
    write_vtt,
)

MB = 1 << 20
# What every format's markup must come back as (times on ASS's centisecond grid).
EXPECTED = [
    Cue(0.5, 1.25, "Hello there"),
    Cue(1.5, 2.75, "General Kenobi"),
    Cue(3.0, 3.84, "a bold move"),
]
MARKED_UP = {
    "srt": [(0.5, 1.25, "<i>Hello</i> there"), (1.5, 2.75, "General\nKenobi"), (3.0, 3.84, 'a <font color="#ff0">bold</font> move')],
    "vtt": [(0.5, 1.25, "<v Obi-Wan>Hello</v> there"), (1.5, 2.75, "General\nKenobi"), (3.0, 3.84, "a <c.yellow>bold</c> move")],
    "ass": [(0.5, 1.25, "{\\i1}Hello{\\i0} there"), (1.5, 2.75, "General\nKenobi"), (3.0, 3.84, "a {\\b1\\c&H00FFFF&}bold{\\r} move")],
}
WRITERS = {"srt": write_srt, "vtt": write_vtt, "ass": write_ass}


def assert_cues(cues, expected=EXPECTED) -> None:
    assert [c.text for c in cues] == [c.text for c in expected]
    for got, want in zip(cues, expected):
        assert got.start_s == pytest.approx(want.start_s, abs=5e-4)
        assert got.end_s == pytest.approx(want.end_s, abs=5e-4)


# --- files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["srt", "vtt", "ass"])
def test_each_format_reads_to_the_known_cues_with_markup_removed(tmp_path: Path, fmt: str) -> None:
    path = WRITERS[fmt](tmp_path / f"talk.en.{fmt}", MARKED_UP[fmt])
    transcript = read_subtitle_file(path, MB)
    assert transcript.track == SUBTITLES
    assert transcript.language == "en"
    assert transcript.source == f"sidecar talk.en.{fmt}"
    assert_cues(transcript.cues)


def test_webvtt_hours_optional_settings_blocks_and_entities() -> None:
    text = (
        "WEBVTT\nKind: captions\nLanguage: en\n\n"
        "NOTE a comment\nover two lines\n\n"
        "STYLE\n::cue(.loud) { font-weight: bold }\n\n"
        "REGION\nid:top width:40%\n\n"
        "00:01.000 --> 00:02.500 line:0 position:20% align:start\n<c.loud>fish &amp; chips</c>\n\n"
        "intro\n01:00:02.000 --> 01:00:03.000\n<v.first Anna>Hi</v> <00:00:02.500><i>Bob</i> &lt;3\n"
    )
    assert parse_subtitle_text(text, "vtt") == [Cue(1.0, 2.5, "fish & chips"), Cue(3602.0, 3603.0, "Hi Bob <3")]


def test_subrip_with_bom_crlf_overrides_and_a_blank_line_inside_a_cue() -> None:
    text = (
        "\ufeff1\r\n00:00:01,000 --> 00:00:02,000\r\n{\\an8}<b>top</b> line\r\n\r\n"
        "2\r\n00:00:03,5 --> 00:00:04,250 X1:10 X2:20 Y1:5 Y2:9\r\nfirst\r\n\r\nsecond part\r\n"
    )
    assert parse_subtitle_text(text, ".srt") == [Cue(1.0, 2.0, "top line"), Cue(3.5, 4.25, "first second part")]


def test_ass_comments_line_breaks_drawings_and_an_ssa_format_line() -> None:
    text = (
        "[Script Info]\nScriptType: v4.00\n\n[Events]\n"
        "Format: Marked, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
        "Comment: Marked=0,0:00:00.00,0:00:01.00,Default,,0,0,0,,not shown\n"
        "Dialogue: Marked=0,0:00:01.00,0:00:02.50,Default,,0,0,0,,one\\Ntwo\\hthree, four\n"
        "Dialogue: Marked=0,0:00:03.00,0:00:04.00,Default,,0,0,0,,{\\p1}m 0 0 l 100 0 100 100{\\p0}sign\n"
    )
    assert parse_subtitle_text(text, "ssa") == [Cue(1.0, 2.5, "one two three, four"), Cue(3.0, 4.0, "sign")]


@pytest.mark.parametrize(
    ("encoding", "text"),
    [("cp1252", "Café crème – déjà vu, naïve façade"), ("latin-1", "Ça va ? Très bien, à bientôt, garçon")],
)
def test_a_non_utf8_subrip_file_is_decoded_by_charset_detection(tmp_path: Path, encoding: str, text: str) -> None:
    cues = [(i, i + 0.5, f"{text} {i}") for i in range(8)]
    path = write_srt(tmp_path / "old.srt", cues, encoding=encoding)
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")
    assert [c.text for c in read_subtitle_file(path, MB).cues] == [t for _, _, t in cues]


def test_broken_and_unreadable_files_raise_subtitle_errors_that_say_where(tmp_path: Path) -> None:
    broken = tmp_path / "talk.srt"
    broken.write_text("1\n00:00:01,000 --> 00:00:02,000\nfine\n\n2\n00:00:03,000 --> 00:00:04,000\nfine too\n\n"
                      "3\n00:00:05 --> soon\nbad\n")
    with pytest.raises(SubtitleError, match=r"^subtitles: talk\.srt: not valid SubRip \(line 10\): .*timing line"):
        read_subtitle_file(broken, MB)
    prose = tmp_path / "prose.srt"
    prose.write_text("just some words\nand more\n")
    with pytest.raises(SubtitleError, match=r"not valid SubRip \(line 1\)"):
        read_subtitle_file(prose, MB)
    no_cues = tmp_path / "header.vtt"
    no_cues.write_text("WEBVTT\n\nNOTE nothing here\n")
    with pytest.raises(SubtitleError, match="no cues found"):
        read_subtitle_file(no_cues, MB)
    binary = tmp_path / "video.srt"
    binary.write_bytes(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00\xff\xfe\x00\x01" * 10)
    with pytest.raises(SubtitleError, match="not text.*UTF-8"):
        read_subtitle_file(binary, MB)
    notes = tmp_path / "talk.txt"
    notes.write_text("hello")
    with pytest.raises(SubtitleError, match=r"unknown subtitle format '\.txt'"):
        read_subtitle_file(notes, MB)
    with pytest.raises(SubtitleError, match="does not exist"):
        read_subtitle_file(tmp_path / "missing.srt", MB)
    with pytest.raises(SubtitleSyntaxError, match="a WebVTT file starts with 'WEBVTT'"):
        parse_subtitle_text("00:01.000 --> 00:02.000\nhi\n", "vtt")


def test_a_blank_file_is_an_empty_track_not_an_error(tmp_path: Path) -> None:
    blank = tmp_path / "talk.srt"
    blank.write_text("\n\n")
    assert read_subtitle_file(blank, MB).empty


def test_a_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = write_srt(tmp_path / "talk.srt", [(0, 1, "x" * 200)])
    assert read_subtitle_file(path, max_bytes=path.stat().st_size).cues
    with pytest.raises(SubtitleError, match=r"over the 100-byte limit \(subtitles.max_file_bytes\)"):
        read_subtitle_file(path, max_bytes=100)
    video = tmp_path / "talk.mp4"
    video.touch()
    transcript, warnings = read_subtitles(VideoSource("talk", str(video), video.as_uri(), subtitles=(str(path),)), 100)
    assert transcript is None
    assert any("over the 100-byte limit" in w for w in warnings)


# --- sidecars and the manifest ---------------------------------------------------------------


def test_sidecars_are_the_files_with_the_videos_stem_and_a_subtitle_suffix(tmp_path: Path) -> None:
    for name in ["talk.mp4", "talk.srt", "talk.en.vtt", "talk.ASS", "other.srt", "talkative.srt", "talk.txt",
                 "talk.en.forced.srt", "talk.mp4.bak"]:
        (tmp_path / name).write_text("")
    assert [p.name for p in find_sidecars(tmp_path / "talk.mp4")] == ["talk.ASS", "talk.en.vtt", "talk.srt"]
    assert find_sidecars(tmp_path / "absent" / "talk.mp4") == []


def test_a_broken_sidecar_is_a_warning_and_the_others_are_merged(tmp_path: Path) -> None:
    video = write_video(tmp_path / "talk.mp4", 1, fps=2, size=(160, 120), preset="ultrafast")
    (tmp_path / "talk.srt").write_text("1\n00:00:01,000 -> 00:00:02,000\noops\n")
    write_vtt(tmp_path / "talk.en.vtt", [(0.5, 1.0, "English")])
    write_ass(tmp_path / "talk.fr.ass", [(0.25, 1.0, "{\\i1}Français")])
    transcript, warnings = read_subtitles(VideoSource("talk", str(video), video.as_uri()), MB)
    assert len(warnings) == 1 and warnings[0].startswith("subtitles: talk.srt: not valid SubRip (line 1): ")
    assert transcript is not None
    assert [c.text for c in transcript.cues] == ["Français", "English"]
    assert transcript.source == "sidecar talk.en.vtt, sidecar talk.fr.ass"
    assert transcript.language == "en,fr"


def test_manifest_subtitles_are_read_and_come_before_sidecars(tmp_path: Path) -> None:
    (tmp_path / "subs").mkdir()
    write_srt(tmp_path / "subs" / "talk.de.srt", [(1, 2, "Guten Tag")])
    write_srt(tmp_path / "subs" / "more.srt", [(3, 4, "Auf Wiedersehen")])
    write_srt(tmp_path / "talk.srt", [(1, 2, "sidecar, not used")])
    video = write_video(tmp_path / "talk.mp4", 1, fps=2, size=(160, 120), preset="ultrafast")
    manifest = tmp_path / "videos.jsonl"
    rows = [
        {"path": "talk.mp4", "key": "a", "subtitles": ["subs/talk.de.srt", str(tmp_path / "subs" / "more.srt")]},
        {"path": "talk.mp4", "key": "b", "subtitles": "subs/talk.de.srt"},
        {"path": "talk.mp4", "key": "c"},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b, c = sources_from_manifest(manifest)
    assert a.subtitles == (str(tmp_path / "subs" / "talk.de.srt"), str(tmp_path / "subs" / "more.srt"))
    assert b.subtitles == (str(tmp_path / "subs" / "talk.de.srt"),)
    assert c.subtitles == ()
    transcript, warnings = read_subtitles(a, MB)
    assert warnings == []
    assert [x.text for x in transcript.cues] == ["Guten Tag", "Auf Wiedersehen"]
    assert transcript.source == "manifest talk.de.srt, manifest more.srt"
    assert read_subtitles(c, MB)[0].source == "sidecar talk.srt"
    assert str(video) == c.path


def test_manifest_subtitles_in_csv_and_bad_types(tmp_path: Path) -> None:
    csv = tmp_path / "videos.csv"
    csv.write_text('path,subtitles\na.mp4,a.srt\nb.mp4,"[""b.en.srt"", ""b.fr.srt""]"\nc.mp4,\n')
    assert [s.subtitles for s in sources_from_manifest(csv)] == [
        (str(tmp_path / "a.srt"),), (str(tmp_path / "b.en.srt"), str(tmp_path / "b.fr.srt")), ()
    ]
    for bad in [3, {"en": "a.srt"}, ["a.srt", 7], [""]]:
        manifest = tmp_path / "bad.jsonl"
        manifest.write_text(json.dumps({"path": "a.mp4", "subtitles": bad}) + "\n")
        with pytest.raises(SourceError, match=r"bad\.jsonl:1: subtitles must be a path or a list of paths"):
            sources_from_manifest(manifest)


# --- embedded streams ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "suffix", "markup", "decoder"),
    [
        ("subrip", ".mkv", "srt", "srt"),
        ("ass", ".mkv", "ass", "ssa"),
        ("webvtt", ".mkv", "vtt", "webvtt"),
        ("mov_text", ".mp4", "srt", "mov_text"),
    ],
)
def test_an_embedded_stream_gives_the_known_cues_and_frames_still_decode(
    tmp_path: Path, codec: str, suffix: str, markup: str, decoder: str
) -> None:
    video = write_video_with_subtitles(tmp_path / f"talk{suffix}", 4, MARKED_UP[markup], codec, language="eng")
    (transcript,) = read_embedded_subtitles(video)
    assert transcript.source == f"stream 1 ({decoder})"
    assert transcript.language == "eng"
    assert_cues(transcript.cues)
    # A subtitle stream must not get in the way of the visual decoder.
    assert [second_of_frame(f.image) for f in sample_frames(video, fps=1)] == [0, 1, 2, 3]
    merged, warnings = read_subtitles(VideoSource("talk", str(video), video.as_uri()), MB)
    assert warnings == [] and merged.cues == transcript.cues


def test_a_stream_of_undecodable_packets_is_a_warning_and_a_few_are_skipped(tmp_path: Path) -> None:
    latin1 = [(i, i + 0.5, f"Caf\xe9 {i}".encode("latin-1")) for i in range(3)]
    broken = write_video_with_subtitle_packets(tmp_path / "broken.mkv", 4, latin1)
    with pytest.raises(SubtitleError, match=r"stream 1 \(srt\): 3 of 3 packets cannot be decoded"):
        read_embedded_subtitles(broken)
    transcript, warnings = read_subtitles(VideoSource("b", str(broken), broken.as_uri()), MB)
    assert transcript is None
    assert len(warnings) == 1 and warnings[0].startswith("subtitles: broken.mkv: stream 1 (srt): 3 of 3 packets")

    mostly_good = [(i * 0.3, i * 0.3 + 0.2, f"cue {i}".encode()) for i in range(11)] + [(3.5, 3.9, b"Caf\xe9")]
    partial = write_video_with_subtitle_packets(tmp_path / "partial.mkv", 4, mostly_good)
    assert len(read_embedded_subtitles(partial)[0].cues) == 11
    transcript, warnings = read_subtitles(VideoSource("p", str(partial), partial.as_uri()), MB)
    assert len(transcript.cues) == 11
    assert len(warnings) == 1 and "1 of 12 packets cannot be decoded and were skipped (first at 3.500 s" in warnings[0]


def test_a_video_without_subtitles_has_none_and_no_warnings(tmp_path: Path) -> None:
    video = write_video(tmp_path / "plain.mp4", 1, fps=2, size=(160, 120), preset="ultrafast")
    assert read_embedded_subtitles(video) == []
    assert read_subtitles(VideoSource("plain", str(video), video.as_uri()), MB) == (None, [])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    with pytest.raises(SubtitleError, match="cannot open the video"):
        read_embedded_subtitles(garbage)
