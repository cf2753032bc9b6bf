"""Make ``import torchvision`` work on a CPU-only torch.

The PyPI torchvision 0.28 wheel is built against CUDA torch. On a CPU build of torch its
compiled extension ``torchvision/_C.so`` fails to load, torchvision carries on without it,
and then ``torchvision/_meta_registrations.py`` registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms``; registering a fake kernel for an operator
that was never defined raises ``RuntimeError: operator torchvision::nms does not exist``,
so the import fails and open_clip (which imports torchvision) fails with it.

:func:`ensure_torchvision_importable` defines just those two operator schemas, and only
when the extension really cannot load. Where torchvision loads normally (a matching CPU
wheel, or a CUDA host) it does nothing. The schemas have no kernels: calling
``torchvision.ops.nms`` still fails, which is fine because SPR never uses it.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
# Keeps the Library object alive: torch drops the definitions when it is collected.
_library = None


def _extension_loads() -> bool:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True  # not installed: nothing to patch, the import error will be honest
    candidates = sorted(Path(spec.origin).parent.glob("_C*.so")) + sorted(
        Path(spec.origin).parent.glob("_C*.pyd")
    )
    if not candidates:
        return False
    try:
        torch.ops.load_library(str(candidates[0]))
    except (OSError, ImportError, RuntimeError):
        return False
    return True


def ensure_torchvision_importable() -> bool:
    """Define the torchvision op schemas if its C++ extension cannot load.

    Returns True when the schemas were defined by this call, False when nothing was needed
    (extension loads, torchvision already imported, or the schemas already exist).
    """
    global _library
    if _library is not None or "torchvision" in sys.modules:
        return False
    if _extension_loads():
        return False
    import torch

    missing = [name for name in _OPS if not _op_exists(name)]
    if not missing:
        return False
    _library = torch.library.Library("torchvision", "DEF")
    for name in missing:
        _library.define(_OPS[name])
    log.info(
        "torchvision C++ extension unavailable (CPU torch with a CUDA-built torchvision wheel); "
        "defined placeholder schemas for %s so that torchvision imports",
        ", ".join(f"torchvision::{n}" for n in missing),
    )
    return True


def _op_exists(name: str) -> bool:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True
