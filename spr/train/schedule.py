"""Optimiser, learning-rate schedule, seeding and resumable training state, shared by every
trainer (``spr train projector`` here, the refiner's trainer in :mod:`spr.train.refiner`).

SPR section 4.2 trains with AdamW (lr 5e-4, weight decay 1e-3), gradient clipping at 5.0 and a
cosine schedule with warm-up; the defaults live in :class:`spr.config.TrainConfig`.

A :class:`TrainState` is everything a run needs to continue exactly where it stopped: model and
optimiser and scheduler states, the step and epoch, every random-number generator, and the
options it ran with. :func:`save_train_state` writes it atomically (a crash mid-write leaves
the previous file); :func:`load_train_state` reads it back with ``torch.load(weights_only=True)``
(no arbitrary pickles), and :meth:`TrainState.restore` puts it into fresh objects.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "STATE_FORMAT",
    "TrainState",
    "WarmupCosine",
    "build_optimizer",
    "capture_rng",
    "load_train_state",
    "restore_rng",
    "save_train_state",
    "seed_everything",
    "warmup_cosine",
]

STATE_FORMAT = "spr-train-state/1"


def build_optimizer(
    params: Iterable[Any] | nn.Module,
    cfg: Any = None,
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
) -> torch.optim.AdamW:
    """AdamW over ``params`` (tensors, parameter groups or a module) with the learning rate and
    weight decay of ``cfg`` (a :class:`spr.config.TrainConfig`; its defaults when None), either
    overridden by ``lr`` / ``weight_decay``. Parameters already on a GPU get the fused kernel,
    so build the optimiser after moving the model."""
    if cfg is None:
        from spr.config import TrainConfig

        cfg = TrainConfig()
    lr = float(cfg.lr if lr is None else lr)
    weight_decay = float(cfg.weight_decay if weight_decay is None else weight_decay)
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"learning rate must be a positive number, got {lr}")
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise ValueError(f"weight decay must be a number >= 0, got {weight_decay}")
    if isinstance(params, nn.Module):
        params = params.parameters()
    params = [p for p in params if not isinstance(p, torch.Tensor) or p.requires_grad]
    if not params:
        raise ValueError("the optimizer got no trainable parameters")
    # The fused kernel when everything lives on a GPU: one launch instead of one per tensor.
    tensors = [p for p in params if isinstance(p, torch.Tensor)]
    fused = len(tensors) == len(params) and all(p.is_cuda for p in tensors)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


@dataclass
class WarmupCosine:
    """Learning-rate factor at step ``s`` (the number of optimiser steps already taken):
    ``(s + 1) / warmup`` for the first ``warmup`` steps, then a half cosine from 1 down to
    ``min_factor`` at ``total_steps``, and ``min_factor`` after that.

    A callable object rather than a closure so that ``LambdaLR.state_dict`` keeps it."""

    total_steps: int
    warmup_steps: int
    min_factor: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float = 0.1, min_factor: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``round(warmup_fraction * total_steps)`` steps, then cosine decay to
    ``min_factor`` of the base rate at ``total_steps``. Call ``scheduler.step()`` after each
    ``optimizer.step()``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if not (0.0 <= warmup_fraction < 1.0):
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    if not (0.0 <= min_factor <= 1.0):
        raise ValueError(f"min_factor must be in [0, 1], got {min_factor}")
    warmup = int(round(warmup_fraction * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(int(total_steps), warmup, float(min_factor)))


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every GPU)."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# --- random-number generator states ---------------------------------------------------------


def capture_rng(generators: Mapping[str, np.random.Generator] | None = None) -> dict[str, Any]:
    """The states of the global generators (Python, NumPy, torch CPU and CUDA) and of the named
    NumPy ``generators``, in a form ``torch.load(weights_only=True)`` accepts."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: _plain(g.bit_generator.state) for name, g in (generators or {}).items()},
    }
    return state


