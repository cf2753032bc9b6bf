"""The package layout: one ``spr`` namespace, and the layer contract that keeps it layered.

The stages live in the repository's top-level folders (``ingest/``, ``services/``,
``refiner/``) but install as ``spr.ingest``, ``spr.search`` and ``spr.refine``; nothing may
install as a generic top-level ``ingest``, ``services`` or ``refiner`` module. The import
contract (``[tool.importlinter]`` in pyproject.toml) runs here, so a back-edge fails CI.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
STAGES = ("spr.ingest", "spr.search", "spr.refine", "spr.train", "spr.eval")


def _package_folder(package: str) -> Path:
    """The source folder of ``package`` under the ``package-dir`` mapping."""
    mapping = SETUPTOOLS["package-dir"]
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in mapping:
            return ROOT / mapping[prefix] / Path(*parts[cut:])
    return ROOT / Path(*parts)


def _stage_tree(target: Path) -> Path:
    """Copy the Python sources to ``target`` laid out as they install (``spr/ingest/...``)."""
    for package in SETUPTOOLS["packages"]:
        src = _package_folder(package)
        dst = target / Path(*package.split("."))
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.py"):
            shutil.copy2(f, dst / f.name)
    return target


def test_every_package_folder_is_listed_and_mapped_into_spr():
    listed = set(SETUPTOOLS["packages"])
    found = set()
    for prefix, folder in SETUPTOOLS["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([prefix, *rel.parts]))
    # Sub-packages of a mapped folder that is itself inside spr/ are found twice; that is fine.
    missing = found - listed
    assert not missing, f"packages on disk but not in [tool.setuptools].packages: {sorted(missing)}"
    assert all(p == "spr" or p.startswith("spr.") for p in listed)
    for stage, folder in (("spr.ingest", "ingest"), ("spr.search", "services"), ("spr.refine", "refiner")):
        assert SETUPTOOLS["package-dir"][stage] == folder


def test_the_installed_distribution_holds_only_the_spr_namespace(tmp_path):
    """``pip install .`` puts only ``spr`` (and its metadata) into site-packages."""
    # Build from a copy of the tracked files: setuptools leaves build/ behind in its source tree.
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        if (ROOT / rel).is_file():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, source / rel)
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = wheels.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"spr"}
    for module in ("spr/ingest/pipeline.py", "spr/search/service.py", "spr/refine/service.py", "spr/cli/__init__.py"):
        assert module in names
    assert "spr/models/configs/spr-tiny.json" in names


def test_every_core_module_takes_a_side_in_the_contract():
    """A new module under spr/ must be listed as core (or be a stage or the command line), so
    the contract cannot silently miss it."""
    contracts = PYPROJECT["tool"]["importlinter"]["contracts"]
    core = set(next(c for c in contracts if c["type"] == "forbidden")["source_modules"])
    on_disk = {f"spr.{p.stem}" for p in (ROOT / "spr").glob("*.py") if p.stem != "__init__"}
    on_disk |= {f"spr.{p.parent.name}" for p in (ROOT / "spr").glob("*/__init__.py")}
    on_disk -= {"spr.cli", *STAGES}
    assert on_disk == core, f"unlisted: {sorted(on_disk - core)}, gone: {sorted(core - on_disk)}"


def test_the_import_contract_holds(tmp_path):
    """The core imports no stage; stages import neither each other nor the command line."""
    staged = _stage_tree(tmp_path / "src")
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.fail("lint-imports is missing: install the dev extra (import-linter)", pytrace=False)
    result = subprocess.run(
        [lint, str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=staged,
        env={"PYTHONPATH": str(staged), "PATH": str(Path(sys.executable).parent)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken" in result.stdout
