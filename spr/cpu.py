"""What this CPU can do for torch, and what torch is allowed to use of it (issue #13).

The right precision for a model on a CPU depends on its instruction set: bf16 matmuls are
about 3x faster than fp32 with AVX512_BF16 and 7x SLOWER on an AVX2-only machine, where torch
emulates them. The libraries under torch can be capped below what the CPU has, with
environment variables read when they first run (set them before ``import torch``):

- ``ATEN_CPU_CAPABILITY`` (``default``, ``avx2``, ``avx512``): ATen's own vectorised kernels;
- ``ONEDNN_MAX_CPU_ISA`` (``AVX2``, ``AVX512_CORE``, ``AVX512_CORE_BF16``, ``ALL``...): oneDNN,
  which runs torch's bf16 matmuls;
- ``MKL_ENABLE_INSTRUCTIONS`` (``AVX2``, ``AVX512``...): MKL, which runs fp32 matmuls;
- ``FBGEMM_ENABLE_INSTRUCTIONS`` (``AVX2``, ``AVX512``...): fbgemm, which runs int8 ones.

A capped process behaves as a machine without the capped-off instructions, so precision
choices (:func:`native_bf16`) honour the caps as well as the flags; the same caps emulate an
AVX2-only machine on an AVX512 one (``bench/bench_text_tower.py``).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Iterable, Mapping

# The /proc/cpuinfo flags of native bf16 dot products (VDPBF16PS, AMX tiles). Without them
# torch emulates bf16 matmuls on a CPU: measured 7x slower than fp32 on an AVX2-only machine
# (bench/bench_refiner.py), against about 3x faster with AVX512_BF16.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

# The flags that decide fp32 / bf16 / int8 speed, in the order cpu_report lists them.
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8")

# The environment variables that cap torch's libraries below the CPU's instruction set.
ISA_CAP_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "FBGEMM_ENABLE_INSTRUCTIONS")

# Caps under which bf16 has no native dot products. ATen: below avx512 (its avx512 kernels
# convert bf16 with AVX512_BF16 where present). oneDNN: below AVX512_CORE_BF16, its first ISA
# with VDPBF16PS (AVX2_VNNI_2 converts bf16 but does not dot it; counted as no).
_ATEN_NO_BF16 = frozenset({"default", "avx2"})
_ONEDNN_NO_BF16 = frozenset({"sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni"})


@functools.lru_cache(maxsize=None)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of this machine (the first ``flags`` line of ``cpuinfo``; empty
    where there is none, e.g. off Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=None)
def cpu_model_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The first ``model name`` of ``cpuinfo`` (``"unknown"`` where there is none)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def isa_caps(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ISA caps set in ``environ`` (this process's environment when None): variable -> value,
    only those set and non-empty."""
    env = os.environ if environ is None else environ
    return {name: env[name] for name in ISA_CAP_VARS if env.get(name)}


def bf16_capped_off(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``environ``'s caps keep torch from native bf16 dot products, whatever the CPU."""
    caps = isa_caps(environ)
    aten = caps.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    onednn = caps.get("ONEDNN_MAX_CPU_ISA", "").strip().lower()
    return aten in _ATEN_NO_BF16 or onednn in _ONEDNN_NO_BF16


def native_bf16(flags: Iterable[str] | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether torch gets native bf16 dot products: the CPU has them (``flags``: its
    ``/proc/cpuinfo`` flags, this machine's when None) and no ISA cap in ``environ`` (this
    process's environment when None) takes them away."""
    flags = cpu_flags() if flags is None else flags
    return not NATIVE_BF16_FLAGS.isdisjoint(flags) and not bf16_capped_off(environ)


def cpu_report() -> dict[str, Any]:
    """What decides model speed on this CPU, for benchmarks and logs: model name, the relevant
    flags, torch's ATen capability (after any cap), the caps in effect, torch's thread count
    and quantized engine, and whether bf16 is native here."""
    import torch

    flags = cpu_flags()
    return {
        "model": cpu_model_name(),
        "flags": {name: name in flags for name in REPORTED_FLAGS},
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_caps": isa_caps(),
        "torch_threads": torch.get_num_threads(),
        "quantized_engine": torch.backends.quantized.engine,
        "native_bf16": native_bf16(flags),
    }


def format_cpu_report(report: Mapping[str, Any] | None = None) -> str:
    """:func:`cpu_report` on one line, e.g. ``Intel Xeon | avx2 avx512f avx512_bf16 | torch
    AVX512 | caps none | 2 threads | qengine x86 | native bf16 yes``."""
    r = cpu_report() if report is None else report
    flags = " ".join(name for name, present in r["flags"].items() if present) or "none of " + "/".join(REPORTED_FLAGS)
    caps = " ".join(f"{k}={v}" for k, v in r["isa_caps"].items()) or "none"
    return (
        f"{r['model']} | {flags} | torch {r['torch_capability']} | caps {caps} | "
        f"{r['torch_threads']} threads | qengine {r['quantized_engine']} | native bf16 {'yes' if r['native_bf16'] else 'no'}"
    )
