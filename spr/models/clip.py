"""The CLIP towers (open_clip): frames -> per-second image features, queries -> text features.

Any open_clip model name works, with an open_clip pretrained tag (``openai``,
``laion2b_s32b_b82k``: downloaded where a network exists) or a local checkpoint file. An
empty ``pretrained`` means random weights; :attr:`ClipEncoder.random_weights` says so and the
load is logged as a warning, so nobody mistakes such results for real ones.

The package ships its own small architectures as JSON configs (``configs/*.json``,
registered with ``open_clip.add_model_config`` on first use): ``spr-tiny`` runs the whole
pipeline in tests and demos on a laptop CPU. The same folder holds the projector and refiner
configs of :mod:`spr.models.registry`; open_clip skips them (they lack its architecture keys).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..compat.torchvision_ops import ensure_torchvision_importable
from .registry import CONFIG_DIR

log = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0
_registered = False


def _open_clip() -> Any:
    global _registered
    ensure_torchvision_importable()
    import open_clip

    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True
    return open_clip


def register_model_config(path: str | os.PathLike[str]) -> None:
    """Make the open_clip architecture JSON at ``path`` (a file or a folder) loadable by name."""
    _open_clip().add_model_config(Path(path))


def clip_feature_dim(model_name: str) -> int:
    """The joint embedding size of open_clip model ``model_name`` from its architecture config,
    without building it."""
    cfg = _open_clip().get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {model_name!r} (clip.model); cannot tell its feature size")
    return int(cfg["embed_dim"])


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but torch sees no GPU; set device to 'auto' or 'cpu'")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``"auto"`` -> fp16 on a GPU, fp32 on a CPU (half matmuls are slow or missing there)."""
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
    return precision


@dataclass
class ClipEncoder:
    """A loaded open_clip model in inference mode. ``dim`` is the joint embedding size."""

    model: Any
    tokenizer: Any
    model_name: str
    pretrained: str
    device: str
    precision: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dim: int

    @property
    def random_weights(self) -> bool:
        return not self.pretrained

    @property
    def identity(self) -> str:
        """What produced these features, e.g. ``ViT-L-14/openai``, ``spr-tiny/random`` or
        ``ViT-B-32/file:<sha256[:12]>``: features of different identities never mix."""
        if not self.pretrained:
            return f"{self.model_name}/random"
        if os.path.isfile(self.pretrained):
            return f"{self.model_name}/file:{_file_digest(self.pretrained)}"
        return f"{self.model_name}/{self.pretrained}"

    @property
    def dtype(self) -> Any:
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]

    def preprocess(self, frames: Sequence[np.ndarray]) -> Any:
        """RGB uint8 frames ``(H, W, 3)`` of any sizes -> normalised ``(N, 3, S, S)`` tensor on
        the model's device: shorter side resized to S (bicubic, antialiased), centre crop, as
        open_clip's own transform does, but batched in torch instead of PIL.

        Frames already ``S x S`` (the ingest decoder's output) travel to the device as uint8 and
        are normalised there: a quarter of the bytes, and no per-frame work on the host."""
        import torch
        import torch.nn.functional as F

        size = self.image_size
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        if all(f.shape[:2] == (size, size) for f in frames):
            batch = torch.from_numpy(np.stack(frames)).to(self.device, non_blocking=True)
            pixels = batch.permute(0, 3, 1, 2).float().div_(255.0)
            return ((pixels - mean) / std).to(self.dtype)
        out = torch.empty((len(frames), 3, size, size), dtype=torch.float32)
        for i, frame in enumerate(frames):
            img = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().unsqueeze(0) / 255.0
            h, w = img.shape[-2:]
            scale = size / min(h, w)
            nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
            img = F.interpolate(img, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
            top, left = (nh - size) // 2, (nw - size) // 2
            out[i] = img[0, :, top : top + size, left : left + size].clamp_(0, 1)
        return ((out.to(self.device) - mean) / std).to(self.dtype)

    def encode_frames(self, frames: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """RGB uint8 frames -> L2-normalised image features ``(N, dim)`` float32."""
        import torch

        if len(frames) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        outs = []
        with torch.inference_mode():
            for lo in range(0, len(frames), batch_size):
                pixels = self.preprocess(frames[lo : lo + batch_size])
                feats = self.model.encode_image(pixels, normalize=True)
                outs.append(feats.float().cpu().numpy())
        return np.concatenate(outs)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Queries -> L2-normalised text features ``(N, dim)`` float32 (the [EOS] token of the
        last layer, projected: open_clip's ``encode_text``)."""
        import torch

        if len(texts) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.device)
            feats = self.model.encode_text(tokens, normalize=True)
        return feats.float().cpu().numpy()


def load_clip(
    model_name: str = "ViT-L-14",
    pretrained: str = "",
    device: str = "auto",
    precision: str = "auto",
) -> ClipEncoder:
    """Build ``model_name`` with weights from an open_clip tag or a checkpoint file (empty:
    random, logged). Raises RuntimeError with what to do when the weights cannot be had."""
    open_clip = _open_clip()
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model {model_name!r}; known: a name from open_clip.list_models() "
            f"(e.g. ViT-L-14, ViT-B-32) or one registered with register_model_config"
        )
    if pretrained and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise ValueError(
                f"{pretrained!r} is neither a checkpoint file nor a pretrained tag of {model_name} "
                f"(tags: {', '.join(tags) or 'none'})"
            )
    import torch

    try:
        # Random weights come from a fixed seed: an ingest worker and a search service must
        # build the same random model, or text and frames land in unrelated spaces.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = open_clip.create_model(model_name, pretrained=pretrained or None, precision=precision, device=device)
    except Exception as exc:  # download or checkpoint errors come in many types
        where = "checkpoint file" if pretrained and os.path.isfile(pretrained) else "pretrained tag"
        raise RuntimeError(
            f"could not load {model_name} weights from {where} {pretrained!r}: {exc}. Without network "
            f"access, download the weights elsewhere and set clip.pretrained to the local file"
        ) from exc
    model.eval()
    if not pretrained:
        log.warning(
            "CLIP weights are RANDOM (clip.pretrained is empty): features and search results are meaningless",
            extra={"model": model_name},
        )
    cfg = open_clip.get_model_config(model_name)
    image_size = cfg["vision_cfg"]["image_size"]
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else int(image_size)
    visual = model.visual
    mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    return ClipEncoder(
        model=model,
        tokenizer=open_clip.get_tokenizer(model_name),
        model_name=model_name,
        pretrained=pretrained,
        device=device,
        precision=precision,
        image_size=int(image_size),
        mean=mean,
        std=std,
        dim=int(cfg["embed_dim"]),
    )


def load_clip_from_config(config: Any) -> ClipEncoder:
    """:func:`load_clip` with a :class:`spr.config.ClipConfig`."""
    return load_clip(config.model, config.pretrained, config.device, config.precision)


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]
