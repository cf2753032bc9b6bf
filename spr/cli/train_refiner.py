"""``spr train refiner``: train SPR_CLIP on a query file's coarse proposals from the stores."""

from __future__ import annotations

import argparse
import json
from typing import Any


# What a refiner trained without --shape serves with: precomputed windowed frame context,
# the fast CPU path (issue 13).
DEFAULT_CONTEXT_WINDOW = 64


def add_refiner_commands(train_sub: Any) -> None:
    p = train_sub.add_parser(
        "refiner",
        help="train the SPR_CLIP refiner on tau_C-padded coarse proposals (ReLoCLNet-style objectives)",
        description="Retrieve each training query's coarse proposals from the configured stores, read their "
        "frame features, label them with the query's moments and train the refiner. Load the result with "
        "refiner.checkpoint.",
    )
    p.add_argument("--train", required=True, metavar="FILE", help="TVR-Ranking-format queries (JSON or JSONL)")
    p.add_argument("--top-n", type=int, metavar="N", help="keep each query's N best moments (pseudo-training sets)")
    p.add_argument("--query-features", metavar="H5", help="precomputed CLIP text features keyed by query id")
    p.add_argument("--collection", help="collection to retrieve from (default: vectors.collection)")
    p.add_argument("--out", required=True, metavar="CKPT", help="where to write the trained refiner")
    p.add_argument("--epochs", type=int, help="default: train.epochs")
    p.add_argument("--batch-queries", type=int, default=32, help="queries per step (default 32)")
    p.add_argument("--proposals-per-query", type=int, default=8, help="proposals per query per step (default 8)")
    p.add_argument("--lr", type=float, help="default: train.lr")
    p.add_argument(
        "--shape", metavar="NAME",
        help="the architecture of a named refiner config (refiner-vit-l-14, refiner-spr-tiny; see "
        "spr.models.registry) or a .json file; feature sizes come from the data; --dim/--layers/--heads override it",
    )
    p.add_argument("--dim", type=int, help="joint space size (default 768, or --shape's)")
    p.add_argument("--layers", type=int, help="Transformer layers (default 2, or --shape's)")
    p.add_argument("--heads", type=int, help="attention heads (default 8, or --shape's)")
    p.add_argument(
        "--context-window", type=int, metavar="FRAMES",
        help=f"frame context: the Transformer over fixed windows of FRAMES frames of each video, precomputed "
        f"per video for serving (default {DEFAULT_CONTEXT_WINDOW}, or --shape's); 0 = the paper's online mode, "
        "over each proposal at query time",
    )
    p.add_argument("--no-oracle", action="store_true", help="do not add proposals for moments the search missed")
    p.add_argument("--no-hard-negatives", action="store_true", help="hinge only against other queries' proposals")
    p.add_argument("--no-ranking", action="store_true", help="drop the strong/weak positive ranking hinge")
    p.add_argument("--seed", type=int, help="default: train.seed")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_train_refiner)


def cmd_train_refiner(config: Any, args: argparse.Namespace) -> int:
    import numpy as np

    from spr.errors import UsageError
    from spr.models.clip import load_clip_from_config, resolve_device
    from spr.models.projector import load_projectors
    from spr.data.tvr_ranking import AnnotationError, load_query_features, load_query_records

    from dataclasses import replace

    from spr.models.registry import RefinerShape, model_config
    from spr.train.refiner import RefinerTrainingOptions, examples_from_stores, train_refiner

    t = config.train
    try:  # a wrong name fails before CLIP loads
        named = model_config(args.shape, "refiner") if args.shape else None
    except ValueError as exc:
        raise UsageError(f"--shape: {exc}") from None
    try:
        records = load_query_records(args.train, top_n=args.top_n)
        if args.query_features:
            features = load_query_features(args.query_features, [r.query_id for r in records])
            clip_name = "precomputed"
        else:
            clip = load_clip_from_config(config.clip)
            encoded = np.concatenate([clip.encode_texts([r.query for r in records[i : i + 256]]) for i in range(0, len(records), 256)])
            features = {r.query_id: f for r, f in zip(records, encoded)}
            clip_name = clip.identity
    except (AnnotationError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    if not features:
        raise UsageError(f"no query of {args.train} has a feature; check --query-features")
    text_dim = len(next(iter(features.values())))
    projectors = load_projectors(config.projector.checkpoint, text_dim, uses=("queries",))
    if args.context_window is not None:
        window = args.context_window
    else:
        window = named.context_window if named is not None else DEFAULT_CONTEXT_WINDOW
    if window < 0 or window % 2 or window == 2:
        raise UsageError(f"--context-window must be 0 (online) or an even number of frames >= 4, got {window}")
    examples = examples_from_stores(
        config, records, features, args.collection or config.vectors.collection,
        lambda q: projectors.project_texts(q), oracle=not args.no_oracle, context_window=window,
    )
    if not examples:
        raise UsageError(
            "no training query has a proposal holding one of its moments: are the videos ingested (or imported) "
            "into this collection, with frame features?"
        )
    in_dim = examples[0].proposals[0].features.shape[1]
    flags = {k: v for k, v in {"dim": args.dim, "layers": args.layers, "heads": args.heads}.items() if v is not None}
    flags["context_window"] = window
    try:
        shape = replace(named or RefinerShape(in_dim=in_dim, text_in_dim=text_dim), in_dim=in_dim, text_in_dim=text_dim, **flags)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    options = RefinerTrainingOptions(
        epochs=args.epochs or t.epochs,
        batch_queries=args.batch_queries,
        proposals_per_query=args.proposals_per_query,
        lr=args.lr or t.lr,
        weight_decay=t.weight_decay,
        grad_clip=t.grad_clip,
        warmup_fraction=t.warmup_fraction,
        temperature=t.temperature,
        hard_negatives=not args.no_hard_negatives,
        strong_weak_ranking=not args.no_ranking,
        seed=t.seed if args.seed is None else args.seed,
        device=resolve_device(t.device),
    )
    _, summary = train_refiner(examples, shape, options, args.out, clip_model=clip_name, train_file=str(args.train))
    report = {
        "queries": len(records),
        "examples": len(examples),
        "proposals": sum(len(e.proposals) for e in examples),
        "steps": summary.steps,
        "epochs": summary.epochs,
        "final_loss": summary.final_loss,
        "losses": summary.losses,
        "steps_per_s": summary.steps_per_s,
        "checkpoint": summary.checkpoint,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"trained the refiner on {report['examples']} of {report['queries']} queries ({report['proposals']} proposals): "
            f"{summary.steps} steps, {summary.steps_per_s:.1f} steps/s, final loss {summary.final_loss:.3f}"
        )
        print(f"  checkpoint: {summary.checkpoint}  (set refiner.checkpoint to use it)")
    return 0
