"""The layer base: a channel over a *master* channel, with one handshake driver.

A layer (TLS, websocket, a third-party plugin's) subclasses
:class:`QIOChannelLayer`.  The base gives it:

* the wrapped channel as the public attribute :attr:`~QIOChannelLayer.master`,
  owned by the layer (closing the layer closes it);
* forwarding of what a layer does not change: blocking mode, cork and delay
  hints, ``peerpid()``, ``shutdown()``, the master's addresses, watches (ready
  when the master is, or when :meth:`~QIOChannelLayer.io_pending` says the
  layer holds data);
* one handshake state (:class:`HandshakeState`) and one handshake driver.  The
  layer writes its handshake once, as a step generator
  (:meth:`~QIOChannelLayer.handshake_steps`) doing non-blocking I/O on the
  master and yielding the :class:`~qiochan.Condition` it waits for; the base
  runs it with :func:`qiochan.channel.run_steps` (blocking, ``wait()``), with
  :func:`qiochan.channel.arun_steps` (on an asyncio loop, never blocking it),
  or as a :class:`~qiochan.QIOTask` on a loop, always under a deadline.

:func:`apply_layers` and :func:`aapply_layers` wrap a channel in layer specs
and complete every handshake under one deadline (sync and async).

Misuse, one errno each: I/O before the handshake completed ``EINVAL``; a
second handshake while one runs ``EALREADY``; a second concurrent reader or
writer ``EBUSY`` (see :class:`~qiochan.QIOChannel`).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterable
from enum import Enum
from typing import TYPE_CHECKING, Any

from .channel import QIOChannel, Shutdown, Steps, arun_steps, run_steps
from .errors import ChannelError, HandshakeError
from .options import LayerSpec, parse_layer
from .plugin import Role
from .registry import find_backend
from .task import QIOTask
from .watch import ChildWatchSource, Condition, WatchSource, resolve_context, running_loop

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "DEFAULT_SERVER_HANDSHAKE_TIMEOUT",
    "HandshakeState",
    "QIOChannelLayer",
    "Role",
    "aapply_layers",
    "acomplete_handshakes",
    "apply_layers",
    "complete_handshakes",
    "deadline_after",
    "layer_chain",
    "layer_specs",
    "parse_seconds",
]

log = logging.getLogger("qiochan.layer")


#: Seconds a server-side handshake may take unless ``handshake-timeout=`` says otherwise.
DEFAULT_SERVER_HANDSHAKE_TIMEOUT = 10.0


class HandshakeState(Enum):
    """Where a layer's handshake is."""

    NEW = "new"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def deadline_after(timeout: float | None) -> float | None:
    """Return the :func:`time.monotonic` deadline ``timeout`` seconds from now (None: none)."""
    return None if timeout is None else time.monotonic() + timeout


def _earlier(first: float | None, second: float | None) -> float | None:
    if first is None:
        return second
    if second is None:
        return first
    return min(first, second)


def parse_seconds(value: Any, key: str, context: str) -> float | None:
    """Parse a number of seconds (``none``/``off``/``never``: None) from a layer option.

    Raises:
        ValueError: (an :class:`~qiochan.AddressError`) not a non-negative number.
    """
    from .errors import AddressError

    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        seconds = value
    else:
        text = str(value).strip().lower()
        if text in ("none", "off", "never"):
            return None
        try:
            seconds = float(text)
        except ValueError:
            raise AddressError(f"{context}: {key}={value!r} is not a number of seconds") from None
    if seconds is not None and not seconds >= 0:
        raise AddressError(f"{context}: {key}={value!r} must not be negative")
    return None if seconds is None else float(seconds)


