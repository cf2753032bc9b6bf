"""The query encoder: text -> CLIP text feature -> projected, L2-normalised query embedding.

The search engine (:mod:`spr.engine`) encodes one query per request with it; ``spr eval``
encodes a whole query file in batches (:meth:`QueryEncoder.encode_many`). The CLIP feature is
what the refiner reads, the projected embedding what the index is searched with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from spr.limits import QUERY_EMBED_BATCH
from spr.stores import l2_normalize

if TYPE_CHECKING:
    from spr.config import Config

__all__ = ["QueryEncoder"]


@dataclass
class QueryEncoder:
    """The CLIP text tower and the text projector, loaded once per process.

    ``clip_dim`` is the CLIP text feature size (what the refiner gets), ``dim`` the projected
    query size (what the index holds)."""

    clip: Any  # spr.models.clip.ClipEncoder
    projectors: Any  # spr.models.projector.Projectors

    @classmethod
    def from_config(cls, config: "Config") -> "QueryEncoder":
        """CLIP from ``config.clip``, the projector from ``config.projector.checkpoint`` (empty:
        the untrained pass-through projector)."""
        from spr.models.clip import load_clip
        from spr.models.projector import load_projectors

        clip = load_clip(config.clip.model, config.clip.pretrained, config.clip.device, config.clip.precision)
        projectors = load_projectors(
            config.projector.checkpoint, clip.dim, device=clip.device, clip_model=clip.model_name, uses=("queries",)
        )
        return cls(clip, projectors)

    @property
    def clip_dim(self) -> int:
        return int(self.clip.dim)

    @property
    def dim(self) -> int:
        return int(self.projectors.dim)

    @property
    def random_weights(self) -> bool:
        """True when CLIP has random weights or the projector is the untrained fallback."""
        return bool(self.clip.random_weights or not self.projectors.trained)

    @property
    def identity(self) -> str:
        """``<clip identity> + <projector identity>``: which weights encoded the queries."""
        return f"{self.clip.identity} + {self.projectors.identity}"

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """``text`` -> (CLIP text feature ``(clip_dim,)``, L2-normalised query embedding ``(dim,)``)."""
        feature = self.clip.encode_texts([text])  # (1, clip_dim)
        embedding = l2_normalize(self.projectors.project_texts(feature))  # (1, dim)
        return feature[0].astype(np.float32), embedding[0]

    def encode_many(self, texts: list[str], batch: int = QUERY_EMBED_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """``N`` texts -> (CLIP text features ``(N, clip_dim)`` float32, L2-normalised query
        embeddings ``(N, dim)``), ``batch`` texts per CLIP forward pass."""
        features = np.concatenate([self.clip.encode_texts(texts[i : i + batch]) for i in range(0, len(texts), batch)])
        projected = np.concatenate(
            [self.projectors.project_texts(features[i : i + 1024]) for i in range(0, len(features), 1024)]
        )
        return features.astype(np.float32), l2_normalize(projected)
