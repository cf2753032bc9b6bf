"""``spr eval``: score the query pipeline on a TVR-Ranking query file (SP, SPR and the upper
bound, NDCG@K at IoU>=mu, per-stage timings). The scoring is in :mod:`spr.eval.evaluation`; this
module wires it (:func:`evaluate`): the search engine over the configured stores, with the
refiner of the refine stage in this process. Imported on use, so that building the parser loads
neither torch nor the stores."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

_PROGRESS_EVERY = 100


def add_eval_command(sub: Any) -> None:
    """Add ``eval`` to the ``spr`` subcommands (``sub`` from ``add_subparsers``)."""
    p = sub.add_parser(
        "eval",
        help="evaluate search on a TVR-Ranking query file: NDCG@K, IoU>=mu for SP, SPR and the upper bound",
        description="Run every query of a TVR-Ranking file (JSONL or JSON records: query_id, query, video_name, "
        "timestamp [s, e], duration, relevance) through the real pipeline on the configured stores: query "
        "embedding, ANN top-k segments, one catalog round trip, proposals (proposals.gap_rule), tau_C padding "
        "(proposals.pad_s) and, unless --no-refine, the SPR_CLIP refiner of refiner.checkpoint on the frame "
        "features. Prints NDCG@10/20/40 at IoU 0.3/0.5/0.7 for SP (coarse proposals), SPR (refined) and UB (the "
        "paper's Table 4 upper bound: perfect refinement and re-ranking of the padded proposals), and per-stage "
        "timings. Exit code 2 when the evaluation cannot start (bad query file, unknown collection, dimensions "
        "that do not fit).",
    )
    p.add_argument("queries", metavar="QUERIES", help="TVR-Ranking query file (JSONL, JSON array or {\"data\": [...]})")
    p.add_argument("--collection", help="collection to search (default: vectors.collection)")
    p.add_argument(
        "--query-features",
        metavar="H5",
        help="precomputed CLIP text features, one 1-D dataset per query id, used instead of encoding the query "
        "texts; they go through the text projector (projector.checkpoint) unless --projected",
    )
    p.add_argument(
        "--projected",
        action="store_true",
        help="the --query-features are already joint-space query embeddings (the collection's dimension)",
    )
    p.add_argument("--no-refine", dest="refine", action="store_false", help="coarse proposals only (SP and UB)")
    p.add_argument(
        "--top-k-segments",
        type=int,
        metavar="N",
        help="segments retrieved per query (default: proposals.top_k_segments, 200)",
    )
    p.add_argument("--nprobe", type=int, metavar="N", help="IVF lists to probe (default: the index's), as spr search")
    p.add_argument("--ef", type=int, metavar="N", help="HNSW search breadth (default: the index's), as spr search")
    p.add_argument("--max-moments", type=int, default=100, metavar="N", help="predictions kept per query (default 100)")
    p.add_argument(
        "--workers",
        type=int,
        default=4,
        metavar="N",
        help="queries in flight (store, catalog and feature reads in parallel; refinement batched across them; default 4)",
    )
    p.add_argument(
        "--batch-queries",
        type=int,
        default=64,
        metavar="N",
        help="queries per coarse batch: one vector-store search and one catalog lookup per N queries, the same "
        "results as one query at a time (default 64; 1: each query searches alone)",
    )
    p.add_argument(
        "--out-dir",
        metavar="DIR",
        help="write sp_predictions.json, spr_predictions.json and metrics.json here",
    )
    p.add_argument(
        "--visual-only", dest="modalities", action="store_false",
        help="skip scoring each text track (speech, subtitles) alone and the fusion",
    )
    p.add_argument("--json", action="store_true", help="print metrics.json instead of the tables")
    p.set_defaults(handler=cmd_eval)


def cmd_eval(config: Any, args: argparse.Namespace) -> int:
    from spr.errors import UsageError

    from spr.data.tvr_ranking import AnnotationError
    from spr.eval.evaluation import EvalError, EvalOptions, write_outputs

    options = EvalOptions(
        collection=args.collection,
        query_features=args.query_features,
        projected=args.projected,
        refine=args.refine,
        top_k_segments=args.top_k_segments,
        max_moments=args.max_moments,
        workers=args.workers,
        batch_queries=args.batch_queries,
        modalities=args.modalities,
        nprobe=args.nprobe,
        ef=args.ef,
    )
    try:
        report = evaluate(config, args.queries, options, progress=_print_progress)
    except (AnnotationError, EvalError) as exc:
        raise UsageError(" ".join(str(exc).split())) from None
    written = write_outputs(report, args.out_dir) if args.out_dir else []
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.format_table())
        for path in written:
            print(f"wrote {path}")
    return 0


def evaluate(
    config: Any,
    queries: Any,
    options: Any = None,
    *,
    model: Any = None,
    progress: Any = None,
) -> Any:
    """:func:`spr.eval.evaluation.run_evaluation` of ``queries`` on the engine over ``config``'s
    catalog and vector store, refining (unless ``options.refine`` is False) with the refiner in
    this process: ``refiner.checkpoint`` (or ``model``, an SPRClipRefiner), loaded on first use
    for the frame features' size. Returns the :class:`~spr.eval.evaluation.EvalReport`; raises
    :class:`~spr.eval.evaluation.EvalError` for a setup that cannot work."""
    import os

    from spr.engine import MomentSearch
    from spr.eval.evaluation import EvalError, EvalOptions, load_eval_queries, run_evaluation

    options = options if options is not None else EvalOptions()
    if isinstance(queries, (str, os.PathLike)):  # a bad query file is refused before any store opens
        queries = load_eval_queries(queries)
    refiner = None
    if options.refine:
        from spr.refine.inprocess import InProcessRefiner

        refiner = InProcessRefiner.loading_on_first_use(config, model=model)
    try:
        from spr.models.text import load_text_encoder

        text_encoder = load_text_encoder(config) if options.modalities else None
        search = MomentSearch.open(config, refiner=refiner, text_encoder=text_encoder)
    except ValueError as exc:  # proposals.gap_rule
        if refiner is not None:
            refiner.close()
        raise EvalError(str(exc)) from None
    with search:
        return run_evaluation(config, queries, options, search=search, progress=progress)


def _print_progress(done: int, total: int) -> None:
    if done % _PROGRESS_EVERY == 0 and done < total:
        print(f"eval {done}/{total} queries", file=sys.stderr, flush=True)