class QIOChannelLayer(QIOChannel):
    """Base class of layers: a channel carrying its data over ``master``.

    Subclasses implement ``io_readv``/``io_writev`` with the master's public
    methods, :meth:`handshake_steps` if the layer has a handshake, and
    :meth:`io_pending`/:meth:`io_close_layer` where they buffer data or say
    goodbye.  ``SHUTDOWN`` is declared when the master has it.

    Args:
        master: the wrapped channel (the layer owns it from now on).
        handshake_timeout: seconds the handshake may take (None: no limit of its own).
    Raises:
        TypeError: ``master`` is not a :class:`~qiochan.QIOChannel`.
        ValueError: a negative ``handshake_timeout``.
    """

    #: The error a failed handshake raises (subclasses name their own, e.g. TLSHandshakeError).
    handshake_error: type[HandshakeError] = HandshakeError

    def __init__(self, master: QIOChannel, *, handshake_timeout: float | None = None) -> None:
        super().__init__()
        if not isinstance(master, QIOChannel):
            raise TypeError(f"master must be a QIOChannel, not {type(master).__name__}")
        if handshake_timeout is not None and not handshake_timeout >= 0:
            raise ValueError(f"handshake_timeout must be >= 0 or None, got {handshake_timeout}")
        #: The wrapped channel.
        self.master = master
        #: Seconds the handshake may take (None: no limit of its own).
        self.handshake_timeout = handshake_timeout
        self._handshake_state = HandshakeState.NEW
        self._handshake_failure: HandshakeError | None = None
        self._handshake_job: asyncio.Task[None] | None = None
        self._handshake_task: QIOTask | None = None
        from .channel import Feature

        if master.has_feature(Feature.SHUTDOWN):
            self.set_feature(Feature.SHUTDOWN)

    # -- handshake -------------------------------------------------------------

    @property
    def handshake_state(self) -> HandshakeState:
        """The handshake's :class:`HandshakeState`."""
        return self._handshake_state

    @property
    def handshake_done(self) -> bool:
        """True once the handshake succeeded (or when the layer has none and it ran)."""
        return self._handshake_state is HandshakeState.DONE

    def handshake_steps(self) -> Steps[None]:
        """The layer's handshake (for subclasses): non-blocking I/O on :attr:`master`.

        Yield the master :class:`~qiochan.Condition` to wait for whenever the
        master would block.  When the deadline passes, :class:`TimeoutError` is
        thrown in at the pending ``yield`` (catch it to answer the peer, then
        raise); so is an error met while waiting.  Raise
        :attr:`handshake_error` (or any :class:`~qiochan.ChannelError`, which
        becomes one) on failure.  The default has no handshake.
        """
        yield from ()

    def handshake_label(self) -> str:
        """How messages about the handshake name this end (``TLS server``)."""
        return self._name or type(self).__name__

    def _require_handshake(self) -> None:
        """Raise unless the handshake is done (for ``io_*`` methods of layers with one).

        Raises:
            HandshakeError: it failed (a fresh copy of the failure).
            ChannelError: it did not run or is still running (``EINVAL``).
        """
        if self._handshake_state is HandshakeState.DONE:
            return
        if self._handshake_failure is not None:
            raise self._fresh_failure()
        raise ChannelError(
            f"{self.handshake_label()}: the handshake is not complete: call handshake() first",
            errno.EINVAL,
        )

    def _fresh_failure(self) -> HandshakeError:
        failure = self._handshake_failure
        assert failure is not None
        return type(failure)(failure.message, failure.errno)

    def _failed(self, error: HandshakeError) -> HandshakeError:
        self._handshake_state = HandshakeState.FAILED
        self._handshake_failure = error
        log.debug("%s: handshake failed: %s", self.handshake_label(), error.message)
        return error

    def _as_failure(self, exc: ChannelError) -> HandshakeError:
        if isinstance(exc, self.handshake_error):
            return exc
        return self.handshake_error(
            f"{self.handshake_label()}: handshake failed: {exc.message}", exc.errno
        )

    def _handshake_run(self, nonblocking: bool = True) -> Steps[None]:
        state = self._handshake_state
        if state is HandshakeState.DONE:
            return
        if state is HandshakeState.FAILED:
            raise self._fresh_failure()
        if state is HandshakeState.RUNNING:
            raise ChannelError(
                f"{self.handshake_label()}: a handshake is already in progress", errno.EALREADY
            )
        self._check_open()
        self._handshake_state = HandshakeState.RUNNING
        master = self.master
        log.debug("%s: handshake start", self.handshake_label())
        try:
            if nonblocking:
                master.set_blocking(False)
            yield from self.handshake_steps()
        except GeneratorExit:
            self._failed(
                self.handshake_error(
                    f"{self.handshake_label()}: the handshake was cancelled", errno.ECANCELED
                )
            )
            raise
        except TimeoutError:
            raise self._failed(
                self.handshake_error(
                    f"{self.handshake_label()}: handshake failed: it did not complete in time "
                    f"(handshake timeout {self.handshake_timeout} s)",
                    errno.ETIMEDOUT,
                )
            ) from None
        except ChannelError as exc:
            raise self._failed(self._as_failure(exc)) from exc
        except BaseException as exc:
            self._failed(self.handshake_error(f"{self.handshake_label()}: {exc!r}"))
            raise
        finally:
            if nonblocking and not master.closed:
                try:
                    master.set_blocking(self._blocking)
                except ChannelError as exc:
                    log.debug("%s: restoring the blocking mode failed: %s", self, exc)
        self._handshake_state = HandshakeState.DONE
        log.debug("%s: handshake complete", self.handshake_label())

    def _deadline(self, deadline: float | None) -> float | None:
        return _earlier(deadline, deadline_after(self.handshake_timeout))

    def handshake(
        self,
        complete: Callable[..., object] | None = None,
        *data: Any,
        context: asyncio.AbstractEventLoop | None = None,
        deadline: float | None = None,
    ) -> None:
        """Run the handshake, bounded by :attr:`handshake_timeout` and ``deadline``.

        Without ``complete`` it blocks until done, whatever the blocking mode.
        With it, it returns at once: the handshake runs on ``context`` (see
        :func:`qiochan.watch.resolve_context`) without blocking it, and
        ``complete(task, *data)`` then runs there with a :class:`~qiochan.QIOTask`
        whose ``error`` is None on success.  Either way the blocking mode is
        as it was.  A handshake already done returns (or completes) at once.

        Args:
            deadline: a :func:`time.monotonic` time the handshake must end by
                (the earlier of it and the layer's own timeout applies).
        Raises:
            HandshakeError: (blocking form) the handshake failed or timed out
                (``ETIMEDOUT``); the layer's subclass of it.
            ChannelError: the channel is closed, or a handshake is running (``EALREADY``).
        """
        until = self._deadline(deadline)
        if complete is None:
            # with no deadline, a blocking channel's steps may simply block (fewer
            # syscalls than waiting for readiness); a deadline needs non-blocking I/O
            nonblocking = until is not None or not self._blocking
            run_steps(self.master, self._handshake_run(nonblocking), until)
            return
        loop = resolve_context(context, self.aio_context)
        task = QIOTask(self, complete, *data)
        if running_loop() is loop:
            self._start_job(loop, task, until)
        else:
            loop.call_soon_threadsafe(self._start_job, loop, task, until)

    def _start_job(
        self, loop: asyncio.AbstractEventLoop, task: QIOTask, until: float | None
    ) -> None:
        self._handshake_job = loop.create_task(self._run_job(task, until))
        self._handshake_task = task

    async def _run_job(self, task: QIOTask, until: float | None) -> None:
        import asyncio

        closed = ChannelError(f"{self.handshake_label()}: closed during the handshake", errno.EBADF)
        try:
            if self._closed:
                raise closed
            await arun_steps(self.master, self._handshake_run(), until)
        except asyncio.CancelledError:
            task.set_error(closed)
        except Exception as exc:  # the task carries it to complete()
            task.set_error(exc)
        finally:
            self._handshake_job = self._handshake_task = None
        if not task.completed:
            task.complete()

    async def ahandshake(self, *, deadline: float | None = None) -> None:
        """Run the handshake on the running loop without blocking it (see :meth:`handshake`).

        Raises:
            HandshakeError: the handshake failed or timed out (``ETIMEDOUT``).
            ChannelError: the channel is closed, or a handshake is running (``EALREADY``).
        """
        await arun_steps(self.master, self._handshake_run(), self._deadline(deadline))

    # -- forwarding to the master ----------------------------------------------

    @property
    def remote_address(self) -> Any:
        """The master's peer address, if it has one (None otherwise)."""
        return getattr(self.master, "remote_address", None)

    @property
    def local_address(self) -> Any:
        """The master's local address, if it has one (None otherwise)."""
        return getattr(self.master, "local_address", None)

    def io_pending(self) -> Condition | bool:
        """Layer (optional): the conditions its own buffers satisfy (decrypted data...)."""
        return Condition(0)

    def io_create_watch(self, condition: Condition) -> WatchSource:
        return ChildWatchSource(self.master, condition, pending=self.io_pending)

    def io_set_blocking(self, enabled: bool) -> None:
        if self._handshake_state is not HandshakeState.RUNNING:
            self.master.set_blocking(enabled)

    def io_set_cork(self, enabled: bool) -> None:
        self.master.set_cork(enabled)

    def io_set_delay(self, enabled: bool) -> None:
        self.master.set_delay(enabled)

    def io_peerpid(self) -> int:
        return self.master.peerpid()

    def io_shutdown(self, how: Shutdown) -> None:
        self.master.shutdown(how)

    def io_close_layer(self) -> None:
        """Layer (optional): say goodbye to the peer before the master closes; never block long."""

    def io_close_layer_nowait(self) -> bool:
        """Layer (optional): say goodbye as :meth:`io_close_layer` does, if that needs no waiting.

        Called by :meth:`close_nowait` on an event loop.  The default says
        True for a layer with no goodbye (no :meth:`io_close_layer` of its
        own), else False: such a layer is closed in a worker thread.

        Returns:
            True when the goodbye is out (or there is none): :meth:`io_close_layer`
            still runs, after the master closed, and must find nothing left to
            send.  False when it would wait: what is not sent yet is left to
            :meth:`io_close_layer`.
        """
        return type(self).io_close_layer is QIOChannelLayer.io_close_layer

    def close_nowait(self) -> bool:
        """Close if this layer's goodbye goes out at once and the master closes without waiting.

        Returns:
            True when closed; False when closing would wait (a running
            handshake, a full master): :meth:`close` then finishes, perhaps
            after this layer's goodbye was already sent.
        Raises:
            ChannelError: as :meth:`close`.
        """
        if self.closed:
            return True
        if self._handshake_state is HandshakeState.RUNNING:
            return False
        if not self.io_close_layer_nowait() or not self.master.close_nowait():
            return False
        self.close()  # the goodbye is out and the master closed: nothing here waits
        return True

    def io_abort_layer(self) -> None:
        """Layer (optional): an abnormal goodbye that never waits (websocket close 1011)
        before the master aborts; the default says nothing (TLS: no close_notify)."""

    def _end_handshake_job(self) -> None:
        job, self._handshake_job = self._handshake_job, None
        task, self._handshake_task = self._handshake_task, None
        if job is not None and not job.done():
            job.get_loop().call_soon_threadsafe(job.cancel)
        if task is not None and not task.completed:
            # complete it now: the loop may not run again
            label = self.handshake_label()
            task.set_error(ChannelError(f"{label}: closed during the handshake", errno.EBADF))
            task.complete()

    def io_close(self) -> None:
        self._end_handshake_job()
        try:
            self.io_close_layer()
        finally:
            self.master.close()

    def io_abort(self) -> None:
        self._end_handshake_job()
        try:
            self.io_abort_layer()
        finally:
            self.master.abort()


