"""Projector training (``spr train projector``): the TVR-Ranking loaders, MIL-NCE, positives,
the schedule, checkpoint/resume, and that training on the synthetic benchmark beats the
untrained CLIP_mp baseline on NDCG@10 at IoU >= 0.5 through the coarse (SP) path.

CLIP is the built-in ``spr-tiny`` with random weights, so its text features are unrelated to
the synthetic visual features until the projectors learn the mapping. Everything runs on the
CPU in well under a minute; nothing asserts a speed.
"""

from __future__ import annotations

import json
import math
import os
import random
import zlib

import h5py
import numpy as np
import pytest
import torch

from spr.config import TrainConfig, load_config
from spr.features import FrameFeatures
from spr.segments import segment_bounds, segment_rows
from spr.metrics import PredictedMoment, evaluate_rankings
from spr.models.projector import load_projectors, untrained_projectors
from spr.data.tvr_ranking import (
    AnnotationError,
    QueryRecord,
    TrainingMoment,
    load_query_features,
    load_query_records,
    write_query_features,
)
from spr.train.projector import (
    ProjectorTrainingOptions,
    encode_query_texts,
    mil_nce_loss,
    positive_segments,
    prepare_training_data,
    train_projectors,
)
from spr.train.schedule import (
    TrainState,
    build_optimizer,
    capture_rng,
    load_train_state,
    restore_rng,
    save_train_state,
    seed_everything,
    warmup_cosine,
)
from spr.data.synthetic import make_synthetic_benchmark

from conftest import run_spr

CLIP_DIM = 64  # spr-tiny's embedding size: the synthetic features use it so search could too


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: on 2 cores shared with other test processes, two threads ran these
    small models 10-20x slower (spinning), one runs them at full speed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- annotation files -------------------------------------------------------------------------


def _row(qid, video, start, end, relevance=None, query="a man opens a door", **more):
    row = {"query_id": qid, "query": query, "video_name": video, "timestamp": [start, end], "duration": 60.0, **more}
    if relevance is not None:
        row["relevance"] = relevance
    return row


ROWS = [
    _row(1, "v1", 2.0, 9.5, 2),
    _row(1, "v2", 10.0, 14.0, 4),
    _row(2, "v1", 30.0, 38.0, 3, query="a dog runs"),
    _row(1, "v3", 0.0, 5.0, 4),
]


def test_jsonl_json_array_and_json_object_files_give_the_same_queries(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    array = tmp_path / "b.json"
    array.write_text(json.dumps(ROWS, indent=2))
    obj = tmp_path / "c.json"
    obj.write_text(json.dumps({"version": 1, "data": ROWS}, indent=1))
    parsed = [load_query_records(p, require_relevance=True) for p in (jsonl, array, obj)]
    assert parsed[0] == parsed[1] == parsed[2]
    first = parsed[0][0]
    assert [r.query_id for r in parsed[0]] == ["1", "2"]
    assert first.query == "a man opens a door" and first.videos == ["v1", "v2", "v3"]
    assert first.moments[0] == TrainingMoment("v1", 2.0, 9.5, 2.0, 60.0)
    # The moments are GroundTruthMoments: the metrics take them as they are.
    gt = ground_truth_of(parsed[0])
    assert set(gt) == {"1", "2"} and len(gt["1"]) == 3


def test_top_n_keeps_the_most_relevant_then_most_similar_moments(tmp_path):
    rows = [
        _row(7, "a", 0, 4, similarity=0.2),
        _row(7, "b", 0, 4, similarity=0.9),
        _row(7, "c", 0, 4, similarity=0.5),
        _row(7, "d", 0, 4, relevance=4),
    ]
    path = tmp_path / "pseudo.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    (record,) = load_query_records(path, top_n=3)
    assert [m.video_name for m in record.moments] == ["d", "b", "c"]
    (record,) = load_query_records(path)  # no top_n: file order, missing relevance counts as 1
    assert [m.video_name for m in record.moments] == ["a", "b", "c", "d"]
    assert [m.relevance for m in record.moments] == [1.0, 1.0, 1.0, 4.0]
    with pytest.raises(AnnotationError, match=r"pseudo.jsonl:1: missing field 'relevance'"):
        load_query_records(path, require_relevance=True)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"timestamp": [9.0, 3.0]}, r"ends before it starts"),
        ({"timestamp": [1.0]}, r"timestamp must be \[start_s, end_s\]"),
        ({"relevance": 7}, r"relevance must be in \[0, 4\]"),
        ({"query": ""}, r"has no text"),
        ({"duration": -3}, r"duration must be a finite number >= 0|duration must be a positive"),
        ({"timestamp": [1.0, float("nan")]}, r"must be a finite number"),
    ],
)
def test_a_bad_record_is_reported_with_file_and_line(tmp_path, bad, message):
    rows = [dict(r) for r in ROWS]
    rows[2].update(bad)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(AnnotationError, match=rf"bad.jsonl:3: .*{message}"):
        load_query_records(jsonl)
    # In a pretty-printed JSON array the line is where the record starts.
    array = tmp_path / "bad.json"
    text = json.dumps(rows, indent=2)
    array.write_text(text)
    line = text[: text.index('"query_id": 2')].count("\n")  # the '{' line above it
    with pytest.raises(AnnotationError, match=rf"bad.json:{line}: .*{message}"):
        load_query_records(array)


