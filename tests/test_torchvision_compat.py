"""open_clip imports torchvision; the PyPI torchvision wheel is CUDA-built and, on a CPU torch,
fails to import unless its two op schemas exist. The compat module defines them only then."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json
from spr.compat.torchvision_ops import ensure_torchvision_importable
defined = ensure_torchvision_importable()
import torchvision, open_clip
from torchvision import transforms  # what open_clip's preprocessing uses
again = ensure_torchvision_importable()
print(json.dumps({"defined": defined, "again": again, "has_ops": torchvision.extension._has_ops()}))
"""


def test_torchvision_and_open_clip_import_and_the_schemas_are_defined_only_without_the_extension():
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # Defined exactly when torchvision's C++ ops could not load; a no-op where they do.
    assert result["defined"] is (not result["has_ops"])
    assert result["again"] is False