# -- wrapping channels in layer specs ---------------------------------------


def layer_specs(layers: Iterable[Any] | str | LayerSpec) -> list[Any]:
    """Return ``layers`` as a list of :class:`~qiochan.options.LayerSpec` objects and callables.

    Raises:
        TypeError: an item is neither a spec string, a LayerSpec nor a callable.
        AddressError: a malformed spec string.
    """
    if isinstance(layers, (str, LayerSpec)):
        layers = (layers,)
    specs: list[Any] = []
    for layer in layers:
        if isinstance(layer, str):
            specs.append(parse_layer(layer))
        elif isinstance(layer, LayerSpec) or callable(layer):
            specs.append(layer)
        else:
            raise TypeError(
                f"a layer must be a spec string, a LayerSpec or a callable, "
                f"not {type(layer).__name__}"
            )
    return specs


def layer_chain(channel: QIOChannel) -> list[QIOChannelLayer]:
    """Return the layers ``channel`` is made of, innermost first (empty for a transport)."""
    chain: list[QIOChannelLayer] = []
    current: QIOChannel = channel
    while isinstance(current, QIOChannelLayer) and current not in chain:
        chain.append(current)
        current = current.master
    chain.reverse()
    return chain


def complete_handshakes(channel: QIOChannel, deadline: float | None = None) -> None:
    """Run the handshake of every layer of ``channel`` not done yet, innermost first.

    Raises:
        HandshakeError: a handshake failed or passed ``deadline`` (nothing is closed).
    """
    for layer in layer_chain(channel):
        if not layer.handshake_done:
            layer.handshake(deadline=deadline)