def test_file_level_errors_name_the_file(tmp_path):
    with pytest.raises(AnnotationError, match="does not exist"):
        load_query_records(tmp_path / "missing.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(AnnotationError, match=r"broken.jsonl:2: not valid JSON"):
        load_query_records(broken)
    clash = tmp_path / "clash.jsonl"
    clash.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({**ROWS[1], "query": "something else"}) + "\n")
    with pytest.raises(AnnotationError, match=r"clash.jsonl:2: query '1' has the text .* at line 1"):
        load_query_records(clash)
    missing = tmp_path / "missing_field.jsonl"
    missing.write_text(json.dumps({k: v for k, v in ROWS[0].items() if k != "video_name"}))
    with pytest.raises(AnnotationError, match=r"missing_field.jsonl:1: missing field 'video_name'"):
        load_query_records(missing)
    with pytest.raises(ValueError, match="top_n"):
        load_query_records(broken, top_n=0)


def test_query_features_load_by_query_id(tmp_path):
    path = tmp_path / "q.h5"
    write_query_features(path, {"1": np.arange(4.0), "2": np.ones(4)})
    with h5py.File(path, "a") as h5:
        h5.create_dataset("3", data=np.ones((1, 4)))  # (1, D) is one row
        h5.create_dataset("tokens", data=np.ones((5, 4)))  # token-level features are not
    loaded = load_query_features(path, ["1", "2", "3"])
    assert set(loaded) == {"1", "2", "3"} and loaded["3"].shape == (4,) and loaded["1"].dtype == np.float32
    np.testing.assert_array_equal(loaded["1"], np.arange(4.0))
    with pytest.raises(AnnotationError, match=r"no features for query '9'"):
        load_query_features(path, ["1", "9"])
    with pytest.raises(AnnotationError, match=r"'tokens' has features of shape \(5, 4\)"):
        load_query_features(path)


# --- positives and the loss -------------------------------------------------------------------


def test_positive_segments_by_overlap_fraction():
    # 4-s segments of a 20-s video; the moment [5, 15] covers 3/4, 4/4 and 3/4 of segments 1-3.
    assert positive_segments(5.0, 15.0, 20.0, 4.0, 0.3).tolist() == [1, 2, 3]
    assert positive_segments(5.0, 15.0, 20.0, 4.0, 0.8).tolist() == [2]
    # [3, 9]: 1 s of segment 0 (0.25), all of segment 1, 1 s of segment 2 (0.25).
    assert positive_segments(3.0, 9.0, 20.0, 4.0, 0.3).tolist() == [1]
    assert positive_segments(3.0, 9.0, 20.0, 4.0, 0.25).tolist() == [0, 1, 2]
    assert positive_segments(3.0, 9.0, 20.0, 4.0, 0.0).tolist() == [0, 1, 2]
    assert positive_segments(4.0, 8.0, 20.0, 4.0, 0.0).tolist() == [1]  # touching is no overlap
    # The last segment of an 18-s video is 2 s long: 0.8 s of it is 40 %.
    assert positive_segments(17.2, 18.0, 18.0, 4.0, 0.3).tolist() == [4]
    assert positive_segments(7.0, 7.0, 18.0, 4.0, 0.0).tolist() == []  # zero-length moment


