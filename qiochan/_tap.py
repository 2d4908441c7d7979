"""Tap files: copies of what a gateway relays, written off the event loop.

A tapped direction reads into buffers lent by the tap's pool and hands each
filled buffer to the queue without copying it (the relay's transport copies
what it cannot send at once, so it keeps no reference); one writer thread per
gateway (not per connection) writes the queue to the files in order and
returns the buffers to the pool.  When the pool is exhausted
(:data:`MAX_PENDING` bytes waiting), the loop waits for the writer, so a slow
disk slows the relay down instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import deque
from pathlib import Path

__all__ = ["MAX_PENDING", "TapFile", "TapWriter"]

log = logging.getLogger("qiochan.relay")

#: Bytes queued for the tap files before the loop waits for the writer.
MAX_PENDING = 64 * 1024 * 1024
#: The size of one pooled read buffer.
BUFFER_SIZE = 256 * 1024


class TapFile:
    """One tap file; :meth:`write` queues a copy of each chunk."""

    def __init__(self, writer: TapWriter, path: Path) -> None:
        self._writer = writer
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    def buffer(self) -> memoryview:
        """Lend a buffer to read into; give it back filled through :meth:`write`."""
        return self._writer.lend()

    def write(self, data: memoryview) -> None:
        """Queue ``data``, a slice of a buffer :meth:`buffer` lent; the tap owns it now."""
        self._writer.put(self, data)

    def release(self, buffer: memoryview) -> None:
        """Give back a buffer :meth:`buffer` lent that will not be filled."""
        self._writer.give_back(buffer)


class TapWriter:
    """The writer thread of a gateway's tap files, started on first use."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._queue: deque[tuple[TapFile, memoryview | None, asyncio.Future[None] | None]] = deque()
        self._free: list[memoryview] = []
        self._lent = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None

    def open(self, name: str) -> TapFile:
        """Create (or truncate) ``directory/name``.

        Raises:
            OSError: it cannot be created.
        """
        return TapFile(self, self.directory / name)

    def lend(self) -> memoryview:
        """Return a free pooled buffer; wait for the writer while all are in use."""
        with self._cond:
            while not self._free and self._lent * BUFFER_SIZE >= MAX_PENDING:
                self._cond.wait()
            self._lent += 1
            if self._free:
                return self._free.pop()
        return memoryview(bytearray(BUFFER_SIZE))

    def give_back(self, buffer: memoryview) -> None:
        """Return a lent buffer that was never filled."""
        with self._cond:
            self._release(buffer)

    def _release(self, buffer: memoryview) -> None:
        self._free.append(buffer)
        self._lent -= 1
        self._cond.notify_all()

    def put(self, tap: TapFile, data: memoryview) -> None:
        """Queue ``data`` (a slice of a lent buffer) for ``tap``."""
        with self._cond:
            self._queue.append((tap, data, None))
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
                with self._cond:  # the buffer is free again
                    self._release(memoryview(data.obj))
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
