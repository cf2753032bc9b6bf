"""The synthetic benchmark of ``spr train synthetic``: seeded, well-formed, and readable by the
real loaders (TVR-Ranking annotations, the importer's HDF5 reader, query features)."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from spr.ingest.importer import ImportedVideo, open_source, read_manifest, read_videos
from spr.data.tvr_ranking import load_query_features, load_query_records
from spr.data.synthetic import PLANTED_RELEVANCE, SAME_TYPE_RELEVANCE, SPLITS, make_synthetic_benchmark


def encoder(texts):
    """A stand-in text tower: a fixed random 24-d vector per text."""
    return np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(24) for t in texts])


@pytest.fixture(scope="module")
def bench():
    return make_synthetic_benchmark(videos=24, types=5, dim=32, seed=7, text_encoder=encoder, text_encoder_name="test")


def test_the_same_seed_gives_the_same_benchmark_and_another_seed_another(bench):
    again = make_synthetic_benchmark(videos=24, types=5, dim=32, seed=7, text_encoder=encoder)
    assert again.splits == bench.splits and again.events == bench.events and again.durations == bench.durations
    for name, feats in bench.videos.items():
        np.testing.assert_array_equal(again.videos[name].features, feats.features)
    other = make_synthetic_benchmark(videos=24, types=5, dim=32, seed=8)
    assert other.events != bench.events and other.query_features == {}


def test_videos_are_unit_feature_sequences_with_planted_non_overlapping_events(bench):
    assert len(bench.videos) == 24 and len(bench.types) == 5
    assert len({t.caption for t in bench.types}) == 5
    for name, feats in bench.videos.items():
        assert feats.rate == 1.0 and feats.features.shape == (int(np.ceil(bench.durations[name])), 32)
        np.testing.assert_allclose(np.linalg.norm(feats.features, axis=1), 1.0, atol=1e-5)
        planted = sorted((e.start_s, e.end_s) for e in bench.events if e.video_name == name)
        assert planted, f"{name} has no event"
        assert all(0 <= s < e <= bench.durations[name] for s, e in planted)
        assert all(a[1] < b[0] for a, b in zip(planted, planted[1:]))
    # An event's frames lean towards its type's prototype; background frames do not.
    event = bench.events[0]
    feats = bench.videos[event.video_name].features
    proto = bench.types[event.kind].prototype
    inside = feats[int(event.start_s) : int(event.end_s)] @ proto
    background = np.delete(feats, np.s_[int(event.start_s) : int(event.end_s)], axis=0) @ proto
    assert inside.mean() > 0.4 > background.mean() + 0.2


def test_queries_are_captions_with_graded_ground_truth_and_split_by_video(bench):
    split_of = bench.video_splits
    assert {split_of[n] for n in bench.videos} == set(SPLITS)
    total = sum(len(bench.splits[s]) for s in SPLITS)
    assert total == len(bench.events)
    captions = {t.caption for t in bench.types}
    for split in SPLITS:
        for record in bench.splits[split]:
            assert record.query in captions
            planted = [m for m in record.moments if m.relevance == PLANTED_RELEVANCE]
            assert len(planted) == 1 and split_of[planted[0].video_name] == split
            assert all(m.relevance == SAME_TYPE_RELEVANCE for m in record.moments if m not in planted)
            kind = next(t.index for t in bench.types if t.caption == record.query)
            same_type = {(e.video_name, e.start_s) for e in bench.events if e.kind == kind}
            listed = {(m.video_name, m.start_s) for m in record.moments}
            if split == "train":  # training never sees another split's videos
                assert listed == {x for x in same_type if split_of[x[0]] == "train"}
            else:  # evaluation lists the type's instances across the whole corpus
                assert listed == same_type
    # The same caption always has the same text feature.
    by_caption: dict[str, list[str]] = {}
    for records in bench.splits.values():
        for r in records:
            by_caption.setdefault(r.query, []).append(r.query_id)
    for ids in by_caption.values():
        for qid in ids[1:]:
            np.testing.assert_array_equal(bench.query_features[qid], bench.query_features[ids[0]])


def test_written_files_load_through_the_annotation_loader_and_the_importers_reader(bench, tmp_path):
    paths = bench.write(tmp_path / "out")
    for split in SPLITS:
        records = load_query_records(paths[split], require_relevance=True)
        assert records == bench.splits[split]
        rows = [json.loads(line) for line in open(paths[split])]
        assert isinstance(rows[0]["query_id"], int) and rows[0]["relevance"] in (2, 4)
    source = open_source(paths["features"])  # `spr import`'s reader, at 1 row per second
    try:
        videos = list(read_videos(source, read_manifest(paths["manifest"]), rate=1.0))
    finally:
        source.close()
    assert all(isinstance(v, ImportedVideo) for v in videos), [v for v in videos if not isinstance(v, ImportedVideo)]
    assert {v.key for v in videos} == set(bench.videos)
    first = videos[0]
    assert first.rate == 1.0 and first.duration_s == pytest.approx(bench.durations[first.key], abs=1e-3)
    np.testing.assert_allclose(first.features, bench.videos[first.key].features, atol=1e-6)
    features = load_query_features(paths["query_features"])
    assert set(features) == set(bench.query_features)
    described = json.loads(open(paths["benchmark"]).read())
    assert described["seed"] == 7 and described["dim"] == 32 and described["text_encoder"] == "test"
    assert [t["caption"] for t in described["types"]] == [t.caption for t in bench.types]


def test_impossible_settings_are_refused():
    with pytest.raises(ValueError, match="at least 3 videos"):
        make_synthetic_benchmark(videos=2)
    with pytest.raises(ValueError, match="cannot hold"):
        make_synthetic_benchmark(videos=10, duration_s=(20.0, 30.0))
    with pytest.raises(ValueError, match="event types"):
        make_synthetic_benchmark(types=1)
