"""Model shapes as data: named JSON configs for the projectors and the refiner.

After open_clip's ``model_configs/*.json``: every architecture the package ships is one JSON
file in ``spr/models/configs/``, named by its file stem and tagged with a ``kind``:

* ``clip``: open_clip architectures (``spr-tiny``), recognised as open_clip does (the
  ``embed_dim``/``vision_cfg``/``text_cfg`` keys) and loaded by :func:`spr.models.clip.load_clip`;
* ``projector``: ``{"kind": "projector", "description": ..., <ProjectorShape fields>}``;
* ``refiner``: ``{"kind": "refiner", "description": ..., <RefinerShape fields>}``.

:func:`model_config` turns a name (or a path to such a JSON file) into its shape dataclass;
:func:`spr.models.projector.build_projectors` and :func:`spr.models.refiner.build_refiner`
take either. :func:`add_model_config` makes more folders or files loadable by name. Nothing
here imports torch: command lines can list and check configs before loading a model.
"""

from __future__ import annotations

import json
import numbers
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Union

CONFIG_DIR = Path(__file__).with_name("configs")
KINDS = ("clip", "projector", "refiner")
_OPEN_CLIP_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
_NOT_SHAPE_FIELDS = ("kind", "description")


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

    def __post_init__(self) -> None:
        _check_sizes(self, ("in_dim", "text_in_dim", "dim", "layers", "heads", "max_frames"))


@dataclass(frozen=True)
class RefinerShape:
    """Sizes of an SPR_CLIP refiner. ``in_dim``/``text_in_dim``: CLIP image/text feature sizes;
    ``dim``: joint space; ``max_frames``: longest proposal in frames (positional table size);
    ``kernel_size``: odd width of the boundary head's convolution, in frames.

    ``context_window``: where the frame Transformer's context comes from. 0 is the paper's
    online mode: it runs over each proposal at query time. ``W > 0`` (even) runs it over fixed
    windows of ``W`` frames every ``W / 2`` frames of the whole video, positions relative to the
    window, each frame taken from the window it sits in the middle of: query-independent, so it
    is computed once per video and stored (:func:`spr.models.refiner.context_rows`). The default
    stays 0 so that checkpoints saved before the field existed keep the mode they were trained in."""

    in_dim: int
    text_in_dim: int
    dim: int = 768
    layers: int = 2
    heads: int = 8
    max_frames: int = 1024
    kernel_size: int = 5
    dropout: float = 0.1
    context_window: int = 0

    def __post_init__(self) -> None:
        _check_sizes(self, ("in_dim", "text_in_dim", "dim", "layers", "heads", "max_frames", "kernel_size"))
        if self.kernel_size % 2 == 0:
            raise ValueError(f"RefinerShape.kernel_size must be odd (centred on each frame), got {self.kernel_size}")
        w = self.context_window
        if isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 0 or w % 2 or w == 2 or w > self.max_frames:
            raise ValueError(
                f"RefinerShape.context_window must be 0 (online, per proposal) or an even number of frames in "
                f"[4, max_frames={self.max_frames}], got {w!r}"
            )


Shape = Union[ProjectorShape, RefinerShape]
SHAPE_TYPES: dict[str, type] = {"projector": ProjectorShape, "refiner": RefinerShape}


def _check_sizes(shape: Any, names: tuple[str, ...]) -> None:
    kind = type(shape).__name__
    for name in names:
        value = getattr(shape, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{kind}.{name} must be a positive integer, got {value!r}")
    if shape.dim % shape.heads:
        raise ValueError(f"{kind}.dim={shape.dim} must be divisible by heads={shape.heads}")
    if isinstance(shape.dropout, bool) or not isinstance(shape.dropout, numbers.Real) or not 0.0 <= shape.dropout < 1.0:
        raise ValueError(f"{kind}.dropout must be a number in [0, 1), got {shape.dropout!r}")


# --- the registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigEntry:
    """One registered JSON config: its ``name`` (file stem), ``kind``, file and raw content."""

    name: str
    kind: str
    path: Path
    content: dict[str, Any]

    @property
    def description(self) -> str:
        return str(self.content.get("description", ""))


_CONFIG_PATHS: list[Path] = [CONFIG_DIR]
_registry: dict[str, ConfigEntry] | None = None


def add_model_config(path: str | os.PathLike[str]) -> None:
    """Make the JSON config at ``path`` (a file, or every ``*.json`` of a folder) loadable by
    name; a later file of an existing name replaces it, as in open_clip. CLIP architectures
    found there still need :func:`spr.models.clip.register_model_config` to load."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model config path {path} does not exist")
    entries = _scan([path])  # parse now: a broken file fails here, not at a later lookup
    _CONFIG_PATHS.append(path)
    _entries().update(entries)


def list_model_configs(kind: str | None = None) -> list[str]:
    """Names of the registered configs of ``kind`` (``clip``, ``projector`` or ``refiner``;
    None: all), sorted. ``clip`` lists the package's own open_clip architectures, not the ones
    open_clip ships."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown model config kind {kind!r}; kinds: {', '.join(KINDS)}")
    return sorted((e.name for e in _entries().values() if kind is None or e.kind == kind), key=_natural_key)


