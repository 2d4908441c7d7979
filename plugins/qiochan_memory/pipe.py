"""An in-process, bounded, bidirectional channel pair (no OS pipe carries the data).

Each direction is a :class:`Lane`: a bytearray guarded by a lock, with two
eventfds that mirror its state so watches and :meth:`QIOChannel.wait` sleep in
``poll()`` like any other channel: one is readable while the lane has data (or
its writer is gone), the other while it has room (or its reader is gone).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Sequence

from qiochan.channel import ERR_BLOCK, Feature, QIOChannel, ReadFlag, Shutdown, WriteFlag
from qiochan.errors import ChannelError
from qiochan.watch import Condition, WatchSource

__all__ = ["Lane", "QIOChannelMemoryPipe", "memory_pipe"]

_EFD_FLAGS = os.EFD_NONBLOCK | os.EFD_CLOEXEC


class _Signal:
    """An eventfd that is readable exactly while ``state`` is True (set under the lane lock)."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, _EFD_FLAGS)
        self.state = False

    def set(self, state: bool) -> None:
        if state == self.state:
            return
        self.state = state
        if state:
            os.eventfd_write(self.fd, 1)
        else:
            try:
                os.eventfd_read(self.fd)
            except BlockingIOError:
                pass

    def close(self) -> None:
        os.close(self.fd)


class Lane:
    """One direction of a memory pipe, holding at most ``capacity`` bytes."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self.capacity = capacity
        self.data = bytearray()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.writer_gone = False
        self.reader_gone = False
        self.readable = _Signal()
        self.writable = _Signal()
        self.writable.set(True)
        self.users = 2

    def _update(self) -> None:
        # "ready" means a call would not block: it may return EOF or raise
        gone = self.writer_gone or self.reader_gone
        self.readable.set(bool(self.data) or gone)
        self.writable.set(len(self.data) < self.capacity or gone)
        self.changed.notify_all()

    def read_into(self, iov: list[memoryview], blocking: bool, peek: bool) -> int:
        """Move queued bytes into ``iov``; return the count, 0 at EOF, or ERR_BLOCK."""
        with self.lock:
            while not self.data:
                if self.writer_gone or self.reader_gone:
                    return 0
                if not blocking:
                    return ERR_BLOCK
                self.changed.wait()
            source = memoryview(self.data)
            done = 0
            try:
                for view in iov:
                    chunk = min(view.nbytes, len(source) - done)
                    if chunk <= 0:
                        break
                    view[:chunk] = source[done : done + chunk]
                    done += chunk
            finally:
                source.release()
            if not peek:
                del self.data[:done]
                self._update()
            return done

    def write_from(self, iov: list[memoryview], blocking: bool) -> int:
        """Queue bytes of ``iov`` up to the capacity; return the count or ERR_BLOCK."""
        with self.lock:
            while True:
                if self.reader_gone or self.writer_gone:
                    raise ChannelError("Unable to write to memory pipe: Broken pipe", errno.EPIPE)
                room = self.capacity - len(self.data)
                if room > 0:
                    break
                if not blocking:
                    return ERR_BLOCK
                self.changed.wait()
            done = 0
            for view in iov:
                chunk = min(view.nbytes, room - done)
                if chunk <= 0:
                    break
                self.data += view[:chunk]
                done += chunk
            self._update()
            return done

    def end(self, reader: bool) -> None:
        """Mark the reading or writing end gone and wake everyone."""
        with self.lock:
            if reader:
                self.reader_gone = True
                self.data.clear()
            else:
                self.writer_gone = True
            self._update()

    def release(self) -> None:
        """Drop one endpoint's reference; the last one closes the eventfds."""
        with self.lock:
            self.users -= 1
            last = self.users == 0
        if last:
            self.readable.close()
            self.writable.close()


class _PipeWatchSource(WatchSource):
    def __init__(self, inbound: Lane, outbound: Lane, condition: Condition) -> None:
        super().__init__(condition)
        self.inbound = inbound
        self.outbound = outbound
        fds = []
        if self.condition & ~Condition.OUT:
            fds.append((inbound.readable.fd, Condition.IN))
        if self.condition & Condition.OUT:
            fds.append((outbound.writable.fd, Condition.IN))
        self._fds = tuple(fds)

    def poll_fds(self) -> Sequence[tuple[int, Condition]]:
        return self._fds

    def pending(self) -> Condition:
        ready = Condition(0)
        if self.inbound.readable.state:
            ready |= Condition.IN
            if self.inbound.writer_gone and not self.inbound.data:
                ready |= Condition.HUP
        if self.outbound.writable.state:
            ready |= Condition.OUT
            if self.outbound.reader_gone:
                ready |= Condition.ERR
        return ready

    def check(self) -> Condition:
        # the eventfds only wake sleepers; the lane state is the truth
        return self.pending() & self._mask()


class QIOChannelMemoryPipe(QIOChannel):
    """One end of an in-memory pipe pair made by :func:`memory_pipe`.

    Supports ``SHUTDOWN`` and ``READ_MSG_PEEK``; blocking and non-blocking modes.
    """

    close_may_block = False  # closing never waits

    def __init__(self, inbound: Lane, outbound: Lane) -> None:
        super().__init__()
        self._inbound = inbound
        self._outbound = outbound
        self.set_feature(Feature.SHUTDOWN)
        self.set_feature(Feature.READ_MSG_PEEK)

    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        peek = bool(flags) and bool(flags & ReadFlag.MSG_PEEK)
        return self._inbound.read_into(iov, self._blocking, peek), []

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        return self._outbound.write_from(iov, self._blocking)

    def io_shutdown(self, how: Shutdown) -> None:
        if how & Shutdown.READ:
            self._inbound.end(reader=True)
        if how & Shutdown.WRITE:
            self._outbound.end(reader=False)

    def io_close(self) -> None:
        self._inbound.end(reader=True)
        self._outbound.end(reader=False)
        self._inbound.release()
        self._outbound.release()

    def io_create_watch(self, condition: Condition) -> WatchSource:
        return _PipeWatchSource(self._inbound, self._outbound, condition)

    def io_set_blocking(self, enabled: bool) -> None:
        """Blocking is decided per call from the channel's mode."""


def memory_pipe(capacity: int = 65536) -> tuple[QIOChannelMemoryPipe, QIOChannelMemoryPipe]:
    """Return two connected channels; each direction buffers up to ``capacity`` bytes."""
    forward, backward = Lane(capacity), Lane(capacity)
    return QIOChannelMemoryPipe(backward, forward), QIOChannelMemoryPipe(forward, backward)
