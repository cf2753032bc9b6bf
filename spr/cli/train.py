"""``spr train ...`` (and, from the evaluation side, ``spr eval``): learning from the command line.

Each trainer registers its own ``spr train WHAT`` subcommand with a function taking the
``train`` subparsers (:data:`TRAIN_COMMANDS`); top-level commands of this package (``spr
eval``) register with the top-level subparsers (:data:`TOP_LEVEL_COMMANDS`). Nothing heavy is
imported at module level: building the parser must not load torch.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any


# --- spr train projector ----------------------------------------------------------------------


def add_projector_commands(train_sub: Any) -> None:
    """``spr train projector``: the visual and text projectors of SPR section 3.1."""
    p = train_sub.add_parser(
        "projector",
        help="train the visual and text feature projectors (MIL-NCE on frozen CLIP features)",
        description="Train the segment (visual) and query (text) projectors on TVR-Ranking-format "
        "annotations with frozen CLIP features: segments of segments.length_s whose overlap with a "
        "moment covers train.positive_overlap of them are its positives; symmetric MIL-NCE over "
        "in-batch pairs, AdamW, warm-up + cosine. Defaults come from the [train] configuration "
        "section. A resumable training state is written beside the checkpoint (<out>.state) after "
        "every epoch; the checkpoint is what projector.checkpoint takes.",
    )
    p.add_argument("--train", required=True, metavar="FILE", help="training annotations (TVR-Ranking JSONL/JSON)")
    p.add_argument("--val", metavar="FILE", help="validation annotations: their MIL-NCE loss is logged per epoch")
    p.add_argument("--top-n", type=int, metavar="N", help="keep each training query's N best moments (pseudo-training top-N)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--features-from-catalog",
        action="store_true",
        help="read frame features from the frame-feature store through the catalog (what ingest / spr import wrote)",
    )
    source.add_argument("--features", metavar="H5", help="a TVR-layout HDF5 file: one (T, D) dataset per video name")
    p.add_argument("--clip-length", type=float, default=1.0, metavar="S", help="seconds per feature row of --features (default 1.0)")
    p.add_argument(
        "--query-features",
        metavar="H5",
        help="precomputed query features (HDF5, one 1-D dataset per query id); default: encode the queries "
        "with the configured CLIP text tower (clip.model), once per query",
    )
    p.add_argument("--out", metavar="CKPT", help="checkpoint to write (default: <data_dir>/models/projector.pt)")
    p.add_argument(
        "--resume",
        metavar="STATE",
        help="continue from a training state (<out>.state, or the checkpoint beside it); options not given "
        "again are taken from it",
    )
    p.add_argument("--epochs", type=int, help="epochs (default: train.epochs)")
    p.add_argument("--batch-size", type=int, help="query-segment pairs per batch (default: train.batch_size)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: train.lr)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: train.weight_decay)")
    p.add_argument("--temperature", type=float, help="MIL-NCE temperature (default: train.temperature)")
    p.add_argument("--positive-overlap", type=float, help="overlap fraction making a segment positive (default: train.positive_overlap)")
    p.add_argument("--seed", type=int, help="random seed (default: train.seed)")
    p.add_argument(
        "--shape", metavar="NAME",
        help="take --dim, --layers, --heads and --dropout from a named projector config "
        f"({', '.join(_config_names('projector'))}) or a .json file; feature sizes come from the data; the flags override it",
    )
    p.add_argument("--dim", type=int, help="projected size (default 768, the paper's)")
    p.add_argument("--layers", type=int, help="Transformer layers of the visual projector (default 6, the paper's)")
    p.add_argument("--heads", type=int, help="attention heads (default 8; must divide --dim)")
    p.add_argument("--dropout", type=float, help="dropout in the visual projector (default 0.1)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: train.device)")
    p.add_argument("--save-every", type=int, metavar="STEPS", help="also write the training state every STEPS steps")
    p.add_argument("--log-every", type=int, default=50, metavar="STEPS", help="progress log line every STEPS steps (default 50)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_train_projector)


def cmd_train_projector(config: Any, args: argparse.Namespace) -> int:
    from spr.errors import UsageError

    from spr.data.tvr_ranking import AnnotationError, load_query_features, load_query_records
    from spr.train.projector import (
        CatalogFrameSource,
        Hdf5FrameSource,
        ProjectorTrainingOptions,
        read_resume_state,
        encode_query_texts,
        train_projectors,
    )

    for name in ("epochs", "batch_size", "top_n", "save_every", "dim", "layers", "heads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    named = _named_architecture(args.shape, "projector", ("dim", "layers", "heads", "dropout")) if args.shape else {}
    try:
        train = load_query_records(args.train, top_n=args.top_n)
        val = load_query_records(args.val, require_relevance=False) if args.val else None
    except AnnotationError as exc:
        raise UsageError(str(exc)) from None

    saved: dict[str, Any] = {}
    if args.resume:
        try:
            saved = dict(read_resume_state(args.resume).options)
        except (ValueError, FileNotFoundError) as exc:
            raise UsageError(str(exc)) from None
    explicit = {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "temperature": args.temperature, "positive_overlap": args.positive_overlap, "seed": args.seed, "dim": args.dim,
        "layers": args.layers, "heads": args.heads, "dropout": args.dropout, "device": args.device,
        "save_every_steps": args.save_every, "log_every": args.log_every,
    }
    base = ProjectorTrainingOptions.from_config(config)
    merged = {**base.__dict__, **{k: v for k, v in saved.items() if k in base.__dict__}}
    merged.update(named)  # a named config's architecture beats a resumed run's; explicit flags beat both
    merged.update({k: v for k, v in explicit.items() if v is not None})
    options = ProjectorTrainingOptions(**merged)
    try:
        options.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    out = args.out
    if not out and args.resume:
        out = args.resume[: -len(".state")] if args.resume.endswith(".state") else args.resume
    out = out or os.path.join(config.data_path, "models", "projector.pt")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    records = list(train) + list(val or [])
    try:
        if args.query_features:
            text = load_query_features(args.query_features, list(dict.fromkeys(r.query_id for r in records)))
            text_source = f"file:{os.path.basename(args.query_features)}"
        else:
            from spr.models.clip import load_clip_from_config

            clip = load_clip_from_config(config.clip)  # the text tower at clip.text_precision, as served
            text = encode_query_texts(records, clip.encode_texts, batch_size=max(1, config.clip.batch_size))
            text_source = clip.identity
    except AnnotationError as exc:
        raise UsageError(str(exc)) from None

    if args.features_from_catalog:
        frames = CatalogFrameSource(config)
        feature_source = "catalog"
    else:
        if not os.path.isfile(args.features):
            raise UsageError(f"feature file {args.features} does not exist")
        if not (args.clip_length > 0):
            raise UsageError(f"--clip-length must be a positive number of seconds, got {args.clip_length}")
        try:
            frames = Hdf5FrameSource(args.features, args.clip_length)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        feature_source = f"file:{os.path.basename(args.features)}"
    try:
        _, summary = train_projectors(
            train, frames, text, out, options, val_records=val, resume=args.resume,
            clip_model=config.clip.model, query_feature_source=text_source, frame_feature_source=feature_source,
            train_file=os.path.basename(args.train),
        )
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    finally:
        frames.close()
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        val_text = f", validation loss {summary.val_loss:.4f}" if summary.val_loss is not None else ""
        print(
            f"trained projectors: {summary.steps} steps over {summary.epochs} epochs on {summary.device} "
            f"({summary.steps_per_s:.1f} steps/s), final loss {summary.final_loss:.4f}{val_text}\n"
            f"data: {summary.data['queries']} queries, {summary.data['entries']} query-moment pairs, "
            f"{summary.data['segments']} positive segments\n"
            f"checkpoint: {summary.checkpoint}\n"
            f"training state (for --resume): {summary.state_path}\n"
            f"use it: set projector.checkpoint (SPR_PROJECTOR__CHECKPOINT={summary.checkpoint}) and re-import or "
            f"re-ingest into a new collection"
        )
    return 0


def _config_names(kind: str) -> list[str]:
    from spr.models.registry import list_model_configs

    return list_model_configs(kind)


def _named_architecture(name: str, kind: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The ``keys`` fields of the ``kind`` config ``name`` (a UsageError naming the known ones
    if there is none)."""
    from spr.errors import UsageError
    from spr.models.registry import model_config

    try:
        shape = model_config(name, kind)
    except ValueError as exc:
        raise UsageError(f"--shape: {exc}") from None
    return {key: getattr(shape, key) for key in keys}


