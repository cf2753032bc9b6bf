"""The learning loop of SPR through the command line, on the synthetic benchmark and real stores
(SQLite + Faiss): write the benchmark, import it, evaluate the untrained baseline, train the
projectors, re-import with them, train the refiner on the stores' coarse proposals, evaluate SP
and SPR.

What a user depends on: training beats the untrained (CLIP_mp) baseline on NDCG, and refinement
beats the coarse proposals at IoU >= 0.7. CLIP is ``spr-tiny`` with random weights: the query
features are unrelated to the frames until the projectors learn the mapping.
"""

from __future__ import annotations

import json

from conftest import run_spr


def ndcg(metrics: dict, method: str, k: int, iou: float) -> float:
    """NDCG@k at IoU >= iou of ``method`` ("sp", "spr", "upper_bound") in spr eval's metrics JSON."""
    table = metrics[method]["ndcg"]
    return float(table[str(k)][f"{iou:.1f}"] if str(k) in table else table[k][iou])


def test_training_beats_the_untrained_baseline_and_refinement_beats_the_coarse_proposals(tmp_path):
    env = {
        "SPR_DATA_DIR": str(tmp_path / "data"),
        "SPR_CLIP__MODEL": "spr-tiny",
        "SPR_LOGGING__LEVEL": "WARNING",
        "OMP_NUM_THREADS": "1",
    }
    bench = tmp_path / "bench"

    def spr(*args: str, **extra: str) -> dict:
        done = run_spr(*args, "--json", env={**env, **extra}, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    spr("train", "synthetic", str(bench), "--videos", "60", "--types", "6")
    files = {"features": str(bench / "features.h5"), "manifest": str(bench / "durations.jsonl")}
    queries = ["--query-features", str(bench / "query_features.h5")]
    spr("import", files["features"], "--manifest", files["manifest"], "--collection", "base")
    base = spr("eval", str(bench / "test.jsonl"), "--collection", "base", *queries, "--no-refine")

    projector = tmp_path / "projector.pt"
    spr(
        "train", "projector", "--train", str(bench / "train.jsonl"), "--features-from-catalog", *queries,
        "--out", str(projector), "--epochs", "8", "--batch-size", "64", "--dim", "64", "--layers", "1", "--heads", "2",
    )
    trained_env = {"SPR_PROJECTOR__CHECKPOINT": str(projector)}
    spr("import", files["features"], "--manifest", files["manifest"], "--collection", "trained", **trained_env)
    refiner = tmp_path / "refiner.pt"
    spr(
        "train", "refiner", "--train", str(bench / "train.jsonl"), *queries, "--collection", "trained",
        "--out", str(refiner), "--epochs", "20", "--batch-queries", "16", "--lr", "0.002",
        "--dim", "64", "--layers", "1", "--heads", "2", **trained_env,
    )
    final = spr(
        "eval", str(bench / "test.jsonl"), "--collection", "trained", *queries,
        **trained_env, SPR_REFINER__CHECKPOINT=str(refiner),
    )

    untrained_sp = ndcg(base, "sp", 10, 0.5)
    trained_sp = ndcg(final, "sp", 10, 0.5)
    print(f"NDCG@10: SP IoU0.5 untrained {untrained_sp:.3f} trained {trained_sp:.3f}")
    assert trained_sp >= untrained_sp + 0.25, (untrained_sp, trained_sp)
    sp_07, spr_07 = ndcg(final, "sp", 10, 0.7), ndcg(final, "spr", 10, 0.7)
    print(f"NDCG@10 IoU0.7: SP {sp_07:.3f} SPR {spr_07:.3f} UB {ndcg(final, 'upper_bound', 10, 0.7):.3f}")
    assert spr_07 > sp_07 + 0.05, (sp_07, spr_07)
    assert ndcg(final, "upper_bound", 10, 0.7) >= spr_07
