#!/usr/bin/env python3
"""Stage an ingest manifest from object storage, then run ``spr ingest`` on the local copy.

``spr ingest --manifest FILE`` reads a local manifest whose rows name local video files (the
decoder reads files, on every Ray worker). In a cluster the manifest lives in object storage and
the archive is mounted on every Ray pod (a ReadOnlyMany volume: NFS/EFS/Filestore, or a CSI
driver that mounts the bucket). This script, run as the RayJob's entrypoint on the Ray head:

1. reads the manifest at any fsspec URL (``s3://``, ``gs://``, ``https://``, a local path):
   JSONL, a JSON array, CSV or TSV (the formats ``spr ingest`` reads);
2. rewrites each row's location to the mount: ``--map s3://bucket/=/archive/`` turns
   ``s3://bucket/show/ep1.mp4`` (in ``path``, or in ``uri`` when the row has no ``path``) into
   ``/archive/show/ep1.mp4``; the original object URL is kept as the row's ``uri``, so the
   catalog records where the video really lives. Relative paths are resolved against
   ``--root``, or, by default, against the manifest's own folder seen through the same map;
3. writes the rows as JSONL to a fresh folder under ``--dest`` (default: the temp dir), and
4. replaces itself with the command after ``--``, adding ``--manifest <staged file>``; with no
   command it prints the staged file's path.

    python /opt/spr/bin/stage_manifest.py s3://spr-archive/manifests/2026-11.jsonl \
        --map s3://spr-archive/=/archive/ -- spr ingest --actors 8 --json

Remote reads need the fsspec backend (``s3fs`` is in the images) and its credentials
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_ENDPOINT_URL``, or a workload identity).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import posixpath
import sys
import tempfile
from pathlib import Path
from typing import Any


class StageError(Exception):
    """A manifest that cannot be staged; the message says which row and why."""


def parse_map(items: list[str]) -> list[tuple[str, str]]:
    """``PREFIX=DIR`` pairs, longest prefix first."""
    pairs = []
    for item in items:
        prefix, sep, target = item.partition("=")
        if not sep or not prefix or not target:
            raise StageError(f"--map takes PREFIX=DIR, got {item!r}")
        pairs.append((prefix, target))
    return sorted(pairs, key=lambda p: len(p[0]), reverse=True)


def map_location(location: str, mapping: list[tuple[str, str]]) -> str | None:
    """The local path of ``location`` under the first matching prefix, or None."""
    for prefix, target in mapping:
        if location.startswith(prefix):
            rest = location[len(prefix):].lstrip("/")
            return posixpath.join(target, rest) if rest else target
    return None


def read_rows(text: str, name: str) -> list[dict[str, Any]]:
    """Rows of a manifest's text; the format comes from ``name``'s suffix like ``spr ingest``."""
    suffix = posixpath.splitext(name.lower())[1]
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        return [{k.strip(): v for k, v in row.items() if k is not None} for row in reader]
    if text.lstrip().startswith("["):
        rows = json.loads(text)
        if not all(isinstance(r, dict) for r in rows):
            raise StageError(f"{name}: expected an array of JSON objects")
        return rows
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StageError(f"{name}:{i}: not a JSON object ({exc})") from None
        if not isinstance(row, dict):
            raise StageError(f"{name}:{i}: expected a JSON object per line")
        rows.append(row)
    return rows


def rewrite_rows(
    rows: list[dict[str, Any]], mapping: list[tuple[str, str]], root: str | None, source: str
) -> list[dict[str, Any]]:
    """Rows whose ``path`` is a local absolute path (see the module doc)."""
    out = []
    for i, row in enumerate(rows, start=1):
        row = dict(row)
        location = str(row.get("path") or row.get("uri") or "")
        if not location:
            raise StageError(f"{source}: row {i} has neither 'path' nor 'uri'")
        if location.startswith("file://"):
            location = location[len("file://"):]
        mapped = map_location(location, mapping)
        if mapped is not None:
            if not row.get("uri"):
                row["uri"] = location
            row["path"] = mapped
        elif "://" in location:
            raise StageError(
                f"{source}: row {i}: {location} is not under any --map prefix "
                f"({', '.join(p for p, _ in mapping) or 'none given'}); the decoder reads mounted files"
            )
        elif not posixpath.isabs(location):
            if root is None:
                raise StageError(
                    f"{source}: row {i}: relative path {location!r} and no --root (nor a --map prefix "
                    f"covering the manifest's own folder) to resolve it against"
                )
            row["path"] = posixpath.join(root, location)
        else:
            row["path"] = location
        out.append(row)
    return out


def stage(source: str, mapping: list[tuple[str, str]], root: str | None, dest: str | None) -> Path:
    """Read ``source``, rewrite its rows and write them as JSONL; returns the staged file."""
    import fsspec

    with fsspec.open(source, "rt", encoding="utf-8") as fh:
        text = fh.read()
    if root is None:
        root = map_location(posixpath.dirname(source), mapping)
        if root is None and "://" not in source:
            root = str(Path(source).expanduser().resolve().parent)
    rows = rewrite_rows(read_rows(text, source), mapping, root, source)
    folder = Path(tempfile.mkdtemp(prefix="spr-manifest-", dir=dest))
    stem = posixpath.splitext(posixpath.basename(source.rstrip("/")))[0] or "manifest"
    staged = folder / f"{stem}.jsonl"
    staged.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return staged


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stage_manifest", description=__doc__.split("\n\n")[0], epilog="-- COMMAND...: run it with --manifest FILE"
    )
    parser.add_argument("manifest", help="manifest URL or path (JSONL, JSON array, CSV, TSV)")
    parser.add_argument("--map", action="append", default=[], metavar="PREFIX=DIR", help="object URL prefix -> mount folder")
    parser.add_argument("--root", help="folder relative paths are resolved against")
    parser.add_argument("--dest", help="where to write the staged manifest (default: the temp dir)")
    return parser


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(own arguments, command after --)``."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    own, command = split_command(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(own)
    try:
        staged = stage(args.manifest, parse_map(args.map), args.root, args.dest)
    except (StageError, OSError, json.JSONDecodeError) as exc:
        print(f"stage_manifest: error: {exc}", file=sys.stderr)
        return 2
    if not command:
        print(staged)
        return 0
    print(f"stage_manifest: {args.manifest} -> {staged}", file=sys.stderr, flush=True)
    os.execvp(command[0], [*command, "--manifest", str(staged)])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
