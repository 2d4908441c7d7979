"""The ``tls`` layer through qiochan.connect/listen and the registry."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import qiochan
from qiochan.errors import AddressError, HandshakeError, PluginError, TLSError, TLSHandshakeError
from qiochan.plugin import Role
from qiochan.registry import find_backend
from qiochan.watch import Condition
from qiochan_memory import memory_pipe
from qiochan_tls import QIOChannelTLS, TLSCredsX509
from qiochan_tls.certs import create_cert, create_creds_dir
from qiochan_tls.layer import load_creds, wrap
from qiochan_tls.layout import SERVER_CERT, SERVER_KEY

TIMEOUT = 10.0


def serve_one(listener: qiochan.Listener, results: list[object]) -> threading.Thread:
    """Accept one client in a thread; append the channel or the error to ``results``."""

    def run() -> None:
        try:
            results.append(listener.accept())
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_backend_is_registered() -> None:
    backend = find_backend("tls", kind="layer")
    assert backend.available and backend.wrap is not None
    assert qiochan.backends()["tls"].kind == "layer"


def test_connect_and_listen_with_tls(tls_creds_dir: Path, no_fd_leak: None) -> None:
    layer = f"tls:creds={tls_creds_dir},authz=C=UK,,O=Example,,CN=client"
    with qiochan.listen("tcp:127.0.0.1:0", layers=[layer]) as listener:
        results: list[object] = []
        thread = serve_one(listener, results)
        port = listener.address.port
        with qiochan.connect(
            f"tcp:127.0.0.1:{port}", layers=[f"tls:creds={tls_creds_dir},hostname=localhost"]
        ) as client:
            thread.join(TIMEOUT)
            (server,) = results
            assert isinstance(server, QIOChannelTLS) and isinstance(client, QIOChannelTLS)
            with server:
                assert server.peer_dn() == "C=UK,O=Example,CN=client"
                client.write_all(b"through the layer")
                buf = bytearray(17)
                server.read_all(buf)
                assert buf == b"through the layer"


def test_client_hostname_defaults_to_the_peer_address(
    tls_creds_dir: Path, no_fd_leak: None
) -> None:
    """Without hostname=, a TCP client checks the server against the address it reached."""
    with qiochan.listen("tcp:127.0.0.1:0", layers=[f"tls:creds={tls_creds_dir}"]) as listener:
        results: list[object] = []
        thread = serve_one(listener, results)
        with qiochan.connect(
            f"tcp:127.0.0.1:{listener.address.port}", layers=[f"tls:creds={tls_creds_dir}"]
        ) as client:
            assert isinstance(client, QIOChannelTLS) and client.hostname == "127.0.0.1"
            thread.join(TIMEOUT)
            for channel in results:
                assert isinstance(channel, QIOChannelTLS)
                channel.close()


def test_listener_survives_a_failed_client(
    tls_creds_dir: Path, tmp_path: Path, no_fd_leak: None
) -> None:
    """A client that fails the handshake makes accept() raise; the next one is served."""
    stranger = tmp_path / "stranger"
    create_creds_dir(stranger)
    with qiochan.listen("tcp:127.0.0.1:0", layers=[f"tls:creds={tls_creds_dir}"]) as listener:
        address = f"tcp:127.0.0.1:{listener.address.port}"
        results: list[object] = []
        thread = serve_one(listener, results)
        with pytest.raises(TLSHandshakeError, match="certificate verify failed"):
            qiochan.connect(address, layers=[f"tls:creds={stranger},hostname=localhost"])
        thread.join(TIMEOUT)
        assert isinstance(results[0], HandshakeError) and isinstance(results[0], TLSError)
        thread = serve_one(listener, results)
        with qiochan.connect(address, layers=[f"tls:creds={tls_creds_dir},hostname=localhost"]):
            thread.join(TIMEOUT)
            assert isinstance(results[1], QIOChannelTLS)
            results[1].close()


def test_authz_glob_denies(tls_creds_dir: Path, no_fd_leak: None) -> None:
    layer = f"tls:creds={tls_creds_dir},authz=*CN=admin"
    with qiochan.listen("tcp:127.0.0.1:0", layers=[layer]) as listener:
        results: list[object] = []
        thread = serve_one(listener, results)
        address = f"tcp:127.0.0.1:{listener.address.port}"
        with qiochan.connect(
            address, layers=[f"tls:creds={tls_creds_dir},hostname=localhost"]
        ) as c:
            thread.join(TIMEOUT)
            assert isinstance(results[0], TLSHandshakeError)
            assert "authorization denied" in str(results[0])
            c.set_blocking(False)
            c.wait(Condition.IN, timeout=TIMEOUT)
            with pytest.raises(TLSError):
                c.read(bytearray(1))


@pytest.fixture
def pipe_ends() -> Iterator[tuple[qiochan.QIOChannel, qiochan.QIOChannel]]:
    a, b = memory_pipe()
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize(
    ("role", "options", "message"),
    [
        ("server", {}, "needs creds=DIR"),
        ("server", {"creds": "/x", "bogus": "1"}, r"unknown option\(s\) bogus"),
        ("server", {"creds": "{dir}", "hostname": "h"}, "hostname= applies to a client only"),
        ("client", {"creds": "{dir}", "authz": "*"}, "authz= applies to a server only"),
        ("client", {"creds": "{dir}"}, "hostname= is needed"),
        ("server", {"creds": "{dir}", "verify_peer": "maybe"}, "not a boolean"),
        ("client", {"creds": "{dir}", "allow_unclean_eof": "2"}, "not a boolean"),
    ],
)
def test_option_errors(
    tls_creds_dir: Path,
    pipe_ends: tuple[qiochan.QIOChannel, qiochan.QIOChannel],
    role: str,
    options: dict[str, str],
    message: str,
) -> None:
    filled = {key: value.replace("{dir}", str(tls_creds_dir)) for key, value in options.items()}
    with pytest.raises(AddressError, match=message):
        wrap(pipe_ends[0], role, **filled)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("role", "options", "message"),
    [
        ("server", {"creds": "/x", "bogus": "1"}, r"unknown option\(s\) bogus"),
        ("server", {"creds": "{dir}", "hostname": "h"}, "hostname= applies to a client only"),
        ("client", {"creds": "{dir}", "authz": "*"}, "authz= applies to a server only"),
        ("server", {"creds": "{dir}", "authz": "*", "verify_peer": "off"}, "needs verify-peer"),
        ("server", {"creds": "{dir}", "verify_peer": "maybe"}, "not a boolean"),
    ],
)
def test_check_refuses_what_wrap_would_without_a_channel(
    tls_creds_dir: Path, role: Role, options: dict[str, str], message: str
) -> None:
    filled = {key: value.replace("{dir}", str(tls_creds_dir)) for key, value in options.items()}
    check = find_backend("tls", kind="layer").check
    assert check is not None
    with pytest.raises(AddressError, match=message):
        check(role, **filled)
    check(role, **{"creds": str(tls_creds_dir)})  # the directory alone is fine


def test_check_loads_the_credentials(tmp_path: Path) -> None:
    from qiochan_tls.layer import check

    with pytest.raises(TLSError, match="does not exist"):
        check("client", creds=str(tmp_path / "missing"))
    tmp_path.joinpath("ca-cert.pem").write_text("not a certificate")
    with pytest.raises(TLSError, match="not a PEM certificate") as info:
        check("server", creds=str(tmp_path))
    assert "http" not in str(info.value)  # no URL of cryptography's FAQ in the message


def test_listen_and_connect_refuse_bad_layers_before_the_network(
    tls_creds_dir: Path, no_fd_leak: None
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: a connect would be refused
        port = taken.getsockname()[1]
        bad_client = f"tls:creds={tls_creds_dir},bogus=1"
        with pytest.raises(AddressError, match="unknown option"):
            qiochan.connect(f"tcp:127.0.0.1:{port}", layers=[bad_client])
        # the listener would fail with "address in use" if it tried to bind
        bad_server = f"tls:creds={tls_creds_dir},hostname=localhost"
        with pytest.raises(AddressError, match="client only"):
            qiochan.listen(f"tcp:127.0.0.1:{port}", layers=[bad_server])


def test_bad_creds_dir_is_a_tls_error(
    tmp_path: Path, pipe_ends: tuple[qiochan.QIOChannel, qiochan.QIOChannel]
) -> None:
    with pytest.raises(TLSError, match="does not exist"):
        wrap(pipe_ends[0], "server", creds=str(tmp_path / "missing"))


def test_layer_spec_objects(
    tls_creds_dir: Path, pipe_ends: tuple[qiochan.QIOChannel, qiochan.QIOChannel]
) -> None:
    """Programmatic callers may pass a TLSCredsX509 object instead of a directory."""
    server_end, client_end = pipe_ends
    server_creds = TLSCredsX509(tls_creds_dir, "server")
    results: list[object] = []

    def serve() -> None:
        try:
            server = wrap(server_end, "server", creds=server_creds)
            server.handshake()
            results.append(server)
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = wrap(client_end, "client", creds=str(tls_creds_dir), hostname="localhost")
    assert not client.handshake_complete  # wrap leaves the handshake to its caller
    client.handshake()
    thread.join(TIMEOUT)
    server = results[0]
    assert isinstance(server, QIOChannelTLS) and server.creds is server_creds
    assert client.handshake_complete


def test_creds_are_cached_until_the_files_change(tls_creds_dir: Path, tmp_path: Path) -> None:
    first = load_creds(tls_creds_dir, "server")
    assert load_creds(tls_creds_dir, "server") is first
    assert load_creds(tls_creds_dir, "client") is not first
    directory = tmp_path / "rotating"
    creds = create_creds_dir(directory)
    before = load_creds(directory, "server")
    rotated = create_cert(creds.ca, "localhost", hostnames=["localhost", "rotated.example"])
    rotated.write(directory / SERVER_CERT, directory / SERVER_KEY)
    os.utime(directory / SERVER_CERT, ns=(1, 1))  # a different stamp even within one tick
    after = load_creds(directory, "server")
    assert after is not before
    assert after.certificate == rotated.cert


def test_plugin_without_cryptography_is_unavailable() -> None:
    """Without cryptography the plugin imports and reports what to install."""
    script = (
        "import sys; sys.modules['cryptography'] = None\n"
        "import qiochan_tls\n"
        "(backend,) = qiochan_tls.qiochan_backends()\n"
        "assert not qiochan_tls.HAVE_CRYPTOGRAPHY\n"
        "assert backend.available is False and backend.wrap is None\n"
        "print(backend.missing)\n"
        "try:\n"
        "    qiochan_tls.TLSCredsX509\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == ["pip install 'qiochan[tls]'", PluginError.__name__]
