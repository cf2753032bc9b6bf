"""``spr ingest`` and ``spr delete``: the operator's side of the corpus."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "ingest",
        help="decode videos, encode them with CLIP (Ray actors) and publish their segments",
        description="Ingest videos into a collection. Re-running the same command resumes: finished, "
        "unchanged videos are skipped; a changed file replaces its segments.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="video files or folders (searched recursively)")
    p.add_argument("--manifest", help="JSONL or CSV with path (or file uri), optional key and metadata")
    p.add_argument("--collection", help="target collection (default: vectors.collection)")
    p.add_argument("--ray-address", help="join this Ray cluster (default: ray.address, else a local Ray)")
    p.add_argument("--actors", type=int, help="encoder actors (default: ingest.encoder_actors)")
    p.add_argument("--executor", choices=("ray", "inline"), default="ray", help="'inline' runs in this process, without Ray")
    p.add_argument("--force", action="store_true", help="re-process videos even when unchanged")
    p.add_argument("--no-speech", action="store_true", help="skip the speech track (default: speech.enabled)")
    p.add_argument("--no-subtitles", action="store_true", help="skip the subtitle track (default: subtitles.enabled)")
    p.add_argument(
        "--no-refiner-context", action="store_true",
        help="do not precompute the refiner's frame context afterwards (`spr refiner precompute` does it later)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser(
        "reembed",
        help="fill a NEW collection from the stored frame features with the configured projector (no decoding)",
        description="Embed every ready video's stored per-second features with projector.checkpoint into a new "
        "collection, under the same segment ids. The catalog and the current collection are untouched, so "
        "searches go on; if it crashes or fails, run it again (same ids, no duplicates). Switch "
        "vectors.collection to the new one when it is complete.",
    )
    p.add_argument("--collection", required=True, help="the new collection")
    p.add_argument(
        "--no-refiner-context", action="store_true",
        help="do not precompute the refiner's frame context afterwards (`spr refiner precompute` does it later)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_reembed)

    p = sub.add_parser("delete", help="remove videos from the catalog, the vector store and the feature store")
    p.add_argument("keys", nargs="+", metavar="VIDEO", help="video keys")
    p.set_defaults(handler=cmd_delete)


def cmd_ingest(config: Any, args: argparse.Namespace) -> int:
    from spr.errors import UsageError

    from .refiner_context import precompute_or_warn

    from spr.ingest.pipeline import IngestError, run_ingest
    from spr.ingest.sources import SourceError, sources_from_manifest, sources_from_paths

    if bool(args.paths) == bool(args.manifest):
        raise UsageError("give video PATHs or --manifest FILE (one of the two)")
    if args.actors is not None and args.actors < 1:
        raise UsageError("--actors must be at least 1")
    from spr.stores.base import check_collection_name

    try:  # before Ray's start-up and before reading the sources: a usage error, exit 2
        check_collection_name(args.collection or config.vectors.collection)
    except ValueError as exc:
        raise UsageError(f"--collection: {exc}") from None
    if args.ray_address:
        config = config.replace(ray=config.ray.__class__(**{**config.ray.__dict__, "address": args.ray_address}))
    try:
        sources = sources_from_manifest(args.manifest) if args.manifest else sources_from_paths(args.paths)
    except SourceError as exc:
        raise UsageError(str(exc)) from None
    if not sources:
        raise UsageError("no video files found in the given paths")
    try:
        with _stdout_to_stderr():
            summary = run_ingest(
                config, sources, args.collection, executor=args.executor, actors=args.actors, force=args.force,
                speech=False if args.no_speech else None, subtitles=False if args.no_subtitles else None,
            )
    except IngestError as exc:
        raise UsageError(str(exc)) from None
    context = None if args.no_refiner_context else precompute_or_warn(config)
    if args.json:
        print(json.dumps({**_summary_json(summary), "refiner_context": context}, indent=2))
    else:
        _print_summary(summary)
        if context and context.get("written"):
            print(f"refiner context: {context['written']} videos precomputed ({context['rows']} rows) for {context['refiner']}")
    return 1 if summary.videos_failed else 0


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to file descriptor 1 to stderr while the run lasts, so that
    stdout holds the summary alone (``--json`` stays JSON): Ray's driver prints the raylet's
    error messages ("A worker died ...") to stdout whatever ``log_to_driver`` says, and C
    libraries may write there too."""
    try:
        out = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no real stdout (embedded): nothing to guard
        yield
        return
    sys.stdout.flush()
    saved = os.dup(out)
    os.dup2(sys.stderr.fileno(), out)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, out)
        os.close(saved)