def model_config_entry(name: str) -> ConfigEntry:
    """The registered config ``name``, or the JSON file at path ``name``."""
    if name in _entries():
        return _entries()[name]
    if name.endswith(".json") and os.path.isfile(name):
        return _read_entry(Path(name))
    raise ValueError(f"unknown model config {name!r}; known: {_known()}; or give a path to a .json config")


def model_config(name: str, kind: str | None = None) -> Shape:
    """The shape dataclass of the projector or refiner config ``name`` (a registered name or a
    path to a ``.json`` file). With ``kind``, a config of another kind is refused."""
    if kind is not None and kind not in SHAPE_TYPES:
        raise ValueError(f"model_config builds projector or refiner shapes, not {kind!r}")
    entry = _entry_of_kind(name, kind) if kind else model_config_entry(name)
    if entry.kind not in SHAPE_TYPES:
        raise ValueError(
            f"{name!r} is a {entry.kind} config ({entry.path}); model_config gives projector and refiner shapes "
            f"(load CLIP architectures with spr.models.clip.load_clip)"
        )
    return _shape_from(entry)


def resolve_shape(shape_or_name: Shape | str, kind: str) -> Shape:
    """``shape_or_name`` as a shape of ``kind``: a shape dataclass passes through (checked to be
    of that kind), a string is looked up with :func:`model_config`."""
    shape_type = SHAPE_TYPES[kind]
    if isinstance(shape_or_name, str):
        return model_config(shape_or_name, kind)
    if not isinstance(shape_or_name, shape_type):
        raise TypeError(f"a {kind} needs a {shape_type.__name__} or a {kind} config name, got {type(shape_or_name).__name__}")
    return shape_or_name


def _entry_of_kind(name: str, kind: str) -> ConfigEntry:
    try:
        entry = model_config_entry(name)
    except ValueError:
        raise ValueError(f"unknown {kind} config {name!r}; known {kind} configs: {_known(kind)}; or a path to a .json config") from None
    if entry.kind != kind:
        raise ValueError(f"{name!r} is a {entry.kind} config, not a {kind} config; known {kind} configs: {_known(kind)}")
    return entry


def _shape_from(entry: ConfigEntry) -> Shape:
    shape_type = SHAPE_TYPES[entry.kind]
    allowed = [f.name for f in fields(shape_type)]
    values = {k: v for k, v in entry.content.items() if k not in _NOT_SHAPE_FIELDS}
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"{entry.kind} config {entry.path}: unknown field(s) {', '.join(unknown)}; fields: {', '.join(allowed)}")
    try:
        return shape_type(**values)
    except TypeError:
        missing = [f.name for f in fields(shape_type) if f.name not in values]
        raise ValueError(f"{entry.kind} config {entry.path} lacks {', '.join(missing)}") from None
    except ValueError as exc:
        raise ValueError(f"{entry.kind} config {entry.path}: {exc}") from None


def _known(kind: str | None = None) -> str:
    return ", ".join(list_model_configs(kind)) or "none"


def _entries() -> dict[str, ConfigEntry]:
    global _registry
    if _registry is None:
        _registry = _scan(_CONFIG_PATHS)
    return _registry


def _scan(paths: list[Path]) -> dict[str, ConfigEntry]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
    return {entry.name: entry for entry in map(_read_entry, files)}


def _read_entry(path: Path) -> ConfigEntry:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"model config {path} is not readable JSON: {exc}") from None
    if not isinstance(content, dict):
        raise ValueError(f"model config {path} must hold a JSON object")
    kind = content.get("kind") or ("clip" if all(k in content for k in _OPEN_CLIP_KEYS) else None)
    if kind not in KINDS:
        raise ValueError(f"model config {path} has kind {kind!r}; a config says \"kind\": one of {', '.join(KINDS[1:])}, "
                         f"or is an open_clip architecture ({', '.join(_OPEN_CLIP_KEYS)})")
    return ConfigEntry(path.stem, kind, path, content)


def _natural_key(name: str) -> list[Any]:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name.lower())]
