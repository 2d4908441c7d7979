"""The opening handshake against raw HTTP on real sockets: what we accept, refuse and send.

Server side: a raw socket sends a request (valid or broken) to our server,
which must answer 101 or a short 4xx and raise ``WebsocketHandshakeError``,
never hang, never leak a descriptor.  Client side: a raw socket answers our
client's request with scripted responses.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.frames import Frame, Opcode
from websockets.utils import accept_key

from qiochan import HandshakeError, WebsocketError, WebsocketHandshakeError
from qiochan_socket import QIOChannelSocket
from qiochan_websocket import QIOChannelWebsock

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample key
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
TIMEOUT = 10.0


def request(
    path: str = "/",
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
    drop: tuple[str, ...] = (),
    extra: tuple[tuple[str, str], ...] = (),
    **replace: str,
) -> bytes:
    """An upgrade request; ``drop`` removes headers, keyword arguments replace values."""
    headers = {
        "Host": "localhost:5700",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    for name, value in replace.items():
        headers[name.replace("_", "-")] = value
    lines = [f"{method} {path} {version}"]
    lines += [f"{name}: {value}" for name, value in headers.items() if name not in drop]
    lines += [f"{name}: {value}" for name, value in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Answer:
    """What our server answered: status line, headers, body, and what it raised."""

    def __init__(self, raw: bytes, error: WebsocketHandshakeError | None) -> None:
        head, _sep, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split()[1]) if lines[0] else 0
        self.headers = {}
        for line in lines[1:]:
            name, _colon, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.error = error


def _read_to_eof(sock: socket.socket) -> bytes:
    sock.settimeout(TIMEOUT)
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def serve(raw: bytes | None, *, close_after: bool = False, **options: object) -> Answer:
    """Send ``raw`` to a fresh server and run its handshake; return its answer."""
    ours, theirs = socket.socketpair()
    server = QIOChannelWebsock.new_server(
        QIOChannelSocket.from_socket(ours),
        **options,  # type: ignore[arg-type]
    )
    with server, theirs:
        if raw:
            theirs.sendall(raw)
        if close_after:
            theirs.shutdown(socket.SHUT_WR)
        error = None
        try:
            server.handshake()
        except WebsocketHandshakeError as exc:
            error = exc
        if error is None:
            theirs.settimeout(TIMEOUT)
            received = b""
            while b"\r\n\r\n" not in received:
                received += theirs.recv(4096)
            return Answer(received, None)
        return Answer(_read_to_eof(theirs), error)


@pytest.fixture(autouse=True)
def _no_leak(no_fd_leak: None) -> Iterator[None]:
    yield


# -- server: accepted ---------------------------------------------------------------------


def test_valid_request_gets_101_with_the_accept_key() -> None:
    answer = serve(request())
    assert answer.error is None
    assert answer.status_line == "HTTP/1.1 101 Switching Protocols"
    assert answer.headers["sec-websocket-accept"] == ACCEPT
    assert answer.headers["upgrade"].lower() == "websocket"
    assert "sec-websocket-protocol" not in answer.headers


def test_offered_binary_subprotocol_is_chosen() -> None:
    answer = serve(request(Sec_WebSocket_Protocol="chat, binary"))
    assert answer.status == 101
    assert answer.headers["sec-websocket-protocol"] == "binary"


def test_path_with_query_and_allowed_origin_are_accepted() -> None:
    answer = serve(
        request("/vnc?token=1", Origin="https://console.example"),
        path="/vnc",
        origins=["https://console.example", re.compile(r"https://.*\.internal")],
    )
    assert answer.status == 101


# -- server: refused ------------------------------------------------------------------------


REFUSED = [
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", {}, 400, "Connection", id="plain-http-get"
    ),
    pytest.param(
        request(Sec_WebSocket_Version="8"), {}, 400, "Sec-WebSocket-Version", id="version"
    ),
    pytest.param(request(drop=("Sec-WebSocket-Key",)), {}, 400, "Sec-WebSocket-Key", id="no-key"),
    pytest.param(
        request(Sec_WebSocket_Key="c2hvcnQ="), {}, 400, "Sec-WebSocket-Key", id="short-key"
    ),
    pytest.param(request(version="HTTP/1.0"), {}, 400, "HTTP/1.1 is required", id="http-1.0"),
    pytest.param(request(method="POST"), {}, 400, "POST", id="post"),
    pytest.param(request(drop=("Host",)), {}, 400, "Host", id="no-host"),
    pytest.param(request(drop=("Upgrade",)), {}, 400, "Upgrade", id="no-upgrade"),
    pytest.param(request("/elsewhere"), {}, 404, "/elsewhere", id="wrong-path"),
    pytest.param(request(Sec_WebSocket_Protocol="chat"), {}, 400, "binary", id="no-binary"),
    pytest.param(
        request(Origin="https://evil.example"),
        {"origins": ["https://console.example"]},
        403,
        "Origin",
        id="refused-origin",
    ),
    pytest.param(
        request(),
        {"origins": ["https://console.example"]},
        403,
        "Origin",
        id="missing-origin",
    ),
    pytest.param(
        request(extra=(("Cookie", "x" * 10_000),)), {}, 431, "bytes", id="huge-header-line"
    ),
    pytest.param(
        request(extra=tuple((f"X-Filler-{i}", "y" * 200) for i in range(100))),
        {},
        431,
        "exceeds 16384 bytes",
        id="request-over-the-bound",
    ),
    pytest.param(
        request(extra=tuple((f"X-H{i}", "z") for i in range(200))),
        {"max_request": 1 << 20},
        431,
        "headers",
        id="too-many-headers",
    ),
    pytest.param(b"\x16\x03\x01\x02\x00garbage\r\n\r\n", {}, 400, "invalid HTTP", id="garbage"),
    pytest.param(request().replace(b"\r\n", b"\n"), {}, 400, "line without CRLF", id="bare-lf"),
]


@pytest.mark.parametrize(("raw", "options", "status", "why"), REFUSED)
def test_bad_request_is_refused_with_a_short_answer(
    raw: bytes, options: dict[str, Any], status: int, why: str
) -> None:
    answer = serve(raw, **options)
    assert answer.status == status, answer.status_line
    assert answer.error is not None
    assert isinstance(answer.error, HandshakeError) and isinstance(answer.error, WebsocketError)
    assert str(status) in str(answer.error) and why in str(answer.error)
    assert len(answer.body) < 300, "a refusal carries a short body"
    assert answer.headers.get("connection") == "close"
    if "Sec-WebSocket-Version" in why:
        assert answer.headers["sec-websocket-version"] == "13"  # RFC 6455 4.4


def test_bare_lf_request_is_logged_as_malformed(caplog: pytest.LogCaptureFixture) -> None:
    """The log says what happened: a malformed request, not a client that left."""
    with caplog.at_level(logging.DEBUG, logger="qiochan"):
        answer = serve(request().replace(b"\r\n", b"\n"))
    assert answer.status == 400
    text = caplog.text
    assert "line without CRLF" in text
    assert "closed the connection" not in text


def test_request_bound_is_exact() -> None:
    raw = request()
    assert serve(raw, max_request=len(raw)).status == 101
    assert serve(raw, max_request=len(raw) - 1).status == 431


def test_slow_request_is_refused_with_408() -> None:
    answer = serve(request()[:40], timeout=0.2)
    assert answer.status == 408
    assert answer.error is not None and answer.error.errno == errno.ETIMEDOUT


def test_client_leaving_mid_request_is_an_error() -> None:
    answer = serve(request()[:40], close_after=True)
    assert answer.status == 0  # nobody to answer
    assert answer.error is not None and "closed" in str(answer.error)


def test_failed_handshake_stays_failed() -> None:
    ours, theirs = socket.socketpair()
    server = QIOChannelWebsock.new_server(QIOChannelSocket.from_socket(ours), path="/x")
    with server, theirs:
        theirs.sendall(request("/y"))
        with pytest.raises(WebsocketHandshakeError, match="404"):
            server.handshake()
        with pytest.raises(WebsocketHandshakeError, match="404"):
            server.handshake()
        with pytest.raises(WebsocketHandshakeError, match="404"):
            server.write(b"x")


# -- client side -------------------------------------------------------------------------


def _client(**options: object) -> tuple[QIOChannelWebsock, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.settimeout(TIMEOUT)
    client = QIOChannelWebsock.new_client(
        QIOChannelSocket.from_socket(ours),
        "example.com:8080",
        "/vnc?x=1",
        **options,  # type: ignore[arg-type]
    )
    return client, theirs


def _read_request(sock: socket.socket) -> dict[str, str]:
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(4096)
    lines = received.decode().split("\r\n")
    headers = {"request-line": lines[0]}
    for line in lines[1:]:
        if line:
            name, _colon, value = line.partition(":")
            headers[name.lower()] = value.strip()
    return headers


def test_client_request_carries_host_path_origin_and_binary() -> None:
    client, theirs = _client(origin="https://console.example")
    seen: dict[str, str] = {}

    def answer() -> None:
        seen.update(_read_request(theirs))
        theirs.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(seen["sec-websocket-key"]).encode() + b"\r\n"
            b"Sec-WebSocket-Protocol: binary\r\n\r\n"
            + Frame(Opcode.BINARY, b"RFB 003.008\n").serialize(mask=False)
        )

    with client, theirs:
        server = threading.Thread(target=answer)
        server.start()
        client.handshake()
        server.join()
        assert seen["request-line"] == "GET /vnc?x=1 HTTP/1.1"
        assert seen["host"] == "example.com:8080"
        assert seen["origin"] == "https://console.example"
        assert seen["sec-websocket-protocol"] == "binary"
        assert seen["sec-websocket-version"] == "13"
        assert client.subprotocol == "binary"
        buf = bytearray(12)
        client.read_all(buf)  # a frame sent right behind the 101 is not lost
        assert buf == b"RFB 003.008\n"


BAD_ANSWERS = [
    pytest.param(
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nno such ws",
        "server answered HTTP/1.1 404 Not Found: no such ws",
        id="404",
    ),
    pytest.param(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: d3Jvbmc=\r\n\r\n",
        "Sec-WebSocket-Accept",
        id="bad-accept-key",
    ),
    pytest.param(
        b"HTTP/1.1 400 Bad Request\r\nServer: QEMU VNC\r\nConnection: close\r\n",
        "server answered HTTP/1.1 400 Bad Request and closed the connection",
        id="cut-short-like-qemu",
    ),
    pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "invalid HTTP response", id="garbage"),
    pytest.param(b"", "closed the connection before answering", id="closed"),
]


@pytest.mark.parametrize(("response", "why"), BAD_ANSWERS)
def test_client_refuses_a_bad_answer(response: bytes, why: str) -> None:
    client, theirs = _client()
    with client, theirs:
        theirs.sendall(response)
        theirs.shutdown(socket.SHUT_WR)
        with pytest.raises(WebsocketHandshakeError) as info:
            client.handshake()
        assert why in str(info.value)


def test_client_refuses_a_subprotocol_it_did_not_offer() -> None:
    client, theirs = _client()

    def answer() -> None:
        key = _read_request(theirs)["sec-websocket-key"]
        theirs.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n"
            b"Sec-WebSocket-Protocol: chat\r\n\r\n"
        )

    with client, theirs:
        server = threading.Thread(target=answer)
        server.start()
        with pytest.raises(WebsocketHandshakeError, match="subprotocol"):
            client.handshake()
        server.join()


def test_client_gives_up_on_a_silent_server() -> None:
    client, theirs = _client(timeout=0.2)
    with client, theirs:
        with pytest.raises(WebsocketHandshakeError, match="did not complete") as info:
            client.handshake()
        assert info.value.errno == errno.ETIMEDOUT


# -- bad input after the handshake, on a real socket ------------------------------------------


def _masked(opcode: Opcode, payload: bytes) -> bytes:
    return Frame(opcode, payload).serialize(mask=True)


AFTER_HANDSHAKE = [
    pytest.param(b"\xde\xad\xbe\xef" * 8, 1002, "protocol error", id="garbage"),
    pytest.param(_masked(Opcode.TEXT, b"hello"), 1003, "text frame", id="text-frame"),
    pytest.param(
        b"\x82\xff" + (1 << 40).to_bytes(8, "big") + b"mask", 1009, "too big", id="oversized-frame"
    ),
    pytest.param(b"\x82\x02" + b"ab", 1002, "protocol error", id="unmasked-client-frame"),
]


@pytest.mark.parametrize(("raw", "code", "why"), AFTER_HANDSHAKE)
def test_bad_frames_after_the_handshake_fail_the_session(raw: bytes, code: int, why: str) -> None:
    ours, theirs = socket.socketpair()
    server = QIOChannelWebsock.new_server(QIOChannelSocket.from_socket(ours), max_size=1 << 20)
    with server, theirs:
        theirs.sendall(request())
        server.handshake()
        theirs.settimeout(TIMEOUT)
        head = b""
        while b"\r\n\r\n" not in head:
            head += theirs.recv(4096)
        assert head.startswith(b"HTTP/1.1 101 ")
        theirs.sendall(_masked(Opcode.BINARY, b"fine") + raw)
        buf = bytearray(4)
        server.read_all(buf)  # what came before the bad input is delivered
        assert buf == b"fine"
        with pytest.raises(WebsocketError, match=why):
            server.read(bytearray(16))
        # the peer gets a close frame with the code, then the server half-closes
        answer = head.partition(b"\r\n\r\n")[2] + _read_to_eof(theirs)
        assert answer[0] == 0x88 and int.from_bytes(answer[2:4], "big") == code
