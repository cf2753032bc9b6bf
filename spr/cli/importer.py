"""``spr import``: publish precomputed features (TVR HDF5, moment_detr .npy/.npz) or
ready-made segment embeddings. The work is in :mod:`spr.ingest.importer`, imported on use so that
building the parser loads neither torch nor h5py."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# Failures listed one per line in the text summary; the rest are counted (--json has all).
_SHOWN_FAILURES = 20
_SHOWN_KEYS = 10


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "import",
        help="import precomputed features (HDF5 or .npy/.npz) through the projector into a collection",
        description="Import precomputed per-clip features, or ready-made segment embeddings (--segments), "
        "into a collection: segments, projector, catalog, vector store and feature store, as video ingest "
        "does. Re-running is idempotent: unchanged videos are skipped, changed ones replaced. Exit code 1 "
        "when some videos failed (the summary says why), 2 when the import cannot start.",
    )
    p.add_argument(
        "features",
        metavar="FEATURES",
        help="an HDF5 file with one (T, D) dataset per video (TVR / ReLoCLNet), or a directory of "
        "<video>.npy / <video>.npz files (moment_detr / lighthouse)",
    )
    p.add_argument(
        "--manifest",
        metavar="FILE",
        help="JSONL or CSV with each video's key (key / video_id / vid_name / vid), duration in seconds, "
        "optional uri and metadata",
    )
    p.add_argument(
        "--clip-length",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds each feature row covers (default 1.0; TVR's I3D/RoBERTa features: 1.5)",
    )
    p.add_argument("--collection", help="target collection (default: vectors.collection)")
    p.add_argument(
        "--segments",
        action="store_true",
        help="the arrays are ready-made (n_segments, dim) segment embeddings, one per segments.length_s "
        "segment: published as they are, without the projector or the feature store",
    )
    p.add_argument(
        "--dataset-key",
        metavar="K",
        help="array name inside each .npz file (or HDF5 group); default: its only array, else 'features'",
    )
    p.add_argument(
        "--duration-from-features",
        action="store_true",
        help="a video missing from the manifest lasts T * clip length seconds instead of failing",
    )
    p.add_argument("--force", action="store_true", help="re-import videos even when unchanged")
    p.add_argument(
        "--no-refiner-context", action="store_true",
        help="do not precompute the refiner's frame context afterwards (`spr refiner precompute` does it later)",
    )
    p.add_argument(
        "--feature-model",
        metavar="NAME",
        default="",
        help="what produced the features (e.g. 'ViT-B-32/openai', 'i3d+roberta'); recorded with the "
        "collection, whose vectors must all come from one model (default: imported:<FEATURES name>)",
    )
    p.add_argument(
        "--text-features",
        action="append",
        default=[],
        metavar="TRACK=PATH",
        help="per-segment text embeddings of a text track (speech, subtitles), in the layout of FEATURES and "
        "under the same keys: one (n_segments, d) array per video, a row per segments.length_s segment, all "
        "zeros where the segment has no text. They go into <collection>__<TRACK>. Repeatable; a re-import "
        "replaces every track of a video, so pass all of them each time",
    )
    p.add_argument(
        "--text-model",
        metavar="NAME",
        default="",
        help="what produced the text embeddings (e.g. 'all-MiniLM-L6-v2'); recorded with the text collections "
        "(default: imported:<PATH name>)",
    )
    p.add_argument(
        "--progress-every",
        type=int,
        default=100,
        metavar="N",
        help="print a progress line to stderr every N videos (default 100; 0: never)",
    )
    p.add_argument(
        "--no-wait-index",
        dest="wait_index",
        action="store_false",
        help="return once the vectors are written, without waiting for the index to cover them (Milvus builds "
        "it in the background; `spr index wait` waits later, `spr status` says while it builds)",
    )
    p.add_argument(
        "--index-timeout", type=float, default=1800.0, metavar="S",
        help="give up waiting for the index after S seconds (default 1800; noted in the summary, not a failure)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser(
        "index",
        help="vector index maintenance: wait until a collection's index covers every row",
    )
    isub = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    w = isub.add_parser(
        "wait",
        help="build the index of a collection (Faiss: train or retrain IVF; Milvus: seal) and wait until "
        "searches use it over every row",
    )
    w.add_argument("--collection", help="collection (default: vectors.collection)")
    w.add_argument("--timeout", type=float, default=1800.0, metavar="S", help="give up after S seconds (exit 1)")
    w.set_defaults(handler=cmd_index_wait)

    p = sub.add_parser(
        "reindex",
        help="rebuild a collection's index over everything it holds (Faiss: IVF trained again on a uniform "
        "sample of the whole collection)",
    )
    p.add_argument("--collection", help="collection (default: vectors.collection)")
    p.set_defaults(handler=cmd_reindex)


def cmd_import(config: Any, args: argparse.Namespace) -> int:
    from spr.cli import UsageError

    from spr.ingest.importer import ImportInputError, ImportOptions, import_features

    from .refiner_context import precompute_or_warn

    if args.progress_every < 0:
        raise UsageError("--progress-every must be 0 or more")
    options = ImportOptions(
        collection=args.collection,
        clip_length_s=args.clip_length,
        segments=args.segments,
        dataset_key=args.dataset_key,
        duration_from_features=args.duration_from_features,
        force=args.force,
        feature_model=args.feature_model,
        progress_every=args.progress_every,
        text_features=parse_text_features(args.text_features),
        text_model=args.text_model,
        wait_for_index=args.wait_index,
        index_timeout_s=args.index_timeout,
    )
    try:
        summary = import_features(config, args.features, args.manifest, options, progress=_print_progress)
    except ImportInputError as exc:
        raise UsageError(str(exc)) from None
    # Ready-made segments come without frame features: nothing for the refiner to read.
    context = None if args.no_refiner_context or args.segments else precompute_or_warn(config)
    if args.json:
        print(json.dumps({**summary.to_dict(), "refiner_context": context}, indent=2))
    else:
        print(format_summary(summary))
        if context and context.get("written"):
            print(f"refiner context: {context['written']} videos precomputed ({context['rows']} rows) for {context['refiner']}")
    return 1 if summary.failed else 0



def _open_collection(config: Any, name: str | None) -> tuple[Any, str]:
    """The vector store and the name of a collection it holds (a usage error otherwise)."""
    from spr.cli import UsageError
    from spr.stores import open_vector_store

    name = name or config.vectors.collection
    store = open_vector_store(config)
    if not store.has_collection(name):
        store.close()
        raise UsageError(f"collection {name!r} does not exist in the {store.backend} store")
    return store, name


def cmd_index_wait(config: Any, args: argparse.Namespace) -> int:
    import time

    store, name = _open_collection(config, args.collection)
    t0 = time.perf_counter()
    try:
        store.wait_until_indexed(name, timeout_s=args.timeout)
    except TimeoutError as exc:
        print(f"spr: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"index of {name!r} covers every row ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_reindex(config: Any, args: argparse.Namespace) -> int:
    import time

    store, name = _open_collection(config, args.collection)
    t0 = time.perf_counter()
    try:
        rebuilt = store.retrain(name)
        store.flush(name)
        state = store.index_state(name)
    finally:
        store.close()
    if not rebuilt:
        print(f"collection {name!r}: its index has nothing to train (Flat or HNSW); nothing to do")
        return 0
    print(f"reindexed {name!r}: {state.indexed} of {state.total} rows indexed ({time.perf_counter() - t0:.1f} s)")
    return 0


def parse_text_features(values: list[str]) -> dict[str, str]:
    """``["speech=a.h5", ...]`` as ``{"speech": "a.h5"}``; a malformed or repeated track is a
    usage error (unknown track names are the importer's to refuse)."""
    from spr.cli import UsageError

    out: dict[str, str] = {}
    for value in values:
        track, sep, path = value.partition("=")
        track = track.strip()
        if not sep or not track or not path:
            raise UsageError(f"--text-features takes TRACK=PATH (e.g. speech=speech.h5), got {value!r}")
        if track in out:
            raise UsageError(f"--text-features {track}= is given twice; give each track once")
        out[track] = path
    return out


def _print_progress(p: Any) -> None:
    rate = p.processed / p.elapsed_s if p.elapsed_s > 0 else 0.0
    left = (p.total - p.processed) / rate if rate > 0 else float("nan")
    eta = f"{int(left) // 60}:{int(left) % 60:02d}" if left == left else "--:--"
    print(
        f"import {p.processed}/{p.total} videos ({p.imported} imported, {p.skipped} skipped, {p.failed} failed) "
        f"| {rate:.1f} videos/s | ETA {eta}",
        file=sys.stderr,
        flush=True,
    )


def format_summary(s: Any) -> str:
    """The text summary ``spr import`` prints."""
    lines = [
        f"import run {s.run_id} into {s.collection!r} ({s.mode}"
        + (f", {s.dim}-d, {s.embedder}" if s.dim else "")
        + f"): {len(s.imported)} imported, {len(s.skipped)} skipped, {len(s.failed)} failed; "
        f"{s.segments_written} segments written in {s.seconds:.1f} s"
    ]
    if s.index_note:
        lines.append(f"index: {s.index_note}")
    if s.failed:
        lines.append("failed:")
        for key, why in list(s.failed.items())[:_SHOWN_FAILURES]:
            lines.append(f"  {key}: {why}")
        if len(s.failed) > _SHOWN_FAILURES:
            lines.append(f"  ... and {len(s.failed) - _SHOWN_FAILURES} more (--json lists all)")
    for track, t in s.tracks.items():
        videos = ", ".join(f"{n} {status}" for status, n in sorted(t.videos.items())) or "no videos"
        lines.append(f"{track}: {videos}; {t.segments_written} segments written into {t.collection!r}")
        if t.not_in_features:
            lines.append(f"  in {t.source} but not in the features: {_listed(t.not_in_features)}")
    for label, keys in (
        ("in the features but not in the manifest", s.not_in_manifest),
        ("in the manifest but without features (not imported)", s.not_in_features),
    ):
        if keys:
            lines.append(f"{label}: {_listed(keys)}")
    return "\n".join(lines)


def _listed(keys: list[str]) -> str:
    """``"(n): k1, k2, ... (m more)"``: the first few keys and how many there are."""
    more = f", ... ({len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return f"({len(keys)}): " + ", ".join(keys[:_SHOWN_KEYS]) + more
