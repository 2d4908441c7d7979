"""Connected channel pairs over real sockets, shared by the test modules."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import qiochan
from qiochan import QIOChannel
from qiochan_command import QIOChannelCommand
from qiochan_socket import QIOChannelSocket, QIONetListener


def has_ipv6_loopback() -> bool:
    """Return True when this machine can bind TCP on ``::1``."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


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


Pair = tuple[QIOChannel, QIOChannel]
PairFactory = Callable[[], Pair]


@contextmanager
def command_relay_pairs(path: Path, argv: Sequence[str]) -> Iterator[PairFactory]:
    """Yield a factory of ``(command channel, accepted socket)`` pairs.

    Each pair spawns ``argv``, a child that relays its stdin/stdout to the unix
    socket ``path``, and accepts its connection on a listener bound there.
    """
    with QIONetListener() as listener:
        listener.open_sync(f"unix:{path}")

        def make() -> Pair:
            command = QIOChannelCommand.new_spawn(list(argv))
            try:
                server = listener.wait_client()
            except BaseException:
                command.close()
                raise
            return command, server

        yield make


Layer = TypeVar("Layer", bound=QIOChannel)


def layered(
    masters: PairFactory,
    server: Callable[[QIOChannel], Layer],
    client: Callable[[QIOChannel], Layer],
    handshake: Callable[[Layer, Layer], object],
) -> PairFactory:
    """Return a factory of ``(client, server)`` layer channels over fresh ``masters`` pairs.

    ``server``/``client`` wrap one master each; ``handshake(server, client)``
    completes both handshakes; on failure both layer channels are closed.
    """

    def make() -> Pair:
        client_master, server_master = masters()
        server_channel, client_channel = server(server_master), client(client_master)
        try:
            handshake(server_channel, client_channel)
        except BaseException:
            server_channel.close()
            client_channel.close()
            raise
        return client_channel, server_channel

    return make


def websocket_pairs(masters: PairFactory) -> PairFactory:
    """Websocket ``(client, server)`` pairs over ``masters`` (client host ``localhost``)."""
    from qiochan_websocket import QIOChannelWebsock
    from qiochan_websocket.testing import handshake_pair

    return layered(
        masters,
        QIOChannelWebsock.new_server,
        lambda master: QIOChannelWebsock.new_client(master, "localhost"),
        handshake_pair,
    )


def tls_pairs(masters: PairFactory, creds: Path) -> PairFactory:
    """TLS ``(client, server)`` pairs over ``masters`` with the credentials directory ``creds``."""
    from qiochan_tls import QIOChannelTLS, TLSCredsX509
    from qiochan_tls.testing import handshake_pair

    server_creds, client_creds = TLSCredsX509(creds, "server"), TLSCredsX509(creds, "client")
    return layered(
        masters,
        lambda master: QIOChannelTLS.new_server(master, server_creds),
        lambda master: QIOChannelTLS.new_client(master, client_creds, "localhost"),
        handshake_pair,
    )