def test_mil_nce_with_several_positives_per_row_and_column_matches_a_hand_computed_value():
    # All similarities equal: a row with p of B positives costs -log(p / B).
    positive = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 1, 1]], dtype=torch.bool)
    loss = mil_nce_loss(torch.zeros(3, 3), positive, temperature=0.05)
    rows = (math.log(3 / 2) + math.log(3) + math.log(3 / 2)) / 3  # rows hold 2, 1, 2 positives
    cols = (math.log(3) + 0.0 + math.log(3)) / 3  # columns hold 1, 3, 1
    assert float(loss) == pytest.approx(0.5 * (rows + cols), abs=1e-6)

    # Unequal similarities: equation (1) written out term by term.
    sim = torch.tensor([[0.9, 0.5, -0.2], [0.1, 0.3, 0.8], [0.4, -0.6, 0.7]])
    tau = 0.5
    e = [[math.exp(float(sim[i, j]) / tau) for j in range(3)] for i in range(3)]
    q2s = -sum(math.log(sum(e[i][j] for j in range(3) if positive[i, j]) / sum(e[i])) for i in range(3)) / 3
    s2q = -sum(
        math.log(sum(e[j][i] for j in range(3) if positive[j, i]) / sum(e[j][i] for j in range(3))) for i in range(3)
    ) / 3
    assert float(mil_nce_loss(sim, positive, tau)) == pytest.approx((q2s + s2q) / 2, rel=1e-6)
    # One positive per row and column (the diagonal) is plain symmetric InfoNCE.
    eye = torch.eye(3, dtype=torch.bool)
    info_nce = (torch.nn.functional.cross_entropy(sim / tau, torch.arange(3)) + torch.nn.functional.cross_entropy(sim.t() / tau, torch.arange(3))) / 2
    assert float(mil_nce_loss(sim, eye, tau)) == pytest.approx(float(info_nce), rel=1e-6)


