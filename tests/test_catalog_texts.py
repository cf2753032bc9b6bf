"""Specification of the catalog's text tracks (segment texts, per-video track outcomes and
warnings, migration 0002) and of the feature store's transcripts.

Catalog tests take ``catalog_url`` (tests/conftest.py): once on a SQLite file and once on a
fresh PostgreSQL schema.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import IntegrityError

from spr import ids as spr_ids
from spr.catalog import SegmentCatalog, VideoNotFound, current_revision, head_revision
from spr.catalog.engine import create_catalog_engine
from spr.catalog.migrate import alembic_config, upgrade
from spr.catalog.segment_catalog import MAX_WARNING_CHARS, MAX_WARNINGS
from spr.features import SPEECH, SUBTITLES, VISUAL, FeatureNotFound, FrameFeatureStore
from spr.text_tracks import MAX_SEGMENT_TEXT_CHARS, Cue, TrackReport, TrackStatus, Transcript, Word


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[SegmentCatalog]:
    with SegmentCatalog.open(catalog_url) as cat:
        yield cat


def add_video(cat: SegmentCatalog, key: str, n_segments: int, length_s: float = 4.0) -> int:
    """Register ``key`` with ``n_segments`` back-to-back ready segments; returns its id."""
    video = cat.register_video(key, f"s3://bucket/{key}.mp4", n_segments * length_s)
    ordinals = np.arange(n_segments)
    cat.replace_segments(video.id, ordinals, ordinals * length_s, (ordinals + 1) * length_s)
    cat.mark_ready(video.id)
    return video.id


class SelectLog:
    """SELECT statements any engine sends while active."""

    def __init__(self) -> None:
        self.selects: list[str] = []
        self.inserts: list[str] = []

    def __call__(self, conn, cursor, statement, parameters, context, executemany) -> None:
        head = statement.lstrip().upper()
        if head.startswith("SELECT"):
            self.selects.append(statement)
        elif head.startswith("INSERT"):
            self.inserts.append(statement)


@pytest.fixture
def sql_log() -> Iterator[SelectLog]:
    log = SelectLog()
    event.listen(Engine, "before_cursor_execute", log)
    try:
        yield log
    finally:
        event.remove(Engine, "before_cursor_execute", log)


def sid(video_id: int, ordinal: int) -> int:
    return spr_ids.segment_id(video_id, ordinal)


# --- segment texts ---------------------------------------------------------------------------


def test_segment_texts_round_trip_exactly_and_return_the_ids_written(catalog: SegmentCatalog) -> None:
    vid = add_video(catalog, "v", 6)
    awkward = 'say "hi", then\nnewline, tab\t, ünïcødé 字幕 \\. \\N'
    ids = catalog.replace_segment_texts(vid, SPEECH, np.array([4, 0, 2]), [awkward, "first", "  "])
    # Whitespace-only text is no text: only the two real ones are written, in input order.
    assert ids.dtype == np.int64 and ids.tolist() == [sid(vid, 4), sid(vid, 0)]
    assert catalog.segment_texts([sid(vid, o) for o in range(6)]) == {
        sid(vid, 0): {SPEECH: "first"},
        sid(vid, 4): {SPEECH: awkward},
    }
    assert catalog.segment_text_count() == catalog.segment_text_count(SPEECH) == 2
    assert catalog.segment_text_count(SUBTITLES) == 0


def test_segment_texts_are_capped_and_cleaned_of_nul(catalog: SegmentCatalog) -> None:
    vid = add_video(catalog, "v", 2)
    catalog.replace_segment_texts(vid, SUBTITLES, [0, 1], ["x" * (MAX_SEGMENT_TEXT_CHARS + 500), "a\x00b"])
    stored = catalog.segment_texts([sid(vid, 0), sid(vid, 1)])
    assert stored[sid(vid, 0)][SUBTITLES] == "x" * MAX_SEGMENT_TEXT_CHARS
    assert stored[sid(vid, 1)][SUBTITLES] == "ab"


def test_replacing_one_tracks_texts_keeps_the_other_track(catalog: SegmentCatalog) -> None:
    vid = add_video(catalog, "v", 4)
    catalog.replace_segment_texts(vid, SPEECH, [0, 1], ["old speech 0", "old speech 1"])
    catalog.replace_segment_texts(vid, SUBTITLES, [1, 3], ["sub 1", "sub 3"])
    catalog.replace_segment_texts(vid, SPEECH, [2], ["new speech 2"])
    assert catalog.segment_texts([sid(vid, o) for o in range(4)]) == {
        sid(vid, 1): {SUBTITLES: "sub 1"},
        sid(vid, 2): {SPEECH: "new speech 2"},
        sid(vid, 3): {SUBTITLES: "sub 3"},
    }
    assert catalog.segment_texts([sid(vid, 1), sid(vid, 2)], tracks=[SPEECH]) == {sid(vid, 2): {SPEECH: "new speech 2"}}
    assert catalog.delete_segment_texts(vid, SUBTITLES) == 2
    assert catalog.segment_text_count() == 1
    assert catalog.delete_segment_texts(vid) == 1
    assert catalog.segment_text_count() == 0


def test_texts_of_another_video_are_untouched(catalog: SegmentCatalog) -> None:
    a, b = add_video(catalog, "a", 3), add_video(catalog, "b", 3)
    catalog.replace_segment_texts(a, SPEECH, [0], ["a0"])
    catalog.replace_segment_texts(b, SPEECH, [0], ["b0"])
    catalog.replace_segment_texts(a, SPEECH, [1], ["a1"])
    catalog.delete_segment_texts(a)
    assert catalog.segment_texts([sid(a, 0), sid(a, 1), sid(b, 0)]) == {sid(b, 0): {SPEECH: "b0"}}


def test_replacing_segments_removes_their_texts(catalog: SegmentCatalog) -> None:
    vid = add_video(catalog, "v", 4)
    catalog.replace_segment_texts(vid, SPEECH, [0, 3], ["s0", "s3"])
    catalog.replace_segment_texts(vid, SUBTITLES, [1], ["t1"])
    ordinals = np.arange(4)
    catalog.replace_segments(vid, ordinals, ordinals * 4.0, ordinals * 4.0 + 4.0)
    assert catalog.segment_text_count() == 0
    catalog.replace_segment_texts(vid, SPEECH, [2], ["again"])
    assert catalog.segment_texts([sid(vid, 2)]) == {sid(vid, 2): {SPEECH: "again"}}


def test_deleting_segment_rows_cascades_to_their_texts_in_the_database(catalog: SegmentCatalog) -> None:
    vid = add_video(catalog, "v", 3)
    catalog.replace_segment_texts(vid, SPEECH, [0, 1, 2], ["a", "b", "c"])
    with catalog.engine.begin() as conn:
        conn.execute(text("DELETE FROM segments WHERE ordinal = 1"))
    assert set(catalog.segment_texts([sid(vid, o) for o in range(3)])) == {sid(vid, 0), sid(vid, 2)}


def test_texts_of_missing_segments_are_rejected_and_the_old_texts_stay(catalog: SegmentCatalog) -> None:
    vid = add_video(catalog, "v", 2)
    catalog.replace_segment_texts(vid, SPEECH, [0], ["kept"])
    with pytest.raises(IntegrityError):
        catalog.replace_segment_texts(vid, SPEECH, [1, 5], ["b", "no such segment"])
    with pytest.raises(IntegrityError):
        catalog.replace_segment_texts(vid, SPEECH, [1, 1], ["twice", "twice"])
    assert catalog.segment_texts([sid(vid, 0), sid(vid, 1)]) == {sid(vid, 0): {SPEECH: "kept"}}


def test_malformed_text_writes_are_rejected_before_writing(catalog: SegmentCatalog) -> None:
    vid = add_video(catalog, "v", 2)
    with pytest.raises(ValueError, match="one"):
        catalog.replace_segment_texts(vid, SPEECH, [0, 1], ["only one"])
    with pytest.raises(ValueError, match="integers"):
        catalog.replace_segment_texts(vid, SPEECH, np.array([0.5]), ["x"])
    with pytest.raises(ValueError, match="visual"):
        catalog.replace_segment_texts(vid, VISUAL, [0], ["x"])
    with pytest.raises(ValueError, match="modality"):
        catalog.replace_segment_texts(vid, "Bad Track", [0], ["x"])


def test_texts_of_5000_segments_come_back_in_one_statement(catalog: SegmentCatalog, sql_log: SelectLog) -> None:
    vid = add_video(catalog, "long", 5000)
    ordinals = np.arange(5000)
    catalog.replace_segment_texts(vid, SPEECH, ordinals, [f"said {o}" for o in ordinals])
    catalog.replace_segment_texts(vid, SUBTITLES, ordinals[::2], [f"shown {o}" for o in ordinals[::2]])
    wanted = spr_ids.segment_ids(vid, 5000).tolist() + [-1, sid(vid, 6000)]  # padding, unknown
    sql_log.selects.clear()
    found = catalog.segment_texts(wanted)
    assert len(sql_log.selects) == 1
    assert len(found) == 5000
    assert found[sid(vid, 4998)] == {SPEECH: "said 4998", SUBTITLES: "shown 4998"}
    assert found[sid(vid, 4999)] == {SPEECH: "said 4999"}
    assert catalog.segment_texts([]) == {}


def test_postgresql_writes_texts_with_copy(postgres_url: str, sql_log: SelectLog) -> None:
    with SegmentCatalog.open(postgres_url) as cat:
        vid = add_video(cat, "v", 3000)
        sql_log.inserts.clear()
        cat.replace_segment_texts(vid, SPEECH, np.arange(3000), [f'"{o}",\n' for o in range(3000)])
        assert not [s for s in sql_log.inserts if "segment_texts" in s]
        assert cat.segment_texts([sid(vid, 2999)]) == {sid(vid, 2999): {SPEECH: '"2999",\n'}}


def test_span_texts_are_the_overlapping_segments_per_track_in_time_order(catalog: SegmentCatalog) -> None:
    vid = add_video(catalog, "v", 6)  # segments [0,4) [4,8) ... [20,24)
    other = add_video(catalog, "other", 6)
    catalog.replace_segment_texts(vid, SPEECH, [3, 1, 2, 5], ["s3", "s1", "s2", "s5"])
    catalog.replace_segment_texts(vid, SUBTITLES, [2], ["t2"])
    catalog.replace_segment_texts(other, SPEECH, [2], ["other video"])
    assert catalog.span_texts(vid, 5.0, 12.0) == {
        SPEECH: [(4.0, 8.0, "s1"), (8.0, 12.0, "s2")],
        SUBTITLES: [(8.0, 12.0, "t2")],
    }
    assert catalog.span_texts(vid, 8.0, 16.0, tracks=[SPEECH]) == {SPEECH: [(8.0, 12.0, "s2"), (12.0, 16.0, "s3")]}
    assert catalog.span_texts(vid, 0.0, 4.0) == {}


# --- tracks and warnings ---------------------------------------------------------------------


def test_tracks_and_warnings_round_trip_and_survive_re_registering(catalog: SegmentCatalog) -> None:
    video = catalog.register_video("v", "u", 10.0)
    assert (video.tracks, video.warnings) == ({}, [])
    reports = {
        SPEECH: TrackReport(TrackStatus.INDEXED, source="faster-whisper tiny.en", cues=12, segments=3).to_dict(),
        SUBTITLES: TrackReport(TrackStatus.FAILED, source="sidecar v.srt", error="not UTF-8").to_dict(),
    }
    catalog.set_tracks(video.id, reports, ["subtitles: sidecar v.srt is not UTF-8"])
    stored = catalog.get_video("v")
    assert stored is not None
    assert stored.tracks == {
        SPEECH: {"status": "indexed", "source": "faster-whisper tiny.en", "cues": 12, "segments": 3},
        SUBTITLES: {"status": "failed", "source": "sidecar v.srt", "error": "not UTF-8"},
    }
    assert stored.warnings == ["subtitles: sidecar v.srt is not UTF-8"]
    again = catalog.register_video("v", "u2", 11.0)
    catalog.mark_failed(again.id, "decoder crashed")
    kept = catalog.get_video_by_id(video.id)
    assert kept is not None and (kept.tracks, kept.warnings) == (stored.tracks, stored.warnings)
    assert (kept.status, kept.error) == ("failed", "decoder crashed")
    catalog.set_tracks(video.id, {SPEECH: {"status": "off"}}, [])
    assert (catalog.get_video("v").tracks, catalog.get_video("v").warnings) == ({SPEECH: {"status": "off"}}, [])


def test_track_counts_count_videos_per_track_and_status(catalog: SegmentCatalog) -> None:
    assert catalog.track_counts() == {}
    ids = [catalog.register_video(f"v{i}", "u", 1.0).id for i in range(4)]
    catalog.set_tracks(ids[0], {SPEECH: {"status": "indexed"}, SUBTITLES: {"status": "empty"}}, [])
    catalog.set_tracks(ids[1], {SPEECH: {"status": "indexed"}, SUBTITLES: {"status": "failed"}}, [])
    catalog.set_tracks(ids[2], {SPEECH: {"status": "off"}}, [])
    assert catalog.track_counts() == {
        SPEECH: {"indexed": 2, "off": 1},
        SUBTITLES: {"empty": 1, "failed": 1},
    }


def test_set_tracks_rejects_bad_reports_and_unknown_videos_and_caps_warnings(catalog: SegmentCatalog) -> None:
    video = catalog.register_video("v", "u", 1.0)
    with pytest.raises(ValueError, match="status"):
        catalog.set_tracks(video.id, {SPEECH: {"status": "great"}}, [])
    with pytest.raises(ValueError, match="visual"):
        catalog.set_tracks(video.id, {VISUAL: {"status": "indexed"}}, [])
    with pytest.raises(TypeError):
        catalog.set_tracks(video.id, {}, "one string")
    with pytest.raises(VideoNotFound):
        catalog.set_tracks(video.id + 100, {}, [])
    catalog.set_tracks(video.id, {}, ["w" * (MAX_WARNING_CHARS * 2)] * (MAX_WARNINGS + 5))
    warnings = catalog.get_video("v").warnings
    assert len(warnings) == MAX_WARNINGS and {len(w) for w in warnings} == {MAX_WARNING_CHARS}


def test_purging_a_video_removes_its_texts(catalog: SegmentCatalog) -> None:
    gone, kept = add_video(catalog, "gone", 3), add_video(catalog, "kept", 3)
    catalog.replace_segment_texts(gone, SPEECH, [0, 1], ["a", "b"])
    catalog.replace_segment_texts(gone, SUBTITLES, [2], ["c"])
    catalog.replace_segment_texts(kept, SPEECH, [0], ["k"])
    assert catalog.purge_video(gone) is True
    assert catalog.segment_text_count() == 1
    assert catalog.segment_texts([sid(kept, 0)]) == {sid(kept, 0): {SPEECH: "k"}}


# --- migration 0002 --------------------------------------------------------------------------


def test_upgrading_a_0001_catalog_keeps_its_rows_and_adds_the_text_tracks(catalog_url: str) -> None:
    engine = create_catalog_engine(catalog_url)
    try:
        with engine.begin() as conn:
            upgrade(conn, "0001")
            conn.execute(
                text(
                    "INSERT INTO videos (id, key, uri, duration_s, status, metadata) "
                    "VALUES (7, 'old', 's3://b/old.mp4', 8.0, 'ready', '{\"lang\": \"en\"}')"
                )
            )
            for ordinal in (0, 1):
                conn.execute(
                    text("INSERT INTO segments (id, video_id, ordinal, start_s, end_s) VALUES (:id, 7, :o, :s, :e)"),
                    {"id": sid(7, ordinal), "o": ordinal, "s": ordinal * 4.0, "e": ordinal * 4.0 + 4.0},
                )
        with engine.connect() as conn:
            assert current_revision(conn) == "0001"
            assert "segment_texts" not in inspect(conn).get_table_names()
    finally:
        engine.dispose()
    with SegmentCatalog.open(catalog_url) as cat:
        with cat.engine.connect() as conn:
            assert current_revision(conn) == head_revision()
        old = cat.get_video("old")
        assert old is not None
        assert (old.id, old.status, old.metadata, old.tracks, old.warnings) == (7, "ready", {"lang": "en"}, {}, [])
        assert set(cat.lookup_segments([sid(7, 0), sid(7, 1)])) == {sid(7, 0), sid(7, 1)}
        cat.replace_segment_texts(7, SPEECH, [1], ["after the upgrade"])
        cat.set_tracks(7, {SPEECH: {"status": "indexed"}}, [])
        assert cat.span_texts(7, 0.0, 8.0) == {SPEECH: [(4.0, 8.0, "after the upgrade")]}
        assert cat.track_counts() == {SPEECH: {"indexed": 1}}


def test_migration_0002_downgrades_to_0001_keeping_videos(catalog_url: str) -> None:
    with SegmentCatalog.open(catalog_url) as cat:
        vid = add_video(cat, "v", 2)
        cat.replace_segment_texts(vid, SPEECH, [0], ["gone with the table"])
        cat.set_tracks(vid, {SPEECH: {"status": "indexed"}}, ["w"])
        with cat.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0001")
        with cat.engine.connect() as conn:
            assert current_revision(conn) == "0001"
            assert "segment_texts" not in inspect(conn).get_table_names()
            assert {"tracks", "warnings"}.isdisjoint(c["name"] for c in inspect(conn).get_columns("videos"))
            assert conn.execute(text("SELECT count(*) FROM segments")).scalar_one() == 2
    with SegmentCatalog.open(catalog_url) as cat:
        video = cat.get_video("v")
        assert video is not None and (video.id, video.tracks, video.warnings) == (vid, {}, [])


# --- transcripts in the feature store --------------------------------------------------------


@pytest.fixture(params=["local", "memory"])
def feature_store(request: pytest.FixtureRequest, tmp_path) -> FrameFeatureStore:
    """On a local folder and on an fsspec URL (``memory://``, as ``s3://`` would be)."""
    if request.param == "local":
        return FrameFeatureStore(tmp_path / "features")
    return FrameFeatureStore(f"memory://spr-texts-{tmp_path.name}")


def speech_transcript() -> Transcript:
    return Transcript(
        track=SPEECH,
        cues=(Cue(0.5, 2.0, "Hello there."), Cue(2.0, 4.25, 'She said "ünïcødé", then left.')),
        words=(Word(0.5, 1.0, "Hello"), Word(1.0, 2.0, "there.")),
        language="en",
        source="faster-whisper tiny.en",
    )


def test_transcripts_round_trip_per_track(feature_store: FrameFeatureStore) -> None:
    speech = speech_transcript()
    subtitles = Transcript(track=SUBTITLES, cues=(Cue(1.0, 3.0, "[music]"),), source="sidecar v.srt")
    assert not feature_store.has_transcript(3, SPEECH)
    feature_store.write_transcript(3, speech)
    feature_store.write_transcript(3, subtitles)
    assert feature_store.read_transcript(3, SPEECH) == speech
    assert feature_store.read_transcript(3, SUBTITLES) == subtitles
    assert feature_store.has_transcript(3, SPEECH) and feature_store.transcript_tracks(3) == [SPEECH, SUBTITLES]
    replaced = Transcript(track=SPEECH, cues=(Cue(0.0, 1.0, "Only this."),))
    feature_store.write_transcript(3, replaced)
    assert feature_store.read_transcript(3, SPEECH) == replaced
    assert feature_store.transcript_path(3, SPEECH).endswith("/03/3.speech.transcript.json")


def test_a_missing_transcript_raises_feature_not_found(feature_store: FrameFeatureStore) -> None:
    with pytest.raises(FeatureNotFound, match="speech transcript for video id 9"):
        feature_store.read_transcript(9, SPEECH)
    with pytest.raises(ValueError, match="visual"):
        feature_store.transcript_path(9, VISUAL)


def test_transcripts_are_not_modalities(feature_store: FrameFeatureStore) -> None:
    feature_store.write_transcript(5, speech_transcript())
    assert feature_store.modalities(5) == []
    assert feature_store.video_ids(SPEECH) == []
    feature_store.write(5, np.ones((4, 8)), 1.0)
    feature_store.write(5, np.ones((2, 8)), 0.5, modality=SPEECH)
    assert feature_store.modalities(5) == [SPEECH, VISUAL]
    assert feature_store.video_ids(SPEECH) == [5]


def test_deleting_a_video_removes_every_modality_and_transcript(feature_store: FrameFeatureStore) -> None:
    for video_id in (5, 261):  # 261 shares 5's shard (261 % 256 == 5)
        feature_store.write(video_id, np.ones((4, 8)), 1.0)
        feature_store.write(video_id, np.ones((2, 8)), 0.5, modality=SPEECH)
        feature_store.write_transcript(video_id, speech_transcript())
        feature_store.write_transcript(video_id, Transcript(track=SUBTITLES, cues=(Cue(0.0, 1.0, "x"),)))
    assert feature_store.delete(5, SPEECH) is True
    assert feature_store.modalities(5) == [VISUAL] and feature_store.transcript_tracks(5) == [SUBTITLES]
    assert feature_store.delete(5) is True
    assert feature_store.modalities(5) == [] and feature_store.transcript_tracks(5) == []
    assert feature_store.delete(5) is False
    assert feature_store.modalities(261) == [SPEECH, VISUAL]
    assert feature_store.transcript_tracks(261) == [SPEECH, SUBTITLES]


def test_deleting_only_a_transcript_counts_as_removed(feature_store: FrameFeatureStore) -> None:
    feature_store.write_transcript(8, Transcript(track=SUBTITLES, cues=(Cue(0.0, 1.0, "x"),)))
    assert feature_store.delete(8) is True
    assert not feature_store.has_transcript(8, SUBTITLES)


def test_texts_go_with_their_segments_even_without_sqlite_foreign_keys(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    SegmentCatalog.open(url).close()  # migrated
    bare = SegmentCatalog(create_engine(url))  # a file opened elsewhere: PRAGMA foreign_keys off
    try:
        with bare.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
        vid = add_video(bare, "v", 2)
        bare.replace_segment_texts(vid, SPEECH, [0, 1], ["a", "b"])
        bare.replace_segments(vid, np.arange(1), np.zeros(1), np.full(1, 4.0))
        assert bare.segment_text_count() == 0
        bare.replace_segment_texts(vid, SPEECH, [0], ["c"])
        assert bare.purge_video(vid) is True
        assert bare.segment_text_count() == 0
    finally:
        bare.close()
