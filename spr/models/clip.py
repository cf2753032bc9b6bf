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

import functools
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..compat.torchvision_ops import ensure_torchvision_importable
from ..cpu import NATIVE_BF16_FLAGS, cpu_flags, native_bf16  # re-exported: imported from here elsewhere
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


def cpu_has_native_bf16(flags: Iterable[str]) -> bool:
    """Whether a CPU with these ``/proc/cpuinfo`` flags has native bf16 dot products (the
    hardware only: :func:`spr.cpu.native_bf16` also honours ISA caps on torch)."""
    return not NATIVE_BF16_FLAGS.isdisjoint(flags)


def _is_cpu(device: str) -> bool:
    return device.split(":", 1)[0] == "cpu"


def resolve_precision(
    precision: str, device: str, flags: Iterable[str] | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """The precision to run at on ``device``: ``"auto"`` -> fp16 on a GPU; on a CPU bf16 where
    torch gets native bf16 dot products, fp32 otherwise. Native means the CPU has them
    (``flags``: its ``/proc/cpuinfo`` flags, this machine's when None) and no ISA cap in
    ``environ`` (``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY`` below them; this process's
    environment when None) takes them from torch: a capped process runs bf16 emulated, as an
    AVX2-only machine does. fp16 on a CPU is refused (ValueError): torch has no fast half
    kernels there."""
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
    if not _is_cpu(device):
        if precision == "auto":
            return "fp16" if device.startswith("cuda") else "fp32"
        return precision
    native = native_bf16(flags, environ)
    if precision == "auto":
        return "bf16" if native else "fp32"
    if precision == "fp16":
        raise ValueError(
            "precision fp16 is refused on a CPU (torch has no fast half kernels there); use fp32, "
            "bf16 where the CPU has AVX512_BF16 or AMX, or auto to pick between them"
        )
    if precision == "bf16" and not native:
        log.warning(
            "precision bf16 on a CPU without AVX512_BF16 or AMX (or with torch capped below them by "
            "ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY): torch emulates it, expect it to be several "
            "times slower than fp32 (auto picks fp32 here)"
        )
    return precision


TEXT_PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")

# What ``text_precision="auto"`` picks on a CPU when ``precision`` is auto too, decided by
# bench/bench_text_tower.py (docs/benchmarks.md, "Text tower precision"): int8 (dynamic
# quantization, fbgemm) reads a quarter of fp32's weight bytes and was the fastest text tower on
# both an AVX512_BF16 CPU and the same CPU capped to AVX2, within the tolerance of
# tests/test_text_precision.py.
AUTO_CPU_TEXT_PRECISION = "int8"


def int8_available() -> bool:
    """Whether torch has an x86 int8 engine (fbgemm) for dynamically quantized linear layers."""
    import torch

    return "fbgemm" in torch.backends.quantized.supported_engines


def resolve_text_precision(
    text_precision: str,
    precision: str,
    device: str,
    flags: Iterable[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The precision of the text tower (frames keep :func:`resolve_precision` of
    ``precision``). ``"auto"``: on a CPU with ``precision`` auto, :data:`AUTO_CPU_TEXT_PRECISION`
    where torch has fbgemm; otherwise whatever ``precision`` resolves to. ``"int8"`` (torch
    dynamic quantization of the tower's linear layers) runs on a CPU only: ValueError on a GPU.
    The others resolve as :func:`resolve_precision` does."""
    if text_precision not in TEXT_PRECISIONS:
        raise ValueError(f"text precision must be {', '.join(TEXT_PRECISIONS)}, got {text_precision!r}")
    if text_precision == "int8":
        if not _is_cpu(device):
            raise ValueError(
                f"text precision int8 runs on a CPU only (torch dynamic quantization), not on {device!r}; "
                f"use auto, fp16 or fp32 there"
            )
        return "int8"
    if text_precision == "auto":
        if _is_cpu(device) and precision == "auto" and AUTO_CPU_TEXT_PRECISION == "int8" and int8_available():
            return "int8"
        return resolve_precision(precision, device, flags, environ)
    return resolve_precision(text_precision, device, flags, environ)


@functools.lru_cache(maxsize=None)
def _self_attention_class() -> Any:
    """An ``nn.Module`` class standing in for a batch-first ``nn.MultiheadAttention`` that is only
    ever called as self-attention: its packed ``in_proj_weight`` (a bare Parameter) becomes an
    ``nn.Linear``, so dynamic quantization, which quantizes ``nn.Linear`` modules only, reaches
    the q/k/v projection (a third of a block's weights) and the output projection (whose
    ``NonDynamicallyQuantizableLinear`` type it skips) too."""
    import torch
    import torch.nn.functional as F

    class SelfAttention(torch.nn.Module):
        def __init__(self, mha: Any):
            super().__init__()
            width = mha.embed_dim
            self.num_heads = mha.num_heads
            self.in_proj = torch.nn.Linear(width, 3 * width, bias=mha.in_proj_bias is not None)
            self.in_proj.weight = torch.nn.Parameter(mha.in_proj_weight.detach().clone())
            if mha.in_proj_bias is not None:
                self.in_proj.bias = torch.nn.Parameter(mha.in_proj_bias.detach().clone())
            self.out_proj = torch.nn.Linear(width, width, bias=mha.out_proj.bias is not None)
            self.out_proj.weight = torch.nn.Parameter(mha.out_proj.weight.detach().clone())
            if mha.out_proj.bias is not None:
                self.out_proj.bias = torch.nn.Parameter(mha.out_proj.bias.detach().clone())

        def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None):
            """``(B, L, width)`` -> (``(B, L, width)``, None), as ``nn.MultiheadAttention``
            returns with ``need_weights=False``; ``attn_mask`` ``(L, L)`` additive or boolean."""
            if (key is not None and key is not query) or (value is not None and value is not query):
                raise ValueError("this attention was converted for self-attention only (key and value must be the query)")
            batch, length, width = query.shape
            heads = self.num_heads
            qkv = self.in_proj(query).view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
            if attn_mask is not None and attn_mask.dtype == torch.bool:
                attn_mask = ~attn_mask  # nn.MultiheadAttention: True = masked; SDPA: True = attend
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)  # (B, heads, L, hd)
            return self.out_proj(out.transpose(1, 2).reshape(batch, length, width)), None

    return SelfAttention


def _convertible_attention(module: Any) -> bool:
    import torch

    return (
        isinstance(module, torch.nn.MultiheadAttention)
        and module.batch_first
        and module._qkv_same_embed_dim
        and module.bias_k is None
        and not module.add_zero_attn
        and module.dropout == 0.0
    )


def _split_self_attention(root: Any) -> int:
    """Replace every convertible ``nn.MultiheadAttention`` under ``root`` (the text tower's
    blocks call theirs as self-attention only) with the :func:`_self_attention_class` module;
    returns how many were replaced."""
    cls = _self_attention_class()
    replaced = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if _convertible_attention(child):
                setattr(parent, name, cls(child))
                replaced += 1
    return replaced


def _text_modules(model: Any) -> list[Any]:
    """The modules of ``model``'s text tower: ``CustomTextCLIP.text``, or the parts ``CLIP``
    keeps on itself (its ``text_projection`` and ``positional_embedding`` are bare Parameters)."""
    text = getattr(model, "text", None)
    if text is not None:
        return [text]
    return [model.transformer, model.token_embedding, model.ln_final]


def _use_fp32_layernorm(root: Any) -> None:
    """Make open_clip's ``LayerNorm`` modules under ``root`` its ``LayerNormFp32`` (same
    parameters), as open_clip builds a tower meant for fp16/bf16: it normalises in fp32."""
    from open_clip.transformer import LayerNorm, LayerNormFp32

    for module in root.modules():
        if type(module) is LayerNorm:
            module.__class__ = LayerNormFp32


def _visual_to_lp(model: Any, dtype: Any) -> None:
    """Frames tower of an fp32-built ``model`` -> what open_clip's ``create_model`` at
    ``precision`` fp16/bf16 makes of it (the same values: fp32 weights rounded once)."""
    import torch
    from open_clip.model import convert_weights_to_lp
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import LayerNormFp32

    visual = model.visual
    if isinstance(visual, TimmModel):
        visual.to(dtype=dtype)  # open_clip's own recipe for timm towers
        for module in visual.modules():
            if isinstance(module, LayerNormFp32):
                module.to(torch.float32)
        return
    convert_weights_to_lp(visual, dtype=dtype)
    _use_fp32_layernorm(visual)


def _text_to_lp(model: Any, dtype: Any) -> None:
    """Text tower of an fp32-built ``model`` -> open_clip's fp16/bf16 recipe (linear and
    attention weights and the projection in ``dtype``, normalisation in fp32)."""
    import torch
    from open_clip.model import convert_weights_to_lp

    for module in _text_modules(model):
        convert_weights_to_lp(module, dtype=dtype)
        _use_fp32_layernorm(module)
    projection = getattr(model, "text_projection", None) if getattr(model, "text", None) is None else None
    if isinstance(projection, torch.nn.Parameter):
        projection.data = projection.data.to(dtype)


def _text_to_int8(model: Any) -> None:
    """Text tower of an fp32 ``model`` -> int8 weights: torch dynamic quantization of its
    ``nn.Linear`` layers (attention projections split out first, see
    :func:`_self_attention_class`), weights per output channel, activations quantized per call.
    Embeddings, normalisation, and ``CLIP``'s bare-Parameter projection (2% of the weights) stay
    fp32."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    for module in _text_modules(model):
        _split_self_attention(module)
        with warnings.catch_warnings():
            # torch.ao.quantization warns of its deprecation on every call (torchao is its
            # successor, not a dependency here); eager dynamic quantization still runs in 2.13.
            warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
            warnings.filterwarnings("ignore", message=r"torch\.quantize_per_(tensor|channel)")
            quantize_dynamic(module, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    # open_clip takes a tower's input dtype from its first block's ``mlp.c_fc.weight``, which a
    # quantized layer has as a method; its bitsandbytes hook ``int8_original_dtype`` answers first.
    for module in _text_modules(model):
        for block in getattr(getattr(module, "transformer", module), "resblocks", []):
            block.mlp.c_fc.int8_original_dtype = torch.float32


@dataclass
class _CausalTextTower:
    """An open_clip text tower whose end-of-text output depends only on the tokens up to it: a
    causal attention mask and pooling at the EOT position. ``owner`` is the module holding the
    tower's parts (``CLIP`` itself, or ``CustomTextCLIP.text``); they are read from it on every
    call, so a model moved to another device after loading is followed."""

    owner: Any
    pool_type: str  # "argmax" (EOT has the largest id) or "eos" (the tokenizer's eos id)
    eos_id: int | None

    @classmethod
    def of(cls, model: Any) -> "_CausalTextTower | None":
        """The tower of ``model`` (open_clip ``CLIP``, or ``CustomTextCLIP`` with its own
        ``TextTransformer``), or None where the shortcut would change the feature: no causal
        mask (bidirectional towers such as SigLIP's), pooling that is not at EOT, an appended
        class token (CoCa), a padding mask or a Hugging Face tower."""
        text = getattr(model, "text", None)
        if text is None:
            owner, pool_type, eos_id = model, getattr(model, "text_pool_type", None), getattr(model, "text_eos_id", None)
        else:
            owner, pool_type, eos_id = text, getattr(text, "pool_type", None), getattr(text, "eos_id", None)
            if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
                return None
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "attn_mask")
        if not all(hasattr(owner, name) for name in needed) or owner.attn_mask is None:
            return None
        if pool_type not in ("argmax", "eos") or (pool_type == "eos" and eos_id is None):
            return None
        return cls(owner, pool_type, eos_id)

    @property
    def transformer(self) -> Any:
        return self.owner.transformer

    def ends(self, tokens: Any) -> Any:
        """``(B, C)`` token ids -> ``(B,)`` EOT positions, found as open_clip's pooling finds them."""
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        return (tokens == self.eos_id).int().argmax(dim=-1)

    def encode(self, tokens: Any, ends: Any) -> Any:
        """``(B, L)`` token ids (each row's EOT at ``ends`` < L) -> ``(B, dim)`` unnormalised
        features: open_clip's ``encode_text`` over L positions instead of the context length.
        The causal mask keeps every position from seeing later ones, so what follows a row's EOT
        (padding, another row's longer query) never reaches its EOT output."""
        import torch

        tower, length = self.owner, tokens.shape[1]
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(tokens).to(cast_dtype)  # (B, L, width)
        x = x + tower.positional_embedding[:length].to(cast_dtype)
        x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
        x = tower.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), ends]  # (B, width)
        projection = tower.text_projection
        if projection is None:
            return x
        if isinstance(projection, torch.nn.Linear):
            return projection(x)
        return x @ projection


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
    # The text tower's precision (fp32, fp16, bf16 or int8; empty: ``precision``). Frames always
    # run at ``precision``.
    text_precision: str = ""
    # The causal text tower, found on first use (None: this model needs the full-context pass).
    _tower: Any = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.text_precision:
            self.text_precision = self.precision

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
        return _DTYPES[self.precision]

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
                # Normalised in fp32: a bf16/fp16 tower's own normalisation leaves norms
                # 1 +- 3e-3, which shows in cosine scores and in tests of unit vectors.
                feats = self.model.encode_image(pixels)
                outs.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(outs)

    @property
    def text_tower(self) -> _CausalTextTower | None:
        """The text tower's modules when it can run on a query's real tokens only (causal, EOT
        pooling), else None."""
        if self._tower is False:
            self._tower = _CausalTextTower.of(self.model)
        return self._tower

    def encode_texts(self, texts: Sequence[str], batch_size: int = 0, full_context: bool = False) -> np.ndarray:
        """Queries -> L2-normalised text features ``(N, dim)`` float32 (the [EOS] token of the
        last layer, projected: open_clip's ``encode_text``).

        CLIP's text Transformer is causal, so the EOT output depends only on the tokens up to
        it: each forward pass runs the queries' real tokens only, padded to the longest in the
        pass, not the whole context (77 positions for ViT-L-14). Queries are sorted by token
        count and passed ``batch_size`` at a time (0: all at once), so short ones are not padded
        to a long one's length. ``full_context`` runs open_clip's own full-length pass (the
        reference the shortcut is tested against); models whose tower is not causal or does not
        pool at EOT always take it."""
        import torch

        if len(texts) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.device)  # (N, context_length)
            tower = None if full_context else self.text_tower
            if tower is None:
                step = batch_size or len(tokens)
                feats = torch.cat([self.model.encode_text(tokens[i : i + step]) for i in range(0, len(tokens), step)])
                return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
            ends = tower.ends(tokens)  # (N,)
            order = torch.argsort(ends, stable=True)
            out = torch.empty((len(tokens), self.dim), dtype=torch.float32, device=tokens.device)
            step = batch_size or len(tokens)
            for lo in range(0, len(order), step):
                rows = order[lo : lo + step]
                row_ends = ends[rows]
                length = int(row_ends.max()) + 1
                feats = tower.encode(tokens[rows, :length], row_ends)
                out[rows] = torch.nn.functional.normalize(feats.float(), dim=-1)
        return out.cpu().numpy()


