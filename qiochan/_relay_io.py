"""How the gateway opens channels: accepting on the loop, layer handshakes, connecting.

This is the one place :mod:`qiochan.relay` depends on how handshakes run.
Accepting is loop-driven for qiochan's socket listeners (the listener's
client callback runs on the loop, no accept thread).  Layer handshakes and
connects still use the blocking calls of :mod:`qiochan.transport`, run on a
bounded pool of worker threads
(not one thread per connection); each is bounded by a deadline, and a
handshake that passes it is ended by shutting its raw channel down, which
wakes the worker at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from . import transport as _transport
from .channel import QIOChannel, Shutdown
from .errors import ChannelError, HandshakeError

__all__ = ["Acceptor", "accept_layers", "open_destination"]

log = logging.getLogger("qiochan.relay")

#: Worker threads shared by every gateway's blocking handshakes and connects.
_WORKERS = 64
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()

#: Called on the loop with each raw accepted channel.
ClientFunc = Callable[[QIOChannel], None]


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=_WORKERS, thread_name_prefix="qiochan-relay"
            )
        return _pool


class Acceptor:
    """A listener's raw accepting part, dispatching clients on the loop.

    A listener with ``set_client_func`` (qiochan's socket listeners) accepts
    on the loop itself; any other listener gets one accepting thread (for
    the listener, not per client).

    Args:
        listener: what :func:`qiochan.listen` returned; its server-side layers
            (:attr:`layers`) are left to :func:`accept_layers`.
        loop: the loop the client callback runs on.
    """

    def __init__(self, listener: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.listener = listener
        self._raw: Any
        if isinstance(listener, _transport.LayeredListener):
            self._raw, self.layers = listener.inner, list(listener.layers)
        else:
            self._raw, self.layers = listener, []
        self._on_loop = callable(getattr(self._raw, "set_client_func", None))
        self._loop = loop
        self._func: ClientFunc | None = None
        self._thread: threading.Thread | None = None
        self._accepting = threading.Event()
        self.closed = False

    @property
    def address(self) -> Any:
        """The address listened on (the real port when 0 was asked)."""
        return self.listener.address

    def start(self, func: ClientFunc) -> None:
        """Call ``func(channel)`` on the loop for each new client, until :meth:`pause`."""
        self._func = func
        if self._on_loop:
            self._raw.set_client_func(self._client, context=self._loop)
            return
        self._accepting.set()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._accept_thread, name=f"qiochan-accept {self.address}", daemon=True
            )
            self._thread.start()

    def pause(self) -> None:
        """Stop accepting; new clients wait in the listen backlog."""
        if self.closed:
            return
        if self._on_loop:
            self._raw.set_client_func(None)
        else:
            self._accepting.clear()

    def resume(self) -> None:
        """Accept again after :meth:`pause`."""
        if self._func is not None and not self.closed:
            self.start(self._func)

    def _client(self, _listener: Any, channel: QIOChannel) -> None:
        if self.closed or self._func is None:
            channel.close()
            return
        self._func(channel)

    def _accept_thread(self) -> None:
        while True:
            self._accepting.wait()
            if self.closed:
                return
            try:
                channel = self._raw.accept()
            except Exception as exc:
                if not self.closed:
                    log.warning("accepting on %s failed, no more clients: %s", self.address, exc)
                return
            try:
                self._loop.call_soon_threadsafe(self._client, None, channel)
            except RuntimeError:  # the loop is closed
                channel.close()
                return

    def close(self) -> None:
        """Stop accepting and close the listener; idempotent."""
        if self.closed:
            return
        self.closed = True
        self._accepting.set()  # an accepting thread wakes and sees it is closed
        if self._on_loop:
            with contextlib.suppress(ChannelError):
                self._raw.set_client_func(None)
        self.listener.close()


async def _in_worker(
    func: Callable[[], QIOChannel],
    timeout: float | None,
    on_timeout: Callable[[], None] | None = None,
) -> Any:
    """Run ``func`` on the worker pool, bounded by ``timeout`` seconds.

    On timeout (or cancellation) ``on_timeout()`` runs to end the work early
    (on a timeout, the worker is then waited for), and a channel the worker
    still returns is closed.

    Raises:
        TimeoutError: past the deadline. Whatever ``func`` raises.
    """
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_executor(), func)
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(future)
    except TimeoutError:
        future.add_done_callback(_close_orphan)
        if on_timeout is not None:
            on_timeout()
            # ending the work early wakes the worker: wait, so its channel is closed
            await asyncio.wait([future])
        raise
    except BaseException:
        if not future.done():
            if on_timeout is not None:
                on_timeout()
            future.add_done_callback(_close_orphan)
        raise


def _close_orphan(future: asyncio.Future[QIOChannel]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


def _shutdown(channel: QIOChannel) -> None:
    with contextlib.suppress(ChannelError, OSError):
        channel.shutdown(Shutdown.BOTH)


async def accept_layers(
    channel: QIOChannel, layers: Sequence[Any], timeout: float | None
) -> QIOChannel:
    """Run the server side of ``layers`` over an accepted ``channel``; return the outermost.

    On failure ``channel`` is closed.

    Raises:
        HandshakeError: a layer's handshake failed, or did not finish within
            ``timeout`` seconds (errno ETIMEDOUT).
        ChannelError: setting a layer up failed.
    """
    if not layers:
        return channel
    handshake = functools.partial(_transport.apply_layers, channel, layers, "server")
    try:
        result: QIOChannel = await _in_worker(handshake, timeout, lambda: _shutdown(channel))
    except TimeoutError:
        raise HandshakeError(
            f"handshake did not complete within {timeout} s", errno.ETIMEDOUT
        ) from None
    return result


async def open_destination(
    address: Any, layers: Sequence[Any], timeout: float | None
) -> QIOChannel:
    """Connect to ``address`` (or open it, for ``exec:``/``file:``) with client ``layers``.

    ``timeout`` bounds the connect and the handshakes.

    Raises:
        AddressError, PluginError, ChannelError, HandshakeError: as :func:`qiochan.connect`.
    """

    def connect() -> QIOChannel:
        opened = _transport.open_only(address, layers=layers, role="client")
        if opened is not None:
            return opened
        return _transport.connect(address, layers=layers, timeout=timeout)

    # the connect's own timeout ends the worker; the outer one is a backstop
    backstop = None if timeout is None else timeout + 5.0
    try:
        result: QIOChannel = await _in_worker(connect, backstop)
    except TimeoutError:
        raise ChannelError(
            f"connect did not complete within {timeout} s", errno.ETIMEDOUT
        ) from None
    return result
