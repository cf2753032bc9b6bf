"""`spr eval` on a collection with text tracks: NDCG@K at IoU for the visual modality (SP), each
text track alone and the fusion, from one run. Text side REAL (all-MiniLM-L6-v2), visual RANDOM
(spr-tiny): the speech and subtitle queries must score where the visual one cannot."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from spr.cli.eval import evaluate
from spr.config import ClipConfig, FaissConfig
from spr.eval.evaluation import EvalOptions
from spr.features import SPEECH, SUBTITLES, VISUAL

from conftest import store_config
from test_fused_search import COLLECTION, _build

# (query, video, start, end): what is said or written in test_fused_search's corpus, and when.
QUERIES = [
    ("when does she mention the budget", "kitchen.mp4", 30.0, 34.5, SPEECH),
    ("the scene where he says he is leaving", "hallway.mp4", 20.0, 23.0, SPEECH),
    ("a bridge closed because of a flood", "street.mp4", 12.0, 15.5, SUBTITLES),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, minilm):
    root = tmp_path_factory.mktemp("eval-modalities")
    config = store_config("faiss", root / "faiss")
    config = replace(
        config, data_dir=str(root / "data"), vectors=replace(config.vectors, collection=COLLECTION),
        clip=ClipConfig(model="spr-tiny", device="cpu", precision="fp32"), faiss=FaissConfig(dir=str(root / "faiss"), use_gpu=False),
    )
    _build(config, minilm)
    queries = root / "queries.jsonl"
    queries.write_text("".join(
        json.dumps({"query_id": i, "query": q, "video_name": v, "timestamp": [s, e], "duration": 60.0, "relevance": 3}) + "\n"
        for i, (q, v, s, e, _) in enumerate(QUERIES)
    ))
    return config, queries


@pytest.fixture(scope="module")
def minilm():
    from spr.models.text import load_sentence_encoder

    return load_sentence_encoder("", "cpu", 32)


def test_one_run_scores_each_text_track_alone_and_the_fusion(setup):
    config, queries = setup
    report = evaluate(config, queries, EvalOptions(refine=False, ks=(10,), iou_thresholds=(0.3,), workers=1))
    assert set(report.by_modality) == {SPEECH, SUBTITLES, "fused"}
    # CLIP is random: the fusion leaves it out, as the search service does for a text query.
    assert report.fused_modalities == (SPEECH, SUBTITLES)
    speech = report.by_modality[SPEECH].ndcg[10][0.3]
    subtitles = report.by_modality[SUBTITLES].ndcg[10][0.3]
    fused = report.by_modality["fused"].ndcg[10][0.3]
    # Two of three queries are spoken, one is written: each track alone answers its own share.
    assert 0.5 < speech < 1.0 and 0.2 < subtitles < 0.5
    assert fused > max(speech, subtitles) and report.sp.ndcg[10][0.3] < fused
    data = report.to_json()
    assert set(data["by_modality"]) == {SPEECH, SUBTITLES, "fused"}
    table = report.format_table()
    assert "SP:spe" in table and "SP:sub" in table and "SP:fus" in table


def test_the_fusion_keeps_a_random_visual_modality_when_asked_to(setup):
    config, queries = setup
    config = replace(config, fusion=replace(config.fusion, include_random=True))
    report = evaluate(config, queries, EvalOptions(refine=False, ks=(10,), iou_thresholds=(0.3,), workers=1))
    assert report.fused_modalities == (VISUAL, SPEECH, SUBTITLES)


def test_visual_only_leaves_the_text_tracks_out(setup):
    config, queries = setup
    report = evaluate(config, queries, EvalOptions(refine=False, ks=(10,), iou_thresholds=(0.3,), modalities=False))
    assert report.by_modality == {} and "SP:spe" not in report.format_table()
