"""Load-and-fault run (issue #14): N clients search while the refiner is stopped, killed and
restarted; prints errors, degraded counts and how fast search is refined again.

    python bench/bench_faults.py                          # 8 clients, 4-s phases (~1 min)
    python bench/bench_faults.py --clients 50 --phase-s 10

**Services** (loopback only, each in its own child process, as an operator runs them): the
refiner alone, ``spr refiner --port P``, and the search service, ``spr serve`` with
``services.refiner_target = 127.0.0.1:P`` (so it starts no refiner of its own). Both have random
weights (CLIP ``spr-tiny``, 64-d; an untrained refiner), ``refiner.timeout_ms`` at its default
(2,000 ms), metrics off. **Corpus**: ``--videos`` synthetic videos of ``--video-s`` seconds
(per-second random 64-d frame features, mean-pooled 4-s segments), published under
``--data-dir`` through :func:`spr.publish.publish_video`, Faiss FLAT + SQLite.

**Load**: ``--clients`` threads in this process, one channel each, every one sending embedding
queries back to back with a client deadline of ``--deadline-s`` (default 1 s, shorter than the
refiner's 2 s: the wait must be cut to the client's deadline, not the refiner's).

**Faults**, one phase of ``--phase-s`` seconds each:

1. ``baseline``: everything up;
2. ``stopped``: the refiner SIGSTOPped (hung: its connection stays up, nothing answers), then
   SIGCONT;
3. ``killed``: the refiner SIGKILLed, down for a phase, then started again on the same port;
4. ``after``: everything up.

**Figures**: per phase, requests, errors (any non-OK status at the client), degraded and refined
responses and the client latency; per fault, the recovery time: from the refiner running again
(SIGCONT sent, or the restarted refiner printing that it listens) to the first refined response,
and the degraded responses to requests sent more than 2 s after that. The run passes (exit 0)
with 0 errors and every recovery within ``--max-recovery-s`` (2 s, the issue's bar).
"""

from __future__ import annotations

import argparse
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from _common import cpu_description, pct  # bench/ is on the path of a script run from it

DIM = 64  # spr-tiny's embedding size
COLLECTION = "faults"
SEGMENT_S = 4.0
# The bounds of this script: loopback only, a few minutes at most.
MAX_CLIENTS = 64
MAX_PHASE_S = 30.0
START_TIMEOUT_S = 180.0


# --- corpus and services ------------------------------------------------------------------------


def build_corpus(root: Path, videos: int, video_s: float, seed: int = 0) -> np.ndarray:
    """Publish ``videos`` synthetic videos under ``root`` (once; a marker file says it is done);
    return ``(videos, DIM)`` query embeddings, one near a span of each video."""
    from spr.catalog import SegmentCatalog
    from spr.config import load_config
    from spr.features import FrameFeatureStore
    from spr.publish import publish_video
    from spr.stores import Flat, index_spec_to_dict, l2_normalize, open_vector_store

    rng = np.random.default_rng(seed)
    frames = [l2_normalize(rng.standard_normal((math.ceil(video_s), DIM))) for _ in range(videos)]
    queries = l2_normalize(np.stack([f[: int(2 * SEGMENT_S)].mean(0) for f in frames]))
    marker = root / f"corpus-{videos}-{video_s:g}.done"
    if marker.is_file():
        return queries
    config = load_config(environ=service_env(root))
    store, catalog = open_vector_store(config), SegmentCatalog.from_config(config)
    features = FrameFeatureStore.from_config(config)
    try:
        store.drop_collection(COLLECTION)
        store.create_collection(COLLECTION, DIM, Flat())
        catalog.register_collection(COLLECTION, store.backend, DIM, "IP", index_spec_to_dict(Flat()), "spr-tiny/random")
        per = int(SEGMENT_S)
        for v, feats in enumerate(frames):
            n = math.ceil(len(feats) / per)
            segments = l2_normalize(np.stack([feats[i * per : (i + 1) * per].mean(0) for i in range(n)]))
            publish_video(
                catalog, store, COLLECTION, f"faults/{v:03d}", f"file:///videos/{v:03d}.mp4", video_s, segments,
                feature_store=features, frame_features=feats, feature_rate=1.0,
            )
    finally:
        store.close()
        catalog.close()
    marker.write_text("ok\n")
    return queries


