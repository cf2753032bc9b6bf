"""The feature projectors of SPR section 3.1: segments and queries into one embedding space.

* :class:`VisualProjector`: a segment's per-second CLIP features ``(T, D_in)`` -> linear to
  ``dim`` -> learnable positional embedding -> Transformer (6 layers in the paper) -> masked
  mean pooling -> L2-normalised ``(dim,)`` (768 in the paper).
* :class:`TextProjector`: one linear layer on the CLIP text feature, L2-normalised.

Without a trained checkpoint, :class:`MeanPoolProjector` averages the CLIP frame features
(the paper's CLIP_mp baseline) and queries pass through unchanged; :func:`load_projectors`
logs that fallback. Checkpoints are what ``spr train projector`` writes: one ``torch.save``
dict holding both projectors, their shapes and the CLIP model they were trained on.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "spr-projectors/1"


@dataclass(frozen=True)
class ProjectorShape:
    """Sizes of a projector pair. ``in_dim``/``text_in_dim``: CLIP image/text feature sizes;
    ``max_frames``: longest segment in frames (positional table size)."""

    in_dim: int
    text_in_dim: int
    dim: int = 768
    layers: int = 6
    heads: int = 8
    max_frames: int = 32
    dropout: float = 0.1


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

    def embed_segments(
        self, frame_features: np.ndarray, rate: float, segment_length_s: float, batch_size: int = 256
    ) -> np.ndarray:
        """One video's per-second features ``(T, D)`` at ``rate`` features/s -> its
        fixed-length segments' embeddings ``(ceil(T / (rate * length)), dim)`` float32.

        Segment ``i`` holds rows ``[i * f, (i + 1) * f)`` with ``f = rate * segment_length_s``
        rounded up (the last segment may hold fewer)."""
        feats = np.asarray(frame_features, dtype=np.float32)
        per_segment = max(1, math.ceil(rate * segment_length_s - 1e-9))
        n = math.ceil(len(feats) / per_segment)
        padded = np.zeros((n * per_segment, feats.shape[1]), dtype=np.float32)
        padded[: len(feats)] = feats
        mask = np.zeros(n * per_segment, dtype=bool)
        mask[: len(feats)] = True
        device = _device_of(self.visual)
        outs = []
        with torch.inference_mode():
            for lo in range(0, n, batch_size):
                hi = min(n, lo + batch_size)
                x = torch.from_numpy(padded[lo * per_segment : hi * per_segment]).view(hi - lo, per_segment, -1)
                m = torch.from_numpy(mask[lo * per_segment : hi * per_segment]).view(hi - lo, per_segment)
                outs.append(self.visual(x.to(device), m.to(device)).float().cpu().numpy())
        return np.concatenate(outs) if outs else np.empty((0, self.dim), dtype=np.float32)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters(), torch.empty(0)).device


def untrained_projectors(in_dim: int) -> Projectors:
    """The CLIP_mp fallback: mean pooling for segments, identity for queries."""
    return Projectors(MeanPoolProjector(in_dim), TextProjector(None), None, "", {})


def build_projectors(shape: ProjectorShape) -> Projectors:
    """Freshly initialised trainable projectors of ``shape``."""
    return Projectors(VisualProjector(shape), TextProjector(shape), shape, "", {})


def save_projectors(path: str | os.PathLike[str], projectors: Projectors, **meta: Any) -> None:
    """Write both projectors and ``meta`` (clip model, step, ...) to ``path`` atomically."""
    if projectors.shape is None:
        raise ValueError("the mean-pool fallback has nothing to save")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "shape": asdict(projectors.shape),
        "visual": projectors.visual.state_dict(),
        "text": projectors.text.state_dict(),
        "meta": {**projectors.meta, **meta},
    }
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_projectors(checkpoint: str, in_dim: int, device: str = "cpu", clip_model: str | None = None) -> Projectors:
    """The projectors in ``checkpoint``, or the CLIP_mp fallback (logged) when it is empty.

    ``in_dim`` is the CLIP feature size the caller has; a checkpoint trained on another size
    (or, with ``clip_model``, on another CLIP model) is refused rather than silently misused."""
    if not checkpoint:
        log.warning(
            "no projector checkpoint (projector.checkpoint is empty): segments use CLIP mean pooling "
            "(the paper's CLIP_mp baseline) and queries the raw CLIP text feature",
            extra={"in_dim": in_dim},
        )
        return untrained_projectors(in_dim).to(device).eval()
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"projector checkpoint {checkpoint} does not exist; train one with `spr train projector`")
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{checkpoint} is not an SPR projector checkpoint (format {CHECKPOINT_FORMAT})")
    shape = ProjectorShape(**payload["shape"])
    meta = dict(payload.get("meta", {}))
    if shape.in_dim != in_dim:
        raise ValueError(
            f"projector checkpoint {checkpoint} expects {shape.in_dim}-d CLIP features, the frames have {in_dim}-d; "
            f"use the CLIP model it was trained on ({meta.get('clip_model', 'unknown')})"
        )
    if clip_model and meta.get("clip_model") and meta["clip_model"] != clip_model:
        raise ValueError(
            f"projector checkpoint {checkpoint} was trained on {meta['clip_model']} features, not {clip_model}"
        )
    projectors = build_projectors(shape)
    projectors.visual.load_state_dict(payload["visual"])
    projectors.text.load_state_dict(payload["text"])
    projectors.source = checkpoint
    projectors.meta = meta
    return projectors.to(device).eval()
