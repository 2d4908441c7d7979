"""The registry callables: the ``websocket`` layer and the ``ws://``/``wss://`` transport.

Layer spec: ``websocket:path=/p[,host=H][,origin=O][,max-size=N]
[,handshake-timeout=S][,frame-size=N]``.  For a client, ``host`` is the
``Host`` header (default: the master's remote address) and ``origin`` the
``Origin`` header; for a server, ``origin`` is the one origin admitted (403
for others).  ``handshake-timeout`` (``timeout`` is the older name) bounds the
upgrade: 10 s by default; a server answers 408 when it passes.  A server's
``route`` option (a :data:`~qiochan_websocket.handshake.Route` callable, given
as a keyword argument to the layer's ``wrap`` by a program, not in spec text)
replaces the fixed path: it decides on each request target, 404 when it says no.

``ws://HOST:PORT/PATH`` is TCP + websocket, ``wss://`` TCP + TLS + websocket.
The TCP part comes from the ``tcp`` transport backend and the TLS part from
the ``tls`` layer backend, both found in the registry.  The TLS options come
from a ``tls:`` layer given alongside (its ``hostname`` defaults to the URL
host); without one, a client verifies the server against the system CA store
(:mod:`qiochan_websocket.system_ca`), and a server refuses to listen.  A
``websocket:`` layer given alongside adds its options (not ``path``: the URL
has it); any other layer wraps the websocket channel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from websockets.headers import build_host

from qiochan.channel import QIOChannel
from qiochan.errors import AddressError
from qiochan.layer import apply_layers, deadline_after, parse_seconds
from qiochan.options import LayerSpec, parse_int, parse_layer
from qiochan.registry import find_backend
from qiochan.transport import LayeredListener, Role

from .channel import QIOChannelWebsock
from .system_ca import system_ca_options

__all__ = ["OPTIONS", "WebsocketListener", "check", "connect_url", "listen_url", "wrap"]

_CONTEXT = "layer 'websocket'"
#: The options of the ``websocket`` layer (dashes written as underscores).
OPTIONS = (
    "path",
    "host",
    "origin",
    "max_size",
    "handshake_timeout",
    "timeout",
    "frame_size",
    "route",
)

Layer = Callable[[QIOChannel, Role], QIOChannel]


def _size(options: dict[str, Any], key: str) -> dict[str, int | None]:
    if key not in options:
        return {}
    value = parse_int(options[key], key, _CONTEXT)
    if key == "frame_size" and value == 0:
        raise AddressError(f"{_CONTEXT}: frame-size must be at least 1")
    return {key: value or None}


def _remote_host(channel: QIOChannel) -> str:
    """The ``Host`` header for a client that was not told one: the master's peer, if known."""
    remote = getattr(channel, "remote_address", None)
    host = getattr(remote, "host", None)
    port = getattr(remote, "port", None)
    if isinstance(host, str) and host and isinstance(port, int):
        return build_host(host, port, secure=False, always_include_port=True)
    return "localhost"


