"""Tap files: copies of what a gateway relays, written off the event loop.

A tapped direction reads into the loop's shared read buffer like an untapped
one; the tap queues a copy of each chunk, and one writer thread per gateway
(not per connection) writes the queue to the files in order.  Large chunks
are copied into a few recycled buffers (warm memory: fresh pages for every
chunk cost more than the copy).  When :data:`MAX_PENDING` bytes wait, the
loop waits for the writer, so a slow disk slows the relay down instead of
filling memory.  An idle connection holds no buffer: only queued chunks take
memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import deque
from pathlib import Path

from ._splice import READ_SIZE

__all__ = ["MAX_PENDING", "TapFile", "TapWriter"]

log = logging.getLogger("qiochan.relay")

#: Bytes queued for the tap files before the loop waits for the writer.
MAX_PENDING = 64 * 1024 * 1024
#: Chunks larger than this (up to :data:`_BUFFER`) are copied into recycled buffers.
_SMALL = 64 * 1024
#: The size of a recycled buffer: a relay's largest read.
_BUFFER = READ_SIZE
#: Recycled buffers kept for reuse.
_SPARES = 8


class TapFile:
    """One tap file; :meth:`write` queues a copy of each chunk."""

    def __init__(self, writer: TapWriter, path: Path) -> None:
        self._writer = writer
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    def write(self, data: memoryview) -> None:
        """Queue a copy of ``data`` (the caller may reuse its buffer at once)."""
        self._writer.put(self, data)


class TapWriter:
    """The writer thread of a gateway's tap files, started on first use."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._queue: deque[tuple[TapFile, memoryview | None, asyncio.Future[None] | None]] = deque()
        self._pending = 0
        self._spare: list[memoryview] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None

    def open(self, name: str) -> TapFile:
        """Create (or truncate) ``directory/name``.

        Raises:
            OSError: it cannot be created.
        """
        return TapFile(self, self.directory / name)

    def put(self, tap: TapFile, data: memoryview) -> None:
        """Queue a copy of ``data`` for ``tap``; wait while :data:`MAX_PENDING` bytes wait."""
        size = len(data)
        recycled = _SMALL < size <= _BUFFER
        with self._cond:
            while self._pending >= MAX_PENDING:
                self._cond.wait()
            self._pending += size
            spare = self._spare.pop() if recycled and self._spare else None
        if recycled:
            copy = (spare or memoryview(bytearray(_BUFFER)))[:size]
            copy[:] = data
        else:
            copy = memoryview(bytes(data))
        with self._cond:
            self._queue.append((tap, copy, None))
            self._start()
            self._cond.notify_all()

    async def close(self, *taps: TapFile) -> None:
        """Close ``taps`` once everything queued for them is written."""
        loop = asyncio.get_running_loop()
        waiters = []
        with self._cond:
            for tap in taps:
                done: asyncio.Future[None] = loop.create_future()
                self._queue.append((tap, None, done))
                waiters.append(done)
            self._start()
            self._cond.notify_all()
        await asyncio.gather(*waiters)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="qiochan-tap", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                tap, data, done = self._queue.popleft()
            if data is not None:
                self._write(tap, data)
                with self._cond:
                    self._pending -= len(data)
                    buffer = data.obj
                    if isinstance(buffer, bytearray) and len(self._spare) < _SPARES:
                        self._spare.append(memoryview(buffer))
                    self._cond.notify_all()
            else:
                os.close(tap.fd)
                assert done is not None
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    done.get_loop().call_soon_threadsafe(_resolve, done)

    def _write(self, tap: TapFile, view: memoryview) -> None:
        try:
            while view:
                view = view[os.write(tap.fd, view) :]
        except OSError as exc:
            # a full disk must not stop the relay: the tap stops growing instead
            if self._error is None:
                log.warning("writing the tap files in %s failed: %s", self.directory, exc)
            self._error = self._error or exc


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
