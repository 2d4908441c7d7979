"""QIONetListener: listen on every address a name resolves to, and hand out clients.

Like QEMU's ``io/net-listener.c``: :meth:`QIONetListener.open_sync` binds one
listening :class:`QIOChannelSocket` per resolved address (``localhost`` gives
an IPv4 and an IPv6 socket), then clients are either dispatched to a callback
on an asyncio loop through channel watches (:meth:`set_client_func`) or taken
one at a time with :meth:`wait_client`.  A listener is also the
:class:`qiochan.transport.Listener` that ``qiochan.listen()`` returns
(``accept()``, ``close()``, ``address``).
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from qiochan.address import Address, InetAddress, as_address
from qiochan.channel import Feature
from qiochan.errors import ACCEPT_RETRY_DELAY, RESOURCE_ERRNOS, ChannelError, from_oserror
from qiochan.watch import Condition, Watch

from .channel import QIOChannelSocket
from .sockaddr import Endpoint, resolve

if TYPE_CHECKING:
    import asyncio

__all__ = ["ClientFunc", "QIONetListener"]

log = logging.getLogger("qiochan.socket")

#: ``func(listener, client_channel, *data)``: called for each accepted client.
ClientFunc = Callable[..., object]

_PORT_RETRIES = 10


def _with_port(endpoint: Endpoint, port: int) -> Endpoint:
    host, _old, *rest = endpoint.sockaddr
    return Endpoint(endpoint.family, endpoint.type, endpoint.proto, (host, port, *rest))


class QIONetListener:
    """A set of listening socket channels that accept clients together.

    Listening channels are switched to non-blocking mode when added, so a
    client taken by another thread never blocks this one.
    """

    def __init__(self) -> None:
        self._channels: list[QIOChannelSocket] = []
        self._watches: list[Watch] = []
        self._lock = threading.Lock()
        self._connected = False
        self._name: str | None = None
        self._func: ClientFunc | None = None
        self._data: tuple[Any, ...] = ()
        self._notify: Callable[..., object] | None = None
        self._context: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        state = "listening" if self._connected else "disconnected"
        return f"<QIONetListener {self._name or ''} {state} {len(self._channels)} socket(s)>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- naming and state ------------------------------------------------------------

    def set_name(self, name: str) -> None:
        """Set the debug name; listening channels are named ``NAME-listen``."""
        self._name = name
        for channel in self._channels:
            channel.set_name(f"{name}-listen")

    @property
    def name(self) -> str | None:
        """The debug name."""
        return self._name

    @property
    def sioc(self) -> tuple[QIOChannelSocket, ...]:
        """The listening channels."""
        return tuple(self._channels)

    def is_connected(self) -> bool:
        """True while the listener has listening channels (until :meth:`disconnect`)."""
        return self._connected

    @property
    def address(self) -> Address:
        """The address of the first listening channel (with the real port when 0 was asked).

        Raises:
            ChannelError: the listener has no channel.
        """
        if not self._channels:
            raise ChannelError("Listener has no listening socket", errno.ENOTCONN)
        return self._channels[0].local_address

    @property
    def addresses(self) -> list[Address]:
        """The addresses of every listening channel."""
        return [channel.local_address for channel in self._channels]

    # -- opening -------------------------------------------------------------------------

    def open_sync(self, addr: Address | str, num: int = 1) -> None:
        """Listen on every address ``addr`` resolves to, with a backlog of ``num``.

        With port 0, every socket shares the port the first one got.  It
        succeeds when at least one address could be bound (as QEMU does).

        Raises:
            ChannelError: no address could be bound (the error of the first failure).
            AddressError: ``addr`` is malformed.
        """
        address = as_address(addr)
        if not isinstance(address, InetAddress):
            channel = QIOChannelSocket()
            try:
                channel.listen_sync(address, num)
            except BaseException:
                channel.close()
                raise
            self.add(channel)
            return
        endpoints = resolve(address, passive=True)
        for _attempt in range(_PORT_RETRIES):
            channels = self._bind_all(address, endpoints, num)
            if channels:
                for channel in channels:
                    self.add(channel)
                return
        raise ChannelError(f"Failed to listen on '{address}': no free port for every address")

    def _bind_all(
        self, address: InetAddress, endpoints: list[Endpoint], num: int
    ) -> list[QIOChannelSocket]:
        """Bind every endpoint; return [] when a shared ephemeral port was taken (retry)."""
        families = {endpoint.family for endpoint in endpoints}
        v6only = True if len(families) > 1 else None
        channels: list[QIOChannelSocket] = []
        first_error: OSError | None = None
        port = address.port
        for endpoint in endpoints:
            channel = QIOChannelSocket()
            try:
                channel.listen_endpoint(_with_port(endpoint, port), address, num, v6only=v6only)
            except OSError as exc:
                channel.close()
                if port != address.port and exc.errno == errno.EADDRINUSE:
                    for bound in channels:
                        bound.close()
                    return []  # the port picked for the first address is busy here
                log.debug("listener: cannot listen on %s: %s", endpoint, exc)
                first_error = first_error or exc
                continue
            if port == 0:
                local = channel.local_address
                assert isinstance(local, InetAddress)
                port = local.port
            channels.append(channel)
        if not channels:
            assert first_error is not None
            raise from_oserror(f"Failed to listen on '{address}'", first_error) from first_error
        return channels

    def add(self, sioc: QIOChannelSocket) -> None:
        """Add a listening channel; it accepts through the client callback, if one is set.

        Raises:
            ChannelError: ``sioc`` is not listening (``EINVAL``).
        """
        if not sioc.has_feature(Feature.LISTEN):
            raise ChannelError(f"{sioc!r} is not a listening socket", errno.EINVAL)
        sioc.set_blocking(False)
        if self._name:
            sioc.set_name(f"{self._name}-listen")
        with self._lock:
            self._channels.append(sioc)
            self._connected = True
            if self._func is not None:
                self._watches.append(self._watch(sioc))

    # -- clients -----------------------------------------------------------------------

    def set_client_func(
        self,
        func: ClientFunc | None,
        *data: Any,
        notify: Callable[..., object] | None = None,
        context: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """Call ``func(listener, client, *data)`` on ``context`` for each new client.

        ``context`` is an asyncio loop (default: the running loop, else the
        thread's default loop).  The previous callback's ``notify(*data)`` runs
        when it is replaced; ``func=None`` stops dispatching clients.
        """
        with self._lock:
            old_notify, old_data = self._notify, self._data
            self._remove_watches()
            self._func, self._data, self._notify, self._context = func, data, notify, context
            if func is not None:
                self._watches = [self._watch(channel) for channel in self._channels]
        if old_notify is not None:
            old_notify(*old_data)

    def _watch(self, sioc: QIOChannelSocket) -> Watch:
        return sioc.add_watch_source(Condition.IN, self._client_ready, context=self._context)

    def _remove_watches(self) -> None:
        watches, self._watches = self._watches, []
        for watch in watches:
            watch.remove()

    def _client_ready(self, sioc: QIOChannelSocket, _condition: Condition) -> bool:
        if sioc.closed:
            return False
        try:
            client = sioc.accept()
        except ChannelError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                self._back_off(sioc, exc)
            else:  # that client's failure (ECONNABORTED...): the next one may do
                log.warning("listener %r: accept failed: %s", self, exc)
            return True
        if client is None:
            return True  # another thread took it
        func = self._func
        if func is None:
            client.close()
            return False
        if self._name:
            client.set_name(f"{self._name}-client")
        try:
            func(self, client, *self._data)
        except Exception:
            # one failing client must not stop the listener accepting the next ones
            log.exception("listener %r: client callback %r failed", self, func)
        return True

    def _back_off(self, sioc: QIOChannelSocket, exc: ChannelError) -> None:
        """Stop accepting on ``sioc`` for :data:`~qiochan.errors.ACCEPT_RETRY_DELAY` seconds.

        The client that could not be accepted is still queued, so the fd keeps
        reporting readable: without a pause the loop would spin (and log) until
        an fd is freed.  Called on the watch's loop.
        """
        for watch in self._watches:
            if watch.channel is sioc:
                log.warning(
                    "listener %r: accept failed: %s; accepting again in %g s",
                    self,
                    exc,
                    ACCEPT_RETRY_DELAY,
                )
                watch.pause_for(ACCEPT_RETRY_DELAY)
                return

    def wait_client(self, timeout: float | None = None) -> QIOChannelSocket:
        """Block until a client connects on any listening channel; return its channel.

        The client callback, if any, is not called for this client.

        Raises:
            ChannelError: the listener is (or gets) disconnected (``EBADF``), or accept failed.
            TimeoutError: no client within ``timeout`` seconds.
        """
        while True:
            channels = self._live_channels()
            poller = select.poll()
            by_fd = {channel.fd: channel for channel in channels if channel.fd >= 0}
            for fd in by_fd:
                poller.register(fd, select.POLLIN)
            ready = poller.poll(None if timeout is None else int(timeout * 1000 + 0.999))
            if not ready:
                raise TimeoutError(f"no client within {timeout} s")
            for fd, _events in ready:
                client = self._accept_from(by_fd[fd])
                if client is not None:
                    if self._name:
                        client.set_name(f"{self._name}-client")
                    return client

    def _live_channels(self) -> list[QIOChannelSocket]:
        with self._lock:
            if not self._connected or not self._channels:
                raise ChannelError("Listener is not listening", errno.EBADF)
            return list(self._channels)

    def _accept_from(self, sioc: QIOChannelSocket) -> QIOChannelSocket | None:
        try:
            return sioc.accept()
        except ChannelError:
            if not self._connected:
                raise ChannelError("Listener was disconnected", errno.EBADF) from None
            raise

    def accept(self) -> QIOChannelSocket:
        """Block until a client connects; return its channel (as :meth:`wait_client`)."""
        return self.wait_client()

    # -- closing -----------------------------------------------------------------------

    def disconnect(self) -> None:
        """Stop listening: remove the watches and close every listening channel.

        A thread blocked in :meth:`wait_client` wakes with :class:`ChannelError`.
        Idempotent.
        """
        with self._lock:
            self._connected = False
            self._remove_watches()
            channels, self._channels = self._channels, []
        for channel in channels:
            if not channel.closed:
                try:
                    channel.socket.shutdown(socket.SHUT_RDWR)  # wakes wait_client pollers
                except OSError:
                    pass
                channel.close()

    def close(self) -> None:
        """Disconnect, then run the client callback's ``notify`` (once)."""
        self.disconnect()
        with self._lock:
            notify, data = self._notify, self._data
            self._func, self._notify, self._data = None, None, ()
        if notify is not None:
            notify(*data)
