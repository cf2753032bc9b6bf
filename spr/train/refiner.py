"""Training the SPR_CLIP refiner with ReLoCLNet-style objectives (SPR section 3.3.2, [59]).

Training data are a query's tau_C-padded coarse proposals (what the refiner sees at serving
time) with the ground-truth moments that fall inside them. Per batch of queries:

* **video-level contrastive**: each query against every proposal in the batch, the re-rank
  score ``phi(Q, M) = max_t cos(f^Q, F^M_t)`` over a temperature; a query's positives are its
  proposals holding a ground-truth moment (MIL-NCE: several positives per row);
* **video-level hinge**: ``max(0, margin + phi(Q, M-) - phi(Q, M+))`` against the hardest
  negative of the query: its own proposals without ground truth (hard negatives, optional) and
  other queries' proposals;
* **frame-level contrastive**: inside a positive proposal, the frames of the moment against the
  proposal's other frames;
* **localisation**: cross-entropy of the start and end logits at the moment's first and last
  frame;
* **strong/weak ranking** (optional): positives of higher relevance must out-score those of lower
  relevance by ``margin`` (0.1).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from spr.models.refiner import RefinerShape, SPRClipRefiner, build_refiner, pad_features, save_refiner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingProposal:
    """One padded proposal: ``features`` ``(T, D)`` at ``rate`` per second from ``first_s``;
    ``moment`` the inclusive frame span ``(start, end)`` of its best ground truth, or None for
    a negative; ``relevance`` of that ground truth (0 for negatives).

    A windowed refiner (``context_window > 0``) also needs ``context``: the video's rows
    around the proposal from a window start (:func:`spr.models.refiner.context_rows`), with the
    proposal's first row at ``context_offset``; it then learns on the frame context it serves with."""

    video: str
    features: np.ndarray
    rate: float
    first_s: float
    moment: tuple[int, int] | None
    relevance: float = 0.0
    context: np.ndarray | None = None
    context_offset: int = 0


@dataclass(frozen=True)
class RefinerExample:
    """A query's CLIP text feature ``(text_in_dim,)`` and its training proposals."""

    query_id: str
    query: np.ndarray
    proposals: tuple[TrainingProposal, ...]

    @property
    def positives(self) -> int:
        return sum(p.moment is not None for p in self.proposals)


@dataclass(frozen=True)
class RefinerLossWeights:
    video_nce: float = 1.0
    video_hinge: float = 1.0
    frame_nce: float = 1.0
    localisation: float = 1.0
    ranking: float = 1.0


@dataclass
class RefinerTrainingOptions:
    epochs: int = 10
    batch_queries: int = 32
    proposals_per_query: int = 8  # positives first, then negatives, per step
    lr: float = 5e-4
    weight_decay: float = 1e-3
    grad_clip: float = 5.0
    warmup_fraction: float = 0.1
    temperature: float = 0.05
    margin: float = 0.1
    hard_negatives: bool = True
    strong_weak_ranking: bool = True
    seed: int = 0
    device: str = "cpu"
    weights: RefinerLossWeights = field(default_factory=RefinerLossWeights)


@dataclass
class RefinerTrainingSummary:
    steps: int
    epochs: int
    final_loss: float
    losses: dict[str, float]
    steps_per_s: float
    checkpoint: str


def moment_frames(start_s: float, end_s: float, first_s: float, rate: float, length: int) -> tuple[int, int] | None:
    """Inclusive frame span of ``[start_s, end_s)`` inside a proposal of ``length`` frames
    starting at ``first_s``; None when the moment does not overlap it."""
    lo = math.floor((start_s - first_s) * rate + 1e-6)
    hi = math.ceil((end_s - first_s) * rate - 1e-6) - 1
    lo, hi = max(lo, 0), min(hi, length - 1)
    return (lo, hi) if lo <= hi else None