def service_env(root: Path, refiner_target: str = "") -> dict[str, str]:
    """The ``SPR_*`` settings of both services (and of the corpus build)."""
    env = {
        "SPR_DATA_DIR": str(root),
        "SPR_SERVICES__HOST": "127.0.0.1",
        "SPR_CLIP__MODEL": "spr-tiny",
        "SPR_CLIP__DEVICE": "cpu",
        "SPR_REFINER__DEVICE": "cpu",
        "SPR_FAISS__USE_GPU": "false",
        "SPR_VECTORS__COLLECTION": COLLECTION,
        "SPR_VECTORS__DIM": str(DIM),
        "SPR_PROPOSALS__TOP_K_SEGMENTS": "24",
        "SPR_METRICS__ENABLED": "false",
        "SPR_LOGGING__LEVEL": "WARNING",
    }
    if refiner_target:
        env["SPR_SERVICES__REFINER_TARGET"] = refiner_target
    return env


class Child:
    """A ``spr`` command in a child process, started when it printed ``ready`` (a line prefix);
    ``port`` is the last ``:N`` of that line, ``ready_at`` when (perf_counter) it came; its
    stderr goes to ``log``."""

    def __init__(self, args: list[str], env: dict[str, str], ready: str, log: Path) -> None:
        self._log = open(log, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spr.cli", *args], stdout=subprocess.PIPE, stderr=self._log, text=True,
            env={**os.environ, **env},
        )
        deadline, seen = time.monotonic() + START_TIMEOUT_S, []
        while time.monotonic() < deadline and self.proc.poll() is None:
            if not select.select([self.proc.stdout], [], [], 0.5)[0]:
                continue
            line = self.proc.stdout.readline()
            seen.append(line)
            if line.startswith(ready):
                self.ready_at = time.perf_counter()
                self.port = int(line.split()[3].rsplit(":", 1)[1])
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"`spr {' '.join(args)}` did not start (see {log}): {''.join(seen)[-500:]}")

    def _drain(self) -> None:
        for _ in self.proc.stdout:
            pass

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()


# --- load ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    sent: float  # perf_counter
    done: float
    ok: bool
    refined: bool
    degraded: bool
    error: str = ""


class Load:
    """``clients`` threads searching ``target`` back to back until :meth:`stop`."""

    def __init__(self, target: str, queries: np.ndarray, clients: int, deadline_s: float) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(target, queries, i, deadline_s), daemon=True)
            for i in range(clients)
        ]
        for t in self._threads:
            t.start()

    def _client(self, target: str, queries: np.ndarray, seed: int, deadline_s: float) -> None:
        import grpc

        from spr.search.client import SearchClient

        rng = np.random.default_rng(seed)
        with SearchClient(target, timeout_s=deadline_s) as client:
            while not self._stop.is_set():
                sent = time.perf_counter()
                try:
                    r = client.search(embedding=queries[int(rng.integers(len(queries)))], top_k=5)
                    call = Call(sent, time.perf_counter(), True, r.refined, r.degraded)
                except grpc.RpcError as exc:
                    call = Call(sent, time.perf_counter(), False, False, False, exc.code().name)
                with self._lock:
                    self.calls.append(call)

    def stop(self) -> list[Call]:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return sorted(self.calls, key=lambda c: c.sent)


def recovery(calls: list[Call], at: float, settle_s: float = 2.0) -> tuple[float, int]:
    """Seconds from ``at`` to the first refined response after it (inf: none), and the degraded
    responses to requests sent more than ``settle_s`` after ``at`` (before the next fault)."""
    done = [c.done for c in calls if c.refined and c.done >= at]
    late_degraded = sum(1 for c in calls if c.sent >= at + settle_s and c.degraded)
    return (min(done) - at if done else math.inf), late_degraded


