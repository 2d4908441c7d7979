"""Transports by address: :func:`connect`, :func:`listen`, :func:`open_channel`, and layers.

An address names a transport backend through its scheme (``tcp:``,
``unix:``...); layers (``"tls:creds=DIR"``, ``"websocket:path=/p"``) are
applied innermost first, and the role (client or server) follows from
connect or listen.  Every backend is reached through the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Self, runtime_checkable

from . import _hooks
from .channel import QIOChannel
from .errors import AddressError, HandshakeError
from .options import format_options, parse_options, split_options
from .registry import Backend, find_backend

__all__ = [
    "LayerSpec",
    "LayeredListener",
    "Listener",
    "Role",
    "apply_layers",
    "connect",
    "listen",
    "open_channel",
    "parse_layer",
    "resolve_address",
]

log = logging.getLogger("qiochan.transport")

Role = Literal["client", "server"]


@runtime_checkable
class Listener(Protocol):
    """What :func:`listen` returns: accepts channels until closed."""

    @property
    def address(self) -> Any:
        """The address actually listened on (with the real port for port 0)."""

    def accept(self) -> QIOChannel:
        """Block until a peer connects; return its channel (handshakes done)."""

    def close(self) -> None:
        """Stop listening; idempotent."""


@dataclass(frozen=True)
class LayerSpec:
    """A parsed layer: its name and options (keys with underscores).

    ``str(spec)`` formats it back to ``name:key=value,...``.
    """

    name: str
    options: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return f"{self.name}:{format_options(self.options)}"


def parse_layer(text: str) -> LayerSpec:
    """Parse ``"name[:key=value,...]"``.

    Raises:
        AddressError: empty name or a malformed option (the message names it).
    """
    name, _sep, rest = text.partition(":")
    name = name.strip().lower()
    if not name:
        raise AddressError(f"Layer {text!r} has no name (expected e.g. 'tls:creds=DIR')")
    options = parse_options(split_options(rest), f"layer {name!r}") if rest else {}
    return LayerSpec(name, options)


def _layer_specs(layers: Iterable[Any]) -> list[Any]:
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


def apply_layers(channel: QIOChannel, layers: Iterable[Any], role: Role) -> QIOChannel:
    """Wrap ``channel`` in ``layers`` (innermost first) for ``role``; return the outermost.

    Each layer's handshake is complete when this returns.  On failure every
    channel made so far, ``channel`` included, is closed.

    Raises:
        HandshakeError: a layer's handshake failed.
        PluginError: a layer has no available backend.
    """
    current = channel
    try:
        for spec in _layer_specs(layers):
            if isinstance(spec, LayerSpec):
                wrap = find_backend(spec.name, kind="layer").require("wrap")
                current = wrap(current, role, **spec.options)
            else:
                current = spec(current, role)
    except BaseException:
        current.close()
        if current is not channel:
            channel.close()
        raise
    return current


def resolve_address(address: Any) -> tuple[Backend, Any]:
    """Return the transport backend for ``address`` and the parsed address object.

    ``address`` is an address string or an object from :mod:`qiochan.address`
    (anything with a ``scheme`` attribute).

    Raises:
        AddressError: the address is malformed or has no scheme.
        PluginError: no available backend serves the scheme.
    """
    if isinstance(address, str):
        scheme, sep, _rest = address.partition(":")
        scheme = scheme.strip().lower()
        if not sep or not scheme:
            raise AddressError(
                f"Address {address!r} has no scheme (e.g. 'tcp:HOST:PORT') and names no "
                "configured transport"
            )
        backend = find_backend(scheme)
        if backend.parse is not None:
            return backend, backend.parse(address)
        from .address import parse_address

        return backend, parse_address(address)
    object_scheme = getattr(address, "scheme", None)
    if not isinstance(object_scheme, str):
        raise TypeError(
            f"address must be a string or an address object, not {type(address).__name__}"
        )
    return find_backend(object_scheme), address


def _configured(
    address: Any, layers: Iterable[Any], options: dict[str, Any]
) -> tuple[Any, Iterable[Any], dict[str, Any], float | None]:
    """Expand a configured transport name (:mod:`qiochan.config`) to its address and layers.

    Returns ``(address, layers, options, configured timeout)``; anything that is
    not a configured name comes back unchanged.
    """
    if not isinstance(address, str) or ":" in address:
        return address, layers, options, None
    from .config import lookup_transport

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

    Returns:
        The outermost channel, blocking, with every handshake done.
    Raises:
        AddressError, PluginError, ChannelError (refused, unreachable...), HandshakeError,
        ConfigError (the transports file is invalid).
    """
    address, layers, options, configured_timeout = _configured(address, layers, options)
    if timeout is None:
        timeout = configured_timeout
    backend, parsed = resolve_address(address)
    func = backend.require("connect")
    if timeout is not None:
        options["timeout"] = timeout
    if backend.own_layers:
        channel: QIOChannel = func(parsed, layers=_layer_specs(layers), **options)
    else:
        channel = apply_layers(func(parsed, **options), layers, "client")
    _hooks.channel_opened(channel, parsed)
    return channel


class LayeredListener:
    """A listener whose accepted channels are wrapped in server-side layers.

    A client whose handshake fails makes :meth:`accept` raise that
    :class:`HandshakeError`; the listener stays open for the next client.
    """

    def __init__(self, inner: Listener, layers: Sequence[Any]) -> None:
        self.inner = inner
        self.layers = list(layers)

    @property
    def address(self) -> Any:
        """The inner listener's address."""
        return self.inner.address

    def accept(self) -> QIOChannel:
        """Accept a peer and run the server side of every layer; return the outer channel."""
        channel = self.inner.accept()
        try:
            return apply_layers(channel, self.layers, "server")
        except HandshakeError as exc:
            log.info("client handshake failed on %s: %s", self.address, exc)
            raise

    def close(self) -> None:
        """Close the inner listener."""
        self.inner.close()

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
        AddressError, PluginError, ChannelError (address in use...).
    """
    address, layers, options, _timeout = _configured(address, layers, options)
    backend, parsed = resolve_address(address)
    func = backend.require("listen")
    specs = _layer_specs(layers)
    if backend.own_layers:
        return func(parsed, layers=specs, **options)
    listener = func(parsed, **options)
    return LayeredListener(listener, specs) if specs else listener


def open_channel(address: Any, mode: str = "r", **options: Any) -> QIOChannel:
    """Open a file-like transport (``file:``, ``exec:``, ``fd:``...) in ``mode``.

    Args:
        mode: ``"r"``, ``"w"`` or ``"rw"``.
    Raises:
        ValueError: a bad mode. AddressError, PluginError, ChannelError.
    """
    if mode not in ("r", "w", "rw"):
        raise ValueError(f"mode must be 'r', 'w' or 'rw', not {mode!r}")
    backend, parsed = resolve_address(address)
    channel: QIOChannel = backend.require("open")(parsed, mode, **options)
    _hooks.channel_opened(channel, parsed)
    return channel
