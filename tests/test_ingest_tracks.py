"""Ingesting what is said and written: real speech (espeak-ng) transcribed by real faster-whisper
tiny.en, subtitle sidecars, and all-MiniLM-L6-v2 embeddings, through `run_ingest` into the text
collections; then found by paraphrased queries.

Runs twice: on the embedded defaults (SQLite, Faiss, the inline executor) and on the cluster
stack (PostgreSQL, the Milvus server, Ray with its ASR actor stage). CLIP is the built-in
spr-tiny with RANDOM weights; the text side is real, so the spoken moments must come first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from spr.catalog import SegmentCatalog
from spr.config import load_config
from spr.engine import MomentQuery, MomentSearch
from spr.features import SPEECH, SUBTITLES, VISUAL, FrameFeatureStore
from spr.ingest.pipeline import delete_videos, run_ingest
from spr.ingest.sources import sources_from_paths
from spr.ingest.synthetic_video import write_video
from spr.models.query import QueryEncoder
from spr.models.text import load_sentence_encoder
from spr.stores import open_vector_store
from spr.text_tracks import track_collection

from conftest import run_spr
from spoken import require_espeak, write_silent_video, write_spoken_video
from subtitled import write_srt, write_video_with_subtitles

COLLECTION = "tracks"
SENTENCES = [
    (2.0, "The budget for next year will be four million dollars."),
    (16.0, "Photosynthesis turns sunlight and water into sugar."),
    (30.0, "I am leaving for Paris tomorrow morning."),
]
# A paraphrase of each sentence, in SENTENCES order.
PARAPHRASES = [
    "when does she mention the budget",
    "how plants make sugar from light",
    "the part where he says he is going away to France",
]
SUBTITLE = (8.0, 11.0, "Watch out, the bridge is closed because of the flood.")
EMBEDDED = (4.0, 7.0, "The museum opens a new wing dedicated to ancient Egypt.")


@dataclass(frozen=True)
class Corpus:
    root: Path
    spoken: list[tuple[float, float, str]]  # audible spans of talk.mp4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    require_espeak()
    root = tmp_path_factory.mktemp("tracks")
    spoken = write_spoken_video(root / "talk.mp4", 40.0, SENTENCES)
    write_silent_video(root / "quiet.mp4", 12.0)
    write_video(root / "mute.mp4", 12.0, fps=5, size=(160, 120), seed=3, preset="ultrafast")
    write_video(root / "lesson.mp4", 20.0, fps=5, size=(160, 120), seed=4, preset="ultrafast")
    write_srt(root / "lesson.srt", [SUBTITLE])
    write_video(root / "broken.mp4", 12.0, fps=5, size=(160, 120), seed=5, preset="ultrafast")
    (root / "broken.srt").write_bytes(b"1\n00:00:xx --> garbage\n\x00\x01\x02 not a subtitle file\n")
    write_video_with_subtitles(root / "news.mkv", 12.0, [EMBEDDED], "subrip")
    return Corpus(root, spoken)


def _config(tmp_path: Path, stack: str, request) -> tuple:
    env = {
        "SPR_DATA_DIR": str(tmp_path / "data"),
        "SPR_CLIP__MODEL": "spr-tiny",
        "SPR_CLIP__BATCH_SIZE": "16",
        "SPR_RAY__NUM_CPUS": "2",
        "SPR_VECTORS__COLLECTION": COLLECTION,
        "SPR_LOGGING__LEVEL": "ERROR",
    }
    if stack == "cluster":
        env |= {
            "SPR_CATALOG__URL": request.getfixturevalue("postgres_url_module"),
            "SPR_VECTORS__BACKEND": "milvus",
            "SPR_MILVUS__URI": request.getfixturevalue("milvus_uri"),
            "SPR_MILVUS__CONSISTENCY_LEVEL": "Strong",
        }
    return load_config(environ=env), ("ray" if stack == "cluster" else "inline"), env


@pytest.fixture(
    scope="module",
    params=["embedded", pytest.param("cluster", marks=[pytest.mark.milvus, pytest.mark.postgres, pytest.mark.slow])],
)
def ingested(request, corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"ingest-{request.param}")
    config, executor, env = _config(tmp, request.param, request)
    summary = run_ingest(config, sources_from_paths([corpus.root]), executor=executor)
    return config, executor, summary


@pytest.fixture
def spr_env(ingested) -> dict[str, str]:
    """The ``SPR_*`` environment of the ingested stack, for ``spr`` commands."""
    config, _, _ = ingested
    env = {"SPR_DATA_DIR": config.data_dir, "SPR_CLIP__MODEL": "spr-tiny", "SPR_LOGGING__LEVEL": "ERROR",
           "SPR_VECTORS__COLLECTION": COLLECTION}
    if config.catalog.url:
        env |= {"SPR_CATALOG__URL": config.catalog.url, "SPR_VECTORS__BACKEND": "milvus", "SPR_MILVUS__URI": config.milvus.uri}
    return env


def _search(config):
    return MomentSearch.open(config, QueryEncoder.from_config(config), text_encoder=load_sentence_encoder("", "cpu", 32))


def test_every_video_is_indexed_and_each_track_reports_what_happened(ingested):
    config, _, summary = ingested
    assert summary.videos_failed == 0 and summary.videos_done == 6
    with SegmentCatalog.from_config(config) as catalog:
        tracks = {v.key: v.tracks for v in catalog.list_videos()}
        warnings = {v.key: v.warnings for v in catalog.list_videos()}
    assert tracks["talk.mp4"][SPEECH]["status"] == "indexed"
    assert tracks["talk.mp4"][SPEECH]["language"] == "en"
    # No audio, or silence, is no speech, not an error.
    assert tracks["quiet.mp4"][SPEECH]["status"] == "empty"
    assert tracks["mute.mp4"][SPEECH]["status"] == "empty"
    assert tracks["lesson.mp4"][SUBTITLES]["status"] == "indexed"
    assert "lesson.srt" in tracks["lesson.mp4"][SUBTITLES]["source"]
    assert tracks["news.mkv"][SUBTITLES]["status"] == "indexed"
    assert "stream" in tracks["news.mkv"][SUBTITLES]["source"]  # the embedded SubRip stream
    # A broken subtitle file is a warning on the row; the video is still searchable visually.
    assert any("broken.srt" in w for w in warnings["broken.mp4"])
    assert not warnings["talk.mp4"] and not warnings["lesson.mp4"]
    assert summary.text_segments[SPEECH] >= 3 and summary.text_segments[SUBTITLES] >= 1


@pytest.mark.parametrize("i", range(len(SENTENCES)))
def test_each_spoken_sentence_is_found_first_by_a_paraphrase_and_overlaps_the_spoken_time(ingested, corpus, i):
    config, _, _ = ingested
    start, end, _ = corpus.spoken[i]
    with _search(config) as search:
        result = search.search(MomentQuery(text=PARAPHRASES[i]))
    best = result.moments[0]
    assert best.video_key == "talk.mp4", [(m.video_key, m.start_s, m.snippet) for m in result.moments[:3]]
    assert best.start_s < end and best.end_s > start, (best, (start, end))
    assert best.snippet_track == SPEECH and best.snippet
    assert not next(m for m in result.modalities if m.modality == VISUAL).searched  # random CLIP left out


def test_a_sidecar_subtitle_is_found_by_a_paraphrase(ingested):
    config, _, _ = ingested
    with _search(config) as search:
        result = search.search(MomentQuery(text="a bridge closed by flooding", weights={SPEECH: 0.0}))
    best = result.moments[0]
    assert best.video_key == "lesson.mp4" and best.start_s < SUBTITLE[1] and best.end_s > SUBTITLE[0]
    assert best.snippet_track == SUBTITLES and "bridge" in best.snippet


def test_an_embedded_subtitle_stream_is_found_by_a_paraphrase(ingested):
    config, _, _ = ingested
    with _search(config) as search:
        result = search.search(MomentQuery(text="an exhibition about ancient Egypt at the museum"))
    best = result.moments[0]
    assert best.video_key == "news.mkv" and best.start_s < EMBEDDED[1] and best.end_s > EMBEDDED[0]
    assert best.snippet_track == SUBTITLES and "Egypt" in best.snippet


def test_spr_status_shows_each_track_and_the_warnings(ingested, spr_env):
    status = run_spr("status", env=spr_env)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    speech = next(line for line in lines if line.startswith(SPEECH))
    assert "indexed=1" in speech and "empty=" in speech and "segments with text:" in speech
    assert any(line.startswith(SUBTITLES) and "indexed=" in line for line in lines)
    assert any(line.startswith("warning  broken.mp4: subtitles") for line in lines), status.stdout
    assert f"{COLLECTION}__speech" in status.stdout and f"{COLLECTION}__subtitles" in status.stdout


def test_reembed_carries_the_text_tracks_into_the_new_collection(ingested):
    from spr.ingest.reembed import reembed_collection

    config, _, first = ingested
    summary = reembed_collection(config, "tracks_v2")
    assert summary.text_segments == {SPEECH: _count(config, SPEECH), SUBTITLES: _count(config, SUBTITLES)}
    store = open_vector_store(config)
    try:
        for track in (SPEECH, SUBTITLES):
            assert store.count(track_collection("tracks_v2", track)) == _count(config, track)
    finally:
        store.close()
    # The new collection answers a paraphrase from what was said, like the old one.
    with _search(config) as search:
        best = search.search(MomentQuery(text=PARAPHRASES[0], collection="tracks_v2")).moments[0]
    assert best.video_key == "talk.mp4" and best.snippet_track == SPEECH


def test_the_transcript_keeps_its_words_and_timings_in_the_feature_store(ingested, corpus):
    config, _, _ = ingested
    with SegmentCatalog.from_config(config) as catalog:
        video = catalog.get_video("talk.mp4")
    transcript = FrameFeatureStore.from_config(config).read_transcript(video.id, SPEECH)
    assert "budget" in " ".join(w.text.lower() for w in transcript.words)
    budget = next(w for w in transcript.words if "budget" in w.text.lower())
    start, end, _ = corpus.spoken[0]
    assert start - 0.5 <= budget.start_s <= end + 0.5


def _count(config, track: str) -> int:
    """Vectors in the track's collection, as a fresh store sees them (another process wrote)."""
    store = open_vector_store(config)
    try:
        return store.count(track_collection(COLLECTION, track))
    finally:
        store.close()


