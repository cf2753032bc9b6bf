"""What the benchmark scripts share: synthetic data, vector stores opened through the registry,
percentiles and the CPU load measured beside a figure.

Imported by the scripts as ``from _common import ...`` (a script's own folder is on its path).
Only the standard library and numpy are imported here at module level: ``bench_refiner.py``
must run on a GPU box with nothing but torch and the refiner installed, so everything of
``spr`` is imported inside the functions that need it.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

# --- synthetic data ------------------------------------------------------------------------------

WORDS = (
    "a man woman child dog cat opens closes door car kitchen street walks runs sits table phone "
    "laughs talks red blue window rain night crowd ball kicks throws reads book screen looks"
).split()


def text_queries(count: int, seed: int = 0) -> list[str]:
    """``count`` random English phrases of 4-9 words (text queries for the search service)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(4, 10)))) for _ in range(count)]


def scene_lengths(rng: np.random.Generator, total: int, mean_scene: float) -> list[int]:
    """A video of ``total`` segments cut into scenes of 1 + geometric(1 / mean_scene) segments
    (the last one cut short), drawn from ``rng``."""
    lengths: list[int] = []
    while sum(lengths) < total:
        lengths.append(min(total - sum(lengths), 1 + int(rng.geometric(1.0 / mean_scene))))
    return lengths


def clustered(n: int, nq: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, dim)`` data and ``(nq, dim)`` queries, float32, unit rows, around ``n // 100`` centres."""
    from spr.stores import l2_normalize

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), dim), dtype=np.float32)
    data = np.empty((n, dim), np.float32)
    step = 100_000
    for lo in range(0, n, step):  # chunks keep the temporaries small at 1M x 768
        hi = min(n, lo + step)
        data[lo:hi] = centres[rng.integers(0, len(centres), hi - lo)] + rng.standard_normal((hi - lo, dim), dtype=np.float32)
        data[lo:hi] = l2_normalize(data[lo:hi])
    queries = centres[rng.integers(0, len(centres), nq)] + rng.standard_normal((nq, dim), dtype=np.float32)
    return data, l2_normalize(queries)


def write_videos(
    folder: Path, count: int, seconds: float, fps: float, size: tuple[int, int], name: str = "v{i:02d}.mp4"
) -> list[Path]:
    """``count`` synthetic videos (libx264, preset ultrafast, seed = index) named ``name.format(i=i)``."""
    from spr.ingest.synthetic_video import write_video

    return [
        write_video(Path(folder) / name.format(i=i), seconds, fps=fps, size=size, seed=i, preset="ultrafast")
        for i in range(count)
    ]


# --- vector stores -------------------------------------------------------------------------------


def index_spec(kind: str, nlist: int, nprobe: int, m: int):
    """The spec a benchmark names ``kind`` (IVF_PQ with 8-bit codes)."""
    from spr.stores import Flat, IvfFlat, IvfPq

    return {
        "FLAT": Flat(),
        "IVF_FLAT": IvfFlat(nlist=nlist, nprobe=nprobe),
        "IVF_PQ": IvfPq(nlist=nlist, m=m, nbits=8, nprobe=nprobe),
    }[kind]


def open_store(backend: str, faiss_dir: str | os.PathLike[str], milvus_uri: str, threads: int = 1):
    """A store opened through the registry as the benchmarks use it: Faiss under ``faiss_dir``
    on ``threads`` OpenMP threads (the default sample of 64 points per list, which makes 1M
    vectors build in minutes), Milvus at ``milvus_uri`` with Bounded consistency and a
    10-minute timeout for bulk calls."""
    from spr.config import Config, ConsistencyLevel, FaissConfig, MilvusConfig, VectorBackend, VectorsConfig
    from spr.stores import open_vector_store

    return open_vector_store(
        Config(
            vectors=VectorsConfig(backend=VectorBackend(backend)),
            faiss=FaissConfig(dir=str(faiss_dir), threads=threads),
            milvus=MilvusConfig(uri=milvus_uri, consistency_level=ConsistencyLevel.BOUNDED, timeout_s=600),
        )
    )


def load_collection(
    store: Any,
    name: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    keys: Sequence[str],
    timeout_s: float,
    progress: Callable[[int, int], None] | None = None,
    step: int = 50_000,
) -> None:
    """Upsert ``vectors`` (``(n, dim)``, may be a memmap) under ``ids`` in batches of ``step``,
    then wait until the index covers them (``store.wait_until_indexed``); ``progress(done, n)``
    after each batch."""
    for lo in range(0, len(ids), step):
        hi = min(len(ids), lo + step)
        store.upsert(name, ids[lo:hi], np.ascontiguousarray(vectors[lo:hi]), keys[lo:hi])
        if progress is not None:
            progress(hi, len(ids))
    store.wait_until_indexed(name, timeout_s=timeout_s)


# --- the machine ---------------------------------------------------------------------------------


def cpu_description() -> str:
    """``"AMD EPYC, 2 CPUs, flags: avx2 avx512f avx512_bf16 (no amx)"`` from /proc/cpuinfo."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"]
    have = [f for f in wanted if f in flags]
    amx = "" if any(f.startswith("amx") for f in have) else " (no amx)"
    return f"{model}, {os.cpu_count()} CPUs, flags: {' '.join(have) or 'none of ' + ' '.join(wanted)}{amx}"


# --- figures and the load beside them ------------------------------------------------------------


def pct(values, q: float) -> float:
    """The ``q``-th percentile of ``values`` (NaN when empty)."""
    values = np.asarray(list(values), dtype=np.float64)
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _ticks() -> float:
    return float(os.sysconf("SC_CLK_TCK"))


def machine_busy_s() -> float:
    """CPU seconds all processes have spent so far (``/proc/stat``; NaN off Linux)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    except (OSError, ValueError):
        return float("nan")
    return (user + nice + system + irq + softirq + steal) / _ticks()


def process_cpu_s(pid: int) -> float:
    """CPU seconds of process ``pid`` and its reaped children (NaN when unreadable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return sum(int(x) for x in fields[11:15]) / _ticks()  # utime stime cutime cstime


class OthersCpu:
    """How busy processes *other* than ours (this one and ``pids``: services, a Milvus we
    serve from) kept the machine since construction, in cores: what a figure was measured
    beside."""

    def __init__(self, pids: Sequence[int] = ()) -> None:
        self.pids = [os.getpid(), *pids]
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        return time.perf_counter(), machine_busy_s(), sum(process_cpu_s(p) for p in self.pids)

    def cores(self) -> float:
        t1, busy1, ours1 = self._sample()
        t0, busy0, ours0 = self._start
        return max(0.0, (busy1 - busy0) - (ours1 - ours0)) / max(t1 - t0, 1e-9)


# Sentences the speech benchmarks have espeak-ng speak (short, plain English, Whisper-friendly).
SPOKEN_SENTENCES = [
    "The red car stops at the old bridge.",
    "A dog is running across the green field.",
    "Please open the kitchen window now.",
    "Two children are playing football in the park.",
    "The woman reads a book on the train.",
    "It starts to rain over the quiet street.",
    "A man answers the phone and laughs.",
    "The cat jumps onto the wooden table.",
]
