"""``spr refiner precompute``: a windowed refiner's frame context for every video (issue 13).

A refiner whose frame Transformer runs over fixed windows of each video (``context_window > 0``,
the default of ``spr train refiner``) reads each proposal's context rows from the feature store
at query time instead of running the Transformer. This command computes them with
``refiner.checkpoint``, for every video with frame features whose rows are missing or were made
by other weights; ``spr ingest``, ``spr import`` and ``spr reembed`` run it over what they wrote. A refiner that
finds no current rows computes them from the frames itself (slower, never stale).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["add_precompute_command", "cmd_refiner_precompute", "precompute_or_warn", "precompute_refiner_context"]


def add_precompute_command(refiner_parser: Any) -> None:
    """``spr refiner precompute`` under the ``spr refiner`` parser (which serves without a verb)."""
    sub = refiner_parser.add_subparsers(dest="refiner_verb", metavar="{precompute}")
    p = sub.add_parser(
        "precompute",
        help="compute a windowed refiner's frame context for every video (once per checkpoint)",
        description=__doc__.split("\n\n", 1)[1].strip(),
    )
    p.add_argument("--force", action="store_true", help="recompute rows that are already current")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(handler=cmd_refiner_precompute)


def precompute_refiner_context(config: Any, *, force: bool = False, quiet: bool = False) -> dict | None:
    """Context rows of ``config.refiner`` for every video with frame features; the report, or
    None when the refiner runs online (nothing to precompute) or there are no videos."""
    from spr.features import FrameFeatureStore
    from spr.refine.context import precompute_contexts
    from spr.refine.inprocess import load_model

    store = FrameFeatureStore.from_config(config)
    ids = store.video_ids()
    if not ids:
        return None
    in_dim = store.info(ids[0])[1]
    model = load_model(config, in_dim)
    if not model.windowed:
        return None
    last = [0.0]

    def progress(done: int, total: int, report: Any) -> None:
        now = time.monotonic()
        if not quiet and (done == total or now - last[0] > 2.0):
            last[0] = now
            print(f"refiner context {done}/{total} videos ({len(report.written)} written, {report.rows} rows)",
                  file=sys.stderr, flush=True)

    report = precompute_contexts(model, store, ids, force=force, progress=progress)
    return {
        "refiner": model.name,
        "random_weights": model.random_weights,
        "version": model.context_version(),
        "written": len(report.written),
        "current": len(report.current),
        "missing": report.missing,
        "rows": report.rows,
        "wall_s": report.wall_s,
        "rows_per_s": report.rows / report.wall_s if report.wall_s else 0.0,
    }


def precompute_or_warn(config: Any) -> dict | None:
    """:func:`precompute_refiner_context` after a command wrote videos (ingest, import,
    reembed): the rows of those that lack current ones. A failure here loses nothing (the
    refiner computes missing rows itself), so it is a warning on stderr, not an error."""
    from spr.refinement import RefinerLoadError

    try:
        return precompute_refiner_context(config)
    except (RefinerLoadError, OSError, ValueError) as exc:
        print(f"warning: refiner context not precomputed ({exc}); run `spr refiner precompute` after fixing it",
              file=sys.stderr)
        return {"error": str(exc)}


def cmd_refiner_precompute(config: Any, args: argparse.Namespace) -> int:
    from spr.errors import UsageError
    from spr.refinement import RefinerLoadError

    try:
        report = precompute_refiner_context(config, force=args.force)
    except RefinerLoadError as exc:
        raise UsageError(str(exc)) from None
    if report is None:
        report = {"written": 0, "note": "nothing to do: no videos with frame features, or the refiner runs online"}
    if args.json:
        print(json.dumps(report, indent=2))
    elif "note" in report:
        print(report["note"])
    else:
        print(
            f"refiner context: {report['written']} videos written, {report['current']} already current "
            f"({report['rows']} rows, {report['rows_per_s']:.0f} rows/s) for {report['refiner']}"
            + (" (RANDOM weights)" if report["random_weights"] else "")
        )
    return 0
