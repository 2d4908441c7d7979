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
from collections.abc import Iterable
from importlib import metadata
from typing import Any, Literal

import pluggy

from . import _hooks, hookspecs
from .address import SCHEMES, SchemeAddress, parse_address
from .errors import AddressError, PluginError
from .plugin import Backend

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "backends",
    "check_hooks",
    "find_backend",
    "plugin_manager",
    "reload_plugins",
    "resolve_address",
]

log = logging.getLogger("qiochan.registry")

ENTRY_POINT_GROUP = "qiochan.plugins"


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


def _unknown_hooks(manager: pluggy.PluginManager, plugin: object) -> list[str]:
    """Return the names of the hooks ``plugin`` implements that no hookspec declares."""
    return sorted(
        name
        for name, caller in vars(manager.hook).items()
        if not name.startswith("_")
        and not caller.has_spec()
        and any(impl.plugin is plugin for impl in caller.get_hookimpls())
    )


def check_hooks(manager: pluggy.PluginManager) -> None:
    """Check that every registered plugin implements only hooks qiochan declares.

    Runs pluggy's ``check_pending()``: a misspelled hook (``qiochan_backend``
    for ``qiochan_backends``) would otherwise register silently and provide
    nothing.

    Raises:
        PluginError: naming the plugin, each unknown hook and the closest
            declared hook name.
    """
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        import difflib  # only to word this error

        plugin_name = manager.get_name(exc.plugin) or repr(exc.plugin)
        known = sorted(name for name in vars(hookspecs) if name.startswith("qiochan_"))
        unknown = _unknown_hooks(manager, exc.plugin)
        described = []
        for hook in unknown:
            close = difflib.get_close_matches(hook, known, n=1)
            described.append(f"{hook!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise PluginError(
            f"plugin {plugin_name!r} implements unknown hook {', '.join(described)}; "
            f"qiochan's hooks are {', '.join(known)}"
        ) from exc


def _load_entry_points(manager: pluggy.PluginManager) -> None:
    for entry_point in _selected_entry_points():
        if manager.is_blocked(entry_point.name) or manager.has_plugin(entry_point.name):
            continue
        label = _distribution_label(entry_point)
        try:
            plugin = entry_point.load()
            manager.register(plugin, name=entry_point.name)
            try:
                check_hooks(manager)
            except PluginError:
                manager.unregister(name=entry_point.name)
                raise
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
            raise PluginError(f"{where} returned {item!r}: expected qiochan.plugin.Backend")
        item.plugin = plugin_name
    return list(items)


def backends() -> dict[str, Backend]:
    """Return every backend by name, including unavailable ones and plugins that failed.

    The plugins' hooks are asked again whenever a plugin was registered or
    unregistered since the last call.

    Raises:
        PluginError: a plugin registered at runtime implements a hook qiochan does
            not declare, or a plugin's ``qiochan_backends()`` returned something
            that is not a list of :class:`Backend` (the message names the plugin
            and hook).
    """
    manager = plugin_manager()
    global _cache
    key = (id(manager), frozenset(map(id, manager.get_plugins())), len(_failures))
    if _cache is not None and _cache[0] == key:
        return dict(_cache[1])
    check_hooks(manager)
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


def resolve_address(address: Any) -> tuple[Backend, Any]:
    """Return the transport backend for ``address`` and the parsed address object.

    ``address`` is an address string or an object from :mod:`qiochan.address`
    (anything with a ``scheme`` attribute).  A string is parsed by the
    backend's ``parse`` if it has one, else by :func:`~qiochan.address.parse_address`
    for a built-in scheme; any other scheme gives a
    :class:`~qiochan.address.SchemeAddress` carrying the text.

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
        if scheme in SCHEMES:
            return backend, parse_address(address)
        return backend, SchemeAddress(scheme, address)
    object_scheme = getattr(address, "scheme", None)
    if not isinstance(object_scheme, str):
        raise TypeError(
            f"address must be a string or an address object, not {type(address).__name__}"
        )
    return find_backend(object_scheme), address
