"""The websocket layer: :class:`QIOChannelWebsock` over any channel, and ``ws://``/``wss://``.

Registered through the ``qiochan.plugins`` entry point as two backends:

* ``websocket`` (a layer): ``"websocket:path=/p[,host=H][,origin=O]"`` wraps
  any channel (TCP, unix socket, command pipe, TLS...) in a websocket session,
  server or client side (see :mod:`qiochan_websocket.transport`);
* ``ws`` (a transport): ``ws://HOST:PORT/PATH`` is TCP + websocket and
  ``wss://HOST:PORT/PATH`` TCP + TLS + websocket.

Framing and the upgrade are the ``websockets`` package's Sans-I/O protocol
objects (``pip install 'qiochan[websocket]'``).  It is imported only when a
websocket channel is made, so this module always imports and, without it,
reports both backends as unavailable.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from qiochan.channel import QIOChannel
from qiochan.errors import PluginError
from qiochan.plugin import Backend, hookimpl

if TYPE_CHECKING:
    from .channel import (
        DEFAULT_FRAME_SIZE,
        DEFAULT_MAX_REQUEST,
        DEFAULT_MAX_SIZE,
        DEFAULT_TIMEOUT,
        QIOChannelWebsock,
    )
    from .transport import WebsocketListener

__all__ = [
    "DEFAULT_FRAME_SIZE",
    "DEFAULT_MAX_REQUEST",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_TIMEOUT",
    "MISSING",
    "QIOChannelWebsock",
    "WebsocketListener",
    "have_websockets",
    "qiochan_backends",
]

#: What to install when the ``websockets`` package is missing.
MISSING = "pip install 'qiochan[websocket]'"

_LAZY = {
    "QIOChannelWebsock": ".channel",
    "DEFAULT_FRAME_SIZE": ".channel",
    "DEFAULT_MAX_REQUEST": ".channel",
    "DEFAULT_MAX_SIZE": ".channel",
    "DEFAULT_TIMEOUT": ".channel",
    "WebsocketListener": ".transport",
}


def have_websockets() -> bool:
    """Return True when the ``websockets`` package can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("websockets") is not None
    except ValueError:  # a half-initialised module in sys.modules
        return False


def _module(name: str) -> Any:
    if not have_websockets():
        raise PluginError(f"qiochan_websocket needs the websockets package: {MISSING}")
    return importlib.import_module(name, __name__)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qiochan_websocket' has no attribute {name!r}")
    value = getattr(_module(module), name)
    globals()[name] = value
    return value


def _wrap(channel: QIOChannel, role: str, **options: Any) -> QIOChannel:
    wrapped: QIOChannel = _module(".transport").wrap(channel, role, **options)
    return wrapped


def _check(role: str, **options: Any) -> None:
    _module(".transport").check(role, **options)


def _connect(address: Any, **options: Any) -> QIOChannel:
    channel: QIOChannel = _module(".transport").connect_url(address, **options)
    return channel


def _listen(address: Any, **options: Any) -> Any:
    return _module(".transport").listen_url(address, **options)


@hookimpl
def qiochan_backends() -> list[Backend]:
    """Declare the ``websocket`` layer and the ``ws``/``wss`` transport."""
    available = have_websockets()
    missing = "" if available else MISSING
    return [
        Backend(
            name="websocket",
            schemes=("websocket",),
            kind="layer",
            features=frozenset(),
            available=available,
            missing=missing,
            wrap=_wrap,
            check=_check,
            description="websocket framing over any channel (websockets Sans-I/O)",
        ),
        Backend(
            name="ws",
            schemes=("ws", "wss"),
            kind="transport",
            features=frozenset(),
            available=available,
            missing=missing,
            connect=_connect,
            listen=_listen,
            own_layers=True,
            description="ws:// (TCP + websocket) and wss:// (TCP + TLS + websocket) URLs",
        ),
    ]