def load_clip(
    model_name: str = "ViT-L-14",
    pretrained: str = "",
    device: str = "auto",
    precision: str = "auto",
    text_precision: str | None = None,
) -> ClipEncoder:
    """Build ``model_name`` with weights from an open_clip tag or a checkpoint file (empty:
    random, logged). Frames run at ``precision``, the text tower at ``text_precision``
    (:func:`resolve_text_precision`; None: ``precision``'s choice). Raises RuntimeError with
    what to do when the weights cannot be had."""
    open_clip = _open_clip()
    device = resolve_device(device)
    asked_precision = precision
    precision = resolve_precision(precision, device)
    text_precision = precision if text_precision is None else resolve_text_precision(text_precision, asked_precision, device)
    # One precision: open_clip builds it as it always has. Two: build in fp32 and convert each
    # tower from there, so neither is rounded twice (int8 is quantized from the fp32 weights).
    build_precision = precision if text_precision == precision else "fp32"
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
            model = open_clip.create_model(
                model_name, pretrained=pretrained or None, precision=build_precision, device=device
            )
    except Exception as exc:  # download or checkpoint errors come in many types
        where = "checkpoint file" if pretrained and os.path.isfile(pretrained) else "pretrained tag"
        raise RuntimeError(
            f"could not load {model_name} weights from {where} {pretrained!r}: {exc}. Without network "
            f"access, download the weights elsewhere and set clip.pretrained to the local file"
        ) from exc
    model.eval()
    if build_precision != precision:
        _visual_to_lp(model, _DTYPES[precision])  # precision is fp16/bf16 here: it differs from fp32
    if build_precision != text_precision:
        if text_precision == "int8":
            _text_to_int8(model)
        else:
            _text_to_lp(model, _DTYPES[text_precision])
    if text_precision != precision:
        log.info("CLIP text tower runs at %s, frames at %s", text_precision, precision, extra={"model": model_name})
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
        text_precision=text_precision,
        image_size=int(image_size),
        mean=mean,
        std=std,
        dim=int(cfg["embed_dim"]),
    )


def load_clip_from_config(config: Any) -> ClipEncoder:
    """:func:`load_clip` with a :class:`spr.config.ClipConfig`."""
    return load_clip(config.model, config.pretrained, config.device, config.precision, config.text_precision)


class _Dtypes:
    """``precision name -> torch dtype``, looked up lazily (torch is imported on first use)."""

    def __getitem__(self, precision: str) -> Any:
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


_DTYPES = _Dtypes()


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]
