"""The plugin registry: backends discovered through the ``qiochan.plugins`` entry points.

Built-in backends are registered exactly like third-party ones.  Entry points
are loaded one at a time: a plugin that fails to import is logged (naming its
distribution and version), listed by :func:`backends` as unavailable with the
reason, and skipped; it never stops the others.

Environment:
    ``QIOCHAN_DISABLE_PLUGIN_AUTOLOAD=1`` loads no entry points;
    ``QIOCHAN_PLUGINS=name,...`` loads only those entry points.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal

import pluggy

from . import _hooks, hookspecs
from .channel import Feature
from .errors import PluginError

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "backends",
    "find_backend",
    "plugin_manager",
    "reload_plugins",
]

log = logging.getLogger("qiochan.registry")

ENTRY_POINT_GROUP = "qiochan.plugins"
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
        wrap: ``wrap(channel, role, **options) -> QIOChannel`` with the handshake done.
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


_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_failures: dict[str, Backend] = {}
# backends() result, valid while the same manager has the same set of plugins
_cache: tuple[tuple[int, frozenset[int], int], dict[str, Backend]] | None = None


def _distribution_label(entry_point: metadata.EntryPoint) -> str:
    dist = entry_point.dist
    if dist is None:
        return "unknown distribution"
    return f"{dist.name} {dist.version}"


def _selected_entry_points() -> Iterable[metadata.EntryPoint]:
    if os.environ.get("QIOCHAN_DISABLE_PLUGIN_AUTOLOAD", "").strip() not in ("", "0"):
        return ()
    wanted_env = os.environ.get("QIOCHAN_PLUGINS", "").strip()
    wanted = {name.strip() for name in wanted_env.split(",") if name.strip()}
    found = metadata.entry_points(group=ENTRY_POINT_GROUP)
    seen: set[str] = set()
    selected = []
    for entry_point in found:
        if entry_point.name in seen or (wanted and entry_point.name not in wanted):
            continue
        seen.add(entry_point.name)
        selected.append(entry_point)
    return selected


def _load_entry_points(manager: pluggy.PluginManager) -> None:
    for entry_point in _selected_entry_points():
        if manager.is_blocked(entry_point.name) or manager.has_plugin(entry_point.name):
            continue
        label = _distribution_label(entry_point)
        try:
            plugin = entry_point.load()
            manager.register(plugin, name=entry_point.name)
        except Exception as exc:
            reason = (
                f"plugin {entry_point.name!r} ({label}) failed to load: {type(exc).__name__}: {exc}"
            )
            log.warning("%s; skipping it", reason)
            _failures[entry_point.name] = Backend(
                name=entry_point.name, available=False, missing=reason, plugin=entry_point.name
            )


def plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, loading the entry points on first use.

    Register a plugin object at runtime with ``plugin_manager().register(obj)``;
    block one with ``plugin_manager().set_blocked(name)`` (entry-point name).
    """
    global _manager
    manager = _manager
    if manager is not None:
        return manager
    with _lock:
        if _manager is None:
            manager = pluggy.PluginManager(hookspecs.PROJECT)
            manager.add_hookspecs(hookspecs)
            _load_entry_points(manager)
            _manager = manager
            _hooks.hook = manager.hook
        return _manager


def reload_plugins() -> pluggy.PluginManager:
    """Forget every plugin and discover the entry points again; return the new manager.

    Use it after changing ``QIOCHAN_PLUGINS`` or installing a distribution.
    """
    global _manager
    with _lock:
        _manager = None
        _hooks.hook = None
        _failures.clear()
        return plugin_manager()


def _backends_of(manager: pluggy.PluginManager, impl: Any) -> list[Backend]:
    plugin_name = manager.get_name(impl.plugin) or repr(impl.plugin)
    where = f"plugin {plugin_name!r}, hook qiochan_backends()"
    try:
        items = impl.function()
    except Exception as exc:
        reason = f"{where} raised {type(exc).__name__}: {exc}"
        log.warning("%s", reason)
        return [Backend(name=plugin_name, available=False, missing=reason, plugin=plugin_name)]
    if items is None:
        items = []
    if not isinstance(items, (list, tuple)):
        raise PluginError(f"{where} must return a list of Backend, got {type(items).__name__}")
    for item in items:
        if not isinstance(item, Backend):
            raise PluginError(f"{where} returned {item!r}: expected qiochan.registry.Backend")
        item.plugin = plugin_name
    return list(items)


def backends() -> dict[str, Backend]:
    """Return every backend by name, including unavailable ones and plugins that failed.

    The plugins' hooks are asked again whenever a plugin was registered or
    unregistered since the last call.

    Raises:
        PluginError: a plugin's ``qiochan_backends()`` returned something that is
            not a list of :class:`Backend` (the message names the plugin and hook).
    """
    manager = plugin_manager()
    global _cache
    key = (id(manager), frozenset(map(id, manager.get_plugins())), len(_failures))
    if _cache is not None and _cache[0] == key:
        return dict(_cache[1])
    result: dict[str, Backend] = {}
    # pluggy returns implementations last-registered first; list in registration order
    for impl in reversed(manager.hook.qiochan_backends.get_hookimpls()):
        for backend in _backends_of(manager, impl):
            if backend.name in result:
                log.warning(
                    "backend %r of plugin %r hides the one of plugin %r",
                    backend.name,
                    result[backend.name].plugin,
                    backend.plugin,
                )
                continue
            result[backend.name] = backend
    for name, failed in _failures.items():
        if name not in result and not manager.is_blocked(name):
            result.setdefault(name, failed)
    _cache = (key, result)
    return dict(result)


def find_backend(scheme: str, kind: Literal["transport", "layer"] = "transport") -> Backend:
    """Return the backend serving ``scheme`` (an address scheme or a layer name).

    Prefers an available backend when several claim the scheme.

    Raises:
        PluginError: no backend serves it, or the ones that do are unavailable
            (the message says what to install).
    """
    candidates = [
        backend
        for backend in backends().values()
        if backend.kind == kind and scheme in backend.schemes
    ]
    for backend in candidates:
        if backend.available:
            return backend
    if candidates:
        backend = candidates[0]
        raise PluginError(
            f"Backend {backend.name!r} for {kind} {scheme!r} is unavailable: {backend.missing}"
        )
    known = sorted({s for b in backends().values() if b.kind == kind for s in b.schemes})
    raise PluginError(f"No {kind} backend for {scheme!r} (known: {', '.join(known) or 'none'})")
