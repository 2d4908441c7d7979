"""Interoperability with peers not written here: the ``websockets`` sync client and server.

Its client talks to our ``ws://`` server and its server accepts our client,
16 MiB each way; browser-style Origin rules, subprotocols, pings, text
frames, message limits and ``wss://`` are checked from both sides.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import Server, ServerConnection
from websockets.sync.server import serve as ws_serve

import qiochan
from qiochan import QIOChannel, WebsocketError, WebsocketHandshakeError
from qiochan_websocket import QIOChannelWebsock

MIB = 1 << 20
TOTAL = 16 * MIB
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(TOTAL)


@contextmanager
def our_server(
    handler: Callable[[QIOChannelWebsock], None], url: str = "ws://127.0.0.1:0/vnc", **kw: Any
) -> Iterator[Any]:
    """A qiochan ws:// listener whose first client runs ``handler`` in a thread."""
    errors: list[BaseException] = []
    with qiochan.listen(url, **kw) as listener:

        def run() -> None:
            try:
                channel = listener.accept()
                with channel:
                    handler(channel)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield listener.address
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "our server did not finish"
    if errors:
        raise errors[0]


@contextmanager
def their_server(handler: Callable[[ServerConnection], None], **kw: Any) -> Iterator[int]:
    """A websockets sync server on a free loopback port, shut down afterwards."""
    server: Server = ws_serve(handler, "127.0.0.1", 0, **kw)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.socket.getsockname()[1]
    finally:
        server.shutdown()
        thread.join(TIMEOUT)


def _their_client(port: int, path: str = "/vnc", **kw: Any) -> ClientConnection:
    client: ClientConnection = ws_connect(
        f"ws://127.0.0.1:{port}{path}", open_timeout=TIMEOUT, **kw
    )
    return client


def _binary(message: str | bytes) -> bytes:
    assert isinstance(message, bytes), f"expected a binary message, got {message!r}"
    return message


# -- their client, our server ----------------------------------------------------------------


def test_their_client_exchanges_16_mib_with_our_server(payload: bytes) -> None:
    seen: dict[str, Any] = {}

    def echo(channel: QIOChannelWebsock) -> None:
        received = bytearray(TOTAL)
        channel.read_all(received)
        seen["digest"] = hashlib.sha256(received).hexdigest()
        channel.write_all(received)
        seen["eof"] = channel.read(bytearray(1))
        seen["close"] = channel.peer_close

    with our_server(echo) as address, _their_client(address.port, max_size=None) as client:
        for offset in range(0, TOTAL - 4 * MIB, MIB):
            client.send(payload[offset : offset + MIB])
        client.send(payload[TOTAL - 4 * MIB :])  # one 4 MiB message, one frame
        back = bytearray()
        while len(back) < TOTAL:
            back += _binary(client.recv(timeout=TIMEOUT))
        assert client.subprotocol is None  # it offered none
    assert seen["digest"] == hashlib.sha256(payload).hexdigest()
    assert back == payload
    assert seen["eof"] == 0 and seen["close"].code == 1000


def test_their_client_offering_binary_gets_binary() -> None:
    def tell(channel: QIOChannelWebsock) -> None:
        channel.write_all(str(channel.subprotocol).encode())

    offered: Any = ["chat", "binary"]
    with our_server(tell) as address, _their_client(address.port, subprotocols=offered) as client:
        assert client.subprotocol == "binary"
        assert client.recv(timeout=TIMEOUT) == b"binary"


@pytest.mark.parametrize(
    ("path", "options", "status"),
    [
        ("/elsewhere", {}, 404),
        ("/vnc", {"subprotocols": ["chat"]}, 400),
    ],
)
def test_our_server_refuses_their_client(path: str, options: dict[str, Any], status: int) -> None:
    with qiochan.listen("ws://127.0.0.1:0/vnc") as listener:
        failures: list[BaseException] = []

        def accept() -> None:
            try:
                listener.accept()
            except WebsocketHandshakeError as exc:
                failures.append(exc)

        thread = threading.Thread(target=accept)
        thread.start()
        with pytest.raises(InvalidStatus) as info:
            _their_client(listener.address.port, path, **options)
        thread.join(TIMEOUT)
        assert info.value.response.status_code == status
        assert failures and str(status) in str(failures[0])


def test_their_ping_is_answered_while_we_read() -> None:
    def read(channel: QIOChannelWebsock) -> None:
        buf = bytearray(4)
        channel.read_all(buf)
        assert buf == b"done"

    with our_server(read) as address, _their_client(address.port) as client:
        pong = client.ping(b"hello?")
        client.send(b"done")
        assert pong.wait(TIMEOUT), "no pong"


