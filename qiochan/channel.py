"""The :class:`QIOChannel` contract: one I/O interface over every transport and layer.

Semantics follow QEMU's ``io/channel.h``.  The public methods are implemented
once, here, on top of a small backend contract (the ``io_*`` methods):

Mandatory for a backend:
    ``io_readv(iov, want_fds, flags) -> (n, fds)``,
    ``io_writev(iov, fds, flags) -> n``, ``io_close()``,
    ``io_create_watch(condition) -> WatchSource``, ``io_set_blocking(enabled)``.
Optional:
    ``io_abort()``, ``io_shutdown(how)``, ``io_set_cork(enabled)``, ``io_set_delay(enabled)``,
    ``io_seek(offset, whence) -> int``, ``io_flush() -> int``,
    ``io_preadv(iov, offset) -> n``, ``io_pwritev(iov, offset) -> n``,
    ``io_peerpid() -> int``.

The base class hands ``io_readv``/``io_writev`` a list of one-dimensional,
byte-format ``memoryview`` objects (writable ones for reads), never a copy of
the caller's data.  In non-blocking mode they return :data:`ERR_BLOCK`
(``io_readv``: ``(ERR_BLOCK, [])``) instead of blocking.  Errors are raised as
:class:`~qiochan.errors.ChannelError`; an ``OSError`` that escapes a backend is
turned into one here.
"""

from __future__ import annotations

import abc
import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from enum import IntEnum, IntFlag
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

from . import _hooks
from .errors import ChannelError, closed_error, from_oserror, unexpected_eof, unsupported
from .iov import advance
from .watch import Condition, Watch, WatchFunc, WatchSource

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
elif TYPE_CHECKING:
    from typing_extensions import Buffer

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "ERR_BLOCK",
    "Buffer",
    "Feature",
    "QIOChannel",
    "ReadFlag",
    "Shutdown",
    "Steps",
    "WriteFlag",
    "arun_steps",
    "await_before",
    "read_views",
    "run_steps",
    "write_views",
]

log = logging.getLogger("qiochan.channel")

if sys.version_info < (3, 12) and not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        # Buffer (PEP 688) comes from typing_extensions before 3.12: imported on
        # first use, not by ``import qiochan`` (annotations here are strings)
        if name == "Buffer":
            from typing_extensions import Buffer

            globals()["Buffer"] = Buffer
            return Buffer
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Returned (never raised) by a non-blocking read or write that would block.
ERR_BLOCK = -2

_T = TypeVar("_T")
#: A step generator: does non-blocking I/O, yields the :class:`Condition` it
#: needs before it can go on, and returns its result.
Steps = Generator[Condition, None, _T]


def run_steps(waiter: QIOChannel, steps: Steps[_T], deadline: float | None = None) -> _T:
    """Run ``steps`` to the end in this thread, waiting with ``waiter.wait()``.

    This is the one driver of every step generator in sync code: the
    ``*_all`` family and layer handshakes.  With a ``deadline`` (a
    :func:`time.monotonic` value), a wait that would pass it throws
    :class:`TimeoutError` into the generator at its pending ``yield``, as does
    any error raised while waiting, so the steps can answer before failing
    (a websocket server sends 408).

    Returns:
        What the generator returns.
    Raises:
        Whatever the generator raises (a TimeoutError it does not handle included).
    """
    try:
        condition = next(steps)
    except StopIteration as stop:  # done without waiting: the common case
        result: _T = stop.value
        return result
    return _wait_steps(waiter, steps, condition, deadline)


def _wait_steps(
    waiter: QIOChannel, steps: Steps[_T], condition: Condition, deadline: float | None
) -> _T:
    """:func:`run_steps` once the generator first asked to wait for ``condition``."""
    try:
        if deadline is None:
            while True:
                waiter.wait(condition)
                condition = steps.send(None)
        while True:
            try:
                waiter.wait(condition, timeout=max(0.0, deadline - time.monotonic()))
            except Exception as exc:  # a timeout or a failed waiter: the steps decide
                condition = steps.throw(exc)
            else:
                condition = steps.send(None)
    except StopIteration as stop:
        result: _T = stop.value
        return result
    finally:
        steps.close()


async def arun_steps(waiter: QIOChannel, steps: Steps[_T], deadline: float | None = None) -> _T:
    """Run ``steps`` to the end on the running loop, awaiting ``waiter.yield_()``.

    The async twin of :func:`run_steps` (same ``deadline`` rule); it never
    blocks the loop, provided the steps' I/O is non-blocking.

    Returns:
        What the generator returns.
    Raises:
        Whatever the generator raises.
    """

    try:
        condition = next(steps)
        if deadline is None:
            while True:
                await waiter.yield_(condition)
                condition = steps.send(None)
        while True:
            try:
                await await_before(waiter.yield_(condition), deadline)
            except Exception as exc:  # a timeout or a failed waiter: the steps decide
                condition = steps.throw(exc)
            else:
                condition = steps.send(None)
    except StopIteration as stop:
        result: _T = stop.value
        return result
    finally:
        steps.close()


