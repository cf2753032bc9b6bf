"""Row files: the JSONL / JSON / CSV / TSV tables that manifests, annotations and query files
come in.

One reader for every stage (ingest manifests, feature-import manifests, TVR-Ranking annotation
files), so they all accept the same formats and report a bad row the same way:
``file:line: what is wrong``. The JSON forms are one object per line (JSONL), one array of
objects, or one object holding such an array (``{"data": [...]}``); in the last two a row's line
is the line where its object starts, so a bad record in a pretty-printed 70,000-record file can
be found.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

__all__ = ["RowFileError", "read_json_rows", "read_rows"]


class RowFileError(ValueError):
    """A row file that cannot be read; the message names the file (and line) and the problem."""


def read_rows(
    path: str | os.PathLike[str], what: str = "file", record_keys: Collection[str] = ()
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of a ``.csv``/``.tsv`` file (header line first; values are
    strings) or of a JSON file (:func:`read_json_rows`). ``what`` names the file in errors
    (``"manifest"``, ``"annotation file"``)."""
    file = Path(path).expanduser()
    suffix = file.suffix.lower()
    if suffix not in (".csv", ".tsv"):
        yield from read_json_rows(file, what, record_keys)
        return
    reader = csv.DictReader(_text(file, what).splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
    for i, row in enumerate(reader, start=2):
        yield i, {k.strip(): v for k, v in row.items() if k is not None}


def read_json_rows(
    path: str | os.PathLike[str], what: str = "file", record_keys: Collection[str] = ()
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of a JSON row file: JSONL, a JSON array of objects, or one JSON
    object holding one array of objects. A lone object is such a wrapper only when one of its
    values is a non-empty list of objects and it has none of ``record_keys`` (a row's own
    fields, e.g. ``("query_id",)``): a one-line JSONL file of one row is that row."""
    file = Path(path).expanduser()
    text = _text(file, what)
    head = text.lstrip()
    if head.startswith("["):
        yield from _array_items(file, text, text.index("["))
        return
    if head.startswith("{") and _is_wrapper(text, record_keys):
        yield from _wrapped_items(file, text)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RowFileError(f"{file}:{number}: not valid JSON ({exc.msg}); expected one JSON object per line") from None
        if not isinstance(row, dict):
            raise RowFileError(f"{file}:{number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def _text(file: Path, what: str) -> str:
    if not file.is_file():
        raise RowFileError(f"{what} {file} does not exist")
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RowFileError(f"cannot read {what} {file}: {exc}") from None


def _is_wrapper(text: str, record_keys: Collection[str]) -> bool:
    """True for one JSON object wrapping the rows (``{"data": [...]}``); False for JSONL
    (several objects: not one JSON document) and for a one-line file of one record."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return False
    return (
        isinstance(whole, dict)
        and not any(k in whole for k in record_keys)
        and any(isinstance(v, list) and v and all(isinstance(x, dict) for x in v) for v in whole.values())
    )


_DECODER = json.JSONDecoder()
_WS = " \t\r\n"


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _array_items(file: Path, text: str, pos: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """The objects of the JSON array starting at ``text[pos] == '['``, with their line numbers."""
    pos = _skip(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            item, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise RowFileError(f"{file}:{_line_of(text, exc.pos)}: not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise RowFileError(f"{file}:{_line_of(text, pos)}: expected a JSON object per record, got {type(item).__name__}")
        yield _line_of(text, pos), item
        pos = _skip(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            return
        raise RowFileError(f"{file}:{_line_of(text, pos)}: not valid JSON (expected ',' or ']' after a record)")


def _wrapped_items(file: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The rows of ``{"<name>": [ {...}, ... ]}``: the object's one array of objects."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowFileError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    arrays = [k for k, v in whole.items() if isinstance(v, list) and all(isinstance(x, dict) for x in v)]
    if len(arrays) != 1:
        raise RowFileError(
            f"{file}: a JSON object must hold exactly one array of records; "
            f"it holds {len(arrays)} ({', '.join(map(repr, arrays)) or 'none'}). Use JSONL or a JSON array"
        )
    # Find where that key's array starts, to report line numbers in the file.
    pos = _skip(text, text.index("{") + 1)
    while pos < len(text):
        key, end = _DECODER.raw_decode(text, pos)
        pos = _skip(text, end)
        pos = _skip(text, pos + 1)  # the ':'
        if key == arrays[0]:
            yield from _array_items(file, text, pos)
            return
        _, end = _DECODER.raw_decode(text, pos)
        pos = _skip(text, _skip(text, end) + 1)  # past the ','
