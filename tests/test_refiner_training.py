"""Training the SPR_CLIP refiner: the ReLoCLNet-style objectives, and that training makes
refined boundaries beat the coarse 4-s proposals at IoU >= 0.7.

Features are synthetic (16-d): event types have a visual prototype and an unrelated "caption"
vector, so nothing is aligned until the refiner learns it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spr.models.refiner import RefinerShape, build_refiner, load_refiner
from spr.train.refiner import (
    RefinerExample,
    RefinerTrainingOptions,
    TrainingProposal,
    label_proposal,
    moment_frames,
    refiner_losses,
    train_refiner,
)
from spr.metrics import temporal_iou

DIM = 16
SHAPE = RefinerShape(in_dim=DIM, text_in_dim=DIM, dim=32, layers=1, heads=2, max_frames=64, kernel_size=3, dropout=0.0)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synthetic_examples(n: int, seed: int, types: int = 6):
    """``n`` queries, each an event planted in its own 60-s video at 1 fps, seen through the
    tau_C-padded coarse proposal the 4-s segments give, plus two negative proposals. Returns
    the examples and, per query, ``(event, coarse unpadded span)`` in seconds."""
    rng = np.random.default_rng(1234)  # the world (prototypes, captions) is shared by all splits
    prototypes = unit(rng.standard_normal((types, DIM)))
    captions = unit(rng.standard_normal((types, DIM)))
    rng = np.random.default_rng(seed)
    examples, spans = [], []
    for q in range(n):
        kind = int(rng.integers(types))
        video = unit(rng.standard_normal((60, DIM)))
        segment = int(rng.integers(2, 11))
        start = 4 * segment + int(rng.integers(2, 4))
        length = int(rng.choice([5, 7]))
        video[start : start + length] = unit(prototypes[kind] + 0.3 * rng.standard_normal((length, DIM)))
        coarse = (4 * math.floor(start / 4), 4 * math.ceil((start + length) / 4))
        padded = (max(0, coarse[0] - 8), min(60, coarse[1] + 8))
        gt = [(f"v{q}", float(start), float(start + length), 4.0)]
        positive = label_proposal(f"v{q}", video[padded[0] : padded[1]], 1.0, float(padded[0]), gt)
        negatives = []
        for _ in range(2):
            other = unit(rng.standard_normal((int(rng.integers(12, 28)), DIM)))
            negatives.append(TrainingProposal(f"n{q}", other, 1.0, 0.0, None))
        examples.append(RefinerExample(f"q{q}", captions[kind] + 0.05 * rng.standard_normal(DIM), (positive, *negatives)))
        spans.append(((start, start + length), coarse))
    return examples, spans


def test_moment_frames_map_seconds_to_inclusive_frames():
    assert moment_frames(10.0, 15.0, 8.0, 1.0, 20) == (2, 6)
    assert moment_frames(0.0, 3.0, 8.0, 1.0, 20) is None  # before the proposal
    assert moment_frames(5.0, 12.0, 8.0, 1.0, 20) == (0, 3)  # clipped at its start
    assert moment_frames(10.5, 12.0, 8.0, 2.0, 40) == (5, 7)  # 2 features per second


def test_labels_take_the_most_relevant_ground_truth_inside_the_proposal():
    feats = np.zeros((24, DIM), np.float32)
    gt = [("v", 10.0, 14.0, 2.0), ("v", 20.0, 23.0, 4.0), ("w", 10.0, 14.0, 4.0), ("v", 40.0, 50.0, 4.0)]
    p = label_proposal("v", feats, 1.0, 4.0, gt)
    assert p.moment == (16, 18) and p.relevance == 4.0
    assert label_proposal("v", feats, 1.0, 60.0, gt).moment is None


def test_every_objective_is_finite_positive_and_has_gradients():
    torch.manual_seed(0)
    model = build_refiner(SHAPE)
    examples, _ = synthetic_examples(4, seed=3)
    # Two positives of different relevance for the ranking term.
    first = examples[0]
    stronger = TrainingProposal(first.proposals[0].video, first.proposals[0].features, 1.0, first.proposals[0].first_s, first.proposals[0].moment, 4.0)
    weaker = TrainingProposal("w", first.proposals[0].features, 1.0, 0.0, (0, 2), 1.0)
    examples[0] = RefinerExample(first.query_id, first.query, (stronger, weaker, *first.proposals[1:]))
    losses = refiner_losses(model, examples, RefinerTrainingOptions())
    assert set(losses) == {"video_nce", "video_hinge", "frame_nce", "localisation", "ranking"}
    for name, value in losses.items():
        assert torch.isfinite(value) and value.item() >= 0, name
    sum(losses.values()).backward()
    assert model.boundary_conv.weight.grad.abs().sum() > 0 and model.text.weight.grad.abs().sum() > 0
    # Without hard negatives or the ranking hinge those terms change or vanish.
    no_rank = refiner_losses(model, examples, RefinerTrainingOptions(strong_weak_ranking=False))
    assert no_rank["ranking"].item() == 0.0


def test_training_makes_refined_boundaries_beat_the_coarse_proposals_at_iou_0_7(tmp_path):
    train, _ = synthetic_examples(160, seed=1)
    test, spans = synthetic_examples(60, seed=2)
    out = tmp_path / "refiner.pt"
    options = RefinerTrainingOptions(epochs=20, batch_queries=16, lr=2e-3, seed=0)
    model, summary = train_refiner(train, SHAPE, options, str(out), clip_model="synthetic")
    assert summary.steps == 20 * 10 and math.isfinite(summary.final_loss)

    loaded = load_refiner(str(out), in_dim=DIM)
    assert not loaded.random_weights and loaded.meta["clip_model"] == "synthetic"

    def hits(refiner) -> tuple[int, int]:
        refined = coarse = 0
        with torch.inference_mode():
            for ex, (event, coarse_span) in zip(test, spans):
                p = ex.proposals[0]
                frames = torch.as_tensor(p.features[None], dtype=torch.float32)
                mask = torch.ones(frames.shape[:2], dtype=torch.bool)
                r = refiner.refine_batch(torch.as_tensor(ex.query[None], dtype=torch.float32), frames, mask, torch.zeros(1, dtype=torch.long))
                s = p.first_s + int(r.start_idx[0])
                e = p.first_s + int(r.end_idx[0]) + 1
                refined += temporal_iou(s, e, *event) >= 0.7
                coarse += temporal_iou(*coarse_span, *event) >= 0.7
        return refined, coarse

    trained_hits, coarse_hits = hits(loaded)
    random_hits, _ = hits(load_refiner("", in_dim=DIM))
    assert coarse_hits == 0  # by construction the 4-s grid misses these events at IoU 0.7
    print(f"IoU>=0.7 hits of {len(test)}: trained {trained_hits}, random {random_hits}, coarse {coarse_hits}")
    assert trained_hits >= 0.6 * len(test), (trained_hits, random_hits)
    assert trained_hits > random_hits + 0.3 * len(test)
