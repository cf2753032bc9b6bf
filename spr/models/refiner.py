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

:meth:`SPRClipRefiner.forward` returns the training outputs (per-frame similarity, start/end
logits) that ReLoCLNet-style losses need; training itself lives elsewhere. Checkpoints are one
``torch.save`` dict (``format``, ``shape``, ``state``, ``meta``), loaded with
``weights_only=True`` (:mod:`spr.models.checkpoints`, format ``spr-refiner/1``). Shapes can be
named configs (:mod:`spr.models.registry`: ``refiner-vit-l-14``, ``refiner-spr-tiny``).
"""

from __future__ import annotations

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

    def forward(
        self, query: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor, query_index: torch.Tensor
    ) -> RefinerOutputs:
        """``query`` ``(Q, dim)`` embedded queries (:meth:`embed_queries`), ``frames``
        ``(P, T, in_dim)``, ``mask`` ``(P, T)`` bool, ``query_index`` ``(P,)`` int64: the query
        (row of ``query``) each proposal belongs to."""
        fm = self.encode_frames(frames, mask)
        fq = query[query_index]  # (P, dim)
        similarity = torch.einsum("ptd,pd->pt", fm, fq).masked_fill(~mask, -math.inf)
        joint = torch.cat([fm * fq.unsqueeze(1), fm], dim=-1)  # (P, T, 2 dim)
        hidden = self.boundary_ffn(joint) * mask.unsqueeze(-1).to(joint.dtype)
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


def _random_shape(in_dim: int) -> RefinerShape:
    heads = next(h for h in (8, 4, 2, 1) if in_dim % h == 0)
    return RefinerShape(in_dim=in_dim, text_in_dim=in_dim, dim=in_dim, heads=heads)


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
        return build_refiner(_random_shape(in_dim)).to(device).eval()
    saved = read_checkpoint(checkpoint, REFINER_CHECKPOINT, in_dim)
    model = build_refiner(saved.shape)
    saved.load_into({"state": model})
    model.random_weights = False
    model.source = checkpoint
    model.meta = saved.meta
    return model.to(device).eval()
