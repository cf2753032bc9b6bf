"""One checkpoint format for every trained model of the package (projectors, refiner).

A checkpoint is one ``torch.save`` dict, written atomically (a temporary file, then a rename)::

    {"format": "<kind format>", "shape": asdict(shape), <state key>: state_dict, ..., "meta": {...}}

Projectors store ``visual`` and ``text`` state dicts (format ``spr-projectors/1``), the refiner
one ``state`` (``spr-refiner/1``); ``meta`` holds the CLIP model, the step and whatever the
trainer adds. Loading uses ``weights_only=True`` (no code runs from a checkpoint) and refuses,
with what to do, a missing file, a file of another format or kind, and a model trained on
features of another size (or, when the caller says, of another CLIP model).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .registry import ProjectorShape, RefinerShape, Shape


@dataclass(frozen=True)
class CheckpointKind:
    """What distinguishes one kind's checkpoints: its ``format`` string, shape type, state dict
    keys, what its ``in_dim`` measures (for messages) and how to get a checkpoint."""

    name: str
    format: str
    shape_type: type
    state_keys: tuple[str, ...]
    features: str
    missing_hint: str


PROJECTOR_CHECKPOINT = CheckpointKind(
    "projector", "spr-projectors/1", ProjectorShape, ("visual", "text"), "CLIP features",
    "train one with `spr train projector`",
)
REFINER_CHECKPOINT = CheckpointKind(
    "refiner", "spr-refiner/1", RefinerShape, ("state",), "CLIP frame features",
    "check refiner.checkpoint, or train one with `spr train refiner`",
)
CHECKPOINT_KINDS = {kind.format: kind for kind in (PROJECTOR_CHECKPOINT, REFINER_CHECKPOINT)}


@dataclass
class Checkpoint:
    """A checkpoint read and checked by :func:`read_checkpoint`; :meth:`load_into` puts its
    weights into modules built from ``shape``."""

    kind: CheckpointKind
    path: str
    shape: Shape
    states: dict[str, Mapping[str, torch.Tensor]]
    meta: dict[str, Any] = field(default_factory=dict)

    def load_into(self, modules: Mapping[str, nn.Module]) -> None:
        """Load each state dict into the module of the same key (``visual``, ``text``, ``state``)."""
        for key, module in modules.items():
            try:
                module.load_state_dict(self.states[key])
            except RuntimeError as exc:
                raise ValueError(f"{self.kind.name} checkpoint {self.path}: its {key!r} weights do not fit its shape: {exc}") from None


def save_checkpoint(
    path: str | os.PathLike[str],
    kind: CheckpointKind,
    shape: Shape,
    states: Mapping[str, Mapping[str, torch.Tensor]],
    meta: Mapping[str, Any],
) -> None:
    """Write ``states`` (one state dict per key of ``kind.state_keys``), ``shape`` and ``meta``
    to ``path`` atomically: a reader never sees half a file."""
    if not isinstance(shape, kind.shape_type):
        raise TypeError(f"a {kind.name} checkpoint holds a {kind.shape_type.__name__}, got {type(shape).__name__}")
    if set(states) != set(kind.state_keys):
        raise ValueError(f"a {kind.name} checkpoint holds state dicts {list(kind.state_keys)}, got {sorted(states)}")
    payload = {"format": kind.format, "shape": asdict(shape), **states, "meta": dict(meta)}
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str, kind: CheckpointKind, in_dim: int, clip_model: str | None = None) -> Checkpoint:
    """The ``kind`` checkpoint at ``path``, checked against the caller's features: ``in_dim``
    (their size) must be the checkpoint's, and with ``clip_model`` the CLIP model in its meta
    (when recorded) must be that one. Raises FileNotFoundError or ValueError saying what to do."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind.name} checkpoint {path} does not exist; {kind.missing_hint}")
    payload = _load_payload(path, kind)
    shape = _shape_of(payload, path, kind)
    meta = dict(payload.get("meta") or {})
    if shape.in_dim != in_dim:
        raise ValueError(
            f"{kind.name} checkpoint {path} expects {shape.in_dim}-d {kind.features}, the frames have {in_dim}-d; "
            f"use the CLIP model it was trained on ({meta.get('clip_model', 'unknown')})"
        )
    if clip_model and meta.get("clip_model") and meta["clip_model"] != clip_model:
        raise ValueError(f"{kind.name} checkpoint {path} was trained on {meta['clip_model']} features, not {clip_model}")
    missing = [key for key in kind.state_keys if not isinstance(payload.get(key), Mapping)]
    if missing:
        raise ValueError(f"{kind.name} checkpoint {path} lacks its {', '.join(missing)} weights; it is damaged, write it again")
    return Checkpoint(kind, path, shape, {key: payload[key] for key in kind.state_keys}, meta)


def is_checkpoint(path: str | os.PathLike[str], kind: CheckpointKind) -> bool:
    """Whether ``path`` is a readable checkpoint of ``kind`` (nothing else is checked)."""
    try:
        payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception:  # not a file, not a torch file, not loadable without code: all "no"
        return False
    return isinstance(payload, dict) and payload.get("format") == kind.format


def _load_payload(path: str, kind: CheckpointKind) -> dict[str, Any]:
    expected = f"not an SPR {kind.name} checkpoint (format {kind.format})"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling and zip errors come in many types
        raise ValueError(f"{path} is {expected}: torch.load failed: {exc}") from None
    found = payload.get("format") if isinstance(payload, dict) else None
    if found == kind.format:
        return payload
    other = CHECKPOINT_KINDS.get(found) if isinstance(found, str) else None
    if other is not None:
        raise ValueError(f"{path} is {expected}: it is an SPR {other.name} checkpoint ({other.format})")
    raise ValueError(f"{path} is {expected}")


def _shape_of(payload: dict[str, Any], path: str, kind: CheckpointKind) -> Shape:
    raw = payload.get("shape")
    if not isinstance(raw, dict):
        raise ValueError(f"{kind.name} checkpoint {path} has no shape; it is damaged, write it again")
    try:
        return kind.shape_type(**raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{kind.name} checkpoint {path} has an invalid {kind.shape_type.__name__} {raw}: {exc}") from None