def test_a_rerun_skips_everything_and_leaves_one_vector_per_text_segment(ingested, corpus):
    config, executor, first = ingested
    before = {t: _count(config, t) for t in (SPEECH, SUBTITLES)}
    again = run_ingest(config, sources_from_paths([corpus.root]), executor=executor)
    assert (again.videos_done, again.videos_skipped) == (0, 6)
    forced = run_ingest(config, sources_from_paths([corpus.root / "talk.mp4"]), executor=executor, force=True)
    assert forced.videos_done == 1
    after = {t: _count(config, t) for t in (SPEECH, SUBTITLES)}
    assert after == before == {SPEECH: first.text_segments[SPEECH], SUBTITLES: first.text_segments[SUBTITLES]}


def test_speech_can_be_turned_off_and_deleting_a_video_removes_its_text_everywhere(ingested, corpus):
    config, executor, _ = ingested
    talk = sources_from_paths([corpus.root / "talk.mp4"])
    # Re-ingesting with speech off keeps the video, and its old speech vectors go.
    off = run_ingest(config, talk, executor=executor, force=True, speech=False)
    assert off.tracks[SPEECH] == {"off": 1}
    assert _count(config, SPEECH) == 0
    run_ingest(config, talk, executor=executor, force=True)
    assert _count(config, SPEECH) > 0
    with SegmentCatalog.from_config(config) as catalog:
        video_id = catalog.get_video("talk.mp4").id
    assert delete_videos(config, ["talk.mp4"]) == {"talk.mp4": True}
    assert _count(config, SPEECH) == 0
    with SegmentCatalog.from_config(config) as catalog:
        assert catalog.segment_text_count(SPEECH) == 0
    assert not FrameFeatureStore.from_config(config).has_transcript(video_id, SPEECH)
    run_ingest(config, talk, executor=executor)  # leave the corpus as it was
