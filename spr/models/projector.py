"""The feature projectors of SPR section 3.1: segments and queries into one embedding space.

* :class:`VisualProjector`: a segment's per-second CLIP features ``(T, D_in)`` -> linear to
  ``dim`` -> learnable positional embedding -> Transformer (6 layers in the paper) -> masked
  mean pooling -> L2-normalised ``(dim,)`` (768 in the paper).
* :class:`TextProjector`: one linear layer on the CLIP text feature, L2-normalised.

Without a trained checkpoint, :class:`MeanPoolProjector` averages the CLIP frame features
(the paper's CLIP_mp baseline) and queries pass through unchanged; :func:`load_projectors`
logs that fallback. Checkpoints are what ``spr train projector`` writes: one ``torch.save``
dict holding both projectors, their shapes and the CLIP model they were trained on
(:mod:`spr.models.checkpoints`, format ``spr-projectors/1``). Shapes can be named configs
(:mod:`spr.models.registry`: ``projector-vit-l-14``, ``projector-spr-tiny``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spr.segments import SegmentRows

from .checkpoints import PROJECTOR_CHECKPOINT, read_checkpoint, save_checkpoint
from .registry import ProjectorShape, resolve_shape

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = PROJECTOR_CHECKPOINT.format  # "spr-projectors/1"


class VisualProjector(nn.Module):
    """``(B, T, in_dim)`` frames + ``(B, T)`` bool mask (True = real frame) -> ``(B, dim)``."""

    def __init__(self, shape: ProjectorShape) -> None:
        super().__init__()
        self.shape = shape
        self.input = nn.Linear(shape.in_dim, shape.dim)
        self.position = nn.Parameter(torch.zeros(shape.max_frames, shape.dim))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            shape.dim, shape.heads, 4 * shape.dim, shape.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, shape.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(shape.dim)

    @property
    def out_dim(self) -> int:
        return self.shape.dim

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = frames.shape[1]
        if t > self.shape.max_frames:
            raise ValueError(f"{t} frames per segment exceed the projector's max_frames={self.shape.max_frames}")
        x = self.input(frames) + self.position[:t]
        x = self.norm(self.encoder(x, src_key_padding_mask=~mask))
        return F.normalize(_masked_mean(x, mask), dim=-1)


class MeanPoolProjector(nn.Module):
    """CLIP_mp: the masked mean of the frame features, L2-normalised; nothing to train."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim

    @property
    def out_dim(self) -> int:
        return self.in_dim

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(_masked_mean(frames, mask), dim=-1)


class TextProjector(nn.Module):
    """``(B, text_in_dim)`` -> ``(B, dim)`` L2-normalised; ``None`` shape = identity."""

    def __init__(self, shape: ProjectorShape | None) -> None:
        super().__init__()
        self.linear = None if shape is None else nn.Linear(shape.text_in_dim, shape.dim)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return F.normalize(text if self.linear is None else self.linear(text), dim=-1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


@dataclass
class Projectors:
    """A visual and a text projector that map into the same space, and where they came from."""

    visual: nn.Module
    text: TextProjector
    shape: ProjectorShape | None  # None: the untrained fallback
    source: str  # checkpoint path, or "" for the fallback
    meta: dict[str, Any]

    @property
    def trained(self) -> bool:
        return self.shape is not None

    @property
    def dim(self) -> int:
        return int(self.visual.out_dim)

    @property
    def identity(self) -> str:
        """``mean-pool`` or ``projector:<file name>@<step>``: recorded with each collection."""
        if not self.trained:
            return "mean-pool"
        return f"projector:{os.path.basename(self.source)}@{self.meta.get('step', '?')}"

    def to(self, device: str) -> "Projectors":
        self.visual.to(device)
        self.text.to(device)
        return self

    def eval(self) -> "Projectors":
        self.visual.eval()
        self.text.eval()
        return self

    def project_texts(self, text_features: np.ndarray) -> np.ndarray:
        """``(N, text_in_dim)`` CLIP text features -> ``(N, dim)`` float32 query embeddings."""
        device = _device_of(self.text)
        with torch.inference_mode():
            x = torch.as_tensor(np.asarray(text_features, dtype=np.float32), device=device)
            return self.text(x).float().cpu().numpy()

    def embed_segments(self, features: np.ndarray, rows: SegmentRows, batch_size: int = 256) -> np.ndarray:
        """One video's feature rows ``(T, D)`` -> its segments' embeddings ``(len(rows), dim)``
        float32, segment ``i`` pooling rows ``[rows.starts[i], rows.stops[i])``.

        ``rows`` is :func:`spr.segments.segment_rows` of the video (its rate, duration and
        segment length), the one pooling rule of ingest, import, re-embedding and training.
        Shorter segments are padded and masked, so each embeds as it would alone."""
        feats = np.asarray(features, dtype=np.float32)
        starts = np.asarray(rows.starts, dtype=np.int64)
        stops = np.asarray(rows.stops, dtype=np.int64)
        n = len(starts)
        if n == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        if feats.ndim != 2 or not (0 <= starts.min() and stops.max() <= len(feats) and (stops > starts).all()):
            raise ValueError(f"segment rows [{starts.min()}, {stops.max()}) do not fit features of shape {feats.shape}")
        offsets = np.arange(int((stops - starts).max()), dtype=np.int64)
        device = _device_of(self.visual)
        outs = []
        with torch.inference_mode():
            for lo in range(0, n, batch_size):
                first, last = starts[lo : lo + batch_size, None], stops[lo : lo + batch_size, None]
                index = first + offsets  # (b, widest)
                mask = index < last
                frames = feats[np.where(mask, index, 0)] * mask[..., None]  # padding zeroed
                x, m = torch.from_numpy(frames).to(device), torch.from_numpy(mask).to(device)
                outs.append(self.visual(x, m).float().cpu().numpy())
        return np.concatenate(outs)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters(), torch.empty(0)).device


