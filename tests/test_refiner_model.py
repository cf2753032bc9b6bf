"""The SPR_CLIP refiner model: padding and masks, span decoding, scores, checkpoints, and a
planted match, on tiny dimensions (CPU, a fraction of a second each)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from spr.refine.batching import pad_features, plan_chunks
from spr.models.refiner import (
    RefinerShape,
    SPRClipRefiner,
    build_refiner,
    decode_spans,
    frame_spans_to_seconds,
    load_refiner,
    save_refiner,
)

D = 16


def tiny_shape(**overrides) -> RefinerShape:
    values = dict(in_dim=D, text_in_dim=D, dim=D, layers=2, heads=4, max_frames=64, kernel_size=3)
    return RefinerShape(**{**values, **overrides})


def random_refiner(seed: int = 0, **overrides) -> SPRClipRefiner:
    torch.manual_seed(seed)
    return build_refiner(tiny_shape(**overrides)).eval()


def identity_refiner(layers: int = 1) -> SPRClipRefiner:
    """A refiner whose ``F^M`` is the (L2-normalised) input frames and ``f^Q`` the query, for
    zero-mean inputs: identity projections, no positions, and every residual branch of the
    Transformer zeroed; the final LayerNorm then only rescales a zero-mean vector."""
    model = random_refiner(layers=layers)
    with torch.no_grad():
        for linear in (model.text, model.frame_input):
            linear.weight.copy_(torch.eye(D))
            linear.bias.zero_()
        model.position.zero_()
        for layer in model.encoder.layers:
            for branch_out in (layer.self_attn.out_proj, layer.linear2):
                branch_out.weight.zero_()
                branch_out.bias.zero_()
    return model


def zero_mean(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=-1, keepdims=True)


def run(model: SPRClipRefiner, queries: np.ndarray, features: list[np.ndarray], query_index: list[int]):
    frames, mask = pad_features(features)
    with torch.inference_mode():
        return model.refine_batch(
            torch.as_tensor(queries, dtype=torch.float32), frames, mask, torch.as_tensor(query_index)
        )


# --- padding ---------------------------------------------------------------------------------


def test_pad_features_shapes_mask_and_values() -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((n, 4)).astype(np.float16) for n in (3, 1, 5)]
    frames, mask = pad_features(arrays)
    assert frames.shape == (3, 5, 4) and frames.dtype == torch.float32
    assert mask.shape == (3, 5) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [3, 1, 5]
    for i, a in enumerate(arrays):
        np.testing.assert_array_equal(frames[i, : len(a)].numpy(), a.astype(np.float32))
        assert not frames[i, len(a) :].any()
        assert mask[i, : len(a)].all() and not mask[i, len(a) :].any()


def test_pad_features_rejects_mixed_dims() -> None:
    with pytest.raises(ValueError, match="one D"):
        pad_features([np.zeros((2, 4)), np.zeros((2, 5))])


def test_plan_chunks_stays_within_the_frame_budget() -> None:
    lengths = np.array([3, 40, 5, 7, 2, 39, 1])
    assert [c.tolist() for c in plan_chunks(lengths, 10_000)] == [list(range(7))]
    chunks = plan_chunks(lengths, 80)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(7))
    for chunk in chunks:
        assert len(chunk) == 1 or len(chunk) * lengths[chunk].max() <= 80


# --- masking and decoding --------------------------------------------------------------------


def test_masked_frames_never_win_the_score_or_the_span() -> None:
    model = random_refiner()
    rng = np.random.default_rng(1)
    query = rng.standard_normal((1, D)).astype(np.float32)
    lengths = [4, 9, 2]
    features = [rng.standard_normal((n, D)).astype(np.float32) for n in lengths]
    clean = run(model, query, features, [0, 0, 0])

    # Fill the padding with what would otherwise be the best possible frames: copies of the
    # query's own embedding direction and huge values. The mask must make them invisible.
    frames, mask = pad_features(features)
    frames[~mask] = torch.as_tensor(query[0] * 100.0)
    with torch.inference_mode():
        dirty = model.refine_batch(torch.as_tensor(query), frames, mask, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(dirty.scores, clean.scores)
    assert dirty.start_idx.tolist() == clean.start_idx.tolist()
    assert dirty.end_idx.tolist() == clean.end_idx.tolist()
    assert (dirty.end_idx < torch.as_tensor(lengths)).all()


def test_decode_spans_masked_logits_never_win() -> None:
    start = torch.tensor([[0.0, 1.0, 50.0, 60.0]])
    end = torch.tensor([[0.0, 2.0, 70.0, 80.0]])
    mask = torch.tensor([[True, True, False, False]])
    s, e = decode_spans(start, end, mask)
    assert (s.item(), e.item()) == (1, 1)


def test_decode_spans_equals_the_upper_triangular_argmax() -> None:
    rng = np.random.default_rng(2)
    p, t = 64, 13
    start = rng.standard_normal((p, t)).astype(np.float32)
    end = rng.standard_normal((p, t)).astype(np.float32)
    lengths = rng.integers(1, t + 1, size=p)
    mask = np.arange(t)[None, :] < lengths[:, None]
    s, e = decode_spans(torch.from_numpy(start), torch.from_numpy(end), torch.from_numpy(mask))
    for i in range(p):
        n = lengths[i]
        pair = start[i, :n, None] + end[i, None, :n]
        pair[np.tril_indices(n, -1)] = -np.inf  # s > e is not a span
        want = np.unravel_index(np.argmax(pair), pair.shape)
        assert (s[i].item(), e[i].item()) == want
        assert 0 <= s[i] <= e[i] < n


def test_refined_spans_lie_within_each_proposal() -> None:
    model = random_refiner(seed=3)
    rng = np.random.default_rng(3)
    lengths = [1, 2, 17, 30, 5]
    result = run(model, rng.standard_normal((2, D)), [rng.standard_normal((n, D)) for n in lengths], [0, 1, 0, 1, 0])
    assert (result.start_idx <= result.end_idx).all()
    assert (result.start_idx >= 0).all()
    assert (result.end_idx < torch.as_tensor(lengths)).all()


# --- scores ----------------------------------------------------------------------------------


def test_score_is_the_max_cosine_over_real_frames() -> None:
    model = random_refiner(seed=4)
    rng = np.random.default_rng(4)
    queries = rng.standard_normal((2, D)).astype(np.float32)
    lengths = [6, 11, 3, 8]
    features = [rng.standard_normal((n, D)).astype(np.float32) for n in lengths]
    query_index = [0, 1, 1, 0]
    result = run(model, queries, features, query_index)

    # The model's embeddings, then the cosine and the max in numpy, one proposal at a time.
    with torch.inference_mode():
        fq = model.text(torch.from_numpy(queries)).numpy()
        for i, feats in enumerate(features):
            frames, mask = pad_features([feats])
            fm = model.frame_norm(model.encoder(model.frame_input(frames) + model.position[: len(feats)])).numpy()[0]
            q = fq[query_index[i]]
            cos = fm @ q / (np.linalg.norm(fm, axis=1) * np.linalg.norm(q))
            assert result.scores[i].item() == pytest.approx(float(cos.max()), abs=1e-5)


def test_a_proposal_scores_the_same_alone_and_inside_a_padded_batch() -> None:
    model = random_refiner(seed=5)
    rng = np.random.default_rng(5)
    queries = rng.standard_normal((3, D))
    lengths = [2, 25, 7, 1, 12]
    features = [rng.standard_normal((n, D)) for n in lengths]
    query_index = [0, 2, 1, 0, 2]
    batched = run(model, queries, features, query_index)
    for i, feats in enumerate(features):
        alone = run(model, queries[query_index[i] : query_index[i] + 1], [feats], [0])
        assert alone.scores.item() == pytest.approx(batched.scores[i].item(), abs=1e-5)
        assert alone.start_idx.item() == batched.start_idx[i].item()
        assert alone.end_idx.item() == batched.end_idx[i].item()


def test_planted_frames_matching_the_query_rank_first() -> None:
    model = identity_refiner()
    rng = np.random.default_rng(6)
    queries = zero_mean(rng.standard_normal((2, D)))
    features, query_index, planted = [], [], {}
    for q in range(2):
        for k in range(4):
            feats = zero_mean(rng.standard_normal((20, D)))
            if k == 2:  # this proposal shows the query at seconds 7..9
                feats[7:10] = queries[q] + 0.05 * zero_mean(rng.standard_normal((3, D)))
                planted[q] = len(features)
            features.append(feats)
            query_index.append(q)
    result = run(model, queries, features, query_index)
    scores = result.scores.numpy()
    for q in range(2):
        own = [i for i, qi in enumerate(query_index) if qi == q]
        assert max(own, key=lambda i: scores[i]) == planted[q]
        assert scores[planted[q]] > 0.99
    # The identity refiner's score is exactly the raw max cosine.
    raw = features[1] @ queries[0] / (np.linalg.norm(features[1], axis=1) * np.linalg.norm(queries[0]))
    assert scores[1] == pytest.approx(raw.max(), abs=1e-4)


def test_query_projected_skips_the_text_projection() -> None:
    model = random_refiner(seed=7, text_in_dim=8)
    rng = np.random.default_rng(7)
    features = [rng.standard_normal((5, D))]
    raw_query = torch.as_tensor(rng.standard_normal((1, 8)), dtype=torch.float32)
    frames, mask = pad_features(features)
    with torch.inference_mode():
        projected = model.text(raw_query) * 3.0  # scale must not matter: f^Q is normalised
        via_text = model.refine_batch(raw_query, frames, mask, torch.zeros(1, dtype=torch.long))
        direct = model.refine_batch(projected, frames, mask, torch.zeros(1, dtype=torch.long), query_projected=True)
        with pytest.raises(ValueError, match=r"\(Q, 8\)"):
            model.refine_batch(projected, frames, mask, torch.zeros(1, dtype=torch.long))
    torch.testing.assert_close(direct.scores, via_text.scores)


def test_training_outputs_have_per_frame_shapes() -> None:
    model = random_refiner(seed=8).train()
    rng = np.random.default_rng(8)
    frames, mask = pad_features([rng.standard_normal((n, D)) for n in (4, 9)])
    query = model.embed_queries(torch.as_tensor(rng.standard_normal((1, D)), dtype=torch.float32))
    out = model(query, frames, mask, torch.zeros(2, dtype=torch.long))
    assert out.similarity.shape == out.start_logits.shape == out.end_logits.shape == (2, 9)
    assert out.frames.shape == (2, 9, D) and out.query.shape == (2, D)
    assert torch.isneginf(out.similarity[0, 4:]).all() and (out.start_logits[0, 4:] < -1e29).all()
    # Gradients reach every part of the model through the heads' outputs.
    loss = out.similarity[mask].sum() + out.start_logits[mask].sum() + out.end_logits[mask].sum()
    loss.backward()
    assert model.text.weight.grad is not None and model.boundary_conv.weight.grad is not None


def test_frame_spans_to_seconds_maps_and_clips() -> None:
    start_s, end_s = frame_spans_to_seconds(
        np.array([0, 2, 0]),
        np.array([0, 4, 9]),
        first_s=np.array([10.0, 10.0, 0.0]),
        rate=np.array([1.0, 2.0, 1.0]),
        clip_lo_s=np.array([10.5, 0.0, 0.0]),
        clip_hi_s=np.array([100.0, 100.0, 7.5]),
    )
    np.testing.assert_allclose(start_s, [10.5, 11.0, 0.0])
    np.testing.assert_allclose(end_s, [11.0, 12.5, 7.5])


# --- shapes and checkpoints ------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [({"kernel_size": 4}, "odd"), ({"dim": 18}, "divisible"), ({"layers": 0}, "positive")],
)
def test_shape_validation(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_shape(**overrides)


def test_too_many_frames_are_refused() -> None:
    model = random_refiner(max_frames=8)
    frames, mask = pad_features([np.zeros((9, D))])
    with pytest.raises(ValueError, match="max_frames=8"):
        model.refine_batch(torch.zeros(1, D), frames, mask, torch.zeros(1, dtype=torch.long))


def test_checkpoint_round_trip(tmp_path) -> None:
    model = random_refiner(seed=9)
    path = tmp_path / "refiner.pt"
    save_refiner(path, model, step=123, clip_model="spr-tiny")
    loaded = load_refiner(str(path), in_dim=D)
    assert loaded.shape == model.shape
    assert not loaded.random_weights
    assert loaded.name == "spr-clip:refiner.pt@123"
    assert loaded.meta["clip_model"] == "spr-tiny"
    rng = np.random.default_rng(9)
    queries, features = rng.standard_normal((2, D)), [rng.standard_normal((n, D)) for n in (3, 8, 5)]
    a, b = run(model, queries, features, [0, 1, 1]), run(loaded, queries, features, [0, 1, 1])
    torch.testing.assert_close(a.scores, b.scores)
    assert a.start_idx.tolist() == b.start_idx.tolist() and a.end_idx.tolist() == b.end_idx.tolist()


def test_checkpoint_for_other_features_is_refused(tmp_path) -> None:
    path = tmp_path / "refiner.pt"
    save_refiner(path, random_refiner(), clip_model="ViT-B-32")
    with pytest.raises(ValueError, match=r"expects 16-d CLIP frame features, the frames have 32-d.*ViT-B-32"):
        load_refiner(str(path), in_dim=32)
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an SPR refiner checkpoint"):
        load_refiner(str(tmp_path / "other.pt"), in_dim=D)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_refiner(str(tmp_path / "missing.pt"), in_dim=D)


def test_empty_checkpoint_gives_flagged_random_weights(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="spr.models.refiner"):
        model = load_refiner("", in_dim=D)
    assert model.random_weights and model.name == "spr-clip/random"
    assert (model.shape.in_dim, model.shape.text_in_dim, model.shape.dim) == (D, D, D)
    assert not model.training
    assert any("RANDOM" in r.getMessage() and "meaningless" in r.getMessage() for r in caplog.records)
