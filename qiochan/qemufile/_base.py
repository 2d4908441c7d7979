"""State shared by every part of :class:`~qiochan.qemufile.QEMUFile`: buffer, counters, error latch.

QEMU's ``QEMUFile`` keeps one 32 KiB buffer, used for writing (with the iovec
list of what a flush will send) or for reading (``index``..``size`` is the
unread part).  Errors are latched: the first one wins and turns every later
operation into a no-op; readers and writers check for it on their slow paths
only, because latching an error also closes the writers' fast path
(``_fast_end``).
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from typing import TYPE_CHECKING

from ..channel import QIOChannel
from ..errors import ChannelError
from ._core import IO_BUF_SIZE, MAX_IOV_SIZE

if TYPE_CHECKING:
    from ._core import QEMUFileCore as _Core
else:  # the core comes last in QEMUFile's bases (see _file.QEMUFile)
    _Core = object

__all__ = [
    "BE16",
    "BE32",
    "BE64",
    "BYTE",
    "EMPTY",
    "IO_BUF_SIZE",
    "MAX_IOV_SIZE",
    "QEMUFileBase",
    "bad_value",
]

log = logging.getLogger("qiochan.qemufile")

#: The empty view returned when nothing could be read.
EMPTY = memoryview(b"")

#: Struct objects for the big-endian values (precompiled once).
BE16 = struct.Struct(">H")
BE32 = struct.Struct(">I")
BE64 = struct.Struct(">Q")
BYTE = struct.Struct(">B")


def bad_value(what: str, bits: int, value: object) -> Exception:
    """Return the error for ``value`` not fitting an unsigned ``bits``-bit field."""
    if not hasattr(value, "__index__"):
        return TypeError(f"{what} needs an integer, not {type(value).__name__}")
    return ValueError(f"{what}: value {value!r} is out of range 0..{(1 << bits) - 1}")


def _forget_frames(exc: BaseException) -> None:
    """Drop the tracebacks of ``exc`` and of the exceptions chained to it.

    A latched exception lives as long as the file; its frames (and their
    callers, through ``f_back``) hold views of caller buffers, so an mmap could
    not be closed, nor a bytearray resized, while the error is kept.  The
    message says what failed, as QEMU's Error objects do.
    """
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending += (current.__cause__, current.__context__)


class QEMUFileBase(_Core):
    """The state of a QEMUFile and the operations every direction shares.

    The buffer, positions and iovec queue are the core's (see
    :class:`~qiochan.qemufile._core.QEMUFileCore`, the last base class of
    QEMUFile); this class adds the channel, the counters and the error latch.
    """

    def __init__(self, ioc: QIOChannel, writable: bool) -> None:
        if not isinstance(ioc, QIOChannel):
            raise TypeError(f"QEMUFile needs a QIOChannel, not {type(ioc).__name__}")
        super().__init__()
        self._ioc = ioc
        self._writable = bool(writable)
        self._fast_end = IO_BUF_SIZE if self._writable else 0
        self._reading = not self._writable
        self._total = 0
        self._error = 0
        self._error_obj: BaseException | None = None
        self._close_error: BaseException | None = None
        self._closed = False
        self._scratch = bytearray(8)
        self._scratch_view = memoryview(self._scratch)
        self._hooks: object | None = None
        self._rate_max = 0
        self._rate_mark = 0
        self._rate_adjust = 0

    def __repr__(self) -> str:
        direction = "output" if self._writable else "input"
        state = " closed" if self._closed else (f" error={self._error}" if self._error else "")
        return f"<QEMUFile {direction} over {self._ioc!r}{state}>"

    # -- state checks ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`fclose` was called."""
        return self._closed

    @property
    def writable(self) -> bool:
        """True for an output stream, False for an input stream."""
        return self._writable

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelError("QEMUFile is closed", errno.EBADF)

    def _check_writable(self, what: str) -> None:
        self._check_open()
        if not self._writable:
            raise ChannelError(f"{what}: QEMUFile is an input stream", errno.EINVAL)

    def _check_readable(self, what: str) -> None:
        self._check_open()
        if self._writable:
            raise ChannelError(f"{what}: QEMUFile is an output stream", errno.EINVAL)

    def _may_write(self, what: str) -> bool:
        """Check that this is an open output stream; return False once an error is latched.

        Raises:
            ChannelError: the file is closed or is an input stream.
        """
        self._check_writable(what)
        return not self._error

    def _writer_ok(self) -> bool:
        """Return True for an open, error-free output stream (the fast path may run)."""
        return self._writable and not self._closed and not self._error

    # -- the error latch -----------------------------------------------------

    def _latch(self, ret: int, exc: BaseException | None) -> None:
        """Record ``ret`` (and ``exc``) unless an error is already latched."""
        if self._error == 0 and ret:
            if exc is not None:
                _forget_frames(exc)
            self._error = ret
            self._error_obj = exc
            self._fast_end = 0
            log.debug("QEMUFile error %d latched: %s", ret, exc)
        elif exc is not None:
            log.warning("QEMUFile: error after an earlier one (%d): %s", self._error, exc)

    def get_error(self) -> int:
        """Return the latched error (a negative errno), or 0 if none.

        Raises:
            ChannelError: the file is closed (``EBADF``).
        """
        self._check_open()
        return self._error

    def get_error_obj(self) -> tuple[int, BaseException | None]:
        """Return ``(error, exception)``: the latched error and the exception kept with it.

        ``(0, None)`` when no error is latched; the exception is None when the
        error was set without one (:meth:`set_error`, :meth:`shutdown`).

        Raises:
            ChannelError: the file is closed (``EBADF``).
        """
        self._check_open()
        return self._error, self._error_obj

    def set_error(self, ret: int) -> None:
        """Latch ``ret`` (a negative errno) unless an error is already latched.

        Raises:
            ChannelError: the file is closed (``EBADF``).
            TypeError: ``ret`` is not an int.
        """
        self.set_error_obj(ret, None)

    def set_error_obj(self, ret: int, exc: BaseException | None) -> None:
        """Latch ``ret`` with the exception ``exc``; the first error wins.

        A later exception is logged and dropped, as QEMU reports it.

        Raises:
            ChannelError: the file is closed (``EBADF``).
            TypeError: ``ret`` is not an int or ``exc`` not an exception.
        """
        self._check_open()
        if not isinstance(ret, int):
            raise TypeError(f"error must be an int (a negative errno), not {type(ret).__name__}")
        if exc is not None and not isinstance(exc, BaseException):
            raise TypeError(f"exc must be an exception or None, not {type(exc).__name__}")
        self._latch(ret, exc)

    @staticmethod
    def get_error_obj_any(
        f1: QEMUFileBase | None, f2: QEMUFileBase | None
    ) -> tuple[int, BaseException | None]:
        """Return the error of ``f1`` if it has one, else that of ``f2`` (either may be None).

        Returns:
            ``(error, exception)`` as :meth:`get_error_obj`; ``(0, None)`` when neither failed.
        """
        for f in (f1, f2):
            if f is not None:
                ret, exc = f.get_error_obj()
                if ret:
                    return ret, exc
        return 0, None

    def _failure(self, ret: int) -> ChannelError:
        """Return the exception a context manager raises for the error ``ret``."""
        cause = self._error_obj if self._error else self._close_error
        direction = "output" if self._writable else "input"
        message = f"QEMUFile {direction} stream failed: {os.strerror(abs(ret))}"
        if cause is not None:
            message += f" ({cause})"
        error = ChannelError(message, abs(ret))
        error.__cause__ = cause
        return error

    def transferred_noflush(self) -> int:
        """Return the bytes sent plus those queued (output), or the bytes read (input).

        Raises:
            ChannelError: the file is closed.
        """
        self._check_open()
        if self._writable:
            return self._total + self._pending()
        return self._total

    # -- channel access --------------------------------------------------------

    def get_ioc(self) -> QIOChannel:
        """Return the channel this file reads or writes (still owned by the file)."""
        return self._ioc

    def set_blocking(self, block: bool) -> None:
        """Set the channel's blocking mode.

        On most transports both directions share it, so this also affects the
        return path.  Reads on a non-blocking channel wait for data with the
        channel's ``wait()``; writes wait inside ``writev_all``.

        Raises:
            ChannelError: the file or its channel is closed.
        """
        self._check_open()
        self._ioc.set_blocking(block)
