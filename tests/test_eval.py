"""``spr eval``: the real pipeline (Faiss + SQLite; Milvus + PostgreSQL once) over a small
imported corpus with planted events, SP / SPR / upper-bound NDCG, prediction files, and the
command line.

The corpus is built so that every number is known in advance. Frame features are 64-d and
mean-zero; three events A, B, C are orthonormal, and background frames lean slightly away from
all three. A query whose precomputed feature is an event's vector therefore retrieves exactly
that event's segments (top-3 segments), and a refiner built by hand (identity projections, a
transformer that passes frames through, a boundary head that fires where the frames' similarity
to the query rises and falls) refines each planted event to its exact span. Event B starts and
ends mid-segment, so its coarse proposal has IoU 2/3 and SP misses it at IoU 0.7."""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import run_spr
from spr.ingest.importer import ImportOptions, import_features
from spr.models.refiner import RefinerShape, build_refiner, save_refiner
from spr.config import CatalogConfig, ClipConfig, Config, MilvusConfig, VectorsConfig
from spr.metrics import GroundTruthMoment
from spr.stores import open_vector_store
from spr.data.tvr_ranking import AnnotationError
from spr.cli.eval import evaluate
from spr.eval.evaluation import (
    EvalError,
    EvalOptions,
    predictions_to_json,
    upper_bound_relevances,
    upper_bound_report,
    write_outputs,
)

D = 64
KS = (10, 20, 40)
IOUS = (0.3, 0.5, 0.7)
TOP_K = 3  # every query's event covers exactly three 4-s segments


# --- the corpus --------------------------------------------------------------------------------


def _basis(seed: int = 7) -> np.ndarray:
    """Orthonormal mean-zero directions, as columns (LayerNorm leaves their direction alone)."""
    m = np.random.default_rng(seed).standard_normal((D, D))
    m -= m.mean(axis=0, keepdims=True)
    q, _ = np.linalg.qr(m)
    return q[:, : D - 1]


BASIS = _basis()
EVENTS = {"A": BASIS[:, 0], "B": BASIS[:, 1], "C": BASIS[:, 2]}
REST = BASIS[:, 3:]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _background(rows: int, rng: np.random.Generator) -> np.ndarray:
    free = _unit(rng.standard_normal((rows, REST.shape[1])) @ REST.T)
    return _unit(free - 0.25 * sum(EVENTS.values()))  # cos -0.23 with every event


# (video, duration s, [(event, start row, end row, weak)]) at 1 feature per second.
VIDEOS = {
    "v0": (80, [("A", 40, 48, False)]),
    "v1": (60, [("A", 12, 16, True)]),  # weaker copy: ranks after v0
    "v2": (90, [("B", 22, 30, False)]),  # mid-segment: coarse [20, 32]
    "v3": (70, [("C", 48, 60, False)]),
    "v4": (100, []),
}


def corpus() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    out = {}
    for key, (duration, events) in VIDEOS.items():
        frames = _background(duration, rng)
        for name, lo, hi, weak in events:
            vec = EVENTS[name][None, :]
            if weak:
                vec = _unit(vec + 0.3 * _unit(rng.standard_normal((hi - lo, REST.shape[1])) @ REST.T))
            frames[lo:hi] = vec
        out[key] = frames.astype(np.float32)
    return out


def gt(qid: str, text: str, video: str, start: float, end: float, relevance: float) -> dict:
    return {
        "query_id": qid,
        "query": text,
        "video_name": video,
        "timestamp": [start, end],
        "duration": VIDEOS[video][0],
        "relevance": relevance,
    }


CLEAN = [
    gt("qA", "event a", "v0", 40, 48, 4),
    gt("qA", "event a", "v1", 12, 16, 2),
    gt("qB", "event b", "v2", 22, 30, 3),
    gt("qC", "event c", "v3", 48, 60, 1),
]
# Harder: a relevant moment nothing retrieves, a relevance-0 moment, a query without relevant ones.
HARD = CLEAN + [
    gt("qB", "event b", "v4", 0, 6, 2),
    gt("qC", "event c", "v0", 0, 10, 0),
    gt("qD", "nothing", "v4", 50, 60, 0),
]
QUERY_VECTORS = {"qA": EVENTS["A"], "qB": EVENTS["B"], "qC": EVENTS["C"], "qD": _unit(REST[:, 5] - REST[:, 6])}


