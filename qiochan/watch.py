"""Watches: readiness of a channel, waited for in a thread or dispatched on an asyncio loop.

Every wait in qiochan goes through a :class:`WatchSource`.  A backend's
``io_create_watch(condition)`` returns one that says two things:

* which file descriptors to poll, and for which conditions (:meth:`WatchSource.poll_fds`);
* which conditions are already satisfied without polling, because the backend
  holds data in its own buffers (:meth:`WatchSource.pending`): decrypted TLS
  records, decoded websocket frames, an in-memory buffer.

:meth:`WatchSource.wait` blocks the calling thread on :func:`select.poll` (the
primitive under :mod:`selectors`, used directly so that ``HUP``/``ERR``/``PRI``
survive and regular files work).  A :class:`Watch` dispatches the same source on
an asyncio event loop (uvloop works too), waking on the loop's reader/writer
callbacks and re-checking the source before each call, so a watch fires at once
when data is pending and a removed watch never fires again.

``ERR``, ``HUP`` and ``NVAL`` are always reported, whether asked for or not, as
:func:`poll` does: a reader waiting for ``IN`` on a pipe whose writer is gone
wakes with ``HUP`` and then reads EOF instead of waiting forever.
"""

from __future__ import annotations

import itertools
import logging
import select
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from enum import IntFlag
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ChannelError

if TYPE_CHECKING:
    import asyncio

    from .channel import QIOChannel

__all__ = [
    "ALWAYS_REPORTED",
    "AlwaysReadySource",
    "ChildWatchSource",
    "Condition",
    "FdPairWatchSource",
    "FdWatchSource",
    "Watch",
    "WatchFunc",
    "WatchSource",
    "resolve_context",
    "running_loop",
    "source_remove",
]

log = logging.getLogger("qiochan.watch")


class Condition(IntFlag):
    """I/O conditions, with GLib's ``GIOCondition`` values."""

    IN = 1
    PRI = 2
    OUT = 4
    ERR = 8
    HUP = 16
    NVAL = 32


#: Conditions reported whenever they occur, whether or not a watch asked for them.
ALWAYS_REPORTED = Condition.ERR | Condition.HUP | Condition.NVAL
_NONE = Condition(0)

_TO_POLL = (
    (Condition.IN, select.POLLIN),
    (Condition.PRI, select.POLLPRI),
    (Condition.OUT, select.POLLOUT),
    (Condition.ERR, select.POLLERR),
    (Condition.HUP, select.POLLHUP),
    (Condition.NVAL, select.POLLNVAL),
)


# GLib chose the GIOCondition values to be poll()'s: where they match (Linux,
# the BSDs, macOS), the conversions are a mask of plain ints (IntFlag
# arithmetic costs ~0.4 us per operation on the wait path)
_POLL_IS_CONDITION = all(int(cond) == bit for cond, bit in _TO_POLL)
_ALL_CONDITIONS = 0x3F


def _poll_mask(condition: Condition) -> int:
    if _POLL_IS_CONDITION:
        return int(condition) & _ALL_CONDITIONS
    mask = 0
    for cond, bit in _TO_POLL:
        if condition & cond:
            mask |= bit
    return mask


def _from_poll(revents: int) -> Condition:
    if _POLL_IS_CONDITION:
        return Condition(revents & _ALL_CONDITIONS)
    result = _NONE
    for cond, bit in _TO_POLL:
        if revents & bit:
            result |= cond
    return result


