"""Transports by address: :func:`connect`, :func:`listen`, :func:`open_channel`, and layers.

An address names a transport backend through its scheme (``tcp:``,
``unix:``...); layers (``"tls:creds=DIR"``, ``"websocket:path=/p"``) are
applied innermost first, and the role (client or server) follows from
connect or listen.  Every backend is reached through the registry.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Self

from . import _hooks
from .channel import QIOChannel
from .config import lookup_transport
from .errors import AddressError, ChannelError, HandshakeError, PluginError
from .layer import apply_layers, deadline_after
from .layer import layer_specs as _layer_specs
from .options import LayerSpec, parse_layer
from .plugin import Listener, Role
from .registry import find_backend, resolve_address

if TYPE_CHECKING:
    import asyncio

    from .aio import LayerAcceptor

__all__ = [
    "LayerSpec",
    "LayeredListener",
    "Listener",
    "Role",
    "apply_layers",
    "check_layers",
    "connect",
    "listen",
    "open_channel",
    "open_only",
    "opens_only",
    "parse_layer",
    "resolve_address",
]

log = logging.getLogger("qiochan.transport")


def check_layers(layers: Iterable[Any], role: Role) -> None:
    """Check ``layers`` for ``role`` before any channel exists.

    Each spec string must parse and name an available layer, and the layer's
    ``check`` hook (when its backend has one) must accept the options; callables
    are left to run.  :func:`connect` and :func:`listen` call it first, so a bad
    layer never costs a connection, nor a listener waiting for a peer.

    Raises:
        AddressError: a malformed spec or a bad option.
        PluginError: no available backend for a layer.
        ChannelError: what the layer's check raised (e.g. ``TLSError`` for
            unusable credentials).
    """
    for spec in _layer_specs(layers):
        if isinstance(spec, LayerSpec):
            backend = find_backend(spec.name, kind="layer")
            if backend.check is not None:
                backend.check(role, **spec.options)


def _configured(
    address: Any, layers: Iterable[Any], options: dict[str, Any]
) -> tuple[Any, Iterable[Any], dict[str, Any], float | None]:
    """Expand a configured transport name (:mod:`qiochan.config`) to its address and layers.

    Returns ``(address, layers, options, configured timeout)``; anything that is
    not a configured name comes back unchanged.
    """
    if not isinstance(address, str) or ":" in address:
        return address, layers, options, None
    configured = lookup_transport(address.strip())
    if configured is None:
        return address, layers, options, None
    merged = {**configured.options, **options}
    all_layers = [*configured.layers, *_layer_specs(layers)]
    return configured.address, all_layers, merged, configured.timeout


def connect(
    address: Any, *, layers: Iterable[Any] = (), timeout: float | None = None, **options: Any
) -> QIOChannel:
    """Connect to ``address`` and apply ``layers`` as a client.

    ``address`` may name a configured transport (:mod:`qiochan.config`): its
    layers come first, then ``layers``.

    ``timeout`` bounds the connect and every layer's handshake together
    (each layer's own ``handshake-timeout`` applies too).

    Returns:
        The outermost channel, blocking, with every handshake done.
    Raises:
        AddressError: the address or a layer spec is malformed.
        ConfigError: the transports file is invalid.
        PluginError: no available backend serves the scheme or a layer.
        ChannelError: the connection failed (refused, unreachable...).
        HandshakeError: a layer's handshake failed.
    """
    address, layers, options, configured_timeout = _configured(address, layers, options)
    if timeout is None:
        timeout = configured_timeout
    deadline = deadline_after(timeout)
    backend, parsed = resolve_address(address)
    func = backend.require("connect")
    layers = _layer_specs(layers)
    check_layers(layers, "client")
    if timeout is not None:
        options["timeout"] = timeout
    if backend.own_layers:
        options["layers"] = _layer_specs(layers)
        channel = func(parsed, **options)
    else:
        channel = apply_layers(func(parsed, **options), layers, "client", deadline=deadline)
    _hooks.channel_opened(channel, parsed)
    return channel


class LayeredListener:
    """A listener whose accepted channels are wrapped in server-side layers.

    :meth:`accept` is never held by one slow client: when the inner listener
    offers its listening channels (``sioc``, as a socket listener does),
    clients are accepted and handshaken concurrently, in non-blocking mode on
    a private event loop run by :meth:`accept` itself (no threads), and
    :meth:`accept` returns the first client whose handshakes completed while
    the others go on handshaking, each bounded by its layers'
    ``handshake-timeout`` (10 s for a server by default).  A client whose
    handshake fails makes :meth:`accept` raise that :class:`HandshakeError`;
    the listener stays open for the next client.  The private loop exists
    only while clients are in progress between two :meth:`accept` calls.
    """

    def __init__(self, inner: Listener, layers: Sequence[Any]) -> None:
        self.inner = inner
        self.layers = list(layers)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._acceptor: LayerAcceptor | None = None
        self._closed = False

    @property
    def address(self) -> Any:
        """The inner listener's address."""
        return self.inner.address

    def accept(self) -> QIOChannel:
        """Return the next client whose server-side layer handshakes completed.

        Raises:
            HandshakeError: the next client to finish failed its handshake (or timed out).
            ChannelError: the listener is closed or accepting failed.
        """
        if not getattr(self.inner, "sioc", None):
            return self._accept_one()
        with self._lock:
            acceptor = self._start()
            assert self._loop is not None
            try:
                channel = self._loop.run_until_complete(acceptor.accept())
            finally:
                if self._closed or acceptor.idle:
                    self._shut_loop()  # no fds or loop kept while no client is in progress
            return channel

    def _accept_one(self) -> QIOChannel:
        """Accept from a listener that offers no listening channels: one client at a time."""
        channel = self.inner.accept()
        try:
            return apply_layers(channel, self.layers, "server")
        except HandshakeError as exc:
            log.info("client handshake failed on %s: %s", self.address, exc)
            raise

    def _start(self) -> LayerAcceptor:
        if self._closed:
            raise ChannelError("Listener is closed", errno.EBADF)
        if self._acceptor is None:
            import asyncio

            from .aio import LayerAcceptor

            self._loop = asyncio.new_event_loop()
            self._acceptor = LayerAcceptor(self.inner, self.layers, loop=self._loop)
            self._acceptor.start()
        return self._acceptor

    def _shut_loop(self) -> None:
        loop, acceptor = self._loop, self._acceptor
        self._loop = self._acceptor = None
        if loop is None or acceptor is None:
            return
        try:
            loop.run_until_complete(acceptor.aclose())
        finally:
            loop.close()

    def close(self) -> None:
        """Close the inner listener and every client still handshaking; idempotent.

        A thread blocked in :meth:`accept` wakes with :class:`ChannelError`.
        """
        self._closed = True
        try:
            self.inner.close()
        finally:
            if self._lock.acquire(blocking=False):
                try:
                    self._shut_loop()
                finally:
                    self._lock.release()
            elif self._loop is not None and self._acceptor is not None:
                # accept() runs the loop in another thread: it cleans up on its way out
                self._loop.call_soon_threadsafe(self._acceptor.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def listen(address: Any, *, layers: Iterable[Any] = (), **options: Any) -> Any:
    """Listen on ``address``; accepted channels get ``layers`` in the server role.

    ``address`` may name a configured transport (:mod:`qiochan.config`).

    Returns:
        A :class:`Listener` (``accept()``, ``close()``, ``address``; a context manager).
    Raises:
        AddressError: the address or a layer spec is malformed.
        ConfigError: the transports file is invalid.
        PluginError: no available backend serves the scheme or a layer.
        ChannelError: listening failed (address in use...).
    """
    address, layers, options, _timeout = _configured(address, layers, options)
    backend, parsed = resolve_address(address)
    func = backend.require("listen")
    specs = _layer_specs(layers)
    check_layers(specs, "server")
    if backend.own_layers:
        options["layers"] = specs
        return func(parsed, **options)
    listener = func(parsed, **options)
    if specs or not hasattr(listener, "__exit__"):
        # layers to apply, or a plugin's listener that is not a context manager
        return LayeredListener(listener, specs)
    return listener


def open_channel(address: Any, mode: str = "r", **options: Any) -> QIOChannel:
    """Open a file-like transport (``file:``, ``exec:``, ``fd:``...) in ``mode``.

    Args:
        mode: ``"r"``, ``"w"`` or ``"rw"``.
    Raises:
        ValueError: a bad mode.
        AddressError: the address is malformed.
        PluginError: no available backend opens the scheme.
        ChannelError: opening failed (no such file...).
    """
    if mode not in ("r", "w", "rw"):
        raise ValueError(f"mode must be 'r', 'w' or 'rw', not {mode!r}")
    backend, parsed = resolve_address(address)
    channel: QIOChannel = backend.require("open")(parsed, mode, **options)
    _hooks.channel_opened(channel, parsed)
    return channel


def opens_only(address: Any) -> bool:
    """Return True when ``address`` can only be opened (``file:``, ``exec:``), not connected to.

    A configured transport name counts by the address it stands for; an
    address that does not resolve gives False (connect/listen report it).
    """
    address, _layers, _options, _timeout = _configured(address, (), {})
    try:
        backend, _parsed = resolve_address(address)
    except (AddressError, PluginError):
        return False
    return backend.open is not None and backend.connect is None and backend.listen is None


def open_only(
    address: Any, *, layers: Iterable[Any] = (), role: Role = "client", mode: str = "rw"
) -> QIOChannel | None:
    """Open ``address`` when it can only be opened (:func:`opens_only`); else return None.

    The channel is opened in ``mode`` whatever the role, and ``layers``
    (after a configured transport's own) applied in ``role``.

    Returns:
        The channel with every handshake done, or None for a connect/listen address.
    Raises:
        ChannelError, HandshakeError: opening or a layer failed.
    """
    if not opens_only(address):
        return None
    address, layers, options, _timeout = _configured(address, layers, {})
    return apply_layers(open_channel(address, mode, **options), layers, role)
