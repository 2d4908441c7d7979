"""The registry side: the ``websocket`` layer, ``ws://``/``wss://`` addresses, availability."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import qiochan
from qiochan import AddressError, QIOChannel, TLSError, WebsocketHandshakeError
from qiochan.transport import apply_layers
from qiochan_command import QIOChannelCommand
from qiochan_socket import socket_pair
from qiochan_websocket import QIOChannelWebsock
from qiochan_websocket.system_ca import system_ca_bundle

TIMEOUT = 30.0


@contextmanager
def serving(
    listener: Any, handler: Callable[[QIOChannel], None], clients: int = 1
) -> Iterator[list[BaseException]]:
    """Accept ``clients`` clients in a thread, running ``handler`` on each; collect failures."""
    failures: list[BaseException] = []

    def run() -> None:
        for _ in range(clients):
            try:
                with listener.accept() as channel:
                    handler(channel)
            except Exception as exc:
                failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield failures
    finally:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the server thread did not finish"


def echo(channel: QIOChannel) -> None:
    buf = bytearray(5)
    channel.read_all(buf)
    channel.write_all(buf)


def echo_until_closed(channel: QIOChannel) -> None:
    echo(channel)
    assert channel.read(bytearray(1)) == 0


def roundtrip(channel: QIOChannel) -> bytes:
    with channel:
        channel.write_all(b"hello")
        buf = bytearray(5)
        channel.read_all(buf)
        return bytes(buf)


@pytest.fixture(autouse=True)
def _no_leak(no_fd_leak: None) -> Iterator[None]:
    yield


def test_backends_are_registered() -> None:
    found = qiochan.backends()
    layer, urls = found["websocket"], found["ws"]
    assert layer.kind == "layer" and layer.schemes == ("websocket",) and layer.available
    assert urls.kind == "transport" and urls.schemes == ("ws", "wss") and urls.own_layers


def test_ws_url_listen_and_connect() -> None:
    with qiochan.listen("ws://127.0.0.1:0/vnc") as listener:
        address = listener.address
        assert address.scheme == "ws" and address.port > 0 and address.path == "/vnc"
        assert str(address) == f"ws://127.0.0.1:{address.port}/vnc"
        with serving(listener, echo) as failures:
            client = qiochan.connect(str(address), timeout=TIMEOUT)
            assert isinstance(client, QIOChannelWebsock)
            assert roundtrip(client) == b"hello"
        assert not failures


def test_listener_survives_a_client_with_a_bad_handshake() -> None:
    with qiochan.listen("ws://127.0.0.1:0/right") as listener:
        port = listener.address.port
        with serving(listener, echo, clients=2) as failures:
            with pytest.raises(WebsocketHandshakeError, match="404"):
                qiochan.connect(f"ws://127.0.0.1:{port}/wrong")
            assert roundtrip(qiochan.connect(f"ws://127.0.0.1:{port}/right")) == b"hello"
        assert len(failures) == 1 and "404" in str(failures[0])


def test_websocket_layer_over_a_unix_socket(tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    def record(channel: QIOChannel) -> None:
        assert isinstance(channel, QIOChannelWebsock)
        seen.update(path=channel.request_path, origin=channel.origin)
        echo(channel)

    path = tmp_path / "ws.sock"
    server_layers = ["websocket:path=/u,origin=https://console.example"]
    client_layers = ["websocket:path=/u,host=vnc.example,origin=https://console.example"]
    with (
        qiochan.listen(f"unix:{path}", layers=server_layers) as listener,
        serving(listener, record) as failures,
    ):
        client = qiochan.connect(f"unix:{path}", layers=client_layers)
        assert roundtrip(client) == b"hello"
    assert not failures
    assert seen == {"path": "/u", "origin": "https://console.example"}


def test_websocket_layer_over_a_command_pipe(tmp_path: Path) -> None:
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat is not installed")
    path = tmp_path / "relay.sock"
    with qiochan.listen(f"unix:{path}", layers=["websocket"]) as listener:
        with serving(listener, echo_until_closed) as failures:
            command = QIOChannelCommand.new_spawn([socat, "-t", "0", "-", f"UNIX-CONNECT:{path}"])
            with apply_layers(command, ["websocket:host=relay"], "client") as client:
                assert isinstance(client, QIOChannelWebsock)
                client.write_all(b"hello")
                buf = bytearray(5)
                client.read_all(buf)
                assert buf == b"hello"
                # a full close handshake: our close frame, then the peer's, then EOF,
                # so socat is not left writing the answer into a closed pipe
                client.send_close()
                assert client.read(bytearray(1)) == 0
        assert not failures


def test_layer_limits_reach_the_channel() -> None:
    with qiochan.listen("ws://127.0.0.1:0/") as listener:

        def send_big(channel: QIOChannel) -> None:
            channel.write_all(b"x" * 200)
            channel.read(bytearray(1))  # until the client closes

        with serving(listener, send_big):
            url = str(listener.address)
            client = qiochan.connect(url, layers=["websocket:max-size=100,timeout=5"])
            with client, pytest.raises(qiochan.WebsocketError, match="too big"):
                client.read(bytearray(300))


@pytest.mark.parametrize(
    ("call", "layers", "message"),
    [
        ("listen", ["websocket:colour=blue"], "unknown option"),
        ("listen", ["websocket:host=x"], "client only"),
        ("connect", ["websocket:max-size=lots"], "not a number"),
        ("connect", ["websocket:timeout=-1"], "negative"),
        ("connect", ["websocket:frame-size=0"], "at least 1"),
        ("connect", ["websocket:path=/other"], "conflicts with the URL path"),
    ],
)
def test_bad_layer_options_are_refused_before_any_connection(
    call: str, layers: list[str], message: str
) -> None:
    # port 9 (discard) is never contacted: the options are checked first
    with pytest.raises(AddressError, match=message):
        getattr(qiochan, call)("ws://127.0.0.1:9/p", layers=layers)


def test_bad_layer_path_closes_the_channel_it_was_given() -> None:
    a, b = socket_pair()
    with b, pytest.raises(AddressError, match="must start with '/'"):
        apply_layers(a, ["websocket:path=relative"], "server")
    assert a.closed


def test_wss_server_needs_credentials() -> None:
    with pytest.raises(AddressError, match="tls:creds=DIR"):
        qiochan.listen("wss://127.0.0.1:0/")


# -- wss:// ------------------------------------------------------------------------------------


def test_wss_stack_puts_tls_under_the_websocket(tls_creds_dir: Path) -> None:
    layers = [f"tls:creds={tls_creds_dir}"]
    with qiochan.listen("wss://127.0.0.1:0/secure", layers=layers) as listener:
        assert listener.address.scheme == "wss"

        def check(channel: QIOChannel) -> None:
            assert isinstance(channel, QIOChannelWebsock)
            assert type(channel.master).__name__ == "QIOChannelTLS"
            echo(channel)

        with serving(listener, check) as failures:
            # the certificate names localhost: the URL host is the TLS hostname
            url = f"wss://localhost:{listener.address.port}/secure"
            client = qiochan.connect(url, layers=layers)
            assert isinstance(client, QIOChannelWebsock)
            assert type(client.master).__name__ == "QIOChannelTLS"
            assert roundtrip(client) == b"hello"
        assert not failures


def test_tls_layer_on_ws_runs_inside_the_websocket(tls_creds_dir: Path) -> None:
    layers = [f"tls:creds={tls_creds_dir}"]
    with qiochan.listen("ws://127.0.0.1:0/", layers=layers) as listener:
        with serving(listener, echo) as failures:
            url = f"ws://127.0.0.1:{listener.address.port}/"
            client = qiochan.connect(url, layers=[f"tls:creds={tls_creds_dir},hostname=localhost"])
            assert type(client).__name__ == "QIOChannelTLS"
            assert isinstance(getattr(client, "master", None), QIOChannelWebsock)
            assert roundtrip(client) == b"hello"
        assert not failures


# a root of the system bundle has a serial number cryptography warns about
@pytest.mark.filterwarnings("ignore:Parsed a serial number")
def test_wss_client_without_tls_layer_uses_the_system_store(
    tls_creds_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layers = [f"tls:creds={tls_creds_dir},verify-peer=off"]
    with qiochan.listen("wss://127.0.0.1:0/", layers=layers) as listener:
        url = f"wss://localhost:{listener.address.port}/"
        with serving(listener, echo, clients=2) as failures:
            # our test CA is not one the system trusts
            with pytest.raises(TLSError, match="certificate verify failed"):
                qiochan.connect(url)
            # OpenSSL's SSL_CERT_FILE names the system store: make it our CA
            monkeypatch.setenv("SSL_CERT_FILE", str(tls_creds_dir / "ca-cert.pem"))
            assert system_ca_bundle() == tls_creds_dir / "ca-cert.pem"
            assert roundtrip(qiochan.connect(url)) == b"hello"
        assert len(failures) == 1


# -- availability ------------------------------------------------------------------------


def test_plugin_imports_and_reports_unavailable_without_websockets() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["websockets"] = None  # as if it were not installed
        import qiochan_websocket
        from qiochan import PluginError
        backends = {b.name: b for b in qiochan_websocket.qiochan_backends()}
        for name in ("websocket", "ws"):
            assert not backends[name].available, name
            assert backends[name].missing == "pip install 'qiochan[websocket]'"
        try:
            qiochan_websocket.QIOChannelWebsock
        except PluginError as exc:
            assert "pip install 'qiochan[websocket]'" in str(exc)
        else:
            raise AssertionError("QIOChannelWebsock without websockets did not raise")
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "QIOCHAN_DISABLE_PLUGIN_AUTOLOAD": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