def restore_rng(state: Mapping[str, Any], generators: Mapping[str, np.random.Generator] | None = None) -> None:
    """Put back what :func:`capture_rng` took (CUDA states only where GPUs are visible)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": int(np_state["pos"])},
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        }
    )
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    for name, g in (generators or {}).items():
        if name not in state.get("generators", {}):
            raise KeyError(f"the saved state has no random generator named {name!r}")
        g.bit_generator.state = state["generators"][name]


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays in a bit generator's state -> Python values / int64 tensors."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- training state -------------------------------------------------------------------------


@dataclass
class TrainState:
    """A resumable snapshot of a training run.

    ``models`` maps a name (``"visual"``, ``"text"``, ``"refiner"``...) to a ``state_dict``;
    ``step`` counts optimiser steps taken and ``epoch`` completed epochs; ``options`` are the
    run's settings (plain values) and ``extra`` anything else the trainer wants back (loss
    history, data fingerprint)."""

    step: int
    epoch: int
    models: dict[str, dict[str, Any]]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    rng: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def capture(
        cls,
        models: Mapping[str, nn.Module],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        step: int,
        epoch: int,
        options: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        generators: Mapping[str, np.random.Generator] | None = None,
    ) -> "TrainState":
        """Snapshot live objects (tensors are copied to the CPU)."""
        return cls(
            step=int(step),
            epoch=int(epoch),
            models={name: _to_cpu(m.state_dict()) for name, m in models.items()},
            optimizer=_to_cpu(optimizer.state_dict()),
            scheduler=None if scheduler is None else _scheduler_state(scheduler),
            rng=capture_rng(generators),
            options=dict(options or {}),
            extra=dict(extra or {}),
        )

    def restore(
        self,
        models: Mapping[str, nn.Module],
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        generators: Mapping[str, np.random.Generator] | None = None,
        rng: bool = True,
    ) -> None:
        """Load the snapshot into ``models`` (same names), ``optimizer``, ``scheduler``, the
        global generators (``rng``) and the named NumPy ``generators``."""
        missing = sorted(set(models) - set(self.models))
        if missing:
            raise KeyError(f"the training state has no model named {', '.join(missing)} (it has {sorted(self.models)})")
        for name, module in models.items():
            module.load_state_dict(self.models[name])
        if optimizer is not None:
            optimizer.load_state_dict(self.optimizer)
        if scheduler is not None and self.scheduler is not None:
            scheduler.load_state_dict(self.scheduler)
        if rng:
            restore_rng(self.rng, generators)


def _scheduler_state(scheduler: Any) -> dict[str, Any]:
    state = dict(scheduler.state_dict())
    # LambdaLR keeps a callable object's __dict__; WarmupCosine's is plain numbers.
    lambdas = state.get("lr_lambdas")
    if lambdas is not None:
        state["lr_lambdas"] = [None if x is None else dict(x) for x in lambdas]
    return state


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, Mapping):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def save_train_state(path: str | os.PathLike[str], state: TrainState) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file beside it, fsynced, renamed."""
    final = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(final))
    os.makedirs(directory, exist_ok=True)
    payload = {
        "format": STATE_FORMAT,
        "step": state.step,
        "epoch": state.epoch,
        "models": state.models,
        "optimizer": state.optimizer,
        "scheduler": state.scheduler,
        "rng": state.rng,
        "options": state.options,
        "extra": state.extra,
    }
    tmp = f"{final}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_train_state(path: str | os.PathLike[str]) -> TrainState:
    """The :class:`TrainState` at ``path``; ValueError when the file is not one."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training state {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ValueError(f"{path} is not a readable training state: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a training state (format {STATE_FORMAT})")
    return TrainState(
        step=int(payload["step"]),
        epoch=int(payload["epoch"]),
        models=payload["models"],
        optimizer=payload["optimizer"],
        scheduler=payload["scheduler"],
        rng=payload["rng"],
        options=dict(payload.get("options") or {}),
        extra=dict(payload.get("extra") or {}),
    )
