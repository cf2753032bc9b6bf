"""Media bytes for the player: HTTP ``Range`` parsing and a ReadMedia stream the response pulls.

The gateway never opens a file: it asks the search service for bytes of a catalog video by its
key (``SearchClient.read_media``). Long reads go in windows of :data:`WINDOW_BYTES`, one call
each, so every call's deadline bounds one window rather than a whole (paused, slowly played)
video; :meth:`MediaStream.cancel` ends the call in flight when the player goes away.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

log = logging.getLogger(__name__)

WINDOW_BYTES = 8 << 20  # bytes per ReadMedia call (32 chunks of 256 KiB)
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_MAX_DIGITS = 19  # int64


class RangeNotSatisfiable(ValueError):
    """A well-formed range that selects no byte of the file (answer 416)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the range selects no byte of this {size}-byte file")
        self.size = size


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``[start, end]`` (inclusive, as ``Content-Range`` writes them) of a ``size``-byte file."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range a ``Range`` header asks of a ``size``-byte file.

    ``bytes=a-b`` (``b`` past the end is clipped), ``bytes=a-`` (to the end), ``bytes=-n`` (the
    last ``n`` bytes, or the whole file when it is shorter). None when there is no header or one
    this server ignores, as RFC 9110 allows (another unit, several ranges, malformed, ``a > b``):
    the whole file is sent. :class:`RangeNotSatisfiable` when ``a`` is at or past the end, or the
    suffix is empty (``bytes=-0``)."""
    if not header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if (not first and not last) or len(first) > _MAX_DIGITS or len(last) > _MAX_DIGITS:
        return None
    if not first:  # suffix: the last n bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return ByteRange(max(0, size - suffix), size - 1, size)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(size)
    return ByteRange(start, min(end, size - 1), size)


class MediaStream:
    """Bytes ``[start, start + length)`` of video ``key`` from the search service, in chunks.

    :meth:`prime` makes the first call and waits for its first chunk, so a refusal (unknown key,
    range past the end) is raised as :class:`grpc.RpcError` before any response is sent;
    :meth:`chunks` yields from there on. Thread-safe :meth:`cancel` ends the call in flight."""

    def __init__(self, client: Any, key: str, start: int, length: int, window: int = WINDOW_BYTES) -> None:
        self.client = client
        self.key = key
        self.start = int(start)
        self.end = int(start) + int(length)
        self.window = int(window)
        self._lock = threading.Lock()
        self._call: Any = None
        self._cancelled = False
        self._first: Any = None

    def prime(self) -> None:
        """Open the first window and read its first chunk (raises the service's refusal)."""
        if self.end <= self.start:
            return
        call = self._open(self.start)
        self._first = (call, next(call, None))

    def chunks(self) -> Iterator[bytes]:
        position = self.start
        try:
            while position < self.end and not self._cancelled:
                call, first = self._first if self._first is not None else (self._open(position), None)
                self._first = None
                if call is None:
                    return
                before = position
                pending = [first] if first is not None else []
                for chunk in _chain(pending, call):
                    if chunk.offset != position:
                        log.warning("media %r: chunk at %d, expected %d; ending the stream", self.key, chunk.offset, position)
                        return
                    data = chunk.data[: self.end - position]
                    yield data
                    position += len(data)
                if position == before:  # the file ended early (it shrank): nothing more will come
                    return
        except grpc.RpcError as exc:
            if not self._cancelled:
                log.warning("media %r: stream ended at byte %d: %s", self.key, position, exc.details() if hasattr(exc, "details") else exc)
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop reading: cancel the call in flight (the service stops at its next chunk)."""
        with self._lock:
            self._cancelled = True
            call, self._call = self._call, None
        if call is not None:
            call.cancel()

    def _open(self, position: int) -> Any:
        with self._lock:
            if self._cancelled:
                return None
            length = min(self.window, self.end - position)
            self._call = self.client.read_media(self.key, offset=position, length=length)
            return self._call


def _chain(first: list[Any], call: Any) -> Iterator[Any]:
    yield from first
    yield from call


class MediaResponse(StreamingResponse):
    """A streaming response over a :class:`MediaStream` that cancels the stream however the
    response ends: finished, failed, or the client gone (Starlette cancels the sender then)."""

    def __init__(self, stream: MediaStream, **kwargs: Any) -> None:
        self.media_stream = stream
        super().__init__(_pump(stream), **kwargs)

    async def stream_response(self, send: Any) -> None:
        try:
            await super().stream_response(send)
        finally:
            self.media_stream.cancel()
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


_END = object()


async def _pump(stream: MediaStream) -> AsyncIterator[bytes]:
    """The stream's chunks, each ``next`` in a worker thread (gRPC reads block)."""
    iterator = stream.chunks()
    try:
        while True:
            chunk = await run_in_threadpool(next, iterator, _END)
            if chunk is _END:
                return
            yield chunk
    finally:
        stream.cancel()
        try:
            iterator.close()
        except ValueError:  # still running in a worker thread; the cancelled call ends it
            pass