def test_mil_nce_skips_rows_without_positives_and_has_gradients():
    sim = torch.randn(4, 4, requires_grad=True)
    positive = torch.zeros(4, 4, dtype=torch.bool)
    positive[0, 0] = positive[1, 0] = True  # rows 2 and 3, columns 1-3 have none
    loss = mil_nce_loss(sim, positive, 0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(sim.grad).all() and sim.grad.abs().sum() > 0


def _video(seconds: int, dim: int = 8, seed: int = 0) -> FrameFeatures:
    return FrameFeatures(0, np.random.default_rng(seed).standard_normal((seconds, dim)).astype(np.float32), 1.0)


def test_training_data_masks_every_positive_of_a_query_and_skips_unusable_moments():
    records = [
        QueryRecord("a", "q a", (
            TrainingMoment("v1", 5.0, 15.0, 4.0, 20.0),  # segments 1, 2, 3
            TrainingMoment("v2", 0.0, 4.0, 2.0, 12.0),  # segment 0 of v2
            TrainingMoment("v1", 16.0, 18.0, 0.0, 20.0),  # relevance 0: no positive
            TrainingMoment("gone", 0.0, 8.0, 4.0, 30.0),  # no features
        )),
        QueryRecord("b", "q b", (TrainingMoment("v1", 8.0, 12.0, 3.0, 20.0),)),  # segment 2, shared with "a"
        QueryRecord("c", "q c", (TrainingMoment("v2", 1.0, 1.5, 3.0, 12.0),)),  # 0.5 s of a 4-s segment: none
    ]
    frames = {"v1": _video(20), "v2": _video(12, seed=1)}
    text = {k: np.ones(5, np.float32) * i for i, k in enumerate("abc")}
    data = prepare_training_data(records, frames, text, 4.0, 0.3)
    assert data.query_ids == ["a", "b"]
    assert data.entries == 3 and data.segments == 4
    assert data.stats["moments_irrelevant"] == 1 and data.stats["moments_without_features"] == 1
    assert data.stats["moments_without_positive"] == 1 and data.stats["queries_without_positive"] == 1
    keys = data.segment_keys
    s = {key: i for i, key in enumerate(keys)}
    assert set(keys) == {("v1", 1), ("v1", 2), ("v1", 3), ("v2", 0)}
    np.testing.assert_array_equal(data.frames[s[("v1", 2)], :4].astype(np.float32), frames["v1"].features[8:12].astype(np.float16).astype(np.float32))
    segs = np.array([s[("v1", 1)], s[("v2", 0)], s[("v1", 2)]])
    mask = data.is_positive(np.array([0, 0, 1]), segs)
    # Query a's rows hold all three segments; query b's row only the shared one.
    np.testing.assert_array_equal(mask, [[True, True, True], [True, True, True], [False, False, True]])
    # The trainer's batches build the same mask with torch (on the training device).
    from spr.train.projector import _Batcher

    text_b, frames_b, mask_b, positive = _Batcher(data, torch.device("cpu"))(torch.tensor([0, 0, 1]), torch.from_numpy(segs))
    np.testing.assert_array_equal(positive.numpy(), mask)
    assert frames_b.shape == (3, 4, 8) and mask_b.all() and text_b[2, 0] == 1.0


# --- schedule and state -----------------------------------------------------------------------


def test_warmup_then_cosine_and_optimizer_defaults():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = build_optimizer([param])
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert group["lr"] == TrainConfig().lr and group["weight_decay"] == TrainConfig().weight_decay
    assert build_optimizer([param], lr=0.1, weight_decay=0.0).param_groups[0]["lr"] == 0.1  # the refiner's call
    with pytest.raises(ValueError):
        build_optimizer([param], lr=0.0)

    optimizer = torch.optim.SGD([param], lr=2.0)
    scheduler = warmup_cosine(optimizer, total_steps=100, warmup_fraction=0.1)
    lrs = []
    for _ in range(110):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.2) and lrs[9] == pytest.approx(2.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # linear warm-up
    assert lrs[10] == pytest.approx(2.0) and lrs[55] == pytest.approx(1.0)  # half-way down the cosine
    assert all(a >= b for a, b in zip(lrs[10:100], lrs[11:101]))
    assert lrs[100] == pytest.approx(0.0, abs=1e-12) and lrs[109] == pytest.approx(0.0, abs=1e-12)
    # The schedule's state survives a save and load (it is a callable object, not a closure).
    fresh = warmup_cosine(torch.optim.SGD([param], lr=2.0), total_steps=100, warmup_fraction=0.1)
    fresh.load_state_dict(scheduler.state_dict())
    assert fresh.last_epoch == scheduler.last_epoch


def test_rng_states_round_trip_through_a_saved_training_state(tmp_path):
    seed_everything(3)
    gen = np.random.default_rng(5)
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model, lr=0.01)
    scheduler = warmup_cosine(optimizer, 10)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = TrainState.capture({"m": model}, optimizer, scheduler, step=1, epoch=0, options={"lr": 0.01}, generators={"g": gen})
    save_train_state(tmp_path / "s.state", state)
    draws = (random.random(), np.random.rand(), torch.rand(1).item(), gen.random())

    loaded = load_train_state(tmp_path / "s.state")  # weights_only load
    other = torch.nn.Linear(3, 2)
    other_opt = build_optimizer(other, lr=0.01)
    other_sched = warmup_cosine(other_opt, 10)
    gen2 = np.random.default_rng(99)
    loaded.restore({"m": other}, other_opt, other_sched, generators={"g": gen2})
    assert (random.random(), np.random.rand(), torch.rand(1).item(), gen2.random()) == draws
    assert torch.equal(other.weight, model.weight) and other_sched.last_epoch == 1 and loaded.options == {"lr": 0.01}
    assert other_opt.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    restore_rng(capture_rng())  # a capture restores without named generators too
    with pytest.raises(ValueError, match="not a training state"):
        torch.save({"format": "other"}, tmp_path / "x.pt")
        load_train_state(tmp_path / "x.pt")


# --- training ---------------------------------------------------------------------------------


def _caption_encoder(dim: int = 12):
    """A deterministic stand-in text tower: a fixed random vector per caption."""

    def encode(texts):
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(dim) for t in texts]).astype(np.float32)

    return encode


SMALL = dict(dim=16, layers=1, heads=2, dropout=0.1, batch_size=8, epochs=3, device="cpu", log_every=0)