async def await_before(awaitable: Awaitable[_T], deadline: float) -> _T:
    """Await ``awaitable`` (in the current task); raise TimeoutError once ``deadline`` passes.

    ``deadline`` is a :func:`time.monotonic` value.  Like ``asyncio.timeout``,
    but the timer is only cancelled while its loop is open: a coroutine
    abandoned on a loop that was closed since (then finalised by the garbage
    collector) must not touch that loop's timers, which crashes uvloop.

    Returns:
        What ``awaitable`` returns.
    Raises:
        TimeoutError: the deadline passed first (``awaitable`` was cancelled).
    """
    import asyncio

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = loop.call_later(max(0.0, deadline - time.monotonic()), expire)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if expired and task.uncancel() == 0:
            raise TimeoutError("the deadline passed") from None
        raise
    finally:
        if not loop.is_closed():
            timer.cancel()


class Feature(IntEnum):
    """Optional capabilities a channel may declare."""

    FD_PASS = 0
    SHUTDOWN = 1
    LISTEN = 2
    WRITE_ZERO_COPY = 3
    SEEKABLE = 4
    READ_MSG_PEEK = 5


class Shutdown(IntFlag):
    """Directions for :meth:`QIOChannel.shutdown`."""

    READ = 1
    WRITE = 2
    BOTH = 3


class WriteFlag(IntFlag):
    """Flags for :meth:`QIOChannel.writev_full`."""

    ZERO_COPY = 1


class ReadFlag(IntFlag):
    """Flags for :meth:`QIOChannel.readv_full`.

    ``MSG_PEEK`` reads without consuming.  ``RELAXED_EOF`` lets a ``*_all_eof``
    read end at EOF after a partial read without an error, and tells layers
    (TLS) to treat a peer's bare transport close as EOF.
    """

    MSG_PEEK = 1
    RELAXED_EOF = 2


_NO_READ_FLAGS = ReadFlag(0)
_NO_WRITE_FLAGS = WriteFlag(0)
# plain ints: IntFlag arithmetic costs ~0.4 us per operation on the hot path
_PEEK = int(ReadFlag.MSG_PEEK)
_RELAXED_EOF = int(ReadFlag.RELAXED_EOF)
_ZERO_COPY = int(WriteFlag.ZERO_COPY)


def _byte_view(buf: Buffer, index: int | None) -> memoryview:
    """Return a 1-D unsigned-byte view of ``buf`` (item ``index`` of an iov, or write() data)."""
    try:
        view = memoryview(buf)
    except TypeError:
        raise TypeError(
            f"{_label(index)} must be a bytes-like object, not {type(buf).__name__}"
        ) from None
    if not view.c_contiguous:
        raise TypeError(f"{_label(index)} is not a C-contiguous buffer")
    if view.ndim != 1 or view.format not in ("B", "b", "c"):
        view = view.cast("B")
    return view


def _label(index: int | None) -> str:
    return "write() data" if index is None else f"iov item {index}"


def _views(iov: Iterable[Buffer], writable: bool) -> list[memoryview]:
    """Return byte views of the buffers of ``iov`` (writable ones if asked), without copying."""
    if isinstance(iov, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"iov must be a sequence of buffers, not a single {type(iov).__name__}")
    try:
        # Any: the loop tests the exact type itself (cheaper than isinstance narrowing)
        items: Iterator[Any] = iter(iov)
    except TypeError:
        raise TypeError(f"iov must be a sequence of buffers, not {type(iov).__name__}") from None
    views: list[memoryview] = []
    append = views.append
    for buf in items:
        kind = type(buf)
        if kind is bytearray or (kind is bytes and not writable):
            append(memoryview(buf))
            continue
        if kind is memoryview and buf.format == "B" and buf.ndim == 1 and buf.c_contiguous:
            view = buf
        else:
            view = _byte_view(buf, len(views))
        if writable and view.readonly:
            raise TypeError(f"iov item {len(views)} is read-only: reads need a writable buffer")
        append(view)
    return views


def write_views(iov: Iterable[Buffer]) -> list[memoryview]:
    """Return byte-format views of the buffers in ``iov``, without copying.

    Raises:
        TypeError: ``iov`` is not a sequence of bytes-like objects.
    """
    return _views(iov, False)


