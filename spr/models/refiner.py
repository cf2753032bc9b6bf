"""SPR_CLIP: the refinement and re-ranking model of SPR section 3.3.2.

A coarse proposal (padded by tau_C) arrives as its per-second CLIP frame features; the query
as its CLIP text feature. The model computes

* ``f^Q`` ``(d,)``: a linear text projector on the CLIP text feature, L2-normalised (skipped,
  apart from the normalisation, when the query is already in the joint space);
* ``F^M`` ``(N, d)``: linear ``in_dim -> d`` + learnable positional embedding + a small
  Transformer over the proposal's frames (key padding mask, no pooling), L2-normalised per frame;
* the **re-rank score** ``phi(Q, M) = max_i cos(f^Q, F^M_i)`` over the proposal's real frames;
* the **boundaries**: a feed-forward layer on ``[F^M * f^Q, F^M]`` followed by a 1-D
  convolution gives a start and an end logit per frame; the refined span is the frame pair
  ``s <= e`` maximising ``start[s] + end[e]``, mapped to seconds at 1-frame resolution.

Padded frames never influence real ones: attention masks them, and they are zeroed before the
convolution, so a proposal gets the same result alone or padded inside a batch.

**Precomputed frame context** (``shape.context_window = W > 0``). ``F^M`` does not depend on the
query, but in the paper's online mode it depends on the proposal (its frames are the
Transformer's whole context). A windowed refiner runs the Transformer over fixed windows of the
whole video instead (:func:`context_rows` says which), so ``F^M`` is a property of the video and
is computed once per video (:meth:`SPRClipRefiner.video_context`), together with the
query-independent half of the boundary layer, ``G = W_b F^M + b``:

    Linear([F^M * f^Q, F^M]) = W_a (F^M * f^Q) + W_b F^M + b

Query time then costs one ``dim x dim`` product per frame (:meth:`SPRClipRefiner.refine_context`),
instead of the Transformer's ~25, and only for the proposals whose boundaries are returned: the
ranking needs the scores alone, one dot product per frame. The stored rows carry
:meth:`SPRClipRefiner.context_version` (a digest of the weights): rows another checkpoint made
are never used.

What a windowed context loses is where a frame sits in its proposal (the online mode's
positions are proposal-relative, and padded proposals hold their moment in the middle). Two
small learned tables give it back at query time, by offset from the proposal's start and from
its end: a vector added to the boundary layer, and a scalar added to each frame's cosine before
the max (so a windowed refiner's score is ``max_t cos(f^Q, F^M_t) + prior(t)``). On the synthetic
learning benchmark they took SPR NDCG@10 from 0.466/0.459 (IoU 0.5/0.7) to 0.542/0.542, against
the online mode's 0.522/0.505 (docs/benchmarks.md).

:meth:`SPRClipRefiner.forward` returns the training outputs (per-frame similarity, start/end
logits) that ReLoCLNet-style losses need; training itself lives elsewhere. Checkpoints are one
``torch.save`` dict (``format``, ``shape``, ``state``, ``meta``), loaded with
``weights_only=True`` (:mod:`spr.models.checkpoints`, format ``spr-refiner/1``). Shapes can be
named configs (:mod:`spr.models.registry`: ``refiner-vit-l-14``, ``refiner-spr-tiny``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import REFINER_CHECKPOINT, read_checkpoint, save_checkpoint
from .registry import RefinerShape, resolve_shape

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CONTEXT_MODALITY",
    "context_rows",
    "window_of",
    "RefineResult",
    "RefinerOutputs",
    "RefinerShape",
    "SPRClipRefiner",
    "build_refiner",
    "decode_spans",
    "frame_spans_to_seconds",
    "load_refiner",
    "match_scores",
    "pad_features",
    "place_refined",
    "save_refiner",
]

CHECKPOINT_FORMAT = REFINER_CHECKPOINT.format  # "spr-refiner/1"
# Masked logits: finite so that training losses (softmax cross-entropy) never meet -inf - -inf.
_MASKED_LOGIT = -1e30
# The feature-store modality of precomputed frame context rows ``[F^M | G]`` ``(T, 2 dim)``.
CONTEXT_MODALITY = "refiner_context"
_CONTEXT_VERSION = "spr-refiner-context/1"
# Windows per forward pass when encoding a whole video: bounds memory on hour-long videos.
_WINDOWS_PER_PASS = 128


def window_of(rows: torch.Tensor, window: int) -> torch.Tensor:
    """The window each row index of ``rows`` takes its frame context from (see :func:`context_rows`)."""
    s = window // 2
    return torch.clamp(torch.div(rows - s // 2, s, rounding_mode="floor"), min=0)


def context_rows(lo: int, hi: int, window: int) -> tuple[int, int]:
    """The rows ``[ctx_lo, ctx_hi)`` of a video whose windowed frame context rows ``[lo, hi)``
    need (``ctx_hi`` may pass the video's end; read what exists).

    Windows of ``window`` rows start every ``s = window / 2`` rows; row ``i`` takes its context
    from window ``k(i) = max(0, floor((i - s/2) / s))``, the one it sits in the middle half of
    (the first window also serves the rows before its middle). ``ctx_lo`` is a window start, so
    :meth:`SPRClipRefiner.encode_windows` over rows from ``ctx_lo`` gives rows ``[lo, hi)``
    exactly as over the whole video."""
    if not 0 <= lo < hi:
        raise ValueError(f"need 0 <= lo < hi, got [{lo}, {hi})")
    s = window // 2
    first = max(0, (lo - s // 2) // s)
    last = max(0, (hi - 1 - s // 2) // s)
    return first * s, last * s + window


@dataclass
class RefinerOutputs:
    """One forward pass over ``P`` proposals of ``Q`` queries, ``T`` frames each (padded).

    ``query`` ``(Q, d)`` and ``frames`` ``(P, T, d)`` are L2-normalised (padded frames zero);
    ``similarity`` ``(P, T)`` is ``cos(f^Q, F^M_t)`` (padded frames -inf); ``start_logits`` and
    ``end_logits`` ``(P, T)`` float32, padded frames a large negative constant; ``mask`` ``(P, T)``
    True on real frames."""

    query: torch.Tensor
    frames: torch.Tensor
    similarity: torch.Tensor
    start_logits: torch.Tensor
    end_logits: torch.Tensor
    mask: torch.Tensor


@dataclass
class RefineResult:
    """Per proposal: ``scores`` ``(P,)`` max cosine, and the refined span as frame indices
    ``start_idx <= end_idx`` ``(P,)`` int64 (inclusive, within the proposal's real frames)."""

    scores: torch.Tensor
    start_idx: torch.Tensor
    end_idx: torch.Tensor


class SPRClipRefiner(nn.Module):
    """The SPR_CLIP refiner. Attributes beyond the weights: ``random_weights`` (True unless
    loaded from a checkpoint), ``source`` (checkpoint path or ""), ``meta`` (checkpoint meta)."""

    def __init__(self, shape: RefinerShape) -> None:
        super().__init__()
        self.shape = shape
        self.text = nn.Linear(shape.text_in_dim, shape.dim)
        self.frame_input = nn.Linear(shape.in_dim, shape.dim)
        self.position = nn.Parameter(torch.zeros(shape.max_frames, shape.dim))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            shape.dim, shape.heads, 4 * shape.dim, shape.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, shape.layers, enable_nested_tensor=False)
        self.frame_norm = nn.LayerNorm(shape.dim)
        self.boundary_ffn = nn.Sequential(nn.Linear(2 * shape.dim, shape.dim), nn.GELU(), nn.Dropout(shape.dropout))
        self.boundary_conv = nn.Conv1d(shape.dim, 2, shape.kernel_size, padding=shape.kernel_size // 2)
        if shape.context_window > 0:
            # Where each frame sits in its proposal, which the online mode's Transformer gets
            # from proposal-relative positions and a windowed context does not: learned offsets
            # from the proposal's start and from its end, added to the boundary layer.
            self.proposal_position = nn.Parameter(torch.zeros(2, shape.context_window, shape.dim))
            self.proposal_score = nn.Parameter(torch.zeros(2, shape.context_window))
        self.random_weights = True
        self.source = ""
        self.meta: dict[str, Any] = {}

    @property
    def name(self) -> str:
        """``spr-clip/random`` or ``spr-clip:<checkpoint file>@<step>``: reported with results."""
        if self.random_weights:
            return "spr-clip/random"
        return f"spr-clip:{os.path.basename(self.source)}@{self.meta.get('step', '?')}"

    @property
    def device(self) -> torch.device:
        return self.position.device

    def query_dim(self, projected: bool) -> int:
        """The query vector size a caller must send: ``dim`` when already projected, else ``text_in_dim``."""
        return self.shape.dim if projected else self.shape.text_in_dim

    def embed_queries(self, query: torch.Tensor, projected: bool = False) -> torch.Tensor:
        """``(Q, text_in_dim)`` CLIP text features (or ``(Q, dim)`` when ``projected``) ->
        ``f^Q`` ``(Q, dim)`` L2-normalised."""
        expected = self.query_dim(projected)
        if query.ndim != 2 or query.shape[1] != expected:
            kind = "projected queries" if projected else "CLIP text features"
            raise ValueError(f"{kind} must have shape (Q, {expected}), got {tuple(query.shape)}")
        return F.normalize(query if projected else self.text(query), dim=-1)

    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(P, T, in_dim)`` frame features + ``(P, T)`` bool mask (True = real frame) ->
        ``F^M`` ``(P, T, dim)`` L2-normalised per frame, padded frames zero."""
        p, t, d = frames.shape
        if d != self.shape.in_dim:
            raise ValueError(f"frame features must be {self.shape.in_dim}-d, got {d}-d")
        if t > self.shape.max_frames:
            raise ValueError(f"{t} frames per proposal exceed the refiner's max_frames={self.shape.max_frames}")
        x = self.frame_input(frames) + self.position[:t]
        x = self.frame_norm(self.encoder(x, src_key_padding_mask=~mask))
        return F.normalize(x, dim=-1) * mask.unsqueeze(-1).to(x.dtype)

    @property
    def windowed(self) -> bool:
        """True when the frame context is precomputed per video (``shape.context_window > 0``)."""
        return self.shape.context_window > 0

    def encode_windows(self, rows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Windowed frame context: per item, ``(R_i, in_dim)`` rows starting at a window start
        of its video (row 0 of a video, or a ``ctx_lo`` of :func:`context_rows`) -> ``F^M``
        ``(R_i, dim)`` L2-normalised, each row from its window (:func:`context_rows`). Rows past
        an item's end are taken to be the video's end. All items' windows run in shared passes."""
        w = self.shape.context_window
        if w <= 0:
            raise ValueError(f"{self.name} runs its Transformer over each proposal (context_window=0), not over windows")
        s = w // 2
        starts = [torch.arange(0, len(r), s) for r in rows]  # window starts per item
        base = np.cumsum([0] + [len(st) for st in starts])
        windows = []
        for r, st in zip(rows, starts):
            if r.ndim != 2 or r.shape[1] != self.shape.in_dim:
                raise ValueError(f"frame features must be (R, {self.shape.in_dim}), got {tuple(r.shape)}")
            windows += [r[a : a + w] for a in st.tolist()]
        out_w = self.encode_window_batch(windows)  # (windows, w, dim)
        out = []
        for i, r in enumerate(rows):
            j = torch.arange(len(r), device=out_w.device)
            k = window_of(j, w)
            out.append(out_w[int(base[i]) + k, j - k * s])
        return out

    def encode_window_batch(self, windows: Sequence[torch.Tensor]) -> torch.Tensor:
        """``n`` windows of ``(L_i <= context_window, in_dim)`` rows -> ``F^M`` ``(n,
        context_window, dim)`` (rows past each window's length zero), in shared passes."""
        w = self.shape.context_window
        device = self.device
        lengths_t = torch.tensor([len(x) for x in windows], device=device)
        encoded = []
        for lo in range(0, len(windows), _WINDOWS_PER_PASS):
            chunk = windows[lo : lo + _WINDOWS_PER_PASS]
            frames = torch.zeros((len(chunk), w, self.shape.in_dim), dtype=chunk[0].dtype, device=device)
            for i, x in enumerate(chunk):
                frames[i, : len(x)] = x
            mask = torch.arange(w, device=device)[None, :] < lengths_t[lo : lo + len(chunk), None]
            encoded.append(self.encode_frames(frames, mask))
        return torch.cat(encoded) if len(encoded) > 1 else encoded[0]

    def score_prior(self, mask: torch.Tensor) -> torch.Tensor:
        """``(P, T)`` learned score offsets by position in the proposal (windowed refiners)."""
        top = self.proposal_score.shape[1] - 1
        t = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        span = mask.sum(1, keepdim=True).expand_as(mask)
        return self.proposal_score[0][torch.clamp(t, 0, top)] + self.proposal_score[1][torch.clamp(span - 1 - t, 0, top)]

    def _proposal_bias(self, pos: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
        """``(..., dim)``: the learned offsets of rows at ``pos`` in proposals of ``span`` rows
        (any matching shapes), from the start and from the end, clipped to the table."""
        top = self.proposal_position.shape[1] - 1
        from_start = torch.clamp(pos, 0, top)
        from_end = torch.clamp(span - 1 - pos, 0, top)
        return self.proposal_position[0][from_start] + self.proposal_position[1][from_end]

    def context_version(self) -> str:
        """What stored context rows must carry to be used with these weights: the format and a
        digest of the shape and every weight (computed once; the weights must not change after)."""
        cached = getattr(self, "_context_version", None)
        if cached is None:
            digest = hashlib.sha256(repr(self.shape).encode())
            for name, tensor in sorted(self.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
            cached = f"{_CONTEXT_VERSION}:{digest.hexdigest()[:24]}"
            self._context_version = cached
        return cached

    def context_from_encoded(self, fm: torch.Tensor) -> torch.Tensor:
        """``F^M`` ``(..., dim)`` -> the stored context rows ``[F^M | G]`` ``(..., 2 dim)``, with
        ``G = W_b F^M + b`` the query-independent half of the boundary layer."""
        lin = self.boundary_ffn[0]
        d = self.shape.dim
        g = F.linear(fm, lin.weight[:, d:], lin.bias)
        return torch.cat([fm, g.to(fm.dtype)], dim=-1)

    def video_context(self, frames: torch.Tensor) -> torch.Tensor:
        """A whole video's ``(N, in_dim)`` frame features -> its context rows ``(N, 2 dim)``
        (``[F^M | G]``, what :data:`CONTEXT_MODALITY` stores). Run under ``torch.inference_mode()``."""
        return self.context_from_encoded(self.encode_windows([frames])[0])

    def refine_context(
        self,
        query: torch.Tensor,
        fm: torch.Tensor,
        g: torch.Tensor,
        lengths: torch.Tensor,
        query_index: torch.Tensor,
    ) -> RefineResult:
        """The query-dependent half of the refiner on precomputed context rows: scores
        (:meth:`context_scores`) and spans (:meth:`context_spans`) of every proposal.

        ``query`` ``(Q, dim)`` embedded (:meth:`embed_queries`); ``fm`` and ``g`` ``(R, dim)``:
        the two halves of the context rows of all ``P`` proposals back to back (no padding);
        ``lengths`` ``(P,)`` rows per proposal; ``query_index`` ``(P,)``. Equal to
        :meth:`refine_embedded` on the same ``F^M``."""
        scores = self.context_scores(query, fm, lengths, query_index)
        start_idx, end_idx = self.context_spans(query, fm, g, lengths, query_index)
        return RefineResult(scores, start_idx, end_idx)

    @staticmethod
    def _query_runs(query_index: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Each row's query ``(R,)`` and the bounds of its runs of rows of one query."""
        row_query = torch.repeat_interleave(query_index, lengths)
        change = torch.nonzero(row_query[1:] != row_query[:-1]).flatten() + 1 if len(row_query) > 1 else row_query[:0]
        return row_query, [0, *change.tolist(), len(row_query)]

    def context_scores(
        self, query: torch.Tensor, fm: torch.Tensor, lengths: torch.Tensor, query_index: torch.Tensor
    ) -> torch.Tensor:
        """The re-rank scores ``(P,)`` float32, ``max_t cos(f^Q, F^M_t)``, from the ``F^M`` half
        of the context rows (``(R, dim)``, proposals back to back): one dot product per row, so
        scoring every proposal costs far less than sharpening one's boundaries."""
        p = len(lengths)
        row_query, bounds = self._query_runs(query_index, lengths)
        fq = query.to(fm.dtype)
        sim_rows = torch.empty(len(fm), dtype=torch.float32, device=fm.device)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            sim_rows[lo:hi] = (fm[lo:hi] @ fq[int(row_query[lo])]).float()
        t = max(int(lengths.max()), 1) if p else 1
        mask = torch.arange(t, device=fm.device)[None, :] < lengths[:, None]
        sim = torch.full((p, t), -math.inf, dtype=torch.float32, device=fm.device)
        sim[mask] = sim_rows
        sim = sim + self.score_prior(mask).float()
        return match_scores(sim, mask)

    def context_spans(
        self, query: torch.Tensor, fm: torch.Tensor, g: torch.Tensor, lengths: torch.Tensor, query_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The refined spans (``start_idx``, ``end_idx`` ``(P,)``, inclusive row indices) from the
        context rows' two halves ``(R, dim)``: the boundary layer and the 1-D convolution,
        without padding or per-row query copies. Per run of rows of one query,
        ``(F^M * f^Q) W_a^T = F^M (W_a * f^Q)^T`` (the query folded into a ``dim x dim`` weight);
        the convolution as ``kernel_size`` shifted per-row products (``2 x kernel_size``
        outputs per row instead of a padded convolution)."""
        d = self.shape.dim
        if fm.ndim != 2 or fm.shape[1] != d or g.shape != fm.shape:
            raise ValueError(f"context rows must be two (R, {d}) halves, got {tuple(fm.shape)} and {tuple(g.shape)}")
        device, dtype = fm.device, fm.dtype
        p = len(lengths)
        wa = self.boundary_ffn[0].weight[:, :d].to(dtype)
        conv = self.boundary_conv
        k = conv.kernel_size[0]
        taps = conv.weight.to(dtype).permute(2, 0, 1).reshape(2 * k, d)  # (k*2, dim): tap-major
        fq = query.to(dtype)
        # Position of each row in its proposal, and its proposal's length.
        starts = torch.cumsum(lengths, 0) - lengths
        pos = torch.arange(len(fm), device=device) - torch.repeat_interleave(starts, lengths)
        span = torch.repeat_interleave(lengths, lengths)
        g = g + self._proposal_bias(pos, span).to(dtype)
        row_query, bounds = self._query_runs(query_index, lengths)
        z = torch.empty((len(fm), 2 * k), dtype=torch.float32, device=device)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            q = fq[int(row_query[lo])]
            hidden = self.boundary_ffn[1](F.linear(fm[lo:hi], wa * q) + g[lo:hi])
            z[lo:hi] = F.linear(hidden, taps).float()
        z = z.view(-1, k, 2)
        logits = conv.bias.float().expand(len(fm), 2).clone()
        index = torch.arange(len(fm), device=device)
        for j in range(k):  # out[t] = bias + sum_j W_j . hidden[t + j - k // 2], zero outside the proposal
            o = j - k // 2
            valid = ((pos + o) >= 0) & ((pos + o) < span)
            src = torch.clamp(index + o, 0, max(len(fm) - 1, 0))
            logits += torch.where(valid.unsqueeze(1), z[src, j], 0.0)
        t = max(int(lengths.max()), 1) if p else 1
        mask = torch.arange(t, device=device)[None, :] < lengths[:, None]
        start = torch.full((p, t), _MASKED_LOGIT, dtype=torch.float32, device=device)
        end = start.clone()
        start[mask] = logits[:, 0]
        end[mask] = logits[:, 1]
        return decode_spans(start, end, mask)

    def forward(
        self,
        query: torch.Tensor,
        frames: torch.Tensor,
        mask: torch.Tensor,
        query_index: torch.Tensor,
        encoded: torch.Tensor | None = None,
    ) -> RefinerOutputs:
        """``query`` ``(Q, dim)`` embedded queries (:meth:`embed_queries`), ``frames``
        ``(P, T, in_dim)``, ``mask`` ``(P, T)`` bool, ``query_index`` ``(P,)`` int64: the query
        (row of ``query``) each proposal belongs to. ``encoded``: ``F^M`` ``(P, T, dim)`` already
        computed (a windowed refiner's context, :meth:`encode_windows`); ``frames`` is then unused."""
        fm = self.encode_frames(frames, mask) if encoded is None else encoded * mask.unsqueeze(-1).to(encoded.dtype)
        fq = query[query_index]  # (P, dim)
        similarity = torch.einsum("ptd,pd->pt", fm, fq)
        if self.windowed:
            similarity = similarity + self.score_prior(mask)
        similarity = similarity.masked_fill(~mask, -math.inf)
        joint = torch.cat([fm * fq.unsqueeze(1), fm], dim=-1)  # (P, T, 2 dim)
        if self.windowed:
            t = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
            pre = self.boundary_ffn[0](joint) + self._proposal_bias(t, mask.sum(1, keepdim=True).expand_as(mask))
            hidden = self.boundary_ffn[2](self.boundary_ffn[1](pre))
        else:
            hidden = self.boundary_ffn(joint)
        hidden = hidden * mask.unsqueeze(-1).to(joint.dtype)
        # Zeroed padding looks to the convolution exactly like its own zero padding at the edge,
        # so a proposal's logits do not depend on how long its batch-mates are.
        logits = self.boundary_conv(hidden.transpose(1, 2)).float()  # (P, 2, T)
        logits = logits.masked_fill(~mask.unsqueeze(1), _MASKED_LOGIT)
        return RefinerOutputs(fq, fm, similarity, logits[:, 0], logits[:, 1], mask)

    def refine_embedded(
        self, query: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor, query_index: torch.Tensor
    ) -> RefineResult:
        """:meth:`forward` + decoding, for queries already embedded with :meth:`embed_queries`."""
        out = self(query, frames, mask, query_index)
        start_idx, end_idx = decode_spans(out.start_logits, out.end_logits, mask)
        return RefineResult(match_scores(out.similarity, mask), start_idx, end_idx)

    def refine_batch(
        self,
        query: torch.Tensor,
        frames: torch.Tensor,
        mask: torch.Tensor,
        query_index: torch.Tensor,
        query_projected: bool = False,
    ) -> RefineResult:
        """Score and refine ``P`` proposals of ``Q`` queries in one pass.

        ``query`` ``(Q, text_in_dim)`` CLIP text features (``(Q, dim)`` when
        ``query_projected``), ``frames`` ``(P, T, in_dim)`` padded, ``mask`` ``(P, T)`` bool,
        ``query_index`` ``(P,)`` -> scores, start and end frame indices ``(P,)``. Run it under
        ``torch.inference_mode()`` and :meth:`eval` for serving."""
        return self.refine_embedded(self.embed_queries(query, query_projected), frames, mask, query_index)


def match_scores(similarity: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(P, T)`` per-frame cosine + ``(P, T)`` mask -> ``(P,)`` max over real frames, float32.
    A proposal without real frames scores -inf."""
    return similarity.float().masked_fill(~mask, -math.inf).amax(dim=1)


def decode_spans(
    start_logits: torch.Tensor, end_logits: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frame pair ``s <= e`` maximising ``start[s] + end[e]`` over real frames, per row.

    ``(P, T)`` logits and mask -> ``start_idx``, ``end_idx`` ``(P,)`` int64. Equivalent to the
    argmax over the upper triangle of the ``(T, T)`` pair matrix, but computed as
    ``max_e (cummax(start)[e] + end[e])``: O(T) memory instead of O(T^2), which matters for a
    512-proposal batch padded to a long proposal."""
    start = start_logits.float().masked_fill(~mask, -math.inf)
    end = end_logits.float().masked_fill(~mask, -math.inf)
    best_start, best_start_idx = torch.cummax(start, dim=1)  # best s <= e for every e
    end_idx = (best_start + end).argmax(dim=1)
    start_idx = best_start_idx.gather(1, end_idx.unsqueeze(1)).squeeze(1)
    return start_idx.long(), end_idx.long()


def frame_spans_to_seconds(
    start_idx: np.ndarray,
    end_idx: np.ndarray,
    first_s: np.ndarray,
    rate: np.ndarray,
    clip_lo_s: np.ndarray | None = None,
    clip_hi_s: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive frame spans -> ``[start_s, end_s)`` seconds, all arrays ``(P,)``.

    Frame ``i`` of a proposal covers ``[first_s + i / rate, first_s + (i + 1) / rate)``. The result
    is clipped to ``[clip_lo_s, clip_hi_s]`` (e.g. the padded span and the video's end) where that
    leaves a non-empty span; otherwise the frames' own span is kept."""
    first_s = np.asarray(first_s, dtype=np.float64)
    rate = np.asarray(rate, dtype=np.float64)
    start_s = first_s + np.asarray(start_idx, dtype=np.float64) / rate
    end_s = first_s + (np.asarray(end_idx, dtype=np.float64) + 1.0) / rate
    lo = start_s if clip_lo_s is None else np.maximum(start_s, clip_lo_s)
    hi = end_s if clip_hi_s is None else np.minimum(end_s, clip_hi_s)
    ok = hi > lo
    return np.where(ok, lo, start_s), np.where(ok, hi, end_s)


def place_refined(
    start_idx: np.ndarray,
    end_idx: np.ndarray,
    scores: np.ndarray,
    first_s: np.ndarray,
    rate: np.ndarray,
    span_start_s: np.ndarray,
    span_end_s: np.ndarray,
    video_duration_s: np.ndarray,
    coarse_rank: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refined proposals as served, all arrays ``(P,)``: frame spans -> ``start_s``/``end_s``
    inside each padded span and its video (a duration <= 0 means unknown), and the order that
    ranks them: best score first, ties by coarse rank. The service and ``spr eval`` both use it,
    so evaluation measures exactly what clients get."""
    duration = np.where(np.asarray(video_duration_s, dtype=np.float64) > 0, video_duration_s, math.inf)
    start_s, end_s = frame_spans_to_seconds(
        start_idx, end_idx, first_s, rate, np.asarray(span_start_s, dtype=np.float64), np.minimum(span_end_s, duration)
    )
    order = np.lexsort((np.asarray(coarse_rank), -np.asarray(scores)))
    return start_s, end_s, order


def pad_features(
    arrays: Sequence[np.ndarray], dtype: np.dtype | type = np.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length ``(T_i, D)`` arrays -> ``(P, T_max, D)`` tensor of ``dtype`` (zeros past
    each end) and ``(P, T_max)`` bool mask, True on real frames. One copy, no Python loop over
    frames: rows are concatenated and scattered through the mask."""
    if not arrays:
        raise ValueError("pad_features needs at least one array")
    dims = {a.shape[1] for a in arrays if a.ndim == 2}
    if len(dims) != 1 or any(a.ndim != 2 for a in arrays):
        raise ValueError(f"arrays must all be (T_i, D) with one D, got shapes {[a.shape for a in arrays][:8]}")
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    t_max = max(int(lengths.max()), 1)
    mask = np.arange(t_max)[None, :] < lengths[:, None]
    padded = np.zeros((len(arrays), t_max, dims.pop()), dtype=dtype)
    padded[mask] = np.concatenate(arrays, axis=0)  # row-major mask order == concatenation order
    return torch.from_numpy(padded), torch.from_numpy(mask)


def build_refiner(shape: RefinerShape | str) -> SPRClipRefiner:
    """A freshly initialised refiner of ``shape``: a :class:`RefinerShape` or the name of a
    refiner config (``refiner-vit-l-14``; :func:`spr.models.registry.list_model_configs`).
    ``random_weights`` is True until trained or loaded."""
    return SPRClipRefiner(resolve_shape(shape, "refiner"))


def save_refiner(path: str | os.PathLike[str], model: SPRClipRefiner, **meta: Any) -> None:
    """Write ``model`` and ``meta`` (clip model, step, ...) to ``path`` atomically."""
    save_checkpoint(path, REFINER_CHECKPOINT, model.shape, {"state": model.state_dict()}, {**model.meta, **meta})


# The random refiner's frame context window: the serving default (precomputed context).
_RANDOM_CONTEXT_WINDOW = 64


def _random_shape(in_dim: int) -> RefinerShape:
    heads = next(h for h in (8, 4, 2, 1) if in_dim % h == 0)
    return RefinerShape(in_dim=in_dim, text_in_dim=in_dim, dim=in_dim, heads=heads, context_window=_RANDOM_CONTEXT_WINDOW)


def _seeded_random_refiner(in_dim: int) -> SPRClipRefiner:
    """The random refiner for ``in_dim``: the same weights in every process (seeded by the
    size), so context rows precomputed by one process stay valid in the next."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0x5E6 + in_dim)
        return build_refiner(_random_shape(in_dim))


def load_refiner(checkpoint: str, in_dim: int, device: str = "cpu") -> SPRClipRefiner:
    """The refiner in ``checkpoint``, in eval mode on ``device``.

    An empty ``checkpoint`` gives a randomly initialised refiner whose dimensions are all
    ``in_dim``, flagged ``random_weights`` and logged as a warning. ``in_dim`` is the CLIP frame
    feature size the caller has; a checkpoint trained on another size is refused."""
    if not checkpoint:
        log.warning(
            "refiner weights are RANDOM (refiner.checkpoint is empty): re-rank scores and refined "
            "boundaries are meaningless; train a refiner and set refiner.checkpoint",
            extra={"in_dim": in_dim},
        )
        return _seeded_random_refiner(in_dim).to(device).eval()
    saved = read_checkpoint(checkpoint, REFINER_CHECKPOINT, in_dim)
    model = build_refiner(saved.shape)
    saved.load_into({"state": model})
    model.random_weights = False
    model.source = checkpoint
    model.meta = saved.meta
    return model.to(device).eval()
