"""``spr import --text-features TRACK=PATH``: precomputed per-segment text embeddings (speech,
subtitles) into ``<collection>__<track>`` under the visual segments' ids, on real stores.

Visual features are 24-d at 1 row per second, text embeddings 16-d at one row per 4-s segment
(an all-zero row: no text there): nothing may assume one width for both."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import run_spr
# The same stores as the visual import tests: Faiss + SQLite, and Milvus + PostgreSQL.
from test_import import config, faiss_config  # noqa: F401  (fixtures)
from spr.catalog import SegmentCatalog
from spr.ingest.importer import ImportInputError, ImportOptions, import_features
from spr.stores import l2_normalize, open_vector_store
from spr.text_tracks import SPEECH, track_collection

D, TEXT_D = 24, 16
DURATIONS = {"a": 20.0, "b": 12.0, "c": 8.0}  # 5, 3 and 2 segments of 4 s


def rows(n: int, seed: int, dim: int, empty: tuple[int, ...] = ()) -> np.ndarray:
    """``(n, dim)`` random rows, not unit length (the import normalises), zero at ``empty``."""
    out = 3 * np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    out[list(empty)] = 0
    return out


def write_h5(path: Path, videos: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as h5:
        for key, array in videos.items():
            h5.create_dataset(key, data=array)
    return path


def write_corpus(tmp_path: Path) -> tuple[Path, Path]:
    """Visual features (1 fps) of a, b, c and their manifest."""
    visual = {k: rows(int(d), i, D) for i, (k, d) in enumerate(DURATIONS.items())}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"key": k, "duration": d}) + "\n" for k, d in DURATIONS.items()))
    return write_h5(tmp_path / "visual.h5", visual), manifest


def segment_id(catalog: SegmentCatalog, key: str, ordinal: int) -> int:
    """The catalog's id of segment ``ordinal`` of video ``key``."""
    video = catalog.get_video(key)
    found = catalog.lookup_segments((video.id << 20) + np.arange(64))
    (sid,) = [s for s, loc in found.items() if loc.ordinal == ordinal]
    return sid


def nearest(store, name: str, vector: np.ndarray) -> int:
    """The id of ``vector``'s nearest neighbour in ``name``, which must be itself, stored at
    unit length (cosine 1)."""
    found = store.search(name, l2_normalize(vector[None]), 1)
    assert found.scores[0, 0] == pytest.approx(1.0, abs=1e-4)
    return int(found.ids[0, 0])


def test_speech_rows_are_searchable_under_their_segments_ids_and_a_changed_file_republishes_once(config, tmp_path):
    visual, manifest = write_corpus(tmp_path)
    speech = {"a": rows(5, 10, TEXT_D, empty=(0, 2, 4)), "b": rows(3, 11, TEXT_D)}  # c: not in the file
    speech_file = write_h5(tmp_path / "speech.h5", speech)
    options = ImportOptions(text_features={SPEECH: str(speech_file)})
    name = track_collection(config.vectors.collection, SPEECH)

    summary = import_features(config, visual, manifest, options)
    assert sorted(summary.imported) == ["a", "b", "c"] and not summary.failed
    assert summary.segments_written == 10  # the visual collection: every segment
    track = summary.to_dict()["tracks"][SPEECH]
    assert (track["collection"], track["dim"], track["segments_written"]) == (name, TEXT_D, 2 + 3)
    assert track["videos"] == {"indexed": 2, "empty": 1}
    catalog, store = SegmentCatalog.from_config(config), open_vector_store(config)
    try:
        assert store.count(name) == 5
        for key, ordinal in [("a", 1), ("a", 3), ("b", 0), ("b", 2)]:
            sid = segment_id(catalog, key, ordinal)
            assert nearest(store, name, speech[key][ordinal]) == sid, (key, ordinal)
            # The same id is the visual collection's segment of that video at that time.
            location = catalog.lookup_segments([sid])[sid]
            assert (location.video_key, location.start_s) == (key, 4.0 * ordinal)
        # The catalog rows say what each video's speech track holds.
        report = {"status": "indexed", "source": "imported speech.h5", "segments": 2}
        assert catalog.get_video("a").tracks[SPEECH] == report
        assert catalog.get_video("c").tracks[SPEECH] == {"status": "empty", "source": "imported speech.h5"}
        record = catalog.get_collection(name)
        assert (record.dim, record.feature_model, record.metric) == (TEXT_D, "imported:speech.h5", "IP")

        again = import_features(config, visual, manifest, options)
        assert sorted(again.skipped) == ["a", "b", "c"] and again.imported == []

        # b's speech re-extracted: its first segment has none now, the others say something else.
        speech["b"] = rows(3, 12, TEXT_D, empty=(0,))
        write_h5(speech_file, speech)
        changed = import_features(config, visual, manifest, options)
        assert (changed.imported, sorted(changed.skipped)) == (["b"], ["a", "c"])
        assert changed.tracks[SPEECH].segments_written == 2
        store.close()
        store = open_vector_store(config)
        assert store.count(name) == 2 + 2  # b's old three were replaced, not added to
        assert nearest(store, name, speech["b"][1]) == segment_id(catalog, "b", 1)
        assert catalog.get_video("b").status == "ready"
    finally:
        store.close()
        catalog.close()


