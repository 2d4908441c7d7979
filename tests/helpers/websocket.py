"""Our websocket channel, handshake done, with a scripted peer on the other end.

The peer is :class:`qiochan_websocket.testing.ProtocolPeer` (a ``websockets``
protocol object over a plain channel), so a test checks exactly what went on
the wire and sends exactly what it wants, malformed frames included.
"""

from __future__ import annotations

import threading
from typing import Any

from qiochan import QIOChannel
from qiochan_memory import memory_pipe
from qiochan_websocket import QIOChannelWebsock
from qiochan_websocket.testing import ProtocolPeer

__all__ = ["client_with_peer", "server_with_peer"]

Pair = tuple[QIOChannel, QIOChannel]


def server_with_peer(
    pair: Pair | None = None, **options: Any
) -> tuple[QIOChannelWebsock, ProtocolPeer]:
    """Return our server over ``pair[0]`` (``options`` for ``new_server``) and a client peer.

    ``pair`` defaults to a memory pipe.  Both handshakes are done.
    """
    ours, theirs = memory_pipe() if pair is None else pair
    server = QIOChannelWebsock.new_server(ours, **options)
    peer = ProtocolPeer.client(theirs)
    server.handshake()
    peer.receive(bool)
    return server, peer


def client_with_peer(
    pair: Pair | None = None, **options: Any
) -> tuple[QIOChannelWebsock, ProtocolPeer]:
    """Return our client over ``pair[0]`` (``options`` for ``new_client``) and a server peer.

    ``pair`` defaults to a memory pipe.  Both handshakes are done.
    """
    ours, theirs = memory_pipe() if pair is None else pair
    client = QIOChannelWebsock.new_client(ours, "localhost", **options)
    peer = ProtocolPeer.server(theirs)
    accepting = threading.Thread(target=peer.accept)
    accepting.start()
    client.handshake()
    accepting.join()
    return client, peer
