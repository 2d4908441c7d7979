"""QIOChannelFile: a channel over a file descriptor (QEMU's channel-file).

Regular files are seekable (``SEEKABLE``, :meth:`~qiochan.QIOChannel.seek`,
positioned ``preadv``/``pwritev``) and always ready for watches, as ``poll()``
says; pipes, FIFOs and character devices are streams watched through their fd.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from typing import Self

from qiochan.channel import ERR_BLOCK, Feature, QIOChannel, ReadFlag, WriteFlag
from qiochan.errors import from_oserror, unsupported
from qiochan.watch import AlwaysReadySource, Condition, FdWatchSource, WatchSource

__all__ = ["QIOChannelFile", "file_pipe"]

log = logging.getLogger("qiochan.file")

_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


class QIOChannelFile(QIOChannel):
    """A channel owning the file descriptor ``fd`` (closed with the channel).

    Use :meth:`new_fd` or :meth:`new_path`.  Attributes: ``fd``, ``regular``
    (True for a regular file).
    """

    close_may_block = False  # closing never waits

    def __init__(self, fd: int) -> None:
        super().__init__()
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            raise from_oserror(f"File descriptor {fd} is not open", exc) from exc
        self.fd = fd
        self.regular = stat.S_ISREG(mode)
        try:
            os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            pass  # a pipe, FIFO or socket: a stream
        else:
            self.set_feature(Feature.SEEKABLE)
        log.debug("file new fd=%d regular=%s", fd, self.regular)

    def __repr__(self) -> str:
        base = super().__repr__()
        return base if self.fd < 0 else f"{base[:-1]} fd={self.fd}>"

    @classmethod
    def new_fd(cls, fd: int) -> Self:
        """Return a channel owning ``fd``.

        Raises:
            ChannelError: ``fd`` is not open (``EBADF``).
        """
        return cls(fd)

    @classmethod
    def new_path(
        cls, path: str | os.PathLike[str], flags: int = os.O_RDONLY, mode: int = 0o600
    ) -> Self:
        """Open ``path`` with ``os.open(path, flags | O_CLOEXEC, mode)``; return its channel.

        Opening a FIFO blocks until its other end is opened (unless ``O_NONBLOCK``).

        Raises:
            ChannelError: the open failed (``ENOENT``, ``EACCES``...).
        """
        try:
            fd = os.open(path, flags | os.O_CLOEXEC, mode)
        except OSError as exc:
            raise from_oserror(f"Unable to open {os.fspath(path)!r}", exc) from exc
        try:
            return cls(fd)
        except BaseException:
            os.close(fd)
            raise

    def _require_fd(self) -> int:
        self._check_open()
        return self.fd

    # -- the backend contract --------------------------------------------------------

    def io_write_fd(self) -> int:
        """Return the fd plain writes may go to directly (io_writev adds nothing), or -1."""
        return self.fd

    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        fd = self._require_fd()
        if len(iov) > _IOV_MAX:
            iov = iov[:_IOV_MAX]
        while True:
            try:
                return os.readv(fd, iov), []
            except BlockingIOError:
                return ERR_BLOCK, []
            except InterruptedError:
                continue
            except OSError as exc:
                raise from_oserror("Unable to read from file", exc) from exc

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        fd = self._require_fd()
        if len(iov) > _IOV_MAX:
            iov = iov[:_IOV_MAX]
        while True:
            try:
                if len(iov) == 1:
                    return os.write(fd, iov[0])
                return os.writev(fd, iov)
            except BlockingIOError:
                return ERR_BLOCK
            except InterruptedError:
                continue
            except OSError as exc:
                raise from_oserror("Unable to write to file", exc) from exc

    def io_seek(self, offset: int, whence: int) -> int:
        fd = self._require_fd()
        if Feature.SEEKABLE not in self._features:
            raise unsupported("Seek (the file is a stream)")
        try:
            return os.lseek(fd, offset, whence)
        except OSError as exc:
            raise from_oserror("Unable to seek file", exc) from exc

    def io_preadv(self, iov: list[memoryview], offset: int) -> int:
        fd = self._require_fd()
        try:
            return os.preadv(fd, iov[:_IOV_MAX], offset)
        except OSError as exc:
            raise from_oserror(f"Unable to read from file at offset {offset}", exc) from exc

    def io_pwritev(self, iov: list[memoryview], offset: int) -> int:
        fd = self._require_fd()
        try:
            return os.pwritev(fd, iov[:_IOV_MAX], offset)
        except OSError as exc:
            raise from_oserror(f"Unable to write to file at offset {offset}", exc) from exc

    def io_create_watch(self, condition: Condition) -> WatchSource:
        fd = self._require_fd()
        if self.regular:
            return AlwaysReadySource(condition)
        return FdWatchSource(fd, condition)

    def io_set_blocking(self, enabled: bool) -> None:
        try:
            os.set_blocking(self._require_fd(), enabled)
        except OSError as exc:
            raise from_oserror("Unable to set file blocking mode", exc) from exc

    def io_close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError as exc:
                raise from_oserror("Unable to close file", exc) from exc


def file_pipe() -> tuple[QIOChannelFile, QIOChannelFile]:
    """Return ``(writer, reader)`` channels over a new OS pipe (close-on-exec).

    Raises:
        ChannelError: the pipe could not be created (``EMFILE``...).
    """
    try:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    except OSError as exc:
        raise from_oserror("Unable to create pipe", exc) from exc
    return QIOChannelFile(write_fd), QIOChannelFile(read_fd)
