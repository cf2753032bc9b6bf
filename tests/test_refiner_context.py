"""Precomputed frame context (issue 13, direction 1): a windowed refiner's query-independent half
is computed once per video and stored, versioned by the weights that made it.

What a user depends on:
* the windowed frame context of a span is the same whether computed over the whole video or
  over the rows around the span (so precomputed and on-the-fly rows agree);
* the query-time half on precomputed rows gives the same scores and spans as the full forward
  pass on the same ``F^M``; and where a video fits in one window, the same moments as the
  paper's online mode with the same weights;
* the refiner serves the same moments from stored rows as from rows it computes itself;
* rows another checkpoint made are never used: they are recomputed (and ``spr refiner
  precompute`` replaces them), and the answer is the current model's.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from spr.refine.batching import DynamicBatcher
from spr.refine.context import precompute_contexts
from spr.refine.inprocess import InProcessRefiner
from spr.features import FrameFeatureStore
from spr.models.refiner import (
    CONTEXT_MODALITY,
    build_refiner,
    context_rows,
    decode_spans,
    match_scores,
    pad_features,
)
from spr.models.registry import RefinerShape
from spr.refinement import RefineCandidate, RefineRequest

D = 16


def windowed(seed: int = 0, window: int = 8, offsets: bool = True) -> torch.nn.Module:
    """A windowed refiner; ``offsets``: its position-in-proposal tables random (as if trained)
    instead of zero, so that the serving and the training paths must agree on them too."""
    torch.manual_seed(seed)
    shape = RefinerShape(in_dim=D, text_in_dim=D, dim=D, heads=2, layers=1, max_frames=64, dropout=0.0, context_window=window)
    model = build_refiner(shape).eval()
    if offsets:
        with torch.no_grad():
            model.proposal_position.normal_(std=0.3)
            model.proposal_score.normal_(std=0.1)
    return model


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("lo,hi", [(0, 5), (3, 20), (10, 11), (40, 77), (70, 77), (5, 6), (0, 77)])
def test_a_spans_context_over_its_surrounding_rows_equals_the_whole_videos(lo, hi):
    model = windowed()
    video = torch.randn(77, D)
    a, b = context_rows(lo, hi, model.shape.context_window)
    assert a <= lo and hi <= b and a % (model.shape.context_window // 2) == 0
    with torch.inference_mode():
        whole = model.encode_windows([video])[0]
        part = model.encode_windows([video[a:b]])[0]
    torch.testing.assert_close(part[lo - a : hi - a], whole[lo:hi], atol=1e-6, rtol=1e-5)


def test_the_query_half_on_precomputed_rows_equals_the_full_forward_pass():
    model = windowed()
    video = torch.randn(77, D)
    spans = [(0, 10), (5, 30), (60, 77), (33, 34)]
    with torch.inference_mode():
        fm = model.encode_windows([video])[0]
        rows = model.video_context(video)
        query = model.embed_queries(torch.randn(2, D))
        query_index = torch.tensor([0, 1, 1, 0])
        packed = torch.cat([rows[a:b] for a, b in spans])
        fast = model.refine_context(query, packed[:, :D], packed[:, D:], torch.tensor([b - a for a, b in spans]), query_index)
        encoded, mask = pad_features([fm[a:b].numpy() for a, b in spans])
        full = model(query, torch.zeros(*encoded.shape[:2], D), mask, query_index, encoded=encoded)
    start, end = decode_spans(full.start_logits, full.end_logits, mask)
    torch.testing.assert_close(fast.scores, match_scores(full.similarity, mask), atol=1e-5, rtol=1e-5)
    assert fast.start_idx.tolist() == start.tolist() and fast.end_idx.tolist() == end.tolist()


def test_a_video_inside_one_window_gets_the_online_modes_moments_with_the_same_weights():
    model = windowed(window=16, offsets=False)  # rows < 12 all take window 0: the whole video is their context
    online = build_refiner(RefinerShape(**{**model.shape.__dict__, "context_window": 0})).eval()
    # The same weights; the windowed model's tables of offsets by position in the proposal (which
    # the online mode does without: its positions are proposal-relative) are zero, as initialised.
    extra = ("proposal_position", "proposal_score")
    shared = {k: v for k, v in model.state_dict().items() if k not in extra}
    assert not any(getattr(model, k).any() for k in extra)
    online.load_state_dict(shared)
    video = torch.randn(11, D)
    with torch.inference_mode():
        query = model.embed_queries(torch.randn(1, D))
        rows = model.video_context(video)
        fast = model.refine_context(query, rows[:, :D], rows[:, D:], torch.tensor([11]), torch.tensor([0]))
        frames, mask = pad_features([video.numpy()])
        paper = online.refine_embedded(query, frames, mask, torch.tensor([0]))
    torch.testing.assert_close(fast.scores, paper.scores, atol=1e-5, rtol=1e-5)
    assert (fast.start_idx.item(), fast.end_idx.item()) == (paper.start_idx.item(), paper.end_idx.item())


def test_context_windows_are_validated():
    with pytest.raises(ValueError, match="context_window"):
        RefinerShape(in_dim=D, text_in_dim=D, context_window=7)
    with pytest.raises(ValueError, match="context_window"):
        RefinerShape(in_dim=D, text_in_dim=D, max_frames=32, context_window=64)


# --- through the refiner, on a real feature store ------------------------------------------


def _store(tmp_path, lengths=(90, 40, 9)) -> FrameFeatureStore:
    store = FrameFeatureStore(tmp_path / "features")
    rng = np.random.default_rng(7)
    for vid, n in enumerate(lengths, start=1):
        store.write(vid, rng.standard_normal((n, D)).astype(np.float32), 1.0, "test-clip")
    return store


def _request(seed: int = 3) -> RefineRequest:
    spans = [(1, 10.0, 38.0), (1, 30.0, 62.0), (2, 0.0, 40.0), (3, 0.0, 9.0), (1, 70.0, 90.0), (2, 12.5, 21.5)]
    candidates = [
        RefineCandidate(vid, f"v{vid}", f"file:///v{vid}.mp4", s, e, rank, 100.0, s + 8, max(s + 9, e - 8))
        for rank, (vid, s, e) in enumerate(spans)
    ]
    query = np.random.default_rng(seed).standard_normal(D).astype(np.float32)
    return RefineRequest(query, candidates)


def _refine(model, store: FrameFeatureStore, request: RefineRequest):
    with InProcessRefiner(store, DynamicBatcher(model, max_wait_ms=0)) as refiner:
        return refiner.refine(request)


def _moments(refinement) -> list[tuple]:
    return [(m.video_key, m.coarse_rank, round(m.start_s, 6), round(m.end_s, 6), round(m.score, 4)) for m in refinement.moments]


def test_stored_context_rows_give_the_moments_the_refiner_computes_without_them(tmp_path):
    store = _store(tmp_path)
    model = windowed()
    request = _request()
    computed = _refine(model, store, request)
    assert computed.context_computed == len(request.candidates) and computed.timings_ms["context"] > 0
    report = precompute_contexts(model, store, [1, 2, 3])
    assert report.written == [1, 2, 3] and report.rows == 90 + 40 + 9
    assert store.info(1, CONTEXT_MODALITY)[1] == 2 * D
    served = _refine(model, store, request)
    assert served.context_computed == 0 and "context" not in served.timings_ms
    assert _moments(served) == _moments(computed)
    assert precompute_contexts(model, store, [1, 2, 3]).current == [1, 2, 3]  # already current: skipped


def test_rows_of_another_checkpoint_are_recomputed_never_used(tmp_path, caplog):
    store = _store(tmp_path)
    old, new = windowed(seed=0), windowed(seed=1)
    request = _request()
    precompute_contexts(old, store, [1, 2, 3])
    expected = _moments(_refine(new, store, request))  # nothing stored for `new`... except old rows
    clean = _store(tmp_path / "clean")
    reference = _moments(_refine(new, clean, request))  # no rows stored at all: computed from frames
    assert expected == reference
    assert expected != _moments(_refine(old, store, request))  # the weights matter: stale rows would show
    with caplog.at_level(logging.WARNING, logger="refiner.inprocess"):
        stale = _refine(new, store, request)
    assert stale.context_computed == len(request.candidates)
    assert "spr refiner precompute" in caplog.text
    report = precompute_contexts(new, store, [1, 2, 3])
    assert report.written == [1, 2, 3]  # stale rows are replaced, not skipped
    assert store.info(1, CONTEXT_MODALITY)[3] == new.context_version() != old.context_version()
    assert _moments(_refine(new, store, request)) == reference


def test_an_online_refiner_has_no_context_to_precompute(tmp_path):
    online = build_refiner(RefinerShape(in_dim=D, text_in_dim=D, dim=D, heads=2, layers=1)).eval()
    with pytest.raises(ValueError, match="online"):
        precompute_contexts(online, _store(tmp_path), [1])


# --- on the command line ---------------------------------------------------------------------


def test_spr_refiner_precompute_fills_every_video_once_per_checkpoint(tmp_path):
    """`spr import` (like ingest) writes each video's rows; `spr refiner precompute` skips
    current ones, rewrites them all for another checkpoint, and has nothing to do online."""
    import json

    from conftest import run_spr

    from spr.models.refiner import save_refiner

    env = {"SPR_DATA_DIR": str(tmp_path / "data"), "SPR_CLIP__MODEL": "spr-tiny", "SPR_LOGGING__LEVEL": "ERROR"}
    bench = tmp_path / "bench"

    def spr(*args: str, **extra: str) -> dict:
        done = run_spr(*args, "--json", env={**env, **extra}, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)

    spr("train", "synthetic", str(bench), "--videos", "6", "--types", "2")
    imported = spr("import", str(bench / "features.h5"), "--manifest", str(bench / "durations.jsonl"), "--collection", "base")
    first = imported["refiner_context"]  # an import of frame features precomputes what it wrote
    assert first["written"] == 6 and first["random_weights"] and first["rows"] > 0
    again = spr("refiner", "precompute")  # the random refiner is the same in every process
    assert again["current"] == 6 and again["written"] == 0 and again["version"] == first["version"]
    checkpoint = tmp_path / "refiner.pt"
    save_refiner(checkpoint, build_refiner(RefinerShape(in_dim=64, text_in_dim=64, dim=32, heads=2, layers=1, context_window=16)))
    other = spr("refiner", "precompute", SPR_REFINER__CHECKPOINT=str(checkpoint))
    assert other["written"] == 6 and other["version"] != first["version"]
    store = FrameFeatureStore(tmp_path / "data" / "features")
    assert {store.info(v, CONTEXT_MODALITY)[3] for v in store.video_ids()} == {other["version"]}
    online = tmp_path / "online.pt"
    save_refiner(online, build_refiner(RefinerShape(in_dim=64, text_in_dim=64, dim=32, heads=2, layers=1)))
    assert spr("refiner", "precompute", SPR_REFINER__CHECKPOINT=str(online))["written"] == 0  # nothing to do online


def test_top_k_returns_exactly_the_first_moments_of_a_full_refinement(tmp_path):
    """A search returns its top_k moments; the refiner ranks by score alone, so sharpening only
    those boundaries gives the client the same moments, and the wire carries top_k."""
    from dataclasses import replace

    from spr.refine_client import request_from_pb, request_to_pb

    store = _store(tmp_path)
    model = windowed()
    precompute_contexts(model, store, [1, 2, 3])
    request = _request()
    full = _moments(_refine(model, store, request))
    assert len(full) == len(request.candidates)
    for k in (1, 3, len(request.candidates)):
        limited = replace(request, top_k=k)
        assert request_from_pb(request_to_pb(limited)).top_k == k
        assert _moments(_refine(model, store, limited)) == full[:k]
    with pytest.raises(Exception, match="top_k"):
        _refine(model, store, replace(request, top_k=-1))
