"""How the gateway opens channels: accepting on the loop, layer handshakes, connecting.

This is the one place :mod:`qiochan.relay` depends on how handshakes run.
Accepting is loop-driven for qiochan's socket listeners (the listener's
client callback runs on the loop, no accept thread).  Every layer handshake
runs on the loop in non-blocking mode (:func:`qiochan.layer.aapply_layers`,
:func:`qiochan.aio.aconnect`), bounded by a deadline: no thread per
connection or per handshake.  Only a transport's own connect (which may
resolve a host name) runs in the loop's executor, as asyncio's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from . import transport as _transport
from .aio import aconnect
from .channel import QIOChannel
from .errors import ACCEPT_RETRY_DELAY, RESOURCE_ERRNOS, ChannelError
from .layer import aapply_layers, deadline_after
from .plugin import Role

__all__ = ["Acceptor", "accept_layers", "open_destination"]

log = logging.getLogger("qiochan.relay")

#: Called on the loop with each raw accepted channel.
ClientFunc = Callable[[QIOChannel], None]


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
        self._closing = threading.Event()
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
                if self.closed:
                    return
                if getattr(exc, "errno", None) in RESOURCE_ERRNOS:
                    log.warning(
                        "accepting on %s failed: %s; accepting again in %g s",
                        self.address,
                        exc,
                        ACCEPT_RETRY_DELAY,
                    )
                    self._closing.wait(ACCEPT_RETRY_DELAY)
                    continue
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
        self._closing.set()
        self._accepting.set()  # an accepting thread wakes and sees it is closed
        if self._on_loop:
            with contextlib.suppress(ChannelError):
                self._raw.set_client_func(None)
        self.listener.close()


async def _handshake(
    channel: QIOChannel, layers: Sequence[Any], role: Role, timeout: float | None
) -> QIOChannel:
    if not layers:
        return channel
    return await aapply_layers(channel, layers, role, deadline=deadline_after(timeout))


async def accept_layers(
    channel: QIOChannel, layers: Sequence[Any], timeout: float | None
) -> QIOChannel:
    """Run the server side of ``layers`` over an accepted ``channel``; return the outermost.

    The handshakes run on the loop, bounded by ``timeout`` seconds in all
    (and by each layer's own ``handshake-timeout``).  On failure or
    cancellation ``channel`` is closed.

    Raises:
        HandshakeError: a layer's handshake failed or timed out (errno ETIMEDOUT).
        ChannelError, AddressError, PluginError: setting a layer up failed.
    """
    return await _handshake(channel, layers, "server", timeout)


async def open_destination(
    address: Any, layers: Sequence[Any], timeout: float | None
) -> QIOChannel:
    """Connect to ``address`` (or open it, for ``exec:``/``file:``) with client ``layers``.

    ``timeout`` bounds the connect and the handshakes together; the
    handshakes run on the loop.

    Raises:
        AddressError, PluginError, ChannelError, HandshakeError: as :func:`qiochan.connect`.
    """
    if not _transport.opens_only(address):
        return await aconnect(address, layers=layers, timeout=timeout)
    opened = await asyncio.get_running_loop().run_in_executor(
        None, lambda: _transport.open_only(address, role="client")
    )
    assert opened is not None
    return await _handshake(opened, layers, "client", timeout)
