"""What a plugin imports: :class:`Backend` to describe itself, and the hook markers.

A plugin is a module (or any object) with functions decorated by
:data:`hookimpl`, registered through the ``qiochan.plugins`` entry-point group::

    # pyproject.toml of a third-party distribution
    [project.entry-points."qiochan.plugins"]
    mytransport = "mytransport_plugin"

    # mytransport_plugin.py
    from qiochan.plugin import Backend, hookimpl

    @hookimpl
    def qiochan_backends():
        return [Backend(name="mytransport", schemes=("my",), connect=...)]

The callables a :class:`Backend` carries are typed by the protocols below
(:class:`ConnectFunc`, :class:`ListenFunc`, :class:`OpenFunc`,
:class:`WrapFunc`, :class:`CheckFunc`, :class:`ParseFunc`).  They fix the positional arguments;
each backend adds its own keyword options (``timeout=``, ``backlog=``...),
which the caller passes through as given.

The hooks themselves are specified in :mod:`qiochan.hookspecs`; discovery is
:mod:`qiochan.registry`'s job.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, overload, runtime_checkable

import pluggy

from .channel import Feature, QIOChannel
from .errors import PluginError

__all__ = [
    "PROJECT",
    "AsyncConnectFunc",
    "Backend",
    "CheckFunc",
    "ConnectFunc",
    "ListenFunc",
    "Listener",
    "OpenFunc",
    "ParseFunc",
    "Role",
    "WrapFunc",
    "hookimpl",
    "hookspec",
]

#: The pluggy project name every qiochan hook is marked with.
PROJECT = "qiochan"
#: Marks a function as a qiochan hook specification (used by :mod:`qiochan.hookspecs`).
hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks a plugin's function as the implementation of a qiochan hook.
hookimpl = pluggy.HookimplMarker(PROJECT)

_KINDS = ("transport", "layer")

#: The side a layer takes: ``"client"`` for :func:`qiochan.connect`, ``"server"`` for listen.
Role = Literal["client", "server"]


@runtime_checkable
class Listener(Protocol):
    """What a backend's ``listen`` (and :func:`qiochan.listen`) returns: accepts until closed."""

    @property
    def address(self) -> Any:
        """The address actually listened on (with the real port for port 0)."""

    def accept(self) -> QIOChannel:
        """Block until a peer connects; return its channel (handshakes done)."""

    def close(self) -> None:
        """Stop listening; idempotent."""


class ConnectFunc(Protocol):
    """``connect(address, **options)``: return a connected, blocking channel.

    ``address`` is what the backend's ``parse`` returned (the built-in
    address object, or the :class:`~qiochan.address.SchemeAddress` when the
    backend has no parser).  A backend with ``own_layers`` also receives
    ``layers=``, and from :mod:`qiochan.aio` ``handshake=False``: then it
    returns the chain with the layers built but no handshake run (the caller
    runs them on its loop, :func:`qiochan.layer.acomplete_handshakes`).
    """

    def __call__(self, address: Any, /) -> QIOChannel: ...


class AsyncConnectFunc(Protocol):
    """``aconnect(address, **options)``: :class:`ConnectFunc` as a coroutine on the running loop.

    Optional: it connects without blocking the loop (a non-blocking
    ``connect`` the loop waits on) and returns what ``connect`` returns.
    Without it, :func:`qiochan.aio.aconnect` runs ``connect`` in the loop's
    executor.
    """

    def __call__(self, address: Any, /) -> Awaitable[QIOChannel]: ...


class ListenFunc(Protocol):
    """``listen(address, **options)``: return a :class:`Listener`."""

    def __call__(self, address: Any, /) -> Listener: ...


class OpenFunc(Protocol):
    """``open(address, mode, **options)``: return a channel opened for ``mode``.

    ``mode`` is ``"r"``, ``"w"`` or ``"rw"``.
    """

    def __call__(self, address: Any, mode: str, /) -> QIOChannel: ...


class WrapFunc(Protocol):
    """``wrap(channel, role, **options)``: return the layer's channel over ``channel``.

    The handshake is complete when it returns; on failure the caller closes
    ``channel``.
    """

    def __call__(self, channel: QIOChannel, role: Role, /) -> QIOChannel: ...


class CheckFunc(Protocol):
    """``check(role, **options)``: raise what ``wrap`` would raise for these options.

    No channel exists yet: it checks the options (unknown ones, ones for the
    other role, malformed values) and what they name (a credentials directory
    that must load), raising :class:`~qiochan.errors.AddressError` or the
    layer's error, so a bad layer never costs a connection.
    """

    def __call__(self, role: Role, /) -> None: ...