@pytest.mark.parametrize(
    ("layers", "message", "code", "reason"),
    [
        ((), "this is text", 1003, "text frame"),
        (("websocket:max-size=1000",), b"x" * 1001, 1009, "too big"),
    ],
    ids=["text-1003", "oversized-1009"],
)
def test_their_bad_message_is_refused(
    layers: tuple[str, ...], message: str | bytes, code: int, reason: str
) -> None:
    errors: list[BaseException] = []

    def read(channel: QIOChannelWebsock) -> None:
        try:
            channel.read(bytearray(8))
        except WebsocketError as exc:
            errors.append(exc)

    with our_server(read, layers=layers) as address, _their_client(address.port) as client:
        client.send(message)
        with pytest.raises(ConnectionClosedError) as info:
            client.recv(timeout=TIMEOUT)
    assert info.value.rcvd is not None and info.value.rcvd.code == code
    assert errors and reason in str(errors[0])


# -- their server, our client ------------------------------------------------------------------


def test_their_server_exchanges_16_mib_with_our_client(payload: bytes) -> None:
    closed: list[ConnectionClosed] = []

    def echo(connection: ServerConnection) -> None:
        received = bytearray()
        while len(received) < TOTAL:
            received += _binary(connection.recv())
        connection.send(bytes(received))
        try:
            connection.recv()
        except ConnectionClosed as exc:
            closed.append(exc)

    with their_server(echo, max_size=None) as port:
        client = qiochan.connect(f"ws://127.0.0.1:{port}/any/path")
        with client:
            client.write_all(payload)
            back = bytearray(TOTAL)
            client.read_all(back)
        assert back == payload
    assert closed and closed[0].rcvd is not None and closed[0].rcvd.code == 1000


def test_our_client_passes_a_browser_origin_rule() -> None:
    """A server admitting only a browser page's Origin accepts our client when it sends one."""

    def greet(connection: ServerConnection) -> None:
        connection.send(f"origin {connection.request.headers['Origin']}".encode())  # type: ignore[union-attr]

    origins = ["https://console.example"]
    with their_server(greet, origins=origins) as port:
        url = f"ws://127.0.0.1:{port}/"
        with qiochan.connect(url, layers=["websocket:origin=https://console.example"]) as client:
            buf = bytearray(len("origin https://console.example"))
            client.read_all(buf)
            assert buf == b"origin https://console.example"
        with pytest.raises(WebsocketHandshakeError, match=r"HTTP/1\.1 403 Forbidden"):
            qiochan.connect(url)


def test_their_server_rejecting_our_path_reports_the_status_line() -> None:
    def reject(connection: ServerConnection, request: Any) -> Any:
        return connection.respond(404, "no websocket here\n")

    with (
        their_server(lambda connection: None, process_request=reject) as port,
        pytest.raises(WebsocketHandshakeError, match=r"HTTP/1\.1 404 Not Found: no websocket"),
    ):
        qiochan.connect(f"ws://127.0.0.1:{port}/missing")


# -- wss:// ----------------------------------------------------------------------------------


def test_their_wss_client_reaches_our_wss_server(tls_creds_dir: Path) -> None:
    data = os.urandom(MIB)

    def echo(channel: QIOChannel) -> None:
        buf = bytearray(len(data))
        channel.read_all(buf)
        channel.write_all(buf)

    context = ssl.create_default_context(cafile=str(tls_creds_dir / "ca-cert.pem"))
    # a browser-like client has no certificate
    layers = [f"tls:creds={tls_creds_dir},verify-peer=off"]
    with our_server(echo, "wss://127.0.0.1:0/secure", layers=layers) as address:
        url = f"wss://localhost:{address.port}/secure"
        with ws_connect(url, ssl=context, open_timeout=TIMEOUT, max_size=None) as client:
            client.send(data)
            back = bytearray()
            while len(back) < len(data):
                back += _binary(client.recv(timeout=TIMEOUT))  # one message per frame we send
            assert back == data


def test_our_wss_client_reaches_their_wss_server(tls_creds_dir: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_creds_dir / "server-cert.pem", tls_creds_dir / "server-key.pem")

    def echo(connection: ServerConnection) -> None:
        connection.send(connection.recv())

    with their_server(echo, ssl=context) as port:
        url = f"wss://localhost:{port}/"
        with qiochan.connect(url, layers=[f"tls:creds={tls_creds_dir}"]) as client:
            client.write_all(b"over tls")
            buf = bytearray(8)
            client.read_all(buf)
            assert buf == b"over tls"
