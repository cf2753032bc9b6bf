"""The ``spr`` command line: one entry point, one subcommand per job.

Every subcommand loads the configuration once (``--config FILE`` or ``$SPR_CONFIG``, then
``SPR_*`` variables) and passes it down. Errors a user can fix are printed as one line
saying what to do, with exit code 2; a crash is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from spr import __version__
from spr.config import Config, ConfigError, load_config
from spr.errors import UsageError
from spr.logs import configure_logging

log = logging.getLogger("spr")

# Each stage owns its subcommands: these modules define ``add_commands(subparsers)``; their
# handlers take ``(config, args)`` like the ones below. They must import nothing heavy at
# module level (``spr version`` should not load torch).
COMMAND_MODULES = ("spr.cli.ingest", "spr.cli.importer", "spr.cli.serve", "spr.cli.train")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        config = load_config(args.config)
        configure_logging(config.logging)
        return int(args.handler(config, args) or 0)
    except (UsageError, ConfigError) as exc:
        print(f"spr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spr: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Known failure types of the stores carry actionable messages of their own.
        if _is_operational(exc):
            print(f"spr: error: {exc}", file=sys.stderr)
            return 2
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spr",
        description="Scalable text-to-video-moment search (SPR). Embedded defaults: SQLite catalog, "
        "local Faiss vectors, local Ray, services on 127.0.0.1; cluster values come from the same "
        "configuration keys (file or SPR_* variables).",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file (default: $SPR_CONFIG)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(handler=cmd_version)

    p = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    p.set_defaults(handler=cmd_config)

    p = sub.add_parser("status", help="videos per status and vectors per collection")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser(
        "smoke",
        help="end-to-end smoke run of the catalog, the vector store and proposals on a synthetic corpus",
    )
    p.add_argument("--videos", type=int, default=20, help="synthetic videos to publish (default 20)")
    p.add_argument("--events", type=int, default=5, help="planted events to look up (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--collection", default="smoke", help="collection to fill (default 'smoke')")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of tables")
    p.set_defaults(handler=cmd_smoke)

    milvus = sub.add_parser(
        "milvus",
        help="run a development Milvus standalone server (the `milvus` package; listens on ALL interfaces)",
    )
    msub = milvus.add_subparsers(title="actions", metavar="ACTION", required=True)
    for action, helptext in (
        ("start", "start the server (or report the running one) and wait until healthy"),
        ("stop", "stop the server"),
        ("status", "say whether it runs, its URI and pid; exit 1 if it does not"),
    ):
        p = msub.add_parser(action, help=helptext)
        p.add_argument("--dir", help="server data directory (default: milvus.embedded_dir or <data_dir>/milvus)")
        p.add_argument("--port", type=int, help="gRPC port (default: milvus.embedded_port; 0 = first free from 19530)")
        p.set_defaults(handler=cmd_milvus, action=action)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


# -- commands ----------------------------------------------------------------------------------


def cmd_version(config: Config, args: argparse.Namespace) -> int:
    print(f"spr {__version__}")
    return 0


def cmd_config(config: Config, args: argparse.Namespace) -> int:
    from spr.catalog import masked_url

    shown = config.as_dict()
    shown["catalog"]["url"] = masked_url(config.catalog_url)
    for section in ("milvus", "security"):
        if shown[section]["token"]:
            shown[section]["token"] = "***"
    shown["data_dir"] = str(config.data_path)
    print(json.dumps(shown, indent=2))
    return 0


# `spr status` lists the warnings (broken subtitle files, failed ASR) of at most this many videos,
# and at most this many running and abandoned ingest runs.
_STATUS_WARNINGS = 20
_STATUS_RUNS = 10


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    try:
        code = _print_status(config)
        sys.stdout.flush()  # inside the try: a reader that left (`| head`) shows here
        return code
    except BrokenPipeError:
        # The reader has what it wanted: exit quietly, and keep the interpreter's final flush
        # from failing again on the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0


def _print_status(config: Config) -> int:
    from spr.catalog import RunStatus, SegmentCatalog, masked_url
    from spr.stores import open_vector_store

    with SegmentCatalog.from_config(config) as catalog:
        counts = catalog.count_by_status()
        collections = catalog.list_collections()
        segments = catalog.segment_counts_by_status()
        tracks = catalog.track_counts()
        runs = catalog.count_runs_by_status()
        open_runs = catalog.list_runs(RunStatus.RUNNING.value, limit=_STATUS_RUNS)
        abandoned = catalog.list_runs(RunStatus.ABANDONED.value, limit=_STATUS_RUNS)
        texts = {track: catalog.segment_text_count(track) for track in tracks}
        warned = [v for v in catalog.list_videos() if v.warnings][:_STATUS_WARNINGS]
    print(f"catalog  {masked_url(config.catalog_url)}")
    # Only ready videos' segments are searchable; the others' rows are shown apart.
    others = "".join(f", {n} of {status} videos" for status, n in segments.items() if status != "ready" and n)
    print("videos   " + "  ".join(f"{status}={n}" for status, n in counts.items())
          + f"  (segments: {segments['ready']}{others})")
    if any(runs.values()):
        print("runs     " + "  ".join(f"{status}={n}" for status, n in runs.items()))
    for run in open_runs + abandoned:
        where = f" (pid {run.pid} on {run.host})" if run.pid is not None else ""
        print(f"run {run.id:<4} {run.status}{where} since {run.started_at:%Y-%m-%d %H:%M:%S}: "
              f"{run.videos_done} published, {run.videos_skipped} skipped, {run.videos_failed} failed "
              f"of {run.videos_total}")
    for track, by_status in sorted(tracks.items()):
        statuses = "  ".join(f"{status}={n}" for status, n in sorted(by_status.items()))
        print(f"{track:<9}{statuses}  (segments with text: {texts[track]})")
    for video in warned:
        for warning in video.warnings:
            print(f"warning  {video.key}: {warning}")
    if not collections:
        print("collections: none")
        return 0
    store = open_vector_store(config)
    try:
        print(f"{'collection':<24} {'backend':<8} {'dim':>5} {'metric':<6} {'index':<28} {'vectors':>10}")
        for coll in collections:
            if not store.holds(coll):
                count = f"({coll.backend})"
            elif store.has_collection(coll.name):
                count = str(store.count(coll.name))
            else:
                count = "missing"
            spec = ",".join(f"{k}={v}" for k, v in coll.index_spec.items() if k != "kind")
            index = f"{coll.index_spec.get('kind', '?')}" + (f"({spec})" if spec else "")
            print(f"{coll.name:<24} {coll.backend:<8} {coll.dim:>5} {coll.metric:<6} {index:<28} {count:>10}")
            if store.holds(coll) and store.has_collection(coll.name):
                # Searches of rows the index does not cover yet are exact or interim: say so.
                state = store.index_state(coll.name)
                if state.building:
                    print(f"  index building: {state.note or f'{state.indexed} of {state.total} rows indexed'}")
    finally:
        store.close()
    return 0


def cmd_smoke(config: Config, args: argparse.Namespace) -> int:
    from spr.smoke import run_smoke

    if args.videos < 1 or args.events < 1:
        raise UsageError("--videos and --events must be at least 1")
    report = run_smoke(config, videos=args.videos, events=args.events, seed=args.seed, collection=args.collection)
    if args.json:
        print(json.dumps(_smoke_json(report), indent=2))
    else:
        _print_smoke(report)
    # A smoke run that cannot find what it planted is a failure worth an exit code.
    return 0 if report.found == len(report.queries) else 1


def cmd_milvus(config: Config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from spr.stores.milvus_server import EmbeddedMilvus, MilvusServerError

    data_dir = Path(args.dir).expanduser() if args.dir else config.milvus_embedded_path
    port = config.milvus.embedded_port if args.port is None else args.port
    server = EmbeddedMilvus(data_dir, port=port)
    try:
        if args.action == "start":
            state = server.start()
            print(f"milvus running  uri={state.uri}  pid={state.pid}  data_dir={state.data_dir}")
            print("note: the server listens on all interfaces, not only loopback; firewall its ports on shared hosts")
            return 0
        if args.action == "stop":
            print("milvus stopped" if server.stop() else "milvus was not running")
            return 0
        state = server.status()
        if state is None:
            print(f"milvus not running (data_dir={data_dir})")
            return 1
        health = "healthy" if server.healthy(state) else "starting or unhealthy"
        print(f"milvus running  uri={state.uri}  pid={state.pid}  {health}  data_dir={state.data_dir}")
        return 0
    except MilvusServerError as exc:
        raise UsageError(str(exc)) from exc


# -- output -----------------------------------------------------------------------------------


def hms(seconds: float) -> str:
    """``h:mm:ss.s`` for a time in seconds (rounded to the tenth, carrying into the minutes)."""
    tenths = int(round(seconds * 10))
    whole, tenth = divmod(tenths, 10)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}.{tenth}"


def _print_smoke(report: Any) -> None:
    print(
        f"smoke run: {report.videos} synthetic videos ({report.video_hours:.1f} h, {report.segments} segments) "
        f"published to {report.backend} collection {report.collection!r} in {report.publish_s:.2f} s; "
        f"catalog {report.catalog}"
    )
    print("embeddings are synthetic (no video decoding, no CLIP weights): this checks the stores and proposals")
    for i, q in enumerate(report.queries):
        e = q.event
        print(f"\nquery {i}: planted in {e.video_key} [{hms(e.start_s)} - {hms(e.end_s)}]   best-proposal IoU {q.top_iou:.2f}")
        print(f"  {'#':>2} {'video':<20} {'start':>10} {'end':>10} {'padded':>23} {'score':>7} {'segs':>4}")
        for rank, (p, padded) in enumerate(zip(q.proposals[:5], q.padded[:5])):
            print(
                f"  {rank:>2} {p.video_key:<20} {hms(p.start_s):>10} {hms(p.end_s):>10} "
                f"{hms(padded.start_s):>10}-{hms(padded.end_s):>10}  {p.best_score:7.3f} {len(p.segment_ids):>4}"
            )
        t = q.timings_ms
        print(f"  timings: ann {t['ann']:.1f} ms, catalog {t['catalog']:.1f} ms, proposals {t['proposals']:.1f} ms")
    print(f"\nfound {report.found}/{len(report.queries)} planted events as the best proposal (IoU >= 0.5)")


def _smoke_json(report: Any) -> dict[str, Any]:
    return {
        "backend": report.backend,
        "catalog": report.catalog,
        "collection": report.collection,
        "videos": report.videos,
        "segments": report.segments,
        "publish_s": report.publish_s,
        "found": report.found,
        "queries": [
            {
                "planted": {"video_key": q.event.video_key, "timestamp": [q.event.start_s, q.event.end_s]},
                "top_iou": q.top_iou,
                "timings_ms": q.timings_ms,
                "proposals": [
                    {"video_key": p.video_key, "timestamp": [p.start_s, p.end_s], "score": p.best_score, "segments": len(p.segment_ids)}
                    for p in q.proposals[:10]
                ],
            }
            for q in report.queries
        ],
    }


def _is_operational(exc: BaseException) -> bool:
    from spr.catalog import CatalogUnavailable
    from spr.stores import CollectionExists, CollectionNotFound

    return isinstance(exc, (CatalogUnavailable, CollectionNotFound, CollectionExists, ConnectionError))