def label_proposal(
    video: str,
    features: np.ndarray,
    rate: float,
    first_s: float,
    ground_truth: Iterable[tuple[str, float, float, float]],
    min_inside: float = 0.5,
) -> TrainingProposal:
    """A proposal labelled with the most relevant ground truth ``(video, start, end, relevance)``
    that lies at least ``min_inside`` inside it (tau_C padding exists so that moments fit)."""
    end_s = first_s + len(features) / rate
    best: tuple[float, tuple[int, int]] | None = None
    for gt_video, s, e, relevance in ground_truth:
        if gt_video != video or e <= s:
            continue
        inside = max(0.0, min(e, end_s) - max(s, first_s)) / (e - s)
        if inside < min_inside:
            continue
        span = moment_frames(s, e, first_s, rate, len(features))
        if span is not None and (best is None or relevance > best[0]):
            best = (relevance, span)
    return TrainingProposal(video, np.asarray(features), rate, first_s, None if best is None else best[1], 0.0 if best is None else best[0])


def refiner_losses(
    model: SPRClipRefiner,
    batch: Sequence[RefinerExample],
    options: RefinerTrainingOptions,
) -> dict[str, torch.Tensor]:
    """The five objectives for one batch of queries; each a scalar tensor."""
    device = torch.device(options.device)
    proposals = [p for ex in batch for p in ex.proposals]
    owner = torch.tensor([i for i, ex in enumerate(batch) for _ in ex.proposals], device=device)
    frames, mask = pad_features([p.features for p in proposals])
    frames, mask = frames.to(device), mask.to(device)
    queries = torch.as_tensor(np.stack([ex.query for ex in batch]), dtype=torch.float32, device=device)
    fq = model.embed_queries(queries)  # (B, d)
    out = model(fq, frames, mask, owner, encoded=_windowed_frames(model, proposals, mask) if model.windowed else None)
    # Every query against every proposal: (B, P) re-rank scores.
    sim_all = torch.einsum("ptd,bd->bpt", out.frames, fq)
    if model.windowed:
        sim_all = sim_all + model.score_prior(mask).unsqueeze(0)
    sim_all = sim_all.masked_fill(~mask.unsqueeze(0), -math.inf)
    phi = sim_all.amax(dim=2)
    positive = torch.zeros_like(phi, dtype=torch.bool)
    relevance = torch.zeros_like(phi)
    for j, p in enumerate(proposals):
        if p.moment is not None:
            positive[owner[j], j] = True
            relevance[owner[j], j] = p.relevance
    has_pos = positive.any(dim=1)
    zero = phi.sum() * 0.0
    losses: dict[str, torch.Tensor] = {}

    logits = phi / options.temperature
    if has_pos.any():
        pos_lse = torch.logsumexp(logits.masked_fill(~positive, -math.inf), dim=1)
        all_lse = torch.logsumexp(logits, dim=1)
        losses["video_nce"] = (all_lse - pos_lse)[has_pos].mean()
        # Hinge against the hardest negative: other queries' proposals always; the query's own
        # proposals without ground truth only with hard negatives on.
        own = owner.unsqueeze(0) == torch.arange(len(batch), device=device).unsqueeze(1)
        negative = ~positive & (~own | options.hard_negatives)
        hardest = phi.masked_fill(~negative, -math.inf).amax(dim=1)
        weakest_pos = phi.masked_fill(~positive, math.inf).amin(dim=1)
        ok = has_pos & torch.isfinite(hardest)
        losses["video_hinge"] = F.relu(options.margin + hardest - weakest_pos)[ok].mean() if ok.any() else zero
    else:
        losses["video_nce"] = losses["video_hinge"] = zero

    frame_terms, start_terms, end_terms = [], [], []
    for j, p in enumerate(proposals):
        if p.moment is None:
            continue
        s, e = p.moment
        sim = out.similarity[j] / options.temperature
        inside = torch.zeros_like(mask[j])
        inside[s : e + 1] = True
        frame_terms.append(torch.logsumexp(sim.masked_fill(~mask[j], -math.inf), 0) - torch.logsumexp(sim.masked_fill(~inside, -math.inf), 0))
        start_terms.append(F.cross_entropy(out.start_logits[j : j + 1], torch.tensor([s], device=device)))
        end_terms.append(F.cross_entropy(out.end_logits[j : j + 1], torch.tensor([e], device=device)))
    losses["frame_nce"] = torch.stack(frame_terms).mean() if frame_terms else zero
    losses["localisation"] = (torch.stack(start_terms).mean() + torch.stack(end_terms).mean()) / 2 if start_terms else zero

    ranking_terms = []
    if options.strong_weak_ranking:
        for b in range(len(batch)):
            idx = positive[b].nonzero().flatten()
            if len(idx) < 2:
                continue
            r = relevance[b, idx]
            stronger = r.unsqueeze(1) > r.unsqueeze(0)  # (i, j): i should beat j
            if stronger.any():
                gap = options.margin + phi[b, idx].unsqueeze(0) - phi[b, idx].unsqueeze(1)
                ranking_terms.append(F.relu(gap)[stronger].mean())
    losses["ranking"] = torch.stack(ranking_terms).mean() if ranking_terms else zero
    return losses