class WatchSource:
    """What a watch polls and what a backend already holds; subclass or compose it.

    Args:
        condition: the conditions the watch waits for.
    """

    def __init__(self, condition: Condition) -> None:
        self.condition = Condition(condition)

    def poll_fds(self) -> Sequence[tuple[int, Condition]]:
        """Return ``(fd, condition)`` pairs to poll; empty when nothing needs polling."""
        return ()

    def pending(self) -> Condition:
        """Return the conditions satisfied by data the backend already holds."""
        return _NONE

    def _mask(self) -> Condition:
        return self.condition | ALWAYS_REPORTED

    def check(self) -> Condition:
        """Return the conditions ready now (polls without blocking)."""
        ready = self.pending()
        fds = self.poll_fds()
        if fds:
            ready |= self._poll(fds, 0)
        return ready & self._mask()

    def wait(self, timeout: float | None = None) -> Condition:
        """Block until a watched condition is ready and return the ready conditions.

        Raises:
            TimeoutError: nothing became ready within ``timeout`` seconds.
            ChannelError: nothing is ready and there is nothing to poll (the
                backend could never become ready).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        mask = self._mask()
        while True:
            ready = self.pending() & mask
            if ready:
                return ready
            fds = self.poll_fds()
            if not fds:
                raise ChannelError("Cannot wait: the channel has nothing to poll and no data")
            if deadline is None:
                wait_ms = -1
            else:
                wait_ms = max(0, int((deadline - time.monotonic()) * 1000 + 0.999))
            ready = (self._poll(fds, wait_ms) | self.pending()) & mask
            if ready:
                return ready
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no {self.condition!r} within {timeout} s")

    @staticmethod
    def _poll(fds: Sequence[tuple[int, Condition]], timeout_ms: int) -> Condition:
        poller = select.poll()
        merged: dict[int, int] = {}
        for fd, cond in fds:
            merged[fd] = merged.get(fd, 0) | _poll_mask(cond)
        for fd, mask in merged.items():
            poller.register(fd, mask)
        revents = 0
        for _fd, events in poller.poll(timeout_ms):
            revents |= events
        return _from_poll(revents)


class FdWatchSource(WatchSource):
    """Ready when ``fd`` polls ready for ``condition``."""

    def __init__(self, fd: int, condition: Condition) -> None:
        super().__init__(condition)
        self.fd = fd
        self._fds = ((fd, self.condition),)

    def poll_fds(self) -> Sequence[tuple[int, Condition]]:
        return self._fds


class FdPairWatchSource(WatchSource):
    """Ready when ``read_fd`` is readable or ``write_fd`` writable, as asked.

    Either fd may be ``-1`` (a read-only or write-only pair).
    """

    def __init__(self, read_fd: int, write_fd: int, condition: Condition) -> None:
        super().__init__(condition)
        fds: list[tuple[int, Condition]] = []
        read_cond = self.condition & ~Condition.OUT
        write_cond = self.condition & ~(Condition.IN | Condition.PRI)
        if read_fd >= 0 and read_cond:
            fds.append((read_fd, read_cond))
        if write_fd >= 0 and write_cond:
            fds.append((write_fd, write_cond))
        self._fds = tuple(fds)

    def poll_fds(self) -> Sequence[tuple[int, Condition]]:
        return self._fds


class ChildWatchSource(WatchSource):
    """A layer's source: ready when its master is, or when ``pending()`` says it holds data.

    Args:
        master: the channel the layer wraps.
        condition: what the watch waits for.
        pending: returns the conditions the layer can satisfy from its own buffers
            (a bool means all of ``condition`` or none).
        master_condition: what to wait for on the master, when it differs from
            ``condition`` (a TLS write that first needs the peer's handshake data
            waits for ``IN`` on the master).
    """

    def __init__(
        self,
        master: QIOChannel,
        condition: Condition,
        pending: Callable[[], Condition | bool] | None = None,
        *,
        master_condition: Condition | None = None,
    ) -> None:
        super().__init__(condition)
        self.master_source = master.io_create_watch(
            self.condition if master_condition is None else Condition(master_condition)
        )
        self._pending_func = pending

    def poll_fds(self) -> Sequence[tuple[int, Condition]]:
        return self.master_source.poll_fds()

    def pending(self) -> Condition:
        ready = self.master_source.pending()
        if self._pending_func is not None:
            own = self._pending_func()
            if own is True:
                ready |= self.condition
            elif own:
                ready |= Condition(own)
        return ready

    def _mask(self) -> Condition:
        # the master may report its own conditions (IN for a TLS write waiting on
        # handshake data): any readiness of the master is a reason to retry
        return self.condition | self.master_source.condition | ALWAYS_REPORTED


class AlwaysReadySource(WatchSource):
    """Always ready for its whole condition (memory buffers, null channels, regular files)."""

    def pending(self) -> Condition:
        return self.condition


class WatchFunc(Protocol):
    """A watch callback: return True to keep the watch, False to remove it."""

    def __call__(self, channel: Any, condition: Condition, /, *user_data: Any) -> bool: ...


_tags = itertools.count(1)
_tags_lock = threading.Lock()
_by_tag: dict[int, Watch] = {}


def source_remove(tag: int) -> bool:
    """Remove the attached watch with ``tag``; return False when there is none."""
    with _tags_lock:
        watch = _by_tag.get(tag)
    if watch is None:
        return False
    watch.remove()
    return True


def running_loop() -> asyncio.AbstractEventLoop | None:
    """Return this thread's running asyncio loop, or None (without importing asyncio)."""
    aio = sys.modules.get("asyncio")
    if aio is None:
        return None  # nobody imported asyncio, so no loop can be running
    try:
        loop: asyncio.AbstractEventLoop = aio.get_running_loop()
    except RuntimeError:
        return None
    return loop