def write_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    names = {"h5": "feats.h5", "manifest": "manifest.jsonl", "clean": "clean.jsonl", "hard": "hard.json", "qf": "queries.h5"}
    paths = {k: folder / n for k, n in names.items()}
    with h5py.File(paths["h5"], "w") as h5:
        for key, array in corpus().items():
            h5.create_dataset(key, data=array)
    paths["manifest"].write_text("".join(json.dumps({"key": k, "duration": d}) + "\n" for k, (d, _) in VIDEOS.items()))
    paths["clean"].write_text("".join(json.dumps(r) + "\n" for r in CLEAN))
    paths["hard"].write_text(json.dumps(HARD, indent=1))  # a JSON array this time
    with h5py.File(paths["qf"], "w") as h5:
        for qid, vec in QUERY_VECTORS.items():
            h5.create_dataset(qid, data=vec.astype(np.float32))
    return paths


def perfect_refiner() -> object:
    """SPR_CLIP weights that refine the planted events exactly: frames and query pass through
    (identity projections, every transformer block a no-op), the re-rank score is the cosine,
    and the boundary head's start logit is sim[t] - sim[t-1], its end logit sim[t] - sim[t+1]."""
    model = build_refiner(RefinerShape(in_dim=D, text_in_dim=D, dim=D, layers=1, heads=4, max_frames=256, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.text.weight.copy_(torch.eye(D))
        model.frame_input.weight.copy_(torch.eye(D))
        model.frame_norm.weight.fill_(1.0)
        model.boundary_ffn[0].weight[0, :D] = 1.0  # hidden 0 = GELU(cos(frame, query))
        conv = model.boundary_conv.weight  # (2, D, 5), centre tap 2
        conv[0, 0, 2], conv[0, 0, 1] = 1.0, -1.0
        conv[1, 0, 2], conv[1, 0, 3] = 1.0, -1.0
    return model


def make_config(data_dir: Path, collection: str, catalog_url: str = "", milvus_uri: str = "") -> Config:
    config = Config(
        data_dir=str(data_dir),
        catalog=CatalogConfig(url=catalog_url),
        vectors=VectorsConfig(collection=collection, backend="milvus" if milvus_uri else "faiss", dim=D),
    )
    if milvus_uri:
        config = config.replace(milvus=MilvusConfig(uri=milvus_uri, consistency_level="Strong"))
    return config


def with_refiner(config: Config, checkpoint: str) -> Config:
    return config.replace(refiner=dataclasses.replace(config.refiner, checkpoint=checkpoint, device="cpu"))


def imported(config: Config, paths: dict[str, Path]) -> Config:
    summary = import_features(config, paths["h5"], paths["manifest"], ImportOptions(collection=config.vectors.collection))
    assert not summary.failed and len(summary.imported) == len(VIDEOS)
    return config


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Config, dict[str, Path], str]:
    """One Faiss + SQLite corpus for the module's API tests, and the perfect refiner's checkpoint."""
    root = tmp_path_factory.mktemp("eval")
    paths = write_inputs(root / "inputs")
    config = imported(make_config(root / "data", "evalc"), paths)
    checkpoint = str(root / "perfect.pt")
    save_refiner(checkpoint, perfect_refiner(), step=1)
    return config, paths, checkpoint


def options(**kw) -> EvalOptions:
    kw.setdefault("top_k_segments", TOP_K)
    kw.setdefault("workers", 2)
    return EvalOptions(**kw)


def ndcg_cells(report) -> dict[tuple[int, float], float]:
    return {(k, mu): report.ndcg[k][mu] for k in KS for mu in IOUS}


# --- an independent NDCG ----------------------------------------------------------------------


def independent_ndcg(predictions: dict, records: list[dict], k: int, mu: float) -> float:
    """TVR-Ranking NDCG@k, IoU>=mu, written from the definition (not spr.metrics): ground truth
    sorted by relevance, each prediction in rank order takes the unused same-video ground truth
    of highest IoU if that IoU is >= mu (and > 0), gain 2**rel - 1 at log2(rank + 1); ideal DCG
    from all relevances sorted; queries without a relevant moment are skipped."""
    by_query: dict[str, list[dict]] = {}
    for r in records:
        by_query.setdefault(str(r["query_id"]), []).append(r)
    scores = []
    for qid, moments in by_query.items():
        if not any(m["relevance"] > 0 for m in moments):
            continue
        truth = sorted(moments, key=lambda m: -m["relevance"])
        used: set[int] = set()
        dcg = 0.0
        for rank, pred in enumerate(predictions.get(qid, [])[:k], start=1):
            ps, pe = pred["timestamp"]
            best, best_iou = None, 0.0
            for j, m in enumerate(truth):
                if j in used or m["video_name"] != pred["video_name"]:
                    continue
                gs, ge = m["timestamp"]
                inter = max(0.0, min(pe, ge) - max(ps, gs))
                union = max(pe, ge) - min(ps, gs)
                iou = inter / union if union > 0 else 0.0
                if iou > best_iou:
                    best, best_iou = j, iou
            if best is not None and best_iou >= mu:
                used.add(best)
                dcg += (2 ** truth[best]["relevance"] - 1) / math.log2(rank + 1)
        ideal = sorted((m["relevance"] for m in moments), reverse=True)[:k]
        idcg = sum((2**rel - 1) / math.log2(rank + 1) for rank, rel in enumerate(ideal, start=1))
        scores.append(dcg / idcg)
    return sum(scores) / len(scores)


# --- the upper bound, by itself ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Span:
    video_key: str
    start_s: float
    end_s: float


def g(video: str, start: float, end: float, rel: float) -> GroundTruthMoment:
    return GroundTruthMoment(video, start, end, rel)


def test_upper_bound_clips_to_the_proposal_and_pairs_one_to_one() -> None:
    proposals = [Span("a", 0, 20), Span("b", 10, 30)]
    truth = [
        g("a", 5, 15, 4),  # inside proposal 0
        g("b", 0, 20, 3),  # half inside proposal 1: coverage 0.5
        g("a", 12, 18, 2),  # also inside proposal 0, which is taken by the rel-4 moment
        g("c", 0, 5, 4),  # no proposal in its video
        g("b", 20, 25, 0),  # relevance 0 earns nothing
    ]
    assert upper_bound_relevances(proposals, truth, 0.3) == [4.0, 3.0]
    assert upper_bound_relevances(proposals, truth, 0.5) == [4.0, 3.0]  # coverage 0.5 >= 0.5
    assert upper_bound_relevances(proposals, truth, 0.7) == [4.0]
    # One proposal may serve several moments only in the looser reading.
    assert upper_bound_relevances(proposals, truth, 0.7, one_per_proposal=False) == [4.0, 2.0]
    # The optimal pairing moves the rel-4 moment to proposal 1 to make room for the rel-3 one.
    two = [Span("a", 0, 10), Span("a", 0, 30)]
    assert upper_bound_relevances(two, [g("a", 2, 8, 4), g("a", 20, 28, 3)], 0.7) == [4.0, 3.0]
    assert upper_bound_relevances(two[:1], [g("a", 2, 8, 4), g("a", 4, 6, 3)], 0.7) == [4.0]

    report = upper_bound_report({"q": proposals}, {"q": truth, "none": [g("a", 0, 1, 0)]}, KS, IOUS)
    assert report.num_queries == 1
    ideal = 15 + 15 / math.log2(3) + 7 / 2 + 3 / math.log2(5)  # relevances 4, 4, 3, 2
    assert report.ndcg[10][0.3] == pytest.approx((15 + 7 / math.log2(3)) / ideal)
    assert report.ndcg[10][0.7] == pytest.approx(15 / ideal)
    assert report.recall[10][0.7] == pytest.approx(1 / 4)


# --- the pipeline on Faiss + SQLite ------------------------------------------------------------


def test_sp_finds_planted_events_and_writes_predictions(setup, tmp_path: Path) -> None:
    config, paths, _ = setup
    report = evaluate(config, paths["clean"], options(query_features=str(paths["qf"]), refine=False))
    assert report.spr is None and report.num_queries == 3 and report.sp.num_queries == 3
    assert report.sp.ndcg[10][0.5] == pytest.approx(1.0)
    assert report.sp.ndcg[10][0.7] == pytest.approx(2 / 3)  # B's coarse proposal has IoU 2/3
    sp = report.sp_predictions
    assert [(m.video_name, m.start_s, m.end_s) for m in sp["qA"]] == [("v0", 40.0, 48.0), ("v1", 12.0, 16.0)]
    assert [(m.video_name, m.start_s, m.end_s) for m in sp["qB"]] == [("v2", 20.0, 32.0)]
    assert set(report.timings_ms) == {"embed", "ann", "catalog", "proposals", "total"}

    written = write_outputs(report, tmp_path / "out")
    assert sorted(p.name for p in written) == ["metrics.json", "sp_predictions.json"]
    predictions = json.loads((tmp_path / "out" / "sp_predictions.json").read_text())
    assert set(predictions) == {"qA", "qB", "qC"}
    for moments in predictions.values():
        for m in moments:
            assert set(m) == {"video_name", "timestamp", "score"}
            assert isinstance(m["video_name"], str) and len(m["timestamp"]) == 2
            assert m["timestamp"][0] <= m["timestamp"][1] and isinstance(m["score"], float)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["sp"]["ndcg"]["10"]["0.5"] == pytest.approx(1.0) and metrics["spr"] is None
    assert "table" not in metrics and metrics["upper_bound"]["ndcg"]["40"]["0.7"] == pytest.approx(1.0)


def test_perfect_refiner_is_exact_and_the_upper_bound_is_one(setup) -> None:
    config, paths, checkpoint = setup
    report = evaluate(with_refiner(config, checkpoint), paths["clean"], options(query_features=str(paths["qf"])))
    assert report.refiner == "spr-clip:perfect.pt@1" and not report.degraded_queries
    spr = report.spr_predictions
    assert [(m.video_name, m.start_s, m.end_s) for m in spr["qB"]] == [("v2", 22.0, 30.0)]
    assert [(m.video_name, m.start_s, m.end_s) for m in spr["qA"]] == [("v0", 40.0, 48.0), ("v1", 12.0, 16.0)]
    assert spr["qA"][0].score == pytest.approx(1.0, abs=1e-3)
    assert report.refiner_batches is not None and report.refiner_batches["mean_queries"] >= 1
    for cells in (ndcg_cells(report.spr), ndcg_cells(report.upper_bound)):
        assert all(v == pytest.approx(1.0) for v in cells.values())
    assert set(report.timings_ms) == {"embed", "ann", "catalog", "proposals", "features", "refine", "total"}
    # The same with the query features declared already projected (mean pooling: identity).
    projected = evaluate(
        with_refiner(config, checkpoint), paths["clean"], options(query_features=str(paths["qf"]), projected=True)
    )
    assert ndcg_cells(projected.spr) == pytest.approx(ndcg_cells(report.spr))


def test_random_refiner_stays_inside_padded_spans_below_the_upper_bound(setup) -> None:
    config, paths, _ = setup
    report = evaluate(with_refiner(config, ""), paths["hard"], options(query_features=str(paths["qf"]), workers=3))
    assert report.random_weights and report.refiner == "spr-clip/random"
    assert report.num_queries == 4 and report.sp.num_queries == 3  # qD has no relevant moment
    for outcome in report.outcomes:
        assert len(outcome.spr) == len(outcome.sp) == len(outcome.padded) > 0
        for m in outcome.spr:
            assert any(
                p.video_key == m.video_name and p.start_s - 1e-6 <= m.start_s < m.end_s <= p.end_s + 1e-6
                for p in outcome.padded
            ), (outcome.query_id, m)
    ub, sp, spr = ndcg_cells(report.upper_bound), ndcg_cells(report.sp), ndcg_cells(report.spr)
    for cell in ub:
        assert ub[cell] >= sp[cell] - 1e-9 and ub[cell] >= spr[cell] - 1e-9
    assert ub[(10, 0.3)] < 1.0  # qB's second moment is in no proposal


def test_text_queries_through_clip_and_the_projector(setup) -> None:
    config, paths, checkpoint = setup
    config = with_refiner(config, checkpoint).replace(clip=ClipConfig(model="spr-tiny", device="cpu"))
    report = evaluate(config, paths["hard"], options(max_moments=2))
    assert report.query_source.startswith("text (spr-tiny/random") and report.random_weights
    assert report.timings_ms["embed"]["mean"] > 0
    assert all(0 < len(o.sp) <= 2 and len(o.spr) <= 2 for o in report.outcomes)


def test_setups_that_cannot_work_are_refused(setup, tmp_path: Path) -> None:
    config, paths, _ = setup
    qf = str(paths["qf"])
    with pytest.raises(EvalError, match="does not exist"):
        evaluate(config, paths["clean"], options(query_features=qf, collection="nope"))
    with pytest.raises(EvalError, match="--projected"):
        evaluate(config, paths["clean"], options(projected=True))
    with pytest.raises(EvalError, match="64-d vectors"):
        evaluate(config, paths["clean"], options(query_features=_features_file(tmp_path, 32), projected=True))
    with pytest.raises(EvalError, match="512-d but collection"):  # refused before building the model
        evaluate(config.replace(clip=ClipConfig(model="ViT-B-32", device="cpu")), paths["clean"], options())
    with pytest.raises(AnnotationError, match="no features for query"):
        evaluate(config, paths["clean"], options(query_features=_features_file(tmp_path / "few", D, ["qA"])))
    with pytest.raises(EvalError, match="does not exist; check refiner.checkpoint"):
        evaluate(with_refiner(config, str(tmp_path / "missing.pt")), paths["clean"], options(query_features=qf))
    small = tmp_path / "small.pt"
    save_refiner(small, build_refiner(RefinerShape(in_dim=32, text_in_dim=32, dim=32, layers=1, heads=4)))
    with pytest.raises(EvalError, match="expects 32-d CLIP frame features"):
        evaluate(with_refiner(config, str(small)), paths["clean"], options(query_features=qf))
    with pytest.raises(EvalError, match="all zeros"):
        evaluate(config, paths["clean"], options(query_features=_features_file(tmp_path / "zero", D, value=0.0)))


def _features_file(folder: Path, dim: int, ids=("qA", "qB", "qC", "qD"), value: float = 1.0) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"q{dim}.h5"
    with h5py.File(path, "w") as h5:
        for qid in ids:
            h5.create_dataset(qid, data=np.full(dim, value, dtype=np.float32))
    return str(path)


# --- Milvus + PostgreSQL -------------------------------------------------------------------------


@pytest.mark.milvus
@pytest.mark.postgres
def test_milvus_and_postgresql(setup, tmp_path: Path, milvus_uri: str, postgres_url: str) -> None:
    _, paths, checkpoint = setup
    config = make_config(tmp_path / "data", f"t_eval_{uuid.uuid4().hex[:8]}", postgres_url, milvus_uri)
    imported(config, paths)
    try:
        report = evaluate(with_refiner(config, checkpoint), paths["clean"], options(query_features=str(paths["qf"])))
    finally:
        store = open_vector_store(config)
        store.drop_collection(config.vectors.collection)
        store.close()
    assert report.backend == "milvus"
    assert report.sp.ndcg[10][0.5] == pytest.approx(1.0) and report.sp.ndcg[10][0.7] == pytest.approx(2 / 3)
    assert all(v == pytest.approx(1.0) for v in ndcg_cells(report.spr).values())
    assert predictions_to_json(report.spr_predictions)["qB"] == [
        {"video_name": "v2", "timestamp": [22.0, 30.0], "score": pytest.approx(1.0, abs=1e-3)}
    ]


# --- the command line ----------------------------------------------------------------------------


def test_cli_end_to_end_matches_an_independent_ndcg(setup, tmp_path: Path) -> None:
    _, _, checkpoint = setup
    paths = write_inputs(tmp_path / "inputs")
    env = {"SPR_DATA_DIR": str(tmp_path / "data"), "SPR_REFINER__CHECKPOINT": checkpoint, "SPR_REFINER__DEVICE": "cpu"}
    done = run_spr("import", str(paths["h5"]), "--manifest", str(paths["manifest"]), "--collection", "clic", env=env)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    args = ("eval", str(paths["hard"]), "--collection", "clic", "--query-features", str(paths["qf"]))
    done = run_spr(*args, "--top-k-segments", str(TOP_K), "--workers", "2", "--out-dir", str(out), env=env)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for needle in ("NDCG", "@10", "@40", "IoU>=", "SP ", "SPR ", "UB ", "embed", "ann", "catalog", "proposals"):
        assert needle in text, needle
    assert "features" in text and "refine" in text
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "sp_predictions.json", "spr_predictions.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    records = json.loads(paths["hard"].read_text())
    for name in ("sp", "spr"):
        predictions = json.loads((out / f"{name}_predictions.json").read_text())
        assert set(predictions) == {"qA", "qB", "qC", "qD"}
        for k in KS:
            for mu in IOUS:
                mine = independent_ndcg(predictions, records, k, mu)
                assert metrics[name]["ndcg"][str(k)][str(mu)] == pytest.approx(mine, abs=1e-9), (name, k, mu)
    assert metrics["spr"]["ndcg"]["10"]["0.7"] > metrics["sp"]["ndcg"]["10"]["0.7"]  # refinement fixed B
    assert metrics["upper_bound"]["ndcg"]["10"]["0.7"] >= metrics["spr"]["ndcg"]["10"]["0.7"]

    done = run_spr(*args, "--no-refine", "--top-k-segments", str(TOP_K), "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["spr"] is None


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"query_id": 1, "query": "x", "video_name": "v0", "timestamp": [1, 2], "duration": 9}\n', "relevance"),
        ('{"query_id": 1, "query": "x", "video_name": "v0", "timestamp": [1, 2]\n', "not valid JSON"),
        ('{"query_id": 1, "query": "x", "video_name": "v0", "timestamp": [5, 2], "relevance": 1}\n', "ends before"),
    ],
)
def test_cli_bad_query_file_exits_2_with_one_line(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    done = run_spr("eval", str(bad), env={"SPR_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("spr: error:") and message in lines[0], done.stderr
    assert str(bad) in lines[0]
