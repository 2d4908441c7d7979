"""In-memory channels: a growable seekable buffer and a null sink (QEMU's channel-buffer/null)."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from qiochan.channel import Feature, QIOChannel, ReadFlag, Shutdown, WriteFlag
from qiochan.errors import ChannelError
from qiochan.watch import AlwaysReadySource, Condition, WatchSource

__all__ = ["QIOChannelBuffer", "QIOChannelNull"]


def _copy_out(source: memoryview, iov: list[memoryview]) -> int:
    """Copy from ``source`` into the buffers of ``iov`` in order; return bytes copied."""
    done = 0
    for view in iov:
        if done >= len(source):
            break
        chunk = min(view.nbytes, len(source) - done)
        view[:chunk] = source[done : done + chunk]
        done += chunk
    return done


class QIOChannelBuffer(QIOChannel):
    """A growable in-memory buffer behaving like a seekable file.

    Reads and writes happen at :attr:`offset`; a read stops at :attr:`usage`
    (EOF there); a write past :attr:`usage` zero-fills the gap and extends it.
    Always ready for watches; blocking mode changes nothing.

    Args:
        capacity: bytes to preallocate.
    """

    def __init__(self, capacity: int = 0) -> None:
        super().__init__()
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self._buffer = bytearray(capacity)
        self._usage = 0
        self._offset = 0
        self.set_feature(Feature.SEEKABLE)
        self.set_feature(Feature.SHUTDOWN)
        self._read_shut = False
        self._write_shut = False

    @property
    def usage(self) -> int:
        """Bytes of the buffer in use (the 'file size')."""
        return self._usage

    @property
    def offset(self) -> int:
        """The current read/write position."""
        return self._offset

    @property
    def capacity(self) -> int:
        """Bytes allocated."""
        return len(self._buffer)

    @property
    def data(self) -> memoryview:
        """A read-only view of the used part (valid until the buffer next grows)."""
        return memoryview(self._buffer)[: self._usage].toreadonly()

    def getvalue(self) -> bytes:
        """Return a copy of the used part."""
        return bytes(self._buffer[: self._usage])

    def _ensure(self, end: int) -> None:
        if end <= len(self._buffer):
            return
        # grow into a new bytearray so views handed out by .data stay valid
        grown = bytearray(max(end, 2 * len(self._buffer), 4096))
        grown[: self._usage] = self._buffer[: self._usage]
        self._buffer = grown

    def _read_at(self, iov: list[memoryview], offset: int) -> int:
        if offset >= self._usage:
            return 0
        return _copy_out(memoryview(self._buffer)[offset : self._usage], iov)

    def _write_at(self, iov: list[memoryview], offset: int) -> int:
        total = sum(view.nbytes for view in iov)
        self._ensure(offset + total)
        position = offset
        for view in iov:
            self._buffer[position : position + view.nbytes] = view
            position += view.nbytes
        self._usage = max(self._usage, position)
        return total

    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        if self._read_shut:
            return 0, []
        n = self._read_at(iov, self._offset)
        if not (flags and flags & ReadFlag.MSG_PEEK):
            self._offset += n
        return n, []

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        if self._write_shut:
            raise ChannelError("Unable to write to buffer: it was shut down", errno.EPIPE)
        n = self._write_at(iov, self._offset)
        self._offset += n
        return n

    def io_preadv(self, iov: list[memoryview], offset: int) -> int:
        return self._read_at(iov, offset)

    def io_pwritev(self, iov: list[memoryview], offset: int) -> int:
        return self._write_at(iov, offset)

    def io_seek(self, offset: int, whence: int) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._offset, os.SEEK_END: self._usage}[whence]
        position = base + offset
        if position < 0:
            raise ChannelError(f"Cannot seek buffer to negative offset {position}", errno.EINVAL)
        self._offset = position
        return position

    def io_shutdown(self, how: Shutdown) -> None:
        if how & Shutdown.READ:
            self._read_shut = True
        if how & Shutdown.WRITE:
            self._write_shut = True

    def io_close(self) -> None:
        self._buffer = bytearray()
        self._usage = self._offset = 0

    def io_create_watch(self, condition: Condition) -> WatchSource:
        return AlwaysReadySource(condition)

    def io_set_blocking(self, enabled: bool) -> None:
        """Nothing to do: a buffer never blocks."""


class QIOChannelNull(QIOChannel):
    """Discards writes, reads EOF, is always ready; every call after close fails."""

    close_may_block = False  # closing never waits

    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        return 0, []

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        if len(iov) == 1:
            return iov[0].nbytes
        return sum(view.nbytes for view in iov)

    def io_seek(self, offset: int, whence: int) -> int:
        return 0

    def io_close(self) -> None:
        """Nothing to release."""

    def io_create_watch(self, condition: Condition) -> WatchSource:
        return AlwaysReadySource(condition)

    def io_set_blocking(self, enabled: bool) -> None:
        """Nothing to do: the null channel never blocks."""
