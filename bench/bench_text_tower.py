"""The query path's text tower per precision: fp32 / bf16 / int8 at batch 1 (issue #13).

    python bench/bench_text_tower.py                      # ViT-L-14, this CPU as it is
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        FBGEMM_ENABLE_INSTRUCTIONS=AVX2 python bench/bench_text_tower.py   # emulated AVX2-only

Per precision of the text tower (``load_clip(text_precision=...)``; int8 is torch dynamic
quantization, see ``spr.models.clip``), per-query latency p50/p99 at batch 1 of open_clip's
full-context pass ("old", 77 positions for ViT-L-14) and of the real-token pass ("new",
``ClipEncoder.encode_texts``), and each one's cosine to the fp32 real-token feature of the same
query (min and mean over the queries), and how many cores other processes kept busy meanwhile
(a shared machine: trust a table only when that is near 0). The rows are timed round-robin, one query of each in
turn, so a neighbour's load on a shared machine falls on all of them alike.

The first line is :func:`spr.cpu.format_cpu_report`: the CPU, its flags, torch's ATen
capability and the ISA caps in effect. The caps above (read when torch's libraries first run,
so set them before Python starts) make an AVX512 machine run torch's AVX2 code paths: ATen's
kernels, oneDNN's (bf16 matmuls), MKL's (fp32 matmuls) and fbgemm's (int8 matmuls).
Weights are RANDOM (no downloads): speed does not depend on them.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def load_text_only(model: str, text_precision: str):
    """``model`` on the CPU with its text tower at ``text_precision``; the image tower is
    dropped (never run here; ViT-L-14's is 1.2 GB in fp32)."""
    import torch

    from spr.models.clip import load_clip

    clip = load_clip(model, "", "cpu", "fp32", text_precision=text_precision)
    clip.model.visual = torch.nn.Identity()
    return clip


def time_rows(clips: dict, queries: list[str], reps: int) -> dict:
    """``(precision, full_context) -> [ms per query]`` over ``queries`` x ``reps``, round-robin."""
    times = {(name, full): [] for name in clips for full in (True, False)}
    for name, clip in clips.items():  # warm-up: first-call allocations, weight packing
        for full in (True, False):
            clip.encode_texts(queries[:3], full_context=full)
    for _ in range(reps):
        for q in queries:
            for (name, full), out in times.items():
                t0 = time.perf_counter()
                clips[name].encode_texts([q], full_context=full)
                out.append((time.perf_counter() - t0) * 1e3)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-L-14")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"])
    parser.add_argument("--queries", type=int, default=24, help="distinct queries (4-9 words each)")
    parser.add_argument("--reps", type=int, default=4, help="passes over the queries per row")
    args = parser.parse_args(argv)
    import torch

    from spr.cpu import format_cpu_report
    from spr.models.clip import resolve_precision, resolve_text_precision

    from _common import OthersCpu, pct, text_queries

    print(f"cpu: {format_cpu_report()}")
    print(f"torch {torch.__version__}; auto -> frames {resolve_precision('auto', 'cpu')}, "
          f"text {resolve_text_precision('auto', 'auto', 'cpu')}")
    queries = text_queries(args.queries)
    precisions = sorted(args.precisions, key=lambda p: p != "fp32")  # fp32 first: the reference
    clips = {p: load_text_only(args.model, p) for p in precisions}
    reference = np.concatenate([clips["fp32"].encode_texts([q]) for q in queries]) if "fp32" in clips else None
    tokens = [int(t.argmax()) + 1 for t in clips[precisions[0]].tokenizer(queries)]  # SOT .. EOT
    context = int(clips[precisions[0]].tokenizer(["x"]).shape[1])
    others = OthersCpu()
    times = time_rows(clips, queries, args.reps)
    print(f"\n{args.model} text tower, batch 1, {len(queries)} queries x {args.reps}, "
          f"{torch.get_num_threads()} threads, other processes kept {others.cores():.2f} cores busy meanwhile; "
          f"cos: to the fp32 real-token feature (min / mean)")
    print("| precision | path | positions | p50 ms | p99 ms | min ms | cos min | cos mean |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|")
    for (name, full), ms in times.items():
        feats = np.concatenate([clips[name].encode_texts([q], full_context=full) for q in queries])
        cos = (feats * reference).sum(1) if reference is not None else np.full(len(queries), np.nan)
        path, positions = ("old: full context", context) if full else ("new: real tokens", float(np.mean(tokens)))
        print(f"| {name} | {path} | {positions:.1f} | {pct(ms, 50):.2f} | {pct(ms, 99):.2f} | {min(ms):.2f} | "
              f"{cos.min():.5f} | {cos.mean():.5f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