def read_views(iov: Iterable[Buffer]) -> list[memoryview]:
    """Return writable byte-format views of the buffers in ``iov``, without copying.

    Raises:
        TypeError: an item is not a writable bytes-like object.
    """
    return _views(iov, True)


class QIOChannel(abc.ABC):
    """Base class of every channel; backends subclass it and implement the ``io_*`` methods.

    The five mandatory ``io_*`` methods are abstract: a subclass missing one
    cannot be instantiated (``TypeError`` naming it).  A channel starts in
    blocking mode.  Closing is idempotent; every other operation on a closed
    channel raises :class:`~qiochan.errors.ChannelClosedError` (``EBADF``).
    There are two ways to end: :meth:`close` is the clean end of stream, and
    :meth:`abort` ends so that the peer sees the stream was cut (a TCP reset,
    TLS without close_notify, websocket close code 1011), for a transfer that
    stops before its end.
    """

    #: False when :meth:`close` never waits (a socket, a file): :mod:`qiochan.aio`
    #: then closes the channel on the loop instead of in a worker thread.  True
    #: (the default) for a close that may wait: a command's exit, a closing
    #: handshake (layers decide at close time: :meth:`close_nowait`).
    close_may_block: ClassVar[bool] = True

    def __init__(self) -> None:
        self._features: set[Feature] = set()
        self._name: str | None = None
        self._closed = False
        self._blocking = True
        self._aio_context: asyncio.AbstractEventLoop | None = None
        self._watches: set[Watch] = set()
        self._watch_lock = threading.Lock()
        # held by the one reader and the one writer in progress (EBUSY for a second)
        self._read_guard = threading.Lock()
        self._write_guard = threading.Lock()
        self._async_ops = 0
        self._async_restore = False
        log.debug("channel new %s", type(self).__name__)

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        name = f" {self._name!r}" if self._name else ""
        return f"<{type(self).__name__}{name}{state}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- naming and features -------------------------------------------------

    @property
    def name(self) -> str | None:
        """The debug name used in logs and errors (settable)."""
        return self._name

    @name.setter
    def name(self, value: str | None) -> None:
        self._name = value

    def set_name(self, name: str) -> None:
        """Set the debug name."""
        self._name = name

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def blocking(self) -> bool:
        """True when the channel is in blocking mode."""
        return self._blocking

    @property
    def features(self) -> frozenset[Feature]:
        """The features this channel declares."""
        return frozenset(self._features)

    @staticmethod
    def _feature(feature: int) -> Feature:
        try:
            return Feature(feature)
        except ValueError:
            raise ChannelError(f"Unknown channel feature {feature!r}", errno.EINVAL) from None

    def has_feature(self, feature: Feature | int) -> bool:
        """Return True if the channel declares ``feature``.

        Raises:
            ChannelError: ``feature`` is not a :class:`Feature` value (``EINVAL``).
        """
        return self._feature(feature) in self._features

    def set_feature(self, feature: Feature | int) -> None:
        """Declare ``feature`` (for backends)."""
        self._features.add(self._feature(feature))

    def _check_open(self) -> None:
        if self._closed:
            raise closed_error(self._name)

    # -- basic I/O -------------------------------------------------------------

    def _io_read(
        self, views: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        """Call the backend's io_readv on prepared views, translating OS errors.

        A read into no bytes (and no fds) returns 0 at once, as ``read(2)``
        does: the backend is not asked, so none waits for data it cannot take.
        """
        if self._closed:
            raise closed_error(self._name)
        if not want_fds and not sum(map(len, views)):
            return 0, []
        try:
            return self.io_readv(views, want_fds, flags)
        except ChannelError:
            raise
        except OSError as exc:
            raise from_oserror("Unable to read from channel", exc) from exc

    def _io_write(self, views: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        """Call the backend's io_writev on prepared views, translating OS errors."""
        if self._closed:
            raise closed_error(self._name)
        try:
            return self.io_writev(views, fds, flags)
        except ChannelError:
            raise
        except OSError as exc:
            raise from_oserror("Unable to write to channel", exc) from exc

    def _check_read_args(self, want_fds: bool, flags: ReadFlag) -> None:
        if self._closed:
            raise closed_error(self._name)
        if want_fds and Feature.FD_PASS not in self._features:
            raise ChannelError("Channel does not support file descriptor passing", errno.EINVAL)
        if flags and flags & _PEEK and Feature.READ_MSG_PEEK not in self._features:
            raise ChannelError("Channel does not support peek read", errno.EINVAL)

    def _check_write_args(self, fds: Sequence[int], flags: WriteFlag) -> None:
        if self._closed:
            raise closed_error(self._name)
        if fds and Feature.FD_PASS not in self._features:
            raise ChannelError("Channel does not support file descriptor passing", errno.EINVAL)
        if flags and flags & _ZERO_COPY and Feature.WRITE_ZERO_COPY not in self._features:
            raise ChannelError("Requested Zero Copy feature is not available", errno.EINVAL)

    def _guarded_read(
        self, views: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        guard = self._read_guard
        if not guard.acquire(False):
            raise self._busy("read")
        try:
            return self._io_read(views, want_fds, flags)
        finally:
            guard.release()

    def _guarded_write(self, views: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        guard = self._write_guard
        if not guard.acquire(False):
            raise self._busy("write")
        try:
            return self._io_write(views, fds, flags)
        finally:
            guard.release()

    def readv_full(
        self, iov: Iterable[Buffer], *, want_fds: bool = False, flags: ReadFlag = _NO_READ_FLAGS
    ) -> tuple[int, list[int]]:
        """Read into the writable buffers of ``iov`` in order.

        Returns:
            ``(n, fds)``: bytes read (0 at EOF) or :data:`ERR_BLOCK`, and the file
            descriptors received (the caller owns them).
        Raises:
            ChannelError: the read failed, ``want_fds`` without ``FD_PASS``,
                ``MSG_PEEK`` without ``READ_MSG_PEEK``, or another read is in
                progress (``EBUSY``: one reader at a time, as for every read below).
            TypeError: an item of ``iov`` is not a writable buffer.
        """
        self._check_read_args(want_fds, flags)
        return self._guarded_read(_views(iov, True), want_fds, flags)

    def writev_full(
        self, iov: Iterable[Buffer], fds: Sequence[int] = (), flags: WriteFlag = _NO_WRITE_FLAGS
    ) -> int:
        """Write the buffers of ``iov`` in order, passing ``fds`` along with the data.

        Returns:
            Bytes written (possibly fewer than given) or :data:`ERR_BLOCK`.
        Raises:
            ChannelError: the write failed, fds without ``FD_PASS``,
                ``ZERO_COPY`` without ``WRITE_ZERO_COPY``, or another write is
                in progress (``EBUSY``: one writer at a time, as for every write below).
        """
        self._check_write_args(fds, flags)
        return self._guarded_write(_views(iov, False), tuple(fds), flags)

    def readv(self, iov: Iterable[Buffer]) -> int:
        """Read into ``iov``; return bytes read, 0 at EOF, or :data:`ERR_BLOCK`."""
        return self._guarded_read(_views(iov, True), False, _NO_READ_FLAGS)[0]

    def writev(self, iov: Iterable[Buffer]) -> int:
        """Write ``iov``; return bytes written or :data:`ERR_BLOCK`."""
        return self._guarded_write(_views(iov, False), (), _NO_WRITE_FLAGS)

    def read(self, buf: Buffer) -> int:
        """Read into the writable ``buf``; return bytes read, 0 at EOF, or :data:`ERR_BLOCK`."""
        views = [memoryview(buf)] if type(buf) is bytearray else _views((buf,), True)
        return self._guarded_read(views, False, _NO_READ_FLAGS)[0]

    def write(self, data: Buffer) -> int:
        """Write ``data``; return bytes written or :data:`ERR_BLOCK`."""
        kind = type(data)
        if kind is bytes or kind is bytearray:
            view = memoryview(data)  # always 1-D, contiguous, unsigned bytes
        else:
            view = _byte_view(data, None)
        return self._guarded_write([view], (), _NO_WRITE_FLAGS)

    # -- the *_all family, written once as step generators -------------------

    def _readv_all_steps(
        self, iov: Iterable[Buffer], want_fds: bool, flags: ReadFlag
    ) -> Steps[tuple[bool, list[int]]]:
        views = _views(iov, True)
        wanted = sum(map(len, views))  # byte-format views: len == nbytes
        done = 0
        fds: list[int] = []
        relaxed = bool(flags) and bool(flags & _RELAXED_EOF)
        # let layers know a bare EOF is acceptable; MSG_PEEK makes no sense here
        io_flags = ReadFlag.RELAXED_EOF if relaxed else _NO_READ_FLAGS
        self._check_read_args(want_fds, io_flags)
        try:
            while done < wanted:
                n, got = self._io_read(views, want_fds and not fds, io_flags)
                if got:
                    fds.extend(got)
                if n == ERR_BLOCK:
                    yield Condition.IN
                    continue
                if n == 0:
                    if done == 0 and not fds:
                        return False, []
                    if done and relaxed:
                        return True, fds
                    raise unexpected_eof()
                done += n
                if done < wanted:
                    views = advance(views, n)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return True, fds

    def _writev_all_steps(
        self, iov: Iterable[Buffer], fds: Sequence[int], flags: WriteFlag
    ) -> Steps[None]:
        views = _views(iov, False)
        left = sum(map(len, views))
        pending_fds: Sequence[int] = tuple(fds)
        if left == 0 and pending_fds:
            raise ChannelError("File descriptors need at least one byte of data", errno.EINVAL)
        self._check_write_args(pending_fds, flags)
        while left > 0:
            n = self._io_write(views, pending_fds, flags)
            if n == ERR_BLOCK:
                yield Condition.OUT
                continue
            pending_fds = ()
            left -= n
            if left:
                views = advance(views, n)

    def _busy(self, what: str) -> ChannelError:
        return ChannelError(
            f"Another {what} is already in progress on {self!r}: "
            f"one {what}er at a time per channel",
            errno.EBUSY,
        )

    def _drive(self, steps: Steps[_T], guard: threading.Lock, what: str) -> _T:
        """Run ``steps`` in this thread while holding ``guard`` (EBUSY when held)."""
        if not guard.acquire(False):
            steps.close()
            raise self._busy(what)
        try:
            try:
                condition = next(steps)
            except StopIteration as stop:  # done without waiting: the common case
                result: _T = stop.value
                return result
            return _wait_steps(self, steps, condition, None)
        finally:
            guard.release()

    async def _adrive(self, steps: Steps[_T], guard: threading.Lock, what: str) -> _T:
        """Run ``steps`` on the running loop in non-blocking mode, holding ``guard``.

        The first async operation switches the channel to non-blocking mode;
        the last one to end restores the mode it found.
        """
        if not guard.acquire(False):
            steps.close()
            raise self._busy(what)
        try:
            if self._async_ops == 0:
                self._async_restore = self._blocking
                if self._blocking:
                    self.set_blocking(False)
            self._async_ops += 1
            try:
                return await arun_steps(self, steps)
            finally:
                self._async_ops -= 1
                if self._async_ops == 0 and self._async_restore and not self._closed:
                    self.set_blocking(True)
        finally:
            guard.release()

    def readv_full_all_eof(
        self, iov: Iterable[Buffer], flags: ReadFlag = _NO_READ_FLAGS
    ) -> tuple[bool, list[int]]:
        """Read until every buffer of ``iov`` is full, receiving fds if the channel passes them.

        Returns:
            ``(True, fds)`` when all data was read; ``(False, [])`` at EOF before
            any byte.  With ``RELAXED_EOF``, EOF after a partial read also gives
            ``(True, fds)``.
        Raises:
            ChannelError: EOF after some but not all data, or a read error.
        """
        want = Feature.FD_PASS in self._features
        return self._drive(self._readv_all_steps(iov, want, flags), self._read_guard, "read")

    def readv_full_all(self, iov: Iterable[Buffer]) -> list[int]:
        """Read until ``iov`` is full; return the fds received.

        Raises:
            ChannelError: EOF before all data were read, or a read error.
        """
        ok, fds = self.readv_full_all_eof(iov)
        if not ok:
            raise unexpected_eof()
        return fds

    def readv_all_eof(self, iov: Iterable[Buffer], flags: ReadFlag = _NO_READ_FLAGS) -> bool:
        """Read until ``iov`` is full; False at EOF before any byte (see readv_full_all_eof)."""
        return self._drive(self._readv_all_steps(iov, False, flags), self._read_guard, "read")[0]

    def readv_all(self, iov: Iterable[Buffer]) -> None:
        """Read until ``iov`` is full.

        Raises:
            ChannelError: EOF before all data were read, or a read error.
        """
        if not self.readv_all_eof(iov):
            raise unexpected_eof()

    def read_all_eof(self, buf: Buffer, flags: ReadFlag = _NO_READ_FLAGS) -> bool:
        """Fill ``buf``; return False at EOF before any byte."""
        return self.readv_all_eof((buf,), flags)

    def read_all(self, buf: Buffer) -> None:
        """Fill ``buf``; raise :class:`ChannelError` at EOF before it is full."""
        self.readv_all((buf,))

    def writev_full_all(
        self, iov: Iterable[Buffer], fds: Sequence[int] = (), flags: WriteFlag = _NO_WRITE_FLAGS
    ) -> None:
        """Write all of ``iov`` (fds go with the first chunk).

        With ``ZERO_COPY`` it returns once the data is queued: keep the buffers
        unchanged until :meth:`flush` returns.
        """
        self._drive(self._writev_all_steps(iov, fds, flags), self._write_guard, "write")

    def writev_all(self, iov: Iterable[Buffer]) -> None:
        """Write all of ``iov``."""
        self._drive(self._writev_all_steps(iov, (), _NO_WRITE_FLAGS), self._write_guard, "write")

    def write_all(self, data: Buffer) -> None:
        """Write all of ``data``."""
        self._drive(
            self._writev_all_steps((data,), (), _NO_WRITE_FLAGS), self._write_guard, "write"
        )

    # -- async twins ----------------------------------------------------------

    async def areadv_full_all_eof(
        self, iov: Iterable[Buffer], flags: ReadFlag = _NO_READ_FLAGS
    ) -> tuple[bool, list[int]]:
        """Async :meth:`readv_full_all_eof`: non-blocking mode, awaiting readiness."""
        want = Feature.FD_PASS in self._features
        return await self._adrive(self._readv_all_steps(iov, want, flags), self._read_guard, "read")

    async def areadv_full_all(self, iov: Iterable[Buffer]) -> list[int]:
        """Async :meth:`readv_full_all`."""
        ok, fds = await self.areadv_full_all_eof(iov)
        if not ok:
            raise unexpected_eof()
        return fds

    async def areadv_all_eof(self, iov: Iterable[Buffer], flags: ReadFlag = _NO_READ_FLAGS) -> bool:
        """Async :meth:`readv_all_eof`."""
        return (
            await self._adrive(self._readv_all_steps(iov, False, flags), self._read_guard, "read")
        )[0]

    async def areadv_all(self, iov: Iterable[Buffer]) -> None:
        """Async :meth:`readv_all`."""
        if not await self.areadv_all_eof(iov):
            raise unexpected_eof()

    async def aread_all_eof(self, buf: Buffer, flags: ReadFlag = _NO_READ_FLAGS) -> bool:
        """Async :meth:`read_all_eof`."""
        return await self.areadv_all_eof((buf,), flags)

    async def aread_all(self, buf: Buffer) -> None:
        """Async :meth:`read_all`."""
        await self.areadv_all((buf,))

    async def awritev_full_all(
        self, iov: Iterable[Buffer], fds: Sequence[int] = (), flags: WriteFlag = _NO_WRITE_FLAGS
    ) -> None:
        """Async :meth:`writev_full_all`."""
        await self._adrive(self._writev_all_steps(iov, fds, flags), self._write_guard, "write")

    async def awritev_all(self, iov: Iterable[Buffer]) -> None:
        """Async :meth:`writev_all`."""
        await self._adrive(
            self._writev_all_steps(iov, (), _NO_WRITE_FLAGS), self._write_guard, "write"
        )

    async def awrite_all(self, data: Buffer) -> None:
        """Async :meth:`write_all`."""
        await self._adrive(
            self._writev_all_steps((data,), (), _NO_WRITE_FLAGS), self._write_guard, "write"
        )

    # -- control ------------------------------------------------------------

    def set_blocking(self, enabled: bool) -> None:
        """Switch blocking mode (default: blocking)."""
        self._check_open()
        self.io_set_blocking(bool(enabled))
        self._blocking = bool(enabled)

    def close(self) -> None:
        """Close the channel and remove its watches; a second call does nothing.

        Raises:
            ChannelError: the backend reported a failure while closing (for
                example a child process that exited non-zero); the channel is
                closed all the same.
        """
        self._release("close", self.io_close)

    def close_nowait(self) -> bool:
        """Close the channel if closing needs no waiting.

        :mod:`qiochan.aio` calls it on the loop, and closes in a worker thread
        only when it returns False.  The default closes a channel whose
        :attr:`close_may_block` is False; a layer closes when its goodbye
        (close_notify, a websocket close frame) goes out at once and its master
        closes without waiting (:meth:`QIOChannelLayer.io_close_layer_nowait`).

        Returns:
            True when the channel is closed (now or before); False when closing
            would wait: the channel is then still open (a layer may have sent
            its goodbye) and :meth:`close` finishes the job.
        Raises:
            ChannelError: as :meth:`close`; the channel is closed all the same.
        """
        if not self._closed and self.close_may_block:
            return False
        self.close()
        return True

    def abort(self) -> None:
        """Close the channel so that the peer cannot take the end for a clean one.

        Use it when a stream stops before its end (an error, a signal, a
        timeout): a TCP connection is reset (``SO_LINGER`` 0), TLS ends without
        close_notify, a websocket sends close code 1011 instead of 1000, and a
        layer then aborts its master.  Channels with no such notion (files,
        memory) just close.  It never waits for the peer.  A second call, or a
        call after :meth:`close`, does nothing.

        Raises:
            ChannelError: releasing the OS object failed; the channel is
                closed all the same.
        """
        self._release("abort", self.io_abort)

    def _release(self, what: str, release: Callable[[], None]) -> None:
        if self._closed:
            return
        self._closed = True
        with self._watch_lock:
            watches = list(self._watches)
        for watch in watches:
            watch.remove()
        log.debug("channel %s %r", what, self)
        try:
            release()
        except ChannelError:
            raise
        except OSError as exc:
            raise from_oserror(f"Unable to {what} channel", exc) from exc
        finally:
            _hooks.channel_closed(self)

    def shutdown(self, how: Shutdown | int) -> None:
        """Shut down reading, writing or both; thread-safe and never blocks.

        Raises:
            ChannelError: the channel lacks ``SHUTDOWN`` (``ENOTSUP``), or it failed.
        """
        self._check_open()
        how = Shutdown(how)
        if Feature.SHUTDOWN not in self._features:
            raise unsupported("Shutdown")
        try:
            self.io_shutdown(how)
        except ChannelError:
            raise
        except OSError as exc:
            raise from_oserror("Unable to shutdown channel", exc) from exc

    def set_delay(self, enabled: bool) -> None:
        """Hint: False disables Nagle-style delays (TCP_NODELAY); ignored where unsupported."""
        self._check_open()
        self.io_set_delay(bool(enabled))

    def set_cork(self, enabled: bool) -> None:
        """Hint: True holds back partial frames (TCP_CORK); ignored where unsupported."""
        self._check_open()
        self.io_set_cork(bool(enabled))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move the channel's position; return the new position.

        Raises:
            ChannelError: not seekable (``ENOTSUP``), bad ``whence`` or a negative
                absolute offset (``EINVAL``).
        """
        self._check_open()
        if whence not in (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END):
            raise ChannelError(f"Invalid seek whence {whence!r}", errno.EINVAL)
        if whence == os.SEEK_SET and offset < 0:
            raise ChannelError(f"Cannot seek to negative offset {offset}", errno.EINVAL)
        try:
            return self.io_seek(offset, whence)
        except ChannelError:
            raise
        except OSError as exc:
            raise from_oserror("Unable to seek channel", exc) from exc

    def flush(self) -> int:
        """Wait for queued zero-copy writes to complete.

        Returns:
            0, or 1 when every zero-copy send since the last flush fell back to copying.
        """
        self._check_open()
        return self.io_flush()

    def _positioned(self, name: str, offset: int) -> None:
        self._check_open()
        if Feature.SEEKABLE not in self._features:
            raise unsupported(f"Positioned {name} (channel is not seekable)")
        if offset < 0:
            raise ChannelError(f"Cannot {name} at negative offset {offset}", errno.EINVAL)

    def preadv(self, iov: Iterable[Buffer], offset: int) -> int:
        """Read into ``iov`` at ``offset`` without moving the position; return bytes read."""
        self._positioned("read", offset)
        return self.io_preadv(read_views(iov), offset)

    def pwritev(self, iov: Iterable[Buffer], offset: int) -> int:
        """Write ``iov`` at ``offset`` without moving the position; return bytes written."""
        self._positioned("write", offset)
        return self.io_pwritev(write_views(iov), offset)

    def peerpid(self) -> int:
        """Return the peer process id where the OS tells it.

        Unix sockets tell it (``SO_PEERCRED``; their channels also have
        ``peercred()`` for the pid, uid and gid), command pipes give the
        child's pid, layers ask their master.

        Raises:
            ChannelError: the channel cannot tell (``ENOTSUP``).
        """
        self._check_open()
        return self.io_peerpid()

    # -- watches and waiting -------------------------------------------------

    @property
    def aio_context(self) -> asyncio.AbstractEventLoop | None:
        """The asyncio loop attached with :meth:`attach_aio_context`, or None."""
        return self._aio_context

    def attach_aio_context(self, loop: asyncio.AbstractEventLoop) -> None:
        """Use ``loop`` for this channel's watches and async calls."""
        self._aio_context = loop

    def detach_aio_context(self) -> None:
        """Forget the attached loop (watches then use the running loop)."""
        self._aio_context = None

    def create_watch(self, condition: Condition | int) -> Watch:
        """Return a new, not yet attached :class:`Watch` for ``condition``."""
        self._check_open()
        return Watch(self, self.io_create_watch(Condition(condition)))

    def add_watch_source(
        self,
        condition: Condition | int,
        func: WatchFunc,
        *user_data: Any,
        notify: Callable[..., object] | None = None,
        context: asyncio.AbstractEventLoop | None = None,
    ) -> Watch:
        """Create a watch, set its callback and attach it to ``context``; return it."""
        watch = self.create_watch(condition)
        watch.set_callback(func, *user_data, notify=notify)
        watch.attach(context)
        return watch

    def add_watch_full(
        self,
        condition: Condition | int,
        func: WatchFunc,
        *user_data: Any,
        notify: Callable[..., object] | None = None,
        context: asyncio.AbstractEventLoop | None = None,
    ) -> int:
        """As :meth:`add_watch_source`, returning the watch's tag."""
        return self.add_watch_source(
            condition, func, *user_data, notify=notify, context=context
        ).tag

    def add_watch(
        self,
        condition: Condition | int,
        func: WatchFunc,
        *user_data: Any,
        notify: Callable[..., object] | None = None,
    ) -> int:
        """Watch ``condition`` on the default context; return the tag for :func:`source_remove`."""
        return self.add_watch_source(condition, func, *user_data, notify=notify).tag

    def wait(self, condition: Condition | int, timeout: float | None = None) -> Condition:
        """Block this thread until ``condition`` is ready; return the ready conditions.

        Raises:
            TimeoutError: not ready within ``timeout`` seconds.
        """
        self._check_open()
        return self.io_create_watch(Condition(condition)).wait(timeout)

    async def yield_(self, condition: Condition | int) -> None:
        """Await ``condition`` on the running loop without blocking it."""
        import asyncio

        self._check_open()
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[Condition] = loop.create_future()

        def wake(_channel: QIOChannel, cond: Condition) -> bool:
            if not ready.done():
                ready.set_result(cond)
            return False

        watch = self.create_watch(condition)
        watch.set_callback(wake)
        watch.attach(loop)
        try:
            await ready
        finally:
            watch.remove()

    def _track_watch(self, watch: Watch) -> None:
        with self._watch_lock:
            self._watches.add(watch)

    def _untrack_watch(self, watch: Watch) -> None:
        with self._watch_lock:
            self._watches.discard(watch)

    # -- the backend contract ---------------------------------------------------

    @abc.abstractmethod
    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        """Backend: read into ``iov``; return ``(n, fds)``: bytes, 0 at EOF, or ERR_BLOCK."""

    @abc.abstractmethod
    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        """Backend: write ``iov`` (with ``fds``); return bytes written or ERR_BLOCK."""

    def io_write_fd(self) -> int:
        """Backend (optional): the fd a plain write may bypass ``io_writev`` through, or -1.

        Return a file descriptor only when ``writev(2)`` of bytes on it (or
        ``sendmsg(2)`` with ``MSG_NOSIGNAL``, for a socket) does exactly what
        ``io_writev(iov, (), WriteFlag(0))`` would: no framing, encryption or
        bookkeeping in between.  It is asked again before every such write,
        so return -1 once the channel is closed.  QEMUFile's C core writes its
        flushes this way; a short write, an error or a would-block then goes
        through ``writev_all`` as usual.  The default, -1, always uses
        ``io_writev``.
        """
        return -1

    @abc.abstractmethod
    def io_close(self) -> None:
        """Backend: release the OS objects."""

    def io_abort(self) -> None:
        """Backend (optional): release the OS objects so the peer sees an abnormal end.

        The default is :meth:`io_close`.
        """
        self.io_close()

    @abc.abstractmethod
    def io_create_watch(self, condition: Condition) -> WatchSource:
        """Backend: return the :class:`WatchSource` for ``condition``."""

    @abc.abstractmethod
    def io_set_blocking(self, enabled: bool) -> None:
        """Backend: switch the OS object's blocking mode."""

    def io_shutdown(self, how: Shutdown) -> None:
        """Backend (optional): shut down a direction; thread-safe, never blocking."""
        raise unsupported("Shutdown")

    def io_set_cork(self, enabled: bool) -> None:
        """Backend (optional): cork hint; the default ignores it."""
        return

    def io_set_delay(self, enabled: bool) -> None:
        """Backend (optional): delay hint; the default ignores it."""
        return

    def io_seek(self, offset: int, whence: int) -> int:
        """Backend (optional): seek; return the new position."""
        raise unsupported("Seek")

    def io_flush(self) -> int:
        """Backend (optional): complete zero-copy writes; return 0 or 1 (all copied)."""
        return 0

    def io_preadv(self, iov: list[memoryview], offset: int) -> int:
        """Backend (optional): positioned read."""
        raise unsupported("Positioned read")

    def io_pwritev(self, iov: list[memoryview], offset: int) -> int:
        """Backend (optional): positioned write."""
        raise unsupported("Positioned write")

    def io_peerpid(self) -> int:
        """Backend (optional): the peer's process id."""
        raise unsupported("Peer pid")