# --- spr train synthetic ----------------------------------------------------------------------


def add_synthetic_commands(train_sub: Any) -> None:
    """``spr train synthetic``: write the synthetic benchmark of :mod:`spr.data.synthetic`."""
    p = train_sub.add_parser(
        "synthetic",
        help="write a small synthetic benchmark (features, manifest, TVR-Ranking queries) for CI and demos",
        description="Write a seeded synthetic benchmark: per-second features of videos with planted events "
        "(features.h5, TVR layout, 1-s rows), their durations (durations.jsonl), train/val/test queries in "
        "TVR-Ranking JSONL and the queries' CLIP text features (query_features.h5, from clip.model). "
        "Then: spr import OUTDIR/features.h5 --manifest OUTDIR/durations.jsonl; spr train projector "
        "--train OUTDIR/train.jsonl --features-from-catalog.",
    )
    p.add_argument("outdir", metavar="OUTDIR", help="directory to write (created)")
    p.add_argument("--videos", type=int, default=60, help="videos (default 60)")
    p.add_argument("--types", type=int, default=8, help="event types, one caption each (default 8)")
    p.add_argument("--dim", type=int, help="feature size (default: clip.model's, so search can use the projectors)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-query-features",
        action="store_true",
        help="do not load CLIP to write query_features.h5 (training then encodes the queries itself)",
    )
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(handler=cmd_train_synthetic)


