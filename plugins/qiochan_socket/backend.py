"""The ``socket`` backend's registry callables: ``tcp:``, ``unix:``, ``vsock:`` and ``fd:``.

``fd:N`` takes ownership of descriptor N: a socket becomes a
:class:`QIOChannelSocket`, anything else (a pipe, a file, a tty) is handed to
the ``file`` backend through the registry.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from typing import Any

from qiochan.address import Address, FdAddress
from qiochan.channel import QIOChannel
from qiochan.errors import ChannelError, from_oserror
from qiochan.registry import find_backend

from .channel import QIOChannelSocket
from .listener import QIONetListener

__all__ = ["aconnect", "connect", "listen", "open_fd", "open_socket"]

#: Backlog of listeners made by ``qiochan.listen()`` unless ``backlog=`` says otherwise.
DEFAULT_BACKLOG = 16


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError as exc:
        raise from_oserror(f"'fd:{fd}' is not an open file descriptor", exc) from exc


def open_fd(address: FdAddress, mode: str = "rw") -> QIOChannel:
    """Take over ``address.fd``: a socket channel for a socket, a file channel otherwise.

    Raises:
        ChannelError: the descriptor is not open (``EBADF``).
        PluginError: it is not a socket and the ``file`` backend is unavailable.
    """
    if _is_socket(address.fd):
        return QIOChannelSocket.new_fd(address.fd)
    opener = find_backend("file").require("open")
    channel: QIOChannel = opener(address, mode)
    return channel


def connect(address: Address, *, timeout: float | None = None) -> QIOChannel:
    """Connect to a ``tcp:``/``unix:``/``vsock:`` address, or adopt an ``fd:`` one.

    Raises:
        ChannelError: the connection failed (``ECONNREFUSED``, ``ETIMEDOUT``...).
    """
    if isinstance(address, FdAddress):
        return open_fd(address)
    with _closed_on_error(QIOChannelSocket()) as channel:
        channel.connect_sync(address, timeout=timeout)
    return channel


async def aconnect(address: Address, *, timeout: float | None = None) -> QIOChannel:
    """:func:`connect` on the running loop, without blocking it (no thread for a numeric address).

    Raises:
        ChannelError: the connection failed (``ECONNREFUSED``, ``ETIMEDOUT``...).
    """
    if isinstance(address, FdAddress):
        return open_fd(address)
    with _closed_on_error(QIOChannelSocket()) as channel:
        await channel.aconnect(address, timeout=timeout)
    return channel


@contextlib.contextmanager
def _closed_on_error(channel: QIOChannelSocket) -> Iterator[QIOChannelSocket]:
    """Close ``channel`` if the block raises (a failed or cancelled connect)."""
    try:
        yield channel
    except BaseException:
        channel.close()
        raise


def listen(address: Address, *, backlog: int = DEFAULT_BACKLOG) -> QIONetListener:
    """Listen on every address ``address`` resolves to; return the listener.

    An ``fd:`` address adopts an inherited listening socket.

    Raises:
        ChannelError: nothing could be bound (``EADDRINUSE``...).
    """
    if backlog < 0:
        raise ChannelError(f"backlog must be >= 0, got {backlog}", errno.EINVAL)
    listener = QIONetListener()
    try:
        listener.open_sync(address, backlog)
    except BaseException:
        listener.close()
        raise
    return listener


def open_socket(address: Address, mode: str, **options: Any) -> QIOChannel:
    """``open_channel()`` for socket schemes: adopt an ``fd:``, connect anything else."""
    if isinstance(address, FdAddress):
        if options:
            raise TypeError(f"fd: takes no options, got {', '.join(options)}")
        return open_fd(address, mode)
    return connect(address, **options)
