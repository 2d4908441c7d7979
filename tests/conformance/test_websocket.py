"""The conformance kit over websocket channels.

Websocket over a memory pipe, TCP, a unix socket pair, a command pipe (socat
relaying to a unix socket), TLS (the ``wss://`` stack: websocket over TLS over
TCP), and TLS carried inside a websocket.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pairs import connected_pair

from qiochan.channel import QIOChannel
from qiochan_command import QIOChannelCommand
from qiochan_memory import memory_pipe
from qiochan_socket import QIONetListener, socket_pair
from qiochan_websocket import QIOChannelWebsock
from qiochan_websocket.testing import handshake_pair

Pair = tuple[QIOChannel, QIOChannel]
Masters = Callable[[], Pair]
Runner = Callable[..., None]


def websocket_factory(masters: Masters) -> Callable[[], Pair]:
    """Pairs ``(client, server)`` of websocket channels over fresh ``(client, server)`` masters."""

    def make() -> Pair:
        client_master, server_master = masters()
        server = QIOChannelWebsock.new_server(server_master)
        client = QIOChannelWebsock.new_client(client_master, "localhost")
        try:
            handshake_pair(server, client)
        except BaseException:
            server.close()
            client.close()
            raise
        return client, server

    return make


@pytest.fixture
def relay_masters(tmp_path: Path) -> Iterator[Masters]:
    """A command channel whose child (socat) relays bytes to a unix socket we accept on.

    A websocket never half-closes its transport to end a direction (a close
    frame does that), so socat may end as soon as either side reaches EOF
    (``-t 0``): no close then waits for the child.
    """
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat is not installed")
    path = tmp_path / "relay.sock"
    with QIONetListener() as listener:
        listener.open_sync(f"unix:{path}")

        def make() -> Pair:
            command = QIOChannelCommand.new_spawn([socat, "-t", "0", "-", f"UNIX-CONNECT:{path}"])
            try:
                server = listener.wait_client()
            except BaseException:
                command.close()
                raise
            return command, server

        yield make


@pytest.fixture(scope="module")
def tls_creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    certs = pytest.importorskip("qiochan_tls.certs")
    directory = tmp_path_factory.mktemp("tls-creds")
    certs.create_creds_dir(directory)
    return directory


def _tls_wrap(masters: Masters, creds: Path) -> Masters:
    """TLS over ``masters``, handshakes done, through the registry's ``tls`` layer."""
    testing = pytest.importorskip("qiochan_tls.testing")
    tls = pytest.importorskip("qiochan_tls")

    def make() -> Pair:
        client_master, server_master = masters()
        server = tls.QIOChannelTLS.new_server(server_master, tls.TLSCredsX509(creds, "server"))
        client = tls.QIOChannelTLS.new_client(
            client_master, tls.TLSCredsX509(creds, "client"), "localhost"
        )
        try:
            testing.handshake_pair(server, client)
        except BaseException:
            server.close()
            client.close()
            raise
        return client, server

    return make


def test_websocket_over_memory_pipe(qiochan_conformance: Runner, no_fd_leak: None) -> None:
    qiochan_conformance(websocket_factory(memory_pipe))


def test_websocket_over_tcp(qiochan_conformance: Runner, no_fd_leak: None) -> None:
    qiochan_conformance(websocket_factory(connected_pair))


def test_websocket_over_unix_socketpair(qiochan_conformance: Runner, no_fd_leak: None) -> None:
    qiochan_conformance(websocket_factory(socket_pair))


def test_websocket_over_command_pipe(
    qiochan_conformance: Runner, relay_masters: Masters, no_fd_leak: None
) -> None:
    qiochan_conformance(websocket_factory(relay_masters))


def test_websocket_over_tls(qiochan_conformance: Runner, tls_creds: Path, no_fd_leak: None) -> None:
    """The wss:// stack: websocket over TLS over TCP."""
    qiochan_conformance(websocket_factory(_tls_wrap(connected_pair, tls_creds)))


def test_tls_inside_websocket(
    qiochan_conformance: Runner, tls_creds: Path, no_fd_leak: None
) -> None:
    """TLS carried in websocket frames (as VeNCrypt over a VNC websocket)."""
    qiochan_conformance(_tls_wrap(websocket_factory(socket_pair), tls_creds))
