"""Connected channel pairs over real sockets, shared by the test modules."""

from __future__ import annotations

import qiochan
from qiochan import QIOChannel
from qiochan_socket import QIOChannelSocket, QIONetListener


def connected_pair(address: str = "tcp:127.0.0.1:0") -> tuple[QIOChannel, QIOChannel]:
    """Return ``(client, server)`` connected through a fresh listener on ``address``.

    The client comes from :func:`qiochan.connect`, the server from the listener.
    """
    with QIONetListener() as listener:
        listener.open_sync(address)
        client = qiochan.connect(listener.address)
        server = listener.wait_client()
    return client, server


def socket_tcp_pair() -> tuple[QIOChannelSocket, QIOChannelSocket]:
    """Return ``(client, server)`` made with QIOChannelSocket's own listen/connect/accept."""
    listener = QIOChannelSocket()
    try:
        listener.listen_sync("tcp:127.0.0.1:0")
        client = QIOChannelSocket()
        client.connect_sync(listener.local_address)
        server = listener.accept()
    finally:
        listener.close()
    assert server is not None
    return client, server
