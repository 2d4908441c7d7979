"""A small one-way channel over an OS pipe, written against the backend contract only.

It is what a third-party author would write first; the tests run the
conformance kit over it and over deliberately broken variants of it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from qiochan import ERR_BLOCK, ChannelError, Condition, QIOChannel, ReadFlag, WriteFlag
from qiochan.errors import from_oserror
from qiochan.watch import FdWatchSource, WatchSource


class PipeChannel(QIOChannel):
    """One end of an ``os.pipe()``: readable or writable, never both."""

    def __init__(self, fd: int, writable: bool) -> None:
        super().__init__()
        self.fd = fd
        self.writable = writable

    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        if self.writable:
            raise ChannelError("Cannot read from the write end of a pipe", errno.EBADF)
        try:
            return os.readv(self.fd, iov), []
        except BlockingIOError:
            return ERR_BLOCK, []
        except OSError as exc:
            raise from_oserror("Unable to read from pipe", exc) from exc

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        if not self.writable:
            raise ChannelError("Cannot write to the read end of a pipe", errno.EBADF)
        try:
            return os.writev(self.fd, iov)
        except BlockingIOError:
            return ERR_BLOCK
        except OSError as exc:
            raise from_oserror("Unable to write to pipe", exc) from exc

    def io_close(self) -> None:
        os.close(self.fd)

    def io_create_watch(self, condition: Condition) -> WatchSource:
        return FdWatchSource(self.fd, condition)

    def io_set_blocking(self, enabled: bool) -> None:
        os.set_blocking(self.fd, enabled)


def pipe_pair() -> tuple[PipeChannel, PipeChannel]:
    """Return ``(writer, reader)`` over a fresh pipe."""
    read_fd, write_fd = os.pipe()
    return PipeChannel(write_fd, writable=True), PipeChannel(read_fd, writable=False)