# --- the run ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8, help=f"concurrent clients (1..{MAX_CLIENTS})")
    ap.add_argument("--phase-s", type=float, default=4.0, help=f"seconds per phase (1..{MAX_PHASE_S:g})")
    ap.add_argument("--deadline-s", type=float, default=1.0, help="client deadline per search")
    ap.add_argument("--videos", type=int, default=12, help="synthetic videos in the corpus")
    ap.add_argument("--video-s", type=float, default=60.0, help="seconds per video")
    ap.add_argument("--max-recovery-s", type=float, default=2.0, help="the recovery time the run must meet")
    ap.add_argument("--data-dir", help="corpus and logs (default: a temporary folder, removed)")
    args = ap.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS or not 1.0 <= args.phase_s <= MAX_PHASE_S:
        ap.error(f"--clients must be 1..{MAX_CLIENTS} and --phase-s 1..{MAX_PHASE_S:g}")

    tmp = None if args.data_dir else tempfile.TemporaryDirectory(prefix="spr-bench-faults-")
    root = Path(args.data_dir or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_description()}")
    print(
        f"clients {args.clients}, phases of {args.phase_s:g} s, client deadline {args.deadline_s:g} s, "
        f"refiner.timeout_ms 2000 (default), {args.videos} videos x {args.video_s:g} s; logs in {root}",
        flush=True,
    )
    queries = build_corpus(root, args.videos, args.video_s)

    from spr.search.client import SearchClient

    refiner = Child(["refiner", "--port", "0"], service_env(root), "refiner  listening", root / "refiner.log")
    refiner_target = f"127.0.0.1:{refiner.port}"
    search = Child(
        ["serve", "--search-port", "0"], service_env(root, refiner_target), "search   listening", root / "search.log"
    )
    target = f"127.0.0.1:{search.port}"
    children = [refiner, search]
    marks: dict[str, float] = {}
    try:
        with SearchClient(target, timeout_s=60) as warm:  # torch warm-up off the clock
            for q in queries[:3]:
                warm.search(embedding=q, top_k=5)
        load = Load(target, queries, args.clients, args.deadline_s)
        marks["baseline"] = time.perf_counter()
        time.sleep(args.phase_s)

        marks["stopped"] = time.perf_counter()
        refiner.send(signal.SIGSTOP)
        time.sleep(args.phase_s)
        refiner.send(signal.SIGCONT)
        marks["continued"] = time.perf_counter()
        time.sleep(args.phase_s)

        marks["killed"] = time.perf_counter()
        refiner.send(signal.SIGKILL)
        refiner.proc.wait(30)
        time.sleep(args.phase_s)
        refiner = Child(["refiner", "--port", str(refiner.port)], service_env(root), "refiner  listening", root / "refiner.log")
        children.append(refiner)
        marks["listening"] = refiner.ready_at
        time.sleep(args.phase_s)
        marks["after"] = time.perf_counter()
        time.sleep(args.phase_s)
        marks["end"] = time.perf_counter()
        calls = load.stop()
    finally:
        for child in reversed(children):
            child.stop()
        if tmp is not None:
            tmp.cleanup()

    phases = [
        ("baseline", marks["baseline"], marks["stopped"]),
        ("stopped (SIGSTOP)", marks["stopped"], marks["continued"]),
        ("continued (SIGCONT)", marks["continued"], marks["killed"]),
        ("killed (SIGKILL) + restart", marks["killed"], marks["listening"]),
        ("restarted", marks["listening"], marks["after"]),
        ("after", marks["after"], marks["end"]),
    ]
    print("\n| phase | s | requests | errors | degraded | refined | client p50 ms | client p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, lo, hi in phases:
        inside = [c for c in calls if lo <= c.sent < hi]
        ms = [(c.done - c.sent) * 1e3 for c in inside]
        print(
            f"| {name} | {hi - lo:.1f} | {len(inside)} | {sum(not c.ok for c in inside)} | "
            f"{sum(c.degraded for c in inside)} | {sum(c.refined for c in inside)} | {pct(ms, 50):.0f} | {pct(ms, 99):.0f} |"
        )
    measured = [c for c in calls if c.sent >= marks["baseline"]]
    errors = [c for c in measured if not c.ok]
    after_cont = [c for c in measured if c.sent < marks["killed"]]
    stop_recovery, stop_late = recovery(after_cont, marks["continued"])
    kill_recovery, kill_late = recovery(measured, marks["listening"])
    elapsed = marks["end"] - marks["baseline"]
    print(
        f"\n{len(measured)} requests in {elapsed:.0f} s ({len(measured) / elapsed:.1f}/s), "
        f"{len(errors)} errors{' (' + ', '.join(sorted({c.error for c in errors})) + ')' if errors else ''}, "
        f"{sum(c.degraded for c in measured)} degraded"
    )
    print(
        f"recovery after SIGCONT: {stop_recovery:.2f} s to the first refined response "
        f"({stop_late} degraded responses to requests sent 2 s or more after it)"
    )
    print(
        f"recovery after the restarted refiner listened: {kill_recovery:.2f} s "
        f"({kill_late} degraded responses to requests sent 2 s or more after it; "
        f"the refiner was down {marks['listening'] - marks['killed']:.1f} s)"
    )
    ok = not errors and max(stop_recovery, kill_recovery) <= args.max_recovery_s
    print(f"{'PASS' if ok else 'FAIL'}: 0 errors and recovery <= {args.max_recovery_s:g} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