def cmd_train_synthetic(config: Any, args: argparse.Namespace) -> int:
    from spr.errors import UsageError

    from spr.data.synthetic import make_synthetic_benchmark

    encoder, name = None, ""
    dim = args.dim
    if not args.no_query_features:
        from spr.models.clip import load_clip_from_config

        clip = load_clip_from_config(config.clip)  # the text tower at clip.text_precision, as served
        encoder, name = clip.encode_texts, clip.identity
        dim = dim or clip.dim
    elif dim is None:
        from spr.models.clip import clip_feature_dim

        dim = clip_feature_dim(config.clip.model)
    try:
        bench = make_synthetic_benchmark(
            videos=args.videos, types=args.types, dim=dim, seed=args.seed, text_encoder=encoder, text_encoder_name=name
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    paths = bench.write(args.outdir)
    described = {**bench.describe(), "paths": paths}
    if args.json:
        print(json.dumps(described, indent=2))
    else:
        print(
            f"synthetic benchmark in {args.outdir}: {len(bench.videos)} videos ({described['hours']} h, {dim}-d features at "
            f"1 row/s), {len(bench.events)} planted events of {len(bench.types)} types; queries "
            + ", ".join(f"{s} {n}" for s, n in described["queries"].items())
        )
        for role, path in paths.items():
            print(f"  {role:<15} {path}")
    return 0


# --- registration -----------------------------------------------------------------------------

# ``spr train WHAT``: each function gets the ``train`` subparsers. Other trainers append theirs
# (e.g. the refiner's ``add_refiner_commands``) to this list.
def _add_refiner_commands(train_sub: Any) -> None:
    # The refiner's training lives with its model (refiner/); its parser imports nothing heavy.
    from spr.cli.train_refiner import add_refiner_commands

    add_refiner_commands(train_sub)


TRAIN_COMMANDS: list[Callable[[Any], None]] = [add_projector_commands, _add_refiner_commands, add_synthetic_commands]

# Top-level commands of this package (``spr eval``): each function gets the top-level ``spr``
# subparsers.
def _add_eval_command(sub: Any) -> None:
    from spr.cli.eval import add_eval_command

    add_eval_command(sub)


TOP_LEVEL_COMMANDS: list[Callable[[Any], None]] = [_add_eval_command]


def add_commands(sub: Any) -> None:
    train = sub.add_parser(
        "train",
        help="train models (projector, ...) or write the synthetic benchmark",
        description="Training commands; defaults come from the [train] configuration section.",
    )
    train_sub = train.add_subparsers(title="what to train", metavar="WHAT", required=True)
    for register in TRAIN_COMMANDS:
        register(train_sub)
    for register in TOP_LEVEL_COMMANDS:
        register(sub)
