"""The socket backend: :class:`QIOChannelSocket` and :class:`QIONetListener`.

Registered through the ``qiochan.plugins`` entry point like any third-party
plugin.  Schemes: ``tcp:``, ``unix:``, ``vsock:`` and ``fd:`` (an inherited
descriptor: sockets stay here, anything else goes to the ``file`` backend).
"""

from __future__ import annotations

from qiochan.channel import Feature
from qiochan.plugin import Backend, hookimpl

from .backend import aconnect, connect, listen, open_fd, open_socket
from .channel import MAX_FDS, PeerCred, QIOChannelSocket, socket_pair
from .listener import ClientFunc, QIONetListener
from .sockaddr import Endpoint, resolve, to_address

__all__ = [
    "MAX_FDS",
    "ClientFunc",
    "Endpoint",
    "PeerCred",
    "QIOChannelSocket",
    "QIONetListener",
    "aconnect",
    "connect",
    "listen",
    "open_fd",
    "qiochan_backends",
    "resolve",
    "socket_pair",
    "to_address",
]


@hookimpl
def qiochan_backends() -> list[Backend]:
    """Declare the socket backend."""
    return [
        Backend(
            name="socket",
            schemes=("tcp", "unix", "vsock", "fd"),
            kind="transport",
            features=frozenset(
                {
                    Feature.FD_PASS,
                    Feature.SHUTDOWN,
                    Feature.LISTEN,
                    Feature.WRITE_ZERO_COPY,
                    Feature.READ_MSG_PEEK,
                }
            ),
            connect=connect,
            aconnect=aconnect,
            listen=listen,
            open=open_socket,
            description="TCP, unix, vsock and inherited-fd sockets (fd passing, zero copy)",
        )
    ]
