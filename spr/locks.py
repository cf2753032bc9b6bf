"""A reader/writer lock: readers share it, a writer has it alone.

The Faiss store searches under :meth:`RWLock.read` (Faiss search is safe for concurrent
readers and releases the GIL, so concurrent queries run on all cores) and changes a
collection under :meth:`RWLock.write`.

Semantics:

* **Writer preference.** Once a writer waits, new readers wait behind it, so a steady stream
  of searches cannot starve an upsert; the readers already inside finish first.
* **Re-entrant.** A thread holding the write lock may take it again or take the read lock
  (``build_index`` calls ``train``; a writer may search). A thread holding the read lock may
  take it again even while a writer waits (refusing would deadlock it against that writer).
* **No upgrade.** Asking for the write lock while holding only the read lock raises
  ``RuntimeError``: two readers upgrading at once would wait for each other forever.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["RWLock"]


class RWLock:
    """A writer-preferring, re-entrant reader/writer lock (see the module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers: dict[int, int] = {}  # thread id -> read holds
        self._writer: int | None = None  # thread id of the writer
        self._writer_holds = 0
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextmanager
    def write(self) -> Iterator[None]:
        self.acquire_write()
        try:
            yield
        finally:
            self.release_write()

    def acquire_read(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me or me in self._readers:
                # Re-entry: never wait (on ourselves, or behind a writer that waits on us).
                self._readers[me] = self._readers.get(me, 0) + 1
                return
            while self._writer is not None or self._writers_waiting:
                self._cond.wait()
            self._readers[me] = 1

    def release_read(self) -> None:
        me = threading.get_ident()
        with self._cond:
            holds = self._readers.get(me, 0)
            if holds == 0:
                raise RuntimeError("release_read by a thread that holds no read lock")
            if holds == 1:
                del self._readers[me]
                if not self._readers:
                    self._cond.notify_all()
            else:
                self._readers[me] = holds - 1

    def acquire_write(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._writer_holds += 1
                return
            if me in self._readers:
                raise RuntimeError("cannot take the write lock while holding the read lock (no upgrade)")
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = me
            self._writer_holds = 1

    def release_write(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._writer != me:
                raise RuntimeError("release_write by a thread that does not hold the write lock")
            self._writer_holds -= 1
            if self._writer_holds == 0:
                self._writer = None
                self._cond.notify_all()

    # -- for tests and diagnostics ------------------------------------------------------------

    @property
    def readers(self) -> int:
        """Threads holding the read lock now (the writer's own read holds not counted apart)."""
        with self._cond:
            return len(self._readers)

    @property
    def writer_waiting(self) -> bool:
        with self._cond:
            return self._writers_waiting > 0