async def acomplete_handshakes(channel: QIOChannel, deadline: float | None = None) -> None:
    """Async :func:`complete_handshakes`: every handshake on the running loop, non-blocking."""
    for layer in layer_chain(channel):
        if not layer.handshake_done:
            await layer.ahandshake(deadline=deadline)


def _wrap_one(channel: QIOChannel, spec: Any, role: Role) -> QIOChannel:
    if isinstance(spec, LayerSpec):
        wrap = find_backend(spec.name, kind="layer").require("wrap")
        wrapped: QIOChannel = wrap(channel, role, **spec.options)
        return wrapped
    made: QIOChannel = spec(channel, role)
    return made


def _close_chain(current: QIOChannel, channel: QIOChannel) -> None:
    current.close()
    if current is not channel:
        channel.close()


def apply_layers(
    channel: QIOChannel,
    layers: Iterable[Any],
    role: Role,
    *,
    deadline: float | None = None,
    handshake: bool = True,
) -> QIOChannel:
    """Wrap ``channel`` in ``layers`` (innermost first) for ``role``; return the outermost.

    A layer's ``wrap`` may return its channel with the handshake not run yet
    (a :class:`QIOChannelLayer`): it runs here, bounded by its own
    ``handshake_timeout`` and by ``deadline``.  Every handshake is complete
    when this returns (``handshake=False`` only builds the chain: run
    :func:`complete_handshakes` or :func:`acomplete_handshakes` later).  On
    failure every channel made so far, ``channel`` included, is closed.

    Raises:
        HandshakeError: a layer's handshake failed or timed out (``ETIMEDOUT``).
        PluginError: a layer has no available backend.
    """
    current = channel
    try:
        for spec in layer_specs(layers):
            current = _wrap_one(current, spec, role)
            if handshake:
                complete_handshakes(current, deadline)
    except BaseException:
        _close_chain(current, channel)
        raise
    return current


async def aapply_layers(
    channel: QIOChannel, layers: Iterable[Any], role: Role, *, deadline: float | None = None
) -> QIOChannel:
    """Async :func:`apply_layers`: every handshake runs on the running loop without blocking it.

    (A third-party ``wrap`` that runs its own blocking handshake still blocks.)
    Cancelling it closes every channel made so far, ``channel`` included.
    """
    current = channel
    try:
        for spec in layer_specs(layers):
            current = _wrap_one(current, spec, role)
            await acomplete_handshakes(current, deadline)
    except BaseException:
        _close_chain(current, channel)
        raise
    return current
