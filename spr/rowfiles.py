"""Row files: the JSONL / JSON-array / CSV / TSV tables that manifests and annotations come in.

One reader for every stage (ingest manifests, feature-import manifests, query files), so they
all accept the same formats and report a bad row the same way: ``file:line: what is wrong``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class RowFileError(ValueError):
    """A row file that cannot be read; the message names the file (and line) and the problem."""


def read_rows(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of a ``.csv``/``.tsv`` file (header line first) or a JSON file:
    one object per line (JSONL), or one array of objects (a courtesy for hand-written files)."""
    file = Path(path).expanduser()
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RowFileError(f"cannot read {file}: {exc}") from None
    suffix = file.suffix.lower()
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        for i, row in enumerate(reader, start=2):
            yield i, {k.strip(): v for k, v in row.items() if k is not None}
        return
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RowFileError(f"{file}: not valid JSON: {exc}") from None
        for i, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise RowFileError(f"{file}: item {i} is not a JSON object")
            yield i, row
        return
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RowFileError(f"{file}:{i}: not a JSON object ({exc}); use JSONL (one object per line) or CSV") from None
        if not isinstance(row, dict):
            raise RowFileError(f"{file}:{i}: expected a JSON object per line")
        yield i, row