def resolve_context(
    context: asyncio.AbstractEventLoop | None, attached: asyncio.AbstractEventLoop | None = None
) -> asyncio.AbstractEventLoop:
    """Return the loop a watch or completion runs on.

    The order is: ``context`` when given, then ``attached`` (the channel's
    aio context), then the running loop, then this thread's default event loop.

    Raises:
        ChannelError: there is no loop to use (a thread without one).
    """
    if context is not None:
        return context
    if attached is not None:
        return attached
    running = running_loop()
    if running is not None:
        return running
    import asyncio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError as exc:
        raise ChannelError(
            "No event loop for the watch: pass context=, attach_aio_context(), "
            "or call from a running loop"
        ) from exc


def _in_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    running = running_loop()
    if running is not None:
        return running is loop
    return not loop.is_running()


class _LoopWatches:
    """The watches of one loop, multiplexed onto its reader/writer callbacks per fd."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.readers: dict[int, set[Watch]] = {}
        self.writers: dict[int, set[Watch]] = {}

    def add(self, watch: Watch, fds: Sequence[tuple[int, Condition]]) -> None:
        for fd, cond in fds:
            if cond & ~Condition.OUT:
                self._register(self.readers, fd, watch, self.loop.add_reader)
            if cond & Condition.OUT:
                self._register(self.writers, fd, watch, self.loop.add_writer)

    def _register(
        self,
        table: dict[int, set[Watch]],
        fd: int,
        watch: Watch,
        add: Callable[..., None],
    ) -> None:
        watches = table.get(fd)
        if watches is None:
            watches = table[fd] = set()
            try:
                add(fd, self._fire, table, fd)
            except PermissionError:
                # epoll refuses regular files: they are always ready, as poll() says
                watch.fd_always_ready = True
        watches.add(watch)

    def discard(self, watch: Watch, fds: Sequence[tuple[int, Condition]]) -> None:
        for fd, _cond in fds:
            self._unregister(self.readers, fd, watch, self.loop.remove_reader)
            self._unregister(self.writers, fd, watch, self.loop.remove_writer)

    @staticmethod
    def _unregister(
        table: dict[int, set[Watch]], fd: int, watch: Watch, remove: Callable[[int], object]
    ) -> None:
        watches = table.get(fd)
        if watches is None or watch not in watches:
            return
        watches.discard(watch)
        if not watches:
            del table[fd]
            try:
                remove(fd)
            except (OSError, ValueError):
                pass  # fd already closed: the loop forgot it

    def _fire(self, table: dict[int, set[Watch]], fd: int) -> None:
        # the loop just said the fd is ready: no need to poll it again
        hint = Condition.IN if table is self.readers else Condition.OUT
        for watch in list(table.get(fd, ())):
            watch.dispatch(hint)


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWatches] = (
    weakref.WeakKeyDictionary()
)


def _loop_watches(loop: asyncio.AbstractEventLoop) -> _LoopWatches:
    table = _loops.get(loop)
    if table is None:
        table = _loops[loop] = _LoopWatches(loop)
    return table


class Watch:
    """A watch on a channel's condition, dispatched on an asyncio loop.

    Made by :meth:`QIOChannel.create_watch` (not yet attached) or
    :meth:`QIOChannel.add_watch_source` (attached).  Attributes: ``channel``,
    ``condition``, ``source``, ``tag`` (0 until attached), ``attached``.
    """

    def __init__(self, channel: QIOChannel, source: WatchSource) -> None:
        self.channel = channel
        self.source = source
        self.condition = source.condition
        self._wanted = int(source.condition)  # plain int: IntFlag operators are slow
        self.tag = 0
        self.attached = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.fd_always_ready = False
        self._func: WatchFunc | None = None
        self._user_data: tuple[Any, ...] = ()
        self._notify: Callable[..., object] | None = None
        self._removed = False
        self._scheduled = False
        self._paused = False
        self._parked = False  # paused, and the loop no longer watches the fds
        self._fds: Sequence[tuple[int, Condition]] = ()

    def __repr__(self) -> str:
        state = "attached" if self.attached else ("removed" if self._removed else "new")
        return f"<Watch tag={self.tag} {self.condition!r} {state} on {self.channel!r}>"

    def set_callback(
        self, func: WatchFunc, *user_data: Any, notify: Callable[..., object] | None = None
    ) -> None:
        """Set the callback ``func(channel, condition, *user_data) -> bool`` and ``notify``."""
        if not callable(func):
            raise TypeError(f"watch callback must be callable, got {type(func).__name__}")
        self._func = func
        self._user_data = user_data
        self._notify = notify

    def attach(self, context: asyncio.AbstractEventLoop | None = None) -> int:
        """Attach to ``context`` (see :func:`resolve_context`) and return the tag.

        Raises:
            ChannelError: the watch was already attached or removed, or has no callback.
        """
        if self.attached or self._removed:
            raise ChannelError("Watch was already attached")
        if self._func is None:
            raise ChannelError("Watch has no callback: call set_callback() first")
        loop = resolve_context(context, self.channel.aio_context)
        self.loop = loop
        with _tags_lock:
            self.tag = next(_tags)
            _by_tag[self.tag] = self
        self.attached = True
        self.channel._track_watch(self)
        if _in_loop_thread(loop):
            self._register()
        else:
            loop.call_soon_threadsafe(self._register)
        return self.tag

    def _register(self) -> None:
        if self._removed:
            return
        assert self.loop is not None
        self._fds = tuple(self.source.poll_fds())
        _loop_watches(self.loop).add(self, self._fds)
        self._schedule_unreported()

    def _schedule_unreported(self) -> None:
        """Dispatch on the next turn if the watch is ready in a way no fd event reports.

        That is data the source already holds, a source with no fd to poll,
        or an fd the loop cannot watch (a regular file); readiness of the
        watched fds themselves comes from the loop's level-triggered polling.
        """
        if self.fd_always_ready or not self._fds or self.source.pending():
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and self.loop is not None:
            self._scheduled = True
            self.loop.call_soon(self._scheduled_dispatch)

    def _scheduled_dispatch(self) -> None:
        self._scheduled = False
        self.dispatch()

    def pause(self) -> None:
        """Stop dispatching until :meth:`resume` (flow control); call it on the loop's thread.

        Cheaper than removing the watch and making a new one.  The loop keeps
        watching the fds until they first report ready while paused (then it
        forgets them, so a readable fd cannot make it spin): a pause that a
        :meth:`resume` ends before the fds are ready again costs no
        ``remove_reader``/``add_reader`` pair.
        """
        if self._paused or not self.attached or self.loop is None:
            return
        self._paused = True

    def pause_for(self, seconds: float) -> None:
        """:meth:`pause`, then :meth:`resume` after ``seconds`` on the watch's loop.

        For a source that stays ready but cannot be served for a while (a
        listening socket whose ``accept()`` ran out of fds).  Call it on the
        loop's thread; a watch removed meanwhile stays removed.
        """
        if self.loop is None:
            return
        self.pause()
        self.loop.call_later(seconds, self.resume)

    def resume(self) -> None:
        """Dispatch again after :meth:`pause` (a ready source is dispatched at once)."""
        if not self._paused or self._removed or self.loop is None:
            return
        self._paused = False
        if self._parked:
            self._parked = False
            _loop_watches(self.loop).add(self, self._fds)
            self._schedule()
        else:
            self._schedule_unreported()  # the fds are still watched

    def _park(self) -> None:
        """Paused and the loop reported the fds ready: make it forget them until resume()."""
        if not self._parked and self.loop is not None:
            self._parked = True
            _loop_watches(self.loop).discard(self, self._fds)

    def dispatch(self, hint: Condition = _NONE) -> None:
        """Check the source and run the callback if a watched condition is ready.

        ``hint``: a condition the loop has just reported for the watch's fd
        (the source is then not polled again for it).
        """
        if self._removed or self._func is None:
            return
        if self._paused:
            if hint:
                self._park()
            return
        if self._wanted & int(hint) and len(self._fds) == 1:
            pending = self.source.pending()
            ready = (pending | hint) & self.source._mask() if pending else hint
        else:
            ready = self.source.check()
        if self.fd_always_ready:
            ready |= self.condition
        if not ready:
            return
        try:
            keep = self._func(self.channel, ready, *self._user_data)
        except Exception:
            log.exception("watch callback %r failed; removing the watch", self._func)
            keep = False
        if not keep:
            self.remove()
        else:
            self._schedule_unreported()

    def remove(self) -> None:
        """Remove the watch; it never fires again and its ``notify`` runs once."""
        if self._removed:
            return
        self._removed = True
        was_attached = self.attached
        self.attached = False
        with _tags_lock:
            _by_tag.pop(self.tag, None)
        loop = self.loop
        if loop is not None and not loop.is_closed():
            if _in_loop_thread(loop):
                _loop_watches(loop).discard(self, self._fds)
            else:
                loop.call_soon_threadsafe(_loop_watches(loop).discard, self, self._fds)
        self.channel._untrack_watch(self)
        notify, self._notify = self._notify, None
        if was_attached and notify is not None:
            notify(*self._user_data)
