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

The hooks themselves are specified in :mod:`qiochan.hookspecs`; discovery is
:mod:`qiochan.registry`'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pluggy

from .channel import Feature
from .errors import PluginError

__all__ = ["PROJECT", "Backend", "hookimpl", "hookspec"]

#: The pluggy project name every qiochan hook is marked with.
PROJECT = "qiochan"
#: Marks a function as a qiochan hook specification (used by :mod:`qiochan.hookspecs`).
hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks a plugin's function as the implementation of a qiochan hook.
hookimpl = pluggy.HookimplMarker(PROJECT)

_KINDS = ("transport", "layer")


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
        listen: ``listen(address, **options) -> Listener``.
        open: ``open(address, mode, **options) -> QIOChannel``.
        wrap: ``wrap(channel, role, **options) -> QIOChannel``; a
            :class:`~qiochan.layer.QIOChannelLayer` may come back with its handshake
            not run: the caller runs it under its deadline (sync or async).
        parse: ``parse(text) -> address`` for schemes :mod:`qiochan.address` does not know.
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
    connect: Callable[..., Any] | None = None
    listen: Callable[..., Any] | None = None
    open: Callable[..., Any] | None = None
    wrap: Callable[..., Any] | None = None
    parse: Callable[[str], Any] | None = None
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
        for attr in ("connect", "listen", "open", "wrap", "parse"):
            value = getattr(self, attr)
            if value is not None and not callable(value):
                raise PluginError(
                    f"Backend {self.name!r}: {attr} must be callable, got {type(value).__name__}"
                )

    def require(self, operation: str) -> Callable[..., Any]:
        """Return the callable for ``operation`` (``"connect"``, ``"wrap"``...).

        Raises:
            PluginError: the backend is unavailable or does not support it.
        """
        if not self.available:
            raise PluginError(f"Backend {self.name!r} is unavailable: {self.missing}")
        func: Callable[..., Any] | None = getattr(self, operation, None)
        if func is None:
            raise PluginError(f"Backend {self.name!r} does not support {operation}")
        return func