def cmd_reembed(config: Any, args: argparse.Namespace) -> int:
    from spr.errors import UsageError

    from .refiner_context import precompute_or_warn

    from spr.ingest.reembed import ReembedError, reembed_collection

    def progress(done: int, total: int) -> None:
        print(f"reembed {done}/{total} videos", file=sys.stderr, flush=True)

    try:
        summary = reembed_collection(config, args.collection, on_batch=progress)
    except ReembedError as exc:
        raise UsageError(str(exc)) from None
    report = {
        "collection": summary.collection,
        "feature_model": summary.feature_model,
        "videos": summary.videos,
        "segments": summary.segments,
        "missing_features": summary.missing,
        "wall_s": summary.wall_s,
        "text_model": summary.text_model,
        "text_segments": summary.text_segments,
        "refiner_context": None if args.no_refiner_context else precompute_or_warn(config),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"re-embedded {summary.videos} videos ({summary.segments} segments) into {summary.collection!r} "
              f"with {summary.feature_model} in {summary.wall_s:.1f} s")
        for track, n in sorted(summary.text_segments.items()):
            print(f"  {track}: {n} segments with text re-embedded with {summary.text_model}")
        for key in summary.missing:
            print(f"  no stored features: {key} (re-ingest it)", file=sys.stderr)
    return 1 if summary.missing else 0


def cmd_delete(config: Any, args: argparse.Namespace) -> int:
    from spr.ingest.pipeline import delete_videos

    missing = 0
    for key, existed in delete_videos(config, args.keys).items():
        print(f"deleted  {key}" if existed else f"unknown  {key}")
        missing += not existed
    return 1 if missing else 0


def _summary_json(s: Any) -> dict[str, Any]:
    return {
        "run_id": s.run_id,
        "collection": s.collection,
        "videos": {"total": s.videos_total, "done": s.videos_done, "skipped": s.videos_skipped, "failed": s.videos_failed},
        "segments_written": s.segments_written,
        "video_seconds": s.video_seconds,
        "frames": s.frames,
        "wall_s": s.wall_s,
        "startup_s": s.startup_s,
        "video_seconds_per_s": s.video_seconds_per_s,
        "frames_per_s": s.frames_per_s,
        "failures": [{"key": k, "error": e} for k, e in s.failures],
        "feature_model": s.encoder.feature_model if s.encoder else None,
        "random_weights": bool(s.encoder and s.encoder.random_weights),
        "tracks": s.tracks,
        "text_segments": s.text_segments,
        "warnings": [{"key": k, "warning": w} for k, w in s.warnings],
    }


def _print_summary(s: Any) -> None:
    print(
        f"ingest run {s.run_id} into {s.collection!r}: {s.videos_done} published, {s.videos_skipped} skipped "
        f"(unchanged), {s.videos_failed} failed, of {s.videos_total}"
    )
    print(
        f"  {s.segments_written} segments, {s.video_seconds:.0f} video-seconds, {s.frames} frames in {s.wall_s:.1f} s "
        f"({s.video_seconds_per_s:.1f} video-s/s, {s.frames_per_s:.1f} frames/s; start-up {s.startup_s:.1f} s)"
    )
    if s.encoder is not None:
        print(f"  model: {s.encoder.feature_model} on {s.encoder.device}")
        if s.encoder.random_weights:
            print("  NOTE: weights are random/untrained: the vectors are meaningless for real search")
    for track, by_status in sorted(s.tracks.items()):
        statuses = ", ".join(f"{n} {status}" for status, n in sorted(by_status.items()))
        print(f"  {track}: {statuses}; {s.text_segments.get(track, 0)} segments with text")
    for key, warning in s.warnings:
        print(f"  WARNING {key}: {warning}", file=sys.stderr)
    for key, error in s.failures:
        print(f"  FAILED {key}: {error}", file=sys.stderr)
