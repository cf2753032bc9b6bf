"""Precision by what the CPU can do, not by name (issue #13).

``auto`` on a CPU picks bf16 only where the CPU has native bf16 dot products (AVX512_BF16 or
AMX-BF16): elsewhere torch emulates bf16 and ran 7x slower than fp32. fp16 on a CPU is refused
when a model is loaded, for the CLIP towers and the refiner alike.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from spr.config import load_config
from spr.models.clip import cpu_flags, cpu_has_native_bf16, load_clip, resolve_precision

AVX2_ONLY = {"sse4_2", "avx", "avx2", "fma"}
AVX512_NO_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
AVX512_BF16 = AVX512_NO_BF16 | {"avx512_bf16"}
SAPPHIRE_RAPIDS = AVX512_BF16 | {"amx_tile", "amx_bf16", "amx_int8"}
AMX_ONLY = AVX2_ONLY | {"amx_tile", "amx_bf16"}


@pytest.mark.parametrize(
    "flags, expected",
    [
        (set(), "fp32"),
        (AVX2_ONLY, "fp32"),
        (AVX512_NO_BF16, "fp32"),
        (AVX2_ONLY | {"amx_tile", "amx_int8"}, "fp32"),  # AMX without its bf16 unit
        (AVX512_BF16, "bf16"),
        (SAPPHIRE_RAPIDS, "bf16"),
        (AMX_ONLY, "bf16"),
    ],
)
def test_auto_on_a_cpu_picks_bf16_only_with_native_bf16_dot_products(flags, expected):
    assert resolve_precision("auto", "cpu", flags) == expected
    assert cpu_has_native_bf16(flags) is (expected == "bf16")


def test_auto_on_a_gpu_is_fp16_whatever_the_host_cpu():
    for flags in (AVX2_ONLY, SAPPHIRE_RAPIDS):
        assert resolve_precision("auto", "cuda", flags) == "fp16"
        assert resolve_precision("auto", "cuda:1", flags) == "fp16"


def test_explicit_precisions_are_kept():
    assert resolve_precision("fp32", "cpu", SAPPHIRE_RAPIDS) == "fp32"
    assert resolve_precision("bf16", "cpu", SAPPHIRE_RAPIDS) == "bf16"
    assert resolve_precision("fp16", "cuda", AVX2_ONLY) == "fp16"
    with pytest.raises(ValueError, match="auto, fp32, fp16 or bf16"):
        resolve_precision("int4", "cpu", AVX2_ONLY)


def test_bf16_asked_for_on_a_cpu_without_it_runs_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="spr.models.clip"):
        assert resolve_precision("bf16", "cpu", AVX2_ONLY) == "bf16"
    assert "emulates" in caplog.text


@pytest.mark.parametrize("flags", [AVX2_ONLY, SAPPHIRE_RAPIDS])
def test_fp16_on_a_cpu_is_refused(flags):
    with pytest.raises(ValueError, match="fp16 is refused on a CPU"):
        resolve_precision("fp16", "cpu", flags)


def test_this_machine_resolves_from_its_own_cpuinfo():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    line = next((row for row in text.splitlines() if row.startswith("flags")), "flags :")
    flags = set(line.split(":", 1)[1].split())
    assert cpu_flags() == flags
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert load_clip("spr-tiny", device="cpu").precision == ("bf16" if native else "fp32")


def test_cpu_flags_reads_a_cpuinfo_file(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_loading_clip_in_fp16_on_a_cpu_is_refused():
    with pytest.raises(ValueError, match="fp16 is refused on a CPU"):
        load_clip("spr-tiny", device="cpu", precision="fp16")


def test_starting_the_refiner_in_fp16_on_a_cpu_is_refused():
    from spr.models.refiner import RefinerShape, build_refiner
    from spr.refine.inprocess import start_batcher

    config = load_config(None, {"SPR_REFINER__DEVICE": "cpu", "SPR_REFINER__PRECISION": "fp16"})
    model = build_refiner(RefinerShape(in_dim=16, text_in_dim=16, dim=16, layers=1, heads=2)).eval()
    with pytest.raises(ValueError, match="fp16 is refused on a CPU"):
        start_batcher(config, model)
