"""Tap files: copies of what a gateway relays, written off the event loop.

A tapped direction reads into the loop's shared read buffer like an untapped
one.  Once a large chunk is passed on, the tap takes the buffer itself, no
copy made: :meth:`TapFile.take` queues the chunk for the writer thread (one
per gateway, not per connection) and gives the loop another buffer to read
into, a recycled one.  Small chunks are copied instead.  The buffers are
kept once made (up to :data:`MAX_PENDING` bytes of them): making and freeing
1 MiB buffers per chunk means fresh pages, and unmapping them from a
many-threaded process costs every core a TLB flush (a VM exit each on a
virtual machine).  When :data:`MAX_PENDING` bytes wait, the loop waits for
the writer, so a slow disk slows the relay down instead of filling memory.
An idle connection holds no buffer: only queued chunks take memory.
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
#: Chunks up to this size are copied; the buffers of larger ones are taken.
_SMALL = 64 * 1024
#: The size of a recycled buffer: a relay's read buffer.
_BUFFER = READ_SIZE
#: Recycled buffers kept for reuse: as many as can wait to be written.
_SPARES = MAX_PENDING // _BUFFER


class TapFile:
    """One tap file; :meth:`take` queues each chunk for the writer thread."""

    def __init__(self, writer: TapWriter, path: Path) -> None:
        self._writer = writer
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    def take(self, buffer: memoryview, size: int, /) -> memoryview:
        """Queue ``buffer[:size]`` for the file; return the buffer to read into next.

        A large chunk's buffer is taken as it is (the caller must not touch it
        again) and a recycled buffer of the same size comes back; a small
        chunk is copied and ``buffer`` itself comes back.
        """
        return self._writer.take(self, buffer, size)


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

    def take(self, tap: TapFile, buffer: memoryview, size: int) -> memoryview:
        """Queue ``buffer[:size]`` for ``tap`` (see :meth:`TapFile.take`); return the next buffer.

        Waits while :data:`MAX_PENDING` bytes wait to be written.
        """
        taken = size > _SMALL and buffer.nbytes == _BUFFER
        chunk = buffer[:size] if taken else memoryview(bytes(buffer[:size]))
        with self._cond:
            while self._pending >= MAX_PENDING:
                self._cond.wait()
            self._pending += size
            spare = self._spare.pop() if taken and self._spare else None
            self._queue.append((tap, chunk, None))
            self._start()
            self._cond.notify_all()
        if not taken:
            return buffer
        return spare if spare is not None else memoryview(bytearray(_BUFFER))

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
                    recycle = isinstance(buffer, bytearray) and len(buffer) == _BUFFER
                    if recycle and len(self._spare) < _SPARES:
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
