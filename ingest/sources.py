"""The reader stage: what to ingest, as :class:`VideoSource` items.

From paths (files, or folders searched recursively for video files) or from a manifest
(JSONL or CSV with ``path`` or ``uri``, optional ``key`` and ``metadata``). A video's key is
its stable external name: the manifest's ``key``, else the path relative to the folder it
was found under, else the file name. Re-running with the same inputs gives the same keys,
which is what makes re-runs resume instead of duplicating.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spr.rowfiles import RowFileError, read_rows

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp", ".ogv"}
)


class SourceError(ValueError):
    """A path or manifest that cannot be read; the message says which and why."""


@dataclass(frozen=True)
class VideoSource:
    """One video to ingest: ``key`` (catalog name), ``path`` (local file the decoder opens),
    ``uri`` (recorded in the catalog; the path as a file URI unless the manifest gave one),
    ``subtitles`` (subtitle files the manifest named for it, besides any found beside it)."""

    key: str
    path: str
    uri: str
    metadata: dict[str, Any] = field(default_factory=dict)
    subtitles: tuple[str, ...] = ()

    def fingerprint(self) -> dict[str, int]:
        """``{"file_size", "file_mtime_ns"}``: lets a re-run skip an unchanged file without
        hashing it again."""
        st = os.stat(self.path)
        return {"file_size": int(st.st_size), "file_mtime_ns": int(st.st_mtime_ns)}


def sources_from_paths(paths: Sequence[str | os.PathLike[str]]) -> list[VideoSource]:
    """Files as given (whatever their suffix) and video files under folders, sorted by key."""
    found: dict[str, VideoSource] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and file.suffix.lower() in VIDEO_SUFFIXES:
                    _add(found, _source(file.relative_to(path).as_posix(), file))
        elif path.is_file():
            _add(found, _source(path.name, path))
        else:
            raise SourceError(f"{path} does not exist; give video files or folders that hold them")
    return sorted(found.values(), key=lambda s: s.key)


def sources_from_manifest(manifest: str | os.PathLike[str]) -> list[VideoSource]:
    """Rows of a JSONL (``.jsonl``/``.json``) or CSV manifest. Relative paths are relative to
    the manifest's folder."""
    manifest = Path(manifest).expanduser()
    if not manifest.is_file():
        raise SourceError(f"manifest {manifest} does not exist")
    rows = _read_rows(manifest)
    found: dict[str, VideoSource] = {}
    for line, row in rows:
        where = f"{manifest}:{line}"
        location = row.get("path") or row.get("uri")
        if not location:
            raise SourceError(f"{where}: a row needs 'path' (or a file 'uri'); got keys {sorted(row)}")
        location = str(location)
        local = location[len("file://"):] if location.startswith("file://") else location
        if "://" in local:
            raise SourceError(
                f"{where}: {location} is not a local file; stage remote videos to local disk or a mounted "
                f"volume first (the decoder reads files)"
            )
        path = Path(local).expanduser()
        if not path.is_absolute():
            path = manifest.parent / path
        metadata = row.get("metadata") or {}
        if isinstance(metadata, str):
            try:
                metadata = json.loads(metadata) if metadata.strip() else {}
            except json.JSONDecodeError as exc:
                raise SourceError(f"{where}: metadata is not JSON: {exc}") from None
        if not isinstance(metadata, dict):
            raise SourceError(f"{where}: metadata must be an object, got {type(metadata).__name__}")
        key = str(row.get("key") or path.name)
        uri = str(row.get("uri") or path.resolve().as_uri())
        subtitles = _subtitle_paths(row.get("subtitles"), manifest.parent, where)
        _add(found, VideoSource(key, str(path), uri, dict(metadata), subtitles), where)
    return list(found.values())


def file_digest(path: str | os.PathLike[str], block: int = 1 << 20) -> str:
    """``sha256:<hex>`` of the file's bytes (a video's catalog ``content_hash``)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _subtitle_paths(value: Any, folder: Path, where: str) -> tuple[str, ...]:
    """A row's ``subtitles``: one path or a list of them (in CSV, a JSON list), relative to
    the manifest's folder like ``path``."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{where}: subtitles is not a JSON list of paths: {exc}") from None
    if value is None or value == "":
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) and item.strip() for item in items):
        raise SourceError(
            f"{where}: subtitles must be a path or a list of paths (strings) to .srt/.vtt/.ass/.ssa files, "
            f"got {value!r}"
        )
    paths = []
    for item in items:
        path = Path(item).expanduser()
        paths.append(str(path if path.is_absolute() else folder / path))
    return tuple(paths)


def _source(key: str, path: Path) -> VideoSource:
    return VideoSource(key, str(path), path.resolve().as_uri())


def _add(found: dict[str, VideoSource], source: VideoSource, where: str = "") -> None:
    other = found.get(source.key)
    if other is not None and other.path != source.path:
        raise SourceError(
            f"{where + ': ' if where else ''}two videos map to key {source.key!r} ({other.path} and {source.path}); "
            f"give them distinct keys in a manifest"
        )
    found[source.key] = source


def _read_rows(manifest: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    try:
        return list(read_rows(manifest, "manifest", record_keys=("path", "uri", "key")))
    except RowFileError as exc:
        raise SourceError(str(exc)) from None