def untrained_projectors(in_dim: int) -> Projectors:
    """The CLIP_mp fallback: mean pooling for segments, identity for queries."""
    return Projectors(MeanPoolProjector(in_dim), TextProjector(None), None, "", {})


def build_projectors(shape: ProjectorShape | str) -> Projectors:
    """Freshly initialised trainable projectors of ``shape``: a :class:`ProjectorShape` or the
    name of a projector config (``projector-vit-l-14``; :func:`spr.models.registry.list_model_configs`)."""
    shape = resolve_shape(shape, "projector")
    return Projectors(VisualProjector(shape), TextProjector(shape), shape, "", {})


def save_projectors(path: str | os.PathLike[str], projectors: Projectors, **meta: Any) -> None:
    """Write both projectors and ``meta`` (clip model, step, ...) to ``path`` atomically."""
    if projectors.shape is None:
        raise ValueError("the mean-pool fallback has nothing to save")
    states = {"visual": projectors.visual.state_dict(), "text": projectors.text.state_dict()}
    save_checkpoint(path, PROJECTOR_CHECKPOINT, projectors.shape, states, {**projectors.meta, **meta})


# What a caller of load_projectors embeds with them: the fallback warning names only those.
_FALLBACK_USES = {
    "segments": "segments use CLIP mean pooling (the paper's CLIP_mp baseline)",
    "queries": "queries use the raw CLIP text feature",
}


def load_projectors(
    checkpoint: str,
    in_dim: int,
    device: str = "cpu",
    clip_model: str | None = None,
    uses: tuple[str, ...] = ("segments", "queries"),
) -> Projectors:
    """The projectors in ``checkpoint``, or the CLIP_mp fallback when it is empty.

    ``in_dim`` is the CLIP feature size the caller has; a checkpoint trained on another size
    (or, with ``clip_model``, on another CLIP model) is refused rather than silently misused.
    ``uses`` says what the caller embeds ("segments", "queries"): the fallback is logged as a
    warning naming only those, and not at all for ``()`` (precomputed query features, whose
    pass-through is the CLIP_mp baseline as asked for)."""
    if not checkpoint:
        unknown = set(uses) - set(_FALLBACK_USES)
        if unknown:
            raise ValueError(f"unknown projector uses {sorted(unknown)}; choose from {sorted(_FALLBACK_USES)}")
        if uses:
            log.warning(
                "no projector checkpoint (projector.checkpoint is empty): "
                + " and ".join(_FALLBACK_USES[u] for u in uses),
                extra={"in_dim": in_dim},
            )
        else:
            log.info("no projector checkpoint: precomputed features are used as they are", extra={"in_dim": in_dim})
        return untrained_projectors(in_dim).to(device).eval()
    saved = read_checkpoint(checkpoint, PROJECTOR_CHECKPOINT, in_dim, clip_model)
    projectors = build_projectors(saved.shape)
    saved.load_into({"visual": projectors.visual, "text": projectors.text})
    projectors.source = checkpoint
    projectors.meta = saved.meta
    return projectors.to(device).eval()