def _windowed_frames(model: SPRClipRefiner, proposals: Sequence[TrainingProposal], mask: torch.Tensor) -> torch.Tensor:
    """``F^M`` ``(P, T, dim)`` of a windowed refiner: each proposal's rows of its video's
    windowed frame context, computed over the context rows it carries, padded like ``mask``."""
    missing = [p.video for p in proposals if p.context is None]
    if missing:
        raise ValueError(
            f"a windowed refiner trains on each proposal's surrounding rows; proposals of {sorted(set(missing))[:5]} "
            "carry none (build examples with context_window)"
        )
    device = mask.device
    encoded = model.encode_windows([torch.as_tensor(p.context, dtype=torch.float32, device=device) for p in proposals])
    out = torch.zeros((*mask.shape, model.shape.dim), device=device)
    for j, (p, fm) in enumerate(zip(proposals, encoded)):
        n = len(p.features)
        out[j, :n] = fm[p.context_offset : p.context_offset + n]
    return out


def _subsample(example: RefinerExample, per_query: int, rng: np.random.Generator) -> RefinerExample:
    pos = [p for p in example.proposals if p.moment is not None]
    neg = [p for p in example.proposals if p.moment is None]
    rng.shuffle(pos)
    rng.shuffle(neg)
    keep = (pos[: max(1, per_query // 2)] + neg)[:per_query]
    return RefinerExample(example.query_id, example.query, tuple(keep))


def train_refiner(
    examples: Sequence[RefinerExample],
    shape: RefinerShape,
    options: RefinerTrainingOptions,
    out: str,
    init: SPRClipRefiner | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    **meta: Any,
) -> tuple[SPRClipRefiner, RefinerTrainingSummary]:
    """Train a refiner of ``shape`` (or continue ``init``) on ``examples``; the final weights go
    to ``out`` with :func:`save_refiner` (``meta``: clip model, data...)."""
    from spr.train.schedule import build_optimizer, seed_everything, warmup_cosine

    usable = [ex for ex in examples if ex.positives > 0 and ex.proposals]
    if not usable:
        raise ValueError("no training query has a proposal holding its ground truth; widen tau_C or add oracle proposals")
    seed_everything(options.seed)
    rng = np.random.default_rng(options.seed)
    model = (init or build_refiner(shape)).to(options.device).train()
    optimizer = build_optimizer(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    steps_per_epoch = math.ceil(len(usable) / options.batch_queries)
    total = steps_per_epoch * options.epochs
    scheduler = warmup_cosine(optimizer, total, options.warmup_fraction)
    weights = options.weights
    step, t0, last = 0, time.perf_counter(), {}
    for epoch in range(options.epochs):
        order = rng.permutation(len(usable))
        for lo in range(0, len(order), options.batch_queries):
            batch = [_subsample(usable[i], options.proposals_per_query, rng) for i in order[lo : lo + options.batch_queries]]
            parts = refiner_losses(model, batch, options)
            loss = sum(getattr(weights, name) * value for name, value in parts.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            last = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}
            if on_step is not None:
                on_step(step, last)
        log.info("refiner epoch done", extra={"epoch": epoch + 1, "step": step, **last})
    wall = time.perf_counter() - t0
    model.eval()
    model.random_weights = False
    save_refiner(out, model, step=step, epochs=options.epochs, **meta)
    model.source = out
    model.meta = {"step": step, **meta}
    summary = RefinerTrainingSummary(step, options.epochs, last.get("loss", float("nan")), last, step / wall if wall else 0.0, out)
    return model, summary


def examples_from_stores(
    config: Any,
    records: Sequence[Any],
    query_features: dict[str, np.ndarray],
    collection: str,
    embed: Callable[[np.ndarray], np.ndarray],
    oracle: bool = True,
    max_proposals: int = 24,
    context_window: int = 0,
) -> list[RefinerExample]:
    """Training examples the way the refiner meets queries: each record's (a
    :class:`spr.data.tvr_ranking.QueryRecord`) coarse proposals from the configured stores (ANN
    top-k -> catalog -> proposals -> tau_C padding), their frame features from the feature store,
    labelled with the record's moments.

    ``query_features`` maps query ids to CLIP text features ``(text_in_dim,)``; ``embed`` turns
    ``(N, text_in_dim)`` of them into ANN query embeddings (the text projector). With ``oracle``
    a moment no retrieved proposal holds is added as its own tau_C-padded proposal, so that
    every query teaches the boundary head. At most ``max_proposals`` per query (positives
    first, then negatives in coarse rank order). ``context_window > 0``: each proposal also
    carries its video's rows around it, for a windowed refiner."""
    from spr.catalog import SegmentCatalog
    from spr.features import FrameFeatureStore
    from spr.proposals import gap_rule_from_config
    from spr.retrieval import retrieve_proposals
    from spr.stores import open_vector_store

    p = config.proposals
    gap_rule = gap_rule_from_config(
        p.gap_rule, p.max_missing_segments, p.adaptive_alpha,
        merge_score_window=p.merge_score_window, max_length_s=p.max_length_s,
    )
    catalog = SegmentCatalog.from_config(config)
    store = open_vector_store(config)
    features = FrameFeatureStore.from_config(config)
    examples = []
    try:
        wanted = [r for r in records if r.query_id in query_features]
        if not wanted:
            return []
        embeddings = embed(np.stack([query_features[r.query_id] for r in wanted]))
        video_ids: dict[str, tuple[int, float] | None] = {}
        for record, embedding in zip(wanted, embeddings):
            coarse = retrieve_proposals(store, catalog, collection, embedding, p.top_k_segments, gap_rule=gap_rule, pad_s=p.pad_s)
            spans = [(coarse.location_of(prop).video_id, prop.video_key, padded.start_s, padded.end_s) for prop, padded in zip(coarse.proposals, coarse.padded)]
            truth = [(m.video_name, m.start_s, m.end_s, m.relevance) for m in record.moments if m.relevance > 0]
            if oracle:
                for name, start, end, _ in truth:
                    if any(key == name and s <= start and end <= e for _, key, s, e in spans):
                        continue
                    if name not in video_ids:
                        video = catalog.get_video(name)
                        video_ids[name] = None if video is None or video.status != "ready" else (video.id, video.duration_s)
                    if video_ids[name] is not None:
                        vid, duration = video_ids[name]
                        spans.append((vid, name, max(0.0, start - p.pad_s), min(duration, end + p.pad_s)))
            read = features.read_many([(vid, s, e) for vid, _, s, e in spans], missing="none")
            labelled = [
                _with_context(features, f, label_proposal(key, f.features.astype(np.float32), f.rate, f.first_s, truth), context_window)
                for (_, key, _, _), f in zip(spans, read)
                if f is not None
            ]
            positives = [x for x in labelled if x.moment is not None]
            negatives = [x for x in labelled if x.moment is None]
            kept = (positives + negatives)[:max_proposals]
            if positives:
                examples.append(RefinerExample(record.query_id, np.asarray(query_features[record.query_id], np.float32), tuple(kept)))
    finally:
        store.close()
        catalog.close()
    return examples


def _with_context(store: Any, read: Any, proposal: TrainingProposal, window: int) -> TrainingProposal:
    """``proposal`` with its video's rows around it (``window > 0``), read from ``store``."""
    if window <= 0:
        return proposal
    from dataclasses import replace

    from spr.models.refiner import context_rows

    lo = read.first_row
    c_lo, c_hi = context_rows(lo, lo + len(read.features), window)
    wide = store.read_span(read.video_id, c_lo / read.rate, c_hi / read.rate)
    return replace(proposal, context=wide.features.astype(np.float32), context_offset=lo - wide.first_row)