def _arguments(role: Role, options: dict[str, Any]) -> dict[str, Any]:
    """Check layer ``options`` for ``role``; return keyword arguments for the constructor.

    Raises:
        AddressError: an unknown option, a malformed value, or ``host`` for a server.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        known = ", ".join(name.replace("_", "-") for name in OPTIONS)
        raise AddressError(f"{_CONTEXT}: unknown option(s) {', '.join(unknown)} (known: {known})")
    path = str(options.get("path") or "/")
    if not path.startswith("/"):
        raise AddressError(f"{_CONTEXT}: path={path!r} must start with '/'")
    arguments: dict[str, Any] = {
        "path": path,
        **_size(options, "max_size"),
        **_size(options, "frame_size"),
    }
    for key in ("timeout", "handshake_timeout"):  # the later, documented name wins
        if key in options:
            arguments["timeout"] = parse_seconds(options[key], key.replace("_", "-"), _CONTEXT)
    origin = options.get("origin") or None
    if role == "server":
        if options.get("host"):
            raise AddressError(f"{_CONTEXT}: host= applies to a client only")
        route = options.get("route")
        if route is not None:
            if not callable(route):
                raise AddressError(f"{_CONTEXT}: route= must be a callable, not {route!r}")
            arguments["path"] = route
        arguments["origins"] = None if origin is None else [origin]
    else:
        if options.get("route") is not None:
            raise AddressError(f"{_CONTEXT}: route= applies to a server only")
        arguments["origin"] = origin
        arguments["host"] = options.get("host") or None
    return arguments


def check(role: Role, **options: Any) -> None:
    """Check ``websocket`` layer options for ``role`` as :func:`wrap` will, with no channel.

    Raises:
        AddressError: an unknown option, a malformed value, or a client-only
            option given to a server.
    """
    _arguments(role, options)


def wrap(channel: QIOChannel, role: Role, **options: Any) -> QIOChannelWebsock:
    """Return a websocket channel over ``channel`` for ``role`` from layer options.

    The handshake is left to the caller: :func:`qiochan.layer.apply_layers`
    (behind ``connect``/``listen``) runs it, sync or async, under its deadline.

    Raises:
        AddressError: an unknown option, a malformed value, or a client-only
            option given to a server.
    """
    arguments = _arguments(role, options)
    try:
        if role == "server":
            return QIOChannelWebsock.new_server(channel, **arguments)
        host = arguments.pop("host") or _remote_host(channel)
        return QIOChannelWebsock.new_client(channel, host, **arguments)
    except ValueError as exc:
        raise AddressError(f"{_CONTEXT}: {exc}") from None


def _url(address: Any) -> Any:
    if isinstance(address, str):
        from qiochan.address import parse_address

        address = parse_address(address)
    if getattr(address, "scheme", None) not in ("ws", "wss"):
        raise AddressError(f"not a ws:// or wss:// address: {address!r}")
    return address


def _split_layers(
    layers: Iterable[Any], url: Any
) -> tuple[dict[str, Any] | None, dict[str, Any], list[Any]]:
    """Return the TLS options (wss only), the websocket options, and the layers on top."""
    tls: dict[str, Any] | None = None
    websocket: dict[str, Any] = {}
    seen_websocket = False
    rest: list[Any] = []
    for layer in [layers] if isinstance(layers, (str, LayerSpec)) else layers:
        spec = parse_layer(layer) if isinstance(layer, str) else layer
        if isinstance(spec, LayerSpec) and spec.name == "tls" and url.secure and tls is None:
            tls = dict(spec.options)
        elif isinstance(spec, LayerSpec) and spec.name == "websocket" and not seen_websocket:
            websocket = dict(spec.options)
            seen_websocket = True
        else:
            rest.append(spec)
    if websocket.get("path") not in (None, url.path):
        raise AddressError(
            f"{_CONTEXT}: path={websocket['path']} conflicts with the URL path {url.path}"
        )
    websocket["path"] = url.path
    return tls, websocket, rest


def _tls_layer(options: dict[str, Any]) -> Layer:
    tls_wrap = find_backend("tls", kind="layer").require("wrap")

    def layer(channel: QIOChannel, role: Role) -> QIOChannel:
        wrapped: QIOChannel = tls_wrap(channel, role, **options)
        return wrapped

    return layer


def _websocket_layer(options: dict[str, Any]) -> Layer:
    def layer(channel: QIOChannel, role: Role) -> QIOChannel:
        return wrap(channel, role, **options)

    return layer


def connect_url(
    address: Any,
    *,
    layers: Iterable[Any] = (),
    timeout: float | None = None,
    handshake: bool = True,
    **options: Any,
) -> QIOChannel:
    """Connect to a ``ws://`` or ``wss://`` URL; return the outermost channel.

    ``timeout`` bounds the TCP connect and every handshake together.  Other
    options go to the ``tcp`` backend.

    Args:
        handshake: False builds the layer chain without running any handshake
            (:mod:`qiochan.aio` then runs them on its loop).
    Raises:
        AddressError: a malformed URL or layer option.
        PluginError: the tcp or tls backend is unavailable.
        ChannelError: the connection failed.
        HandshakeError: the TLS or websocket handshake failed.
    """
    deadline = deadline_after(timeout)
    url = _url(address)
    tls, websocket, rest = _split_layers(layers, url)
    websocket.setdefault("host", build_host(url.host, url.port, url.secure))
    _arguments("client", websocket)  # refuse bad options before connecting
    inner: list[Any] = []
    if url.secure:
        given = {"hostname": url.host, **tls} if tls is not None else None
        inner.append(_tls_layer(given or system_ca_options(url.host)))
    inner.append(_websocket_layer(websocket))
    tcp_connect = find_backend("tcp").require("connect")
    channel: QIOChannel = tcp_connect(url.inet, **{"timeout": timeout, **options})
    if not handshake:
        return apply_layers(channel, [*inner, *rest], "client", handshake=False)
    return apply_layers(channel, [*inner, *rest], "client", deadline=deadline)


class WebsocketListener(LayeredListener):
    """A TCP listener whose clients get TLS (``wss``), the websocket server and further layers.

    A client whose handshake fails makes :meth:`accept` raise that
    :class:`~qiochan.HandshakeError`; the listener stays open.
    """

    def __init__(self, inner: Any, layers: list[Any], url: Any) -> None:
        super().__init__(inner, layers)
        self.url = url

    @property
    def address(self) -> Any:
        """The URL listened on, with the real port when 0 was asked."""
        port = getattr(self.inner.address, "port", self.url.port)
        return dataclasses.replace(self.url, port=port)


def listen_url(address: Any, *, layers: Iterable[Any] = (), **options: Any) -> WebsocketListener:
    """Listen on a ``ws://`` or ``wss://`` URL; other options go to the ``tcp`` backend.

    Raises:
        AddressError: ``wss://`` without a ``tls:creds=DIR`` layer, or a bad layer option.
        PluginError: the tcp or tls backend is unavailable.
        ChannelError: listening failed (address in use...).
    """
    url = _url(address)
    tls, websocket, rest = _split_layers(layers, url)
    _arguments("server", websocket)  # refuse bad options now, not at the first client
    inner: list[Any] = []
    if url.secure:
        if tls is None:
            raise AddressError(
                f"{url}: a wss:// server needs its certificate: add a 'tls:creds=DIR' layer"
            )
        inner.append(_tls_layer(tls))
    inner.append(_websocket_layer(websocket))
    tcp_listen = find_backend("tcp").require("listen")
    listener = tcp_listen(url.inet, **options)
    return WebsocketListener(listener, [*inner, *rest], url)