def test_bad_text_rows_fail_only_their_video_and_say_why(faiss_config, tmp_path):
    visual, manifest = write_corpus(tmp_path)
    nan = rows(2, 22, TEXT_D)
    nan[1, 3] = np.nan
    speech = {"a": rows(5, 20, TEXT_D), "b": rows(4, 21, TEXT_D), "c": nan}  # b has 3 segments
    options = ImportOptions(text_features={SPEECH: str(write_h5(tmp_path / "speech.h5", speech))})

    summary = import_features(faiss_config, visual, manifest, options)
    assert summary.imported == ["a"] and set(summary.failed) == {"b", "c"}
    assert "4 rows" in summary.failed["b"] and "3 segments" in summary.failed["b"]
    assert "speech" in summary.failed["c"] and "1 NaN" in summary.failed["c"]
    with SegmentCatalog.from_config(faiss_config) as catalog:
        assert (catalog.get_video("b").status, catalog.get_video("b").error) == ("failed", summary.failed["b"])
        assert catalog.segment_count() == 5  # only a's segments
    store = open_vector_store(faiss_config)
    try:
        assert store.count(track_collection(faiss_config.vectors.collection, SPEECH)) == 5
    finally:
        store.close()

    # Fixed: the failed videos are imported, a is unchanged; a wider row is refused by width.
    speech.update(b=rows(3, 21, TEXT_D), c=rows(2, 23, TEXT_D + 1))
    write_h5(tmp_path / "speech.h5", speech)
    fixed = import_features(faiss_config, visual, manifest, options)
    assert (fixed.imported, fixed.skipped) == (["b"], ["a"])
    assert "17-d" in fixed.failed["c"] and "16-d" in fixed.failed["c"]


def test_adding_a_text_file_republishes_its_videos_and_dropping_it_removes_their_vectors(faiss_config, tmp_path):
    visual, manifest = write_corpus(tmp_path)
    assert sorted(import_features(faiss_config, visual, manifest).imported) == ["a", "b", "c"]
    speech_file = write_h5(tmp_path / "speech.h5", {"a": rows(5, 30, TEXT_D)})
    options = ImportOptions(text_features={SPEECH: str(speech_file)})
    with_speech = import_features(faiss_config, visual, manifest, options)
    # Only a has rows in it: b and c have no speech vectors either way.
    assert (with_speech.imported, sorted(with_speech.skipped)) == (["a"], ["b", "c"])
    assert with_speech.tracks[SPEECH].segments_written == 5

    visual_only = import_features(faiss_config, visual, manifest)
    # a had speech and has none now: re-published; b and c had none either time: unchanged.
    assert (visual_only.imported, sorted(visual_only.skipped)) == (["a"], ["b", "c"])
    store = open_vector_store(faiss_config)
    try:
        assert store.count(track_collection(faiss_config.vectors.collection, SPEECH)) == 0
        assert store.count(faiss_config.vectors.collection) == 10
    finally:
        store.close()


def test_an_unknown_track_or_a_text_collection_of_another_model_is_refused_before_writing(faiss_config, tmp_path):
    visual, manifest = write_corpus(tmp_path)
    speech_file = write_h5(tmp_path / "speech.h5", {"a": rows(5, 40, TEXT_D)})
    with pytest.raises(ImportInputError, match="speech, subtitles"):
        import_features(faiss_config, visual, manifest, ImportOptions(text_features={"audio": str(speech_file)}))
    with pytest.raises(ImportInputError, match="do not exist"):
        import_features(faiss_config, visual, manifest, ImportOptions(text_features={SPEECH: "nope.h5"}))

    named = ImportOptions(text_features={SPEECH: str(speech_file)}, text_model="all-MiniLM-L6-v2")
    assert import_features(faiss_config, visual, manifest, named).tracks[SPEECH].segments_written == 5
    other = ImportOptions(text_features={SPEECH: str(speech_file)}, text_model="e5-small", force=True)
    with pytest.raises(ImportInputError, match="--text-model"):
        import_features(faiss_config, visual, manifest, other)
    with SegmentCatalog.from_config(faiss_config) as catalog:
        assert catalog.get_run(2) is None  # refused before the run started


def test_spr_import_with_text_features_prints_each_tracks_outcome(tmp_path):
    visual, manifest = write_corpus(tmp_path)
    speech = write_h5(tmp_path / "speech.h5", {"a": rows(5, 50, TEXT_D, empty=(1,)), "b": rows(3, 51, TEXT_D)})
    subtitles = tmp_path / "subtitles"
    subtitles.mkdir()
    np.save(subtitles / "c.npy", rows(2, 52, TEXT_D))
    np.save(subtitles / "zz.npy", rows(2, 53, TEXT_D))  # no visual features: reported, not imported
    env = {"SPR_DATA_DIR": str(tmp_path / "data"), "SPR_CONFIG": "", "SPR_LOGGING__JSON": "false"}
    args = ("import", str(visual), "--manifest", str(manifest))
    texts = ("--text-features", f"speech={speech}", "--text-features", f"subtitles={subtitles}")

    run = run_spr(*args, *texts, env=env)
    assert run.returncode == 0, run.stderr
    assert "3 imported, 0 skipped, 0 failed; 10 segments written" in run.stdout
    assert "speech: 1 empty, 2 indexed; 7 segments written into 'segments__speech'" in run.stdout
    assert "subtitles: 2 empty, 1 indexed; 2 segments written into 'segments__subtitles'" in run.stdout
    assert "but not in the features: (1): zz" in run.stdout
    again = run_spr(*args, *texts, "--json", env=env)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["videos"] == {"imported": 0, "skipped": 3, "failed": 0}
    assert summary["tracks"]["speech"]["source"] == str(speech) and summary["tracks"]["subtitles"]["dim"] == TEXT_D

    malformed = run_spr(*args, "--text-features", str(speech), env=env)
    assert malformed.returncode == 2 and "TRACK=PATH" in malformed.stderr