@pytest.mark.parametrize("save_every", [0, 3])
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, save_every):
    bench = make_synthetic_benchmark(videos=10, types=3, dim=12, seed=4, text_encoder=_caption_encoder())
    records, frames, text = bench.splits["train"], bench.videos, bench.query_features
    options = ProjectorTrainingOptions(**SMALL, save_every_steps=save_every)

    full_losses: dict[int, float] = {}
    full, summary = train_projectors(records, frames, text, tmp_path / "full.pt", options, on_step=lambda s, l: full_losses.setdefault(s, l))
    per_epoch = summary.steps // options.epochs
    assert per_epoch >= 4, "the test needs several steps per epoch"
    stop_at = per_epoch + per_epoch // 2 + 1  # in the middle of the second epoch

    class Stop(Exception):
        pass

    def interrupt(step, loss):
        if step == stop_at:
            raise Stop

    with pytest.raises(Stop):
        train_projectors(records, frames, text, tmp_path / "cut.pt", options, on_step=interrupt)
    saved = load_train_state(tmp_path / "cut.pt.state")
    # The last state written before the interrupt: the end of epoch 1, or a later --save-every step.
    expected_step = max(per_epoch, (stop_at - 1) // save_every * save_every) if save_every else per_epoch
    assert saved.step == expected_step and saved.epoch == expected_step // per_epoch
    assert not (tmp_path / "cut.pt").exists()  # no final checkpoint from an interrupted run

    resumed_losses: dict[int, float] = {}
    resumed, resumed_summary = train_projectors(
        records, frames, text, tmp_path / "cut.pt", options, resume=tmp_path / "cut.pt.state",
        on_step=lambda s, l: resumed_losses.setdefault(s, l),
    )
    assert min(resumed_losses) == saved.step + 1 and max(resumed_losses) == summary.steps
    for step, loss in resumed_losses.items():
        assert loss == pytest.approx(full_losses[step], rel=1e-5, abs=1e-6), step
    for a, b in zip(full.visual.state_dict().values(), resumed.visual.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full.text.linear.weight, resumed.text.linear.weight, rtol=1e-5, atol=1e-6)
    assert resumed_summary.resumed_from and resumed_summary.final_loss == pytest.approx(summary.final_loss, rel=1e-5)

    # The final checkpoint is a resume target too (it finds its .state); other options are refused.
    with pytest.raises(ValueError, match=r"other options \(epochs: 3 then, 4 now\)"):
        train_projectors(records, frames, text, tmp_path / "x.pt", ProjectorTrainingOptions(**{**SMALL, "epochs": 4}), resume=tmp_path / "full.pt")
    with pytest.raises(ValueError, match="other data"):
        train_projectors(records[:-2], frames, text, tmp_path / "x.pt", options, resume=tmp_path / "full.pt")


def ground_truth_of(records):
    """``{query_id: moments}``: the shape :func:`spr.metrics.evaluate_rankings` takes."""
    return {r.query_id: list(r.moments) for r in records}


def coarse_rankings(projectors, videos, query_features, segment_length_s=4.0, top_k=200, durations=None, max_proposals=100):
    """SPR's coarse path in memory: every video's segments embedded with ``projectors`` (pooled
    as ingest pools them), exact inner-product top-``top_k`` per query, adjacent segments
    merged into proposals, ranked: ``{query_id: [PredictedMoment]}``."""
    from spr.proposals import RetrievedSegment, propose_moments

    names = sorted(videos)
    embeddings, owners, bounds_of = [], [], {}
    for v, name in enumerate(names):
        feats = videos[name]
        duration = float(durations[name]) if durations and name in durations else feats.duration_s
        rows = segment_rows(len(feats.features), feats.rate, duration, segment_length_s)
        embeddings.append(projectors.embed_segments(feats.features, rows))
        owners.append(np.full(len(rows), v, dtype=np.int64))
        bounds_of[name] = (segment_bounds(duration, segment_length_s), duration)
    matrix = np.concatenate(embeddings).astype(np.float32)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    owner = np.concatenate(owners)
    ordinal = np.concatenate([np.arange(len(e), dtype=np.int64) for e in embeddings])
    qids = list(query_features)
    queries = projectors.project_texts(np.stack([np.asarray(query_features[q], dtype=np.float32) for q in qids]))
    scores = queries @ matrix.T
    k = min(top_k, matrix.shape[0])
    out = {}
    for i, qid in enumerate(qids):
        top = np.argpartition(-scores[i], k - 1)[:k]
        top = top[np.argsort(-scores[i, top], kind="stable")]
        hits = []
        for rank, j in enumerate(top.tolist()):
            name = names[owner[j]]
            bounds, duration = bounds_of[name]
            o = int(ordinal[j])
            hits.append(RetrievedSegment(j, name, o, float(bounds.start_s[o]), float(bounds.end_s[o]), duration, float(scores[i, j]), rank))
        proposals = propose_moments(hits, max_proposals=max_proposals)
        out[qid] = [PredictedMoment(p.video_key, p.start_s, p.end_s, p.best_score) for p in proposals]
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The synthetic benchmark (spr-tiny text features), the untrained baseline's and the
    trained projectors' NDCG on its test queries, and the checkpoint."""
    from spr.models.clip import load_clip

    clip = load_clip("spr-tiny", device="cpu")
    bench = make_synthetic_benchmark(videos=60, types=8, dim=CLIP_DIM, seed=0, text_encoder=clip.encode_texts, text_encoder_name=clip.identity)
    test = bench.splits["test"]
    query_features = {r.query_id: bench.query_features[r.query_id] for r in test}
    baseline = evaluate_rankings(coarse_rankings(untrained_projectors(CLIP_DIM), bench.videos, query_features, durations=bench.durations), ground_truth_of(test))

    out = tmp_path_factory.mktemp("projector") / "projector.pt"
    options = ProjectorTrainingOptions(epochs=8, batch_size=64, dim=64, layers=1, heads=4, device="cpu", log_every=0)
    # Queries encoded once per text, as training from annotation files does.
    text = encode_query_texts(bench.splits["train"] + bench.splits["val"], clip.encode_texts)
    projectors, summary = train_projectors(
        bench.splits["train"], bench.videos, text, out, options, val_records=bench.splits["val"], clip_model="spr-tiny",
    )
    after = evaluate_rankings(coarse_rankings(projectors, bench.videos, query_features, durations=bench.durations), ground_truth_of(test))
    return bench, projectors, summary, out, baseline, after


def test_training_beats_the_untrained_baseline_on_the_synthetic_benchmark(trained):
    bench, _, summary, _, baseline, after = trained
    before_ndcg, after_ndcg = baseline.ndcg[10][0.5], after.ndcg[10][0.5]
    print(
        f"\nsynthetic benchmark ({len(bench.videos)} videos, {after.num_queries} test queries): NDCG@10 IoU>=0.5 "
        f"{before_ndcg:.3f} untrained -> {after_ndcg:.3f} trained; {summary.steps} steps, "
        f"{summary.steps_per_s:.1f} steps/s, loss {summary.history[0]['loss']:.3f} -> {summary.final_loss:.3f}, "
        f"val {summary.history[0]['val_loss']:.3f} -> {summary.val_loss:.3f}"
    )
    assert after_ndcg >= before_ndcg + 0.25
    assert after.recall[10][0.5] > baseline.recall[10][0.5] + 0.25
    assert summary.val_loss < summary.history[0]["val_loss"]
    assert summary.final_loss < summary.history[0]["loss"]


def test_the_checkpoint_loads_with_load_projectors(trained):
    bench, projectors, summary, out, _, _ = trained
    loaded = load_projectors(str(out), in_dim=CLIP_DIM, clip_model="spr-tiny")
    assert loaded.trained and loaded.dim == 64 and loaded.identity == f"projector:projector.pt@{summary.steps}"
    meta = loaded.meta
    assert meta["clip_model"] == "spr-tiny" and meta["step"] == summary.steps and meta["epoch"] == 8
    assert meta["segment_length_s"] == 4.0 and meta["frame_rate"] == 1.0
    video = bench.videos[sorted(bench.videos)[0]]
    rows = segment_rows(len(video.features), 1.0, video.duration_s, 4.0)
    np.testing.assert_allclose(loaded.embed_segments(video.features, rows), projectors.embed_segments(video.features, rows), atol=1e-5)
    assert os.path.isfile(summary.state_path)


def test_the_checkpoint_loads_through_the_ingest_configuration_key(trained, tmp_path):
    bench, projectors, _, out, _, _ = trained
    from spr.ingest.encoder import EncoderSettings, VideoEncoder
    from spr.ingest.importer import ImportOptions, import_features

    config = load_config(environ={"SPR_DATA_DIR": str(tmp_path), "SPR_CLIP__MODEL": "spr-tiny", "SPR_PROJECTOR__CHECKPOINT": str(out)})
    encoder = VideoEncoder(EncoderSettings.from_config(config))
    assert encoder.projectors.trained and encoder.info.dim == 64

    written = bench.write(tmp_path / "bench")
    summary = import_features(config, written["features"], written["manifest"], ImportOptions(collection="trained"))
    assert not summary.failed and len(summary.imported) == len(bench.videos)
    assert summary.embedder.startswith("projector:projector.pt@") and summary.dim == 64


# --- the command line -------------------------------------------------------------------------


def test_cli_writes_the_benchmark_imports_trains_and_reimports_with_the_checkpoint(tmp_path):
    env = {"SPR_DATA_DIR": str(tmp_path / "data"), "SPR_CLIP__MODEL": "spr-tiny", "SPR_LOGGING__JSON": "true", "OMP_NUM_THREADS": "1"}
    bench = tmp_path / "bench"
    done = run_spr("train", "synthetic", str(bench), "--videos", "16", "--types", "4", "--json", env=env)
    assert done.returncode == 0, done.stderr
    described = json.loads(done.stdout)
    assert described["dim"] == CLIP_DIM and described["videos"] == 16 and set(described["paths"]) >= {"features", "train", "query_features"}

    done = run_spr("import", str(bench / "features.h5"), "--manifest", str(bench / "durations.jsonl"), "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["embedder"] == "mean-pool"

    ckpt = tmp_path / "p.pt"
    args = ["train", "projector", "--train", str(bench / "train.jsonl"), "--val", str(bench / "val.jsonl"), "--features-from-catalog",
            "--epochs", "2", "--batch-size", "16", "--dim", "32", "--layers", "1", "--heads", "4", "--log-every", "1",
            "--out", str(ckpt), "--json"]
    done = run_spr(*args, env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["checkpoint"] == str(ckpt) and summary["epochs"] == 2 and summary["val_loss"] is not None
    assert summary["steps"] > 0 and summary["steps_per_s"] > 0 and summary["device"] == "cpu"
    logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    progress = [e for e in logs if "steps_per_s" in e and "loss" in e]
    assert progress and {"step", "epoch", "lr"} <= set(progress[0])
    assert os.path.isfile(f"{ckpt}.state")

    # Training from the HDF5 file with precomputed query features works the same way, and a
    # resume with other options is refused with a one-line error.
    done = run_spr("train", "projector", "--train", str(bench / "train.jsonl"), "--features", str(bench / "features.h5"),
                   "--query-features", str(bench / "query_features.h5"), "--resume", str(ckpt), "--epochs", "3", env=env)
    assert done.returncode == 2 and "cannot resume" in done.stderr and "epochs: 2 then, 3 now" in done.stderr

    done = run_spr("import", str(bench / "features.h5"), "--manifest", str(bench / "durations.jsonl"), "--collection", "trained",
                   "--json", env={**env, "SPR_PROJECTOR__CHECKPOINT": str(ckpt)})
    assert done.returncode == 0, done.stderr
    imported = json.loads(done.stdout)
    assert imported["embedder"].startswith("projector:p.pt@") and imported["dim"] == 32


def test_cli_reports_bad_inputs_in_one_line(tmp_path):
    env = {"SPR_DATA_DIR": str(tmp_path / "data"), "SPR_LOGGING__JSON": "false"}
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({**ROWS[1], "timestamp": "soon"}) + "\n")
    done = run_spr("train", "projector", "--train", str(bad), "--features", str(tmp_path / "f.h5"), env=env)
    assert done.returncode == 2
    assert f"{bad}:2: timestamp must be [start_s, end_s]" in done.stderr and "Traceback" not in done.stderr
    done = run_spr("train", "--help", env=env)
    assert done.returncode == 0 and "projector" in done.stdout and "synthetic" in done.stdout
