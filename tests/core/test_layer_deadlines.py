"""Handshake deadlines against real stalled TCP clients, for the TLS and websocket layers.

A stalled client connects and sends nothing, or sends the first bytes of a
TLS record (``16 03 01``) and stops.  A layered ``listen()``'s ``accept()``
must hand out the next good client while such clients are still
handshaking, and fail them with ``ETIMEDOUT`` once their
``handshake-timeout`` passes; a client's ``connect(timeout=)`` bounds its
handshakes against a server that never answers.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

import qiochan
from qiochan.errors import HandshakeError
from qiochan.layer import apply_layers
from qiochan_memory import memory_pipe

pytest.importorskip("websockets")

#: Seconds a stalled client may hold its handshake in the tests that must not see it end.
LONG = 50.0
TLS_HELLO_START = b"\x16\x03\x01"

LayerSpecs = Callable[[str], list[str]]


@pytest.fixture(params=["tls", "websocket", "tls+websocket"])
def layers(request: pytest.FixtureRequest, tls_creds_dir: Path) -> LayerSpecs:
    """Layer specs for a role ("server" or "client"), with extra options appended to each."""

    def specs(extra: str) -> list[str]:
        tls = f"tls:creds={tls_creds_dir}{extra}"
        websocket = f"websocket:path=/{extra}"
        return {"tls": [tls], "websocket": [websocket], "tls+websocket": [tls, websocket]}[
            request.param
        ]

    return specs


def client_specs(layers: LayerSpecs) -> list[str]:
    return [spec.replace("tls:", "tls:hostname=localhost,") for spec in layers("")]


@contextmanager
def stalled_clients(port: int, count: int, first_bytes: bytes) -> Iterator[list[socket.socket]]:
    """Connect ``count`` raw TCP clients that send ``first_bytes`` (maybe none) and stall."""
    with ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            if first_bytes:
                sock.sendall(first_bytes)
            socks.append(sock)
        yield socks


def connect_in_thread(address: str, specs: list[str]) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(qiochan.connect(address, layers=specs, timeout=LONG))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("first_bytes", [b"", TLS_HELLO_START], ids=["silent", "tls-start"])
def test_accept_is_not_held_by_stalled_clients(
    layers: LayerSpecs, first_bytes: bytes, no_fd_leak: None
) -> None:
    with qiochan.listen("tcp:127.0.0.1:0", layers=layers(f",handshake-timeout={LONG}")) as listener:
        port = listener.address.port
        with stalled_clients(port, 3, first_bytes):
            thread, outcome = connect_in_thread(f"tcp:127.0.0.1:{port}", client_specs(layers))
            # were accept() held by a stalled client, it would fail after LONG s instead
            with listener.accept() as served:
                thread.join(LONG)
                client = outcome[0]
                assert isinstance(client, qiochan.QIOChannel), client
                with client:
                    client.write_all(b"ping")
                    buf = bytearray(4)
                    served.read_all(buf)
                    assert buf == b"ping"
                    served.write_all(b"pong")
                    client.read_all(buf)
                    assert buf == b"pong"


def test_stalled_client_times_out_with_etimedout(layers: LayerSpecs, no_fd_leak: None) -> None:
    listener = qiochan.listen("tcp:127.0.0.1:0", layers=layers(",handshake-timeout=0.3"))
    port = listener.address.port
    with listener, stalled_clients(port, 1, TLS_HELLO_START), pytest.raises(HandshakeError) as info:
        listener.accept()
    assert info.value.errno == errno.ETIMEDOUT


def test_websocket_server_answers_408_when_its_deadline_passes(no_fd_leak: None) -> None:
    listener = qiochan.listen("tcp:127.0.0.1:0", layers=["websocket:path=/,handshake-timeout=0.3"])
    with listener, stalled_clients(listener.address.port, 1, b"GET / HTTP/1.1\r\n") as (sock,):
        with pytest.raises(HandshakeError, match="did not complete"):
            listener.accept()
        sock.settimeout(LONG)
        assert sock.recv(64).startswith(b"HTTP/1.1 408")


def test_connect_timeout_bounds_the_handshakes(layers: LayerSpecs, no_fd_leak: None) -> None:
    """A server that accepts TCP and never answers: connect(timeout=) still returns."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with pytest.raises(HandshakeError) as info:
            qiochan.connect(f"tcp:127.0.0.1:{port}", layers=client_specs(layers), timeout=0.3)
        assert info.value.errno == errno.ETIMEDOUT
        server.accept()[0].close()


@pytest.mark.parametrize("value", ["soon", "-1"])
def test_handshake_timeout_option_is_checked(
    layers: LayerSpecs, value: str, no_fd_leak: None
) -> None:
    left, right = memory_pipe()
    with right, pytest.raises(ValueError, match="handshake-timeout"):
        apply_layers(left, layers(f",handshake-timeout={value}"), "server")
    assert left.closed
