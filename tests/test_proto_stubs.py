"""The committed gRPC stubs in ``spr/api/v1`` are exactly what ``proto/`` generates.

Regenerate after editing a ``.proto`` (from the repository root)::

    python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/spr/api/v1/*.proto
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

grpc_tools_protoc = pytest.importorskip("grpc_tools.protoc")

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
PACKAGE = Path("spr/api/v1")
REGENERATE = (
    "python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/spr/api/v1/*.proto"
)


def _generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    assert protos, f"no .proto files under {PROTO_ROOT / PACKAGE}"
    # grpc_tools ships the well-known types (google/protobuf/*.proto) as package data.
    well_known = Path(grpc_tools_protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(PROTO_ROOT / p) for p in protos),
    ]
    assert grpc_tools_protoc.main(args) == 0, "protoc failed on proto/"


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    _generate(tmp_path)
    generated = {p.relative_to(tmp_path / PACKAGE): p.read_bytes() for p in (tmp_path / PACKAGE).iterdir()}
    committed_dir = ROOT / PACKAGE
    committed = {
        p.relative_to(committed_dir): p.read_bytes()
        for p in committed_dir.iterdir()
        if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))
    }
    assert sorted(map(str, committed)) == sorted(map(str, generated)), (
        f"spr/api/v1 does not hold exactly the generated stubs; run from the repository root: {REGENERATE}"
    )
    stale = sorted(str(name) for name, data in generated.items() if committed[name] != data)
    assert not stale, f"stale generated stubs {stale}; run from the repository root: {REGENERATE}"


def test_the_stubs_import_with_the_installed_runtime() -> None:
    # The generated code checks the protobuf and grpcio versions at import time.
    from spr.api.v1 import moments_pb2, refiner_pb2_grpc, search_pb2_grpc  # noqa: F401

    assert "spr.api.v1.search_pb2" in sys.modules
