"""qiochan: QEMU's QIOChannel I/O framework and QEMUFile migration stream for Python.

The core (:class:`QIOChannel`, watches, tasks, errors) is imported eagerly and
is cheap; the registry, transports and :class:`QEMUFile` load on first use so
``import qiochan`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .channel import ERR_BLOCK, Feature, QIOChannel, ReadFlag, Shutdown, WriteFlag
from .errors import (
    AddressError,
    BrokenChannelError,
    ChannelClosedError,
    ChannelError,
    ConfigError,
    Error,
    HandshakeError,
    PluginError,
    TLSError,
    TLSHandshakeError,
    WebsocketError,
    WebsocketHandshakeError,
)
from .task import QIOTask
from .watch import Condition, Watch, WatchSource, source_remove

if TYPE_CHECKING:
    from .options import LayerSpec
    from .plugin import Backend
    from .qemufile import QEMUFile
    from .registry import backends, plugin_manager
    from .transport import Listener, connect, listen, open_channel

__version__ = "0.1.0"

__all__ = [
    "ERR_BLOCK",
    "AddressError",
    "Backend",
    "BrokenChannelError",
    "ChannelClosedError",
    "ChannelError",
    "Condition",
    "ConfigError",
    "Error",
    "Feature",
    "HandshakeError",
    "LayerSpec",
    "Listener",
    "PluginError",
    "QEMUFile",
    "QIOChannel",
    "QIOTask",
    "ReadFlag",
    "Shutdown",
    "TLSError",
    "TLSHandshakeError",
    "Watch",
    "WatchSource",
    "WebsocketError",
    "WebsocketHandshakeError",
    "WriteFlag",
    "backends",
    "connect",
    "listen",
    "open_channel",
    "plugin_manager",
    "source_remove",
]

_LAZY = {
    "QEMUFile": ".qemufile",
    "Backend": ".plugin",
    "backends": ".registry",
    "plugin_manager": ".registry",
    "connect": ".transport",
    "listen": ".transport",
    "open_channel": ".transport",
    "LayerSpec": ".options",
    "Listener": ".transport",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qiochan' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