class ParseFunc(Protocol):
    """``parse(text)``: return the address object for the full address text.

    Raises :class:`~qiochan.errors.AddressError` naming the bad part.
    """

    def __call__(self, text: str, /) -> Any: ...


Operation = Literal["connect", "listen", "open", "wrap"]


@dataclass
class Backend:
    """Describes one transport or layer a plugin provides.

    Attributes:
        name: unique backend name (``"socket"``, ``"tls"``...).
        schemes: address schemes it serves (``("tcp", "unix")``) or, for a layer,
            the layer names it answers to (``("tls",)``).
        kind: ``"transport"`` (owns an OS object) or ``"layer"`` (wraps a channel).
        features: the :class:`~qiochan.Feature` values its channels may have.
        available: False when it cannot work here (missing dependency...).
        missing: why it is unavailable and what to install.
        connect: ``connect(address, **options) -> QIOChannel``.
        aconnect: optional ``async aconnect(address, **options) -> QIOChannel``, the
            same connect driven by the running loop (:class:`AsyncConnectFunc`).
        listen: ``listen(address, **options) -> Listener``.
        open: ``open(address, mode, **options) -> QIOChannel``.
        wrap: ``wrap(channel, role, **options) -> QIOChannel``; a
            :class:`~qiochan.layer.QIOChannelLayer` may come back with its handshake
            not run: the caller runs it under its deadline (sync or async).
        check: ``check(role, **options) -> None`` for a layer: raise the error
            ``wrap`` would raise for these options in this role (an unknown
            option, one for the other role, unusable credentials) without
            any channel, so a bad layer is refused before anything connects
            or listens (:func:`qiochan.transport.check_layers`).
        parse: ``parse(text) -> address`` for its schemes; without one the
            callables receive a :class:`~qiochan.address.SchemeAddress` (the
            built-in schemes use :func:`qiochan.address.parse_address`).
        own_layers: connect/listen take ``layers=`` and apply them themselves
            (``wss://`` puts TLS under the websocket).
        description: one line for ``qiochan backends``.
        plugin: the registered plugin name (filled in by the registry).
    """

    name: str
    schemes: tuple[str, ...] = ()
    kind: Literal["transport", "layer"] = "transport"
    features: frozenset[Feature] = frozenset()
    available: bool = True
    missing: str = ""
    connect: ConnectFunc | None = None
    aconnect: AsyncConnectFunc | None = None
    listen: ListenFunc | None = None
    open: OpenFunc | None = None
    wrap: WrapFunc | None = None
    check: CheckFunc | None = None
    parse: ParseFunc | None = None
    own_layers: bool = False
    description: str = ""
    plugin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise PluginError(f"Backend name must be a non-empty string, got {self.name!r}")
        if self.kind not in _KINDS:
            raise PluginError(
                f"Backend {self.name!r}: kind must be one of {_KINDS}, got {self.kind!r}"
            )
        if isinstance(self.schemes, str):
            self.schemes = (self.schemes,)
        self.schemes = tuple(self.schemes)
        self.features = frozenset(Feature(f) for f in self.features)
        for attr in ("connect", "aconnect", "listen", "open", "wrap", "check", "parse"):
            value = getattr(self, attr)
            if value is not None and not callable(value):
                raise PluginError(
                    f"Backend {self.name!r}: {attr} must be callable, got {type(value).__name__}"
                )

    @overload
    def require(self, operation: Literal["connect"]) -> ConnectFunc: ...
    @overload
    def require(self, operation: Literal["listen"]) -> ListenFunc: ...
    @overload
    def require(self, operation: Literal["open"]) -> OpenFunc: ...
    @overload
    def require(self, operation: Literal["wrap"]) -> WrapFunc: ...

    def require(self, operation: Operation) -> ConnectFunc | ListenFunc | OpenFunc | WrapFunc:
        """Return the callable for ``operation`` (``"connect"``, ``"wrap"``...).

        Raises:
            PluginError: the backend is unavailable or does not support it.
        """
        if not self.available:
            raise PluginError(f"Backend {self.name!r} is unavailable: {self.missing}")
        func: ConnectFunc | ListenFunc | OpenFunc | WrapFunc | None = getattr(self, operation, None)
        if func is None:
            raise PluginError(f"Backend {self.name!r} does not support {operation}")
        return func
