"""``qiochan send`` / ``qiochan recv`` as subprocesses: transports, layers, exit semantics."""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import (
    assert_one_line_error,
    background,
    cli_env,
    port_of,
    run_cli,
)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path)


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "payload.bin"
    block = hashlib.sha256(b"qiochan send/recv").digest()
    path.write_bytes(bytes(range(256)) * 17 + block * 200_000)  # ~6.1 MiB, not page aligned
    return path


def _send_recv(
    env: dict[str, str],
    payload: Path,
    out: Path,
    recv_args: list[str],
    send_args: Callable[[str], list[str]],
) -> tuple[str, str]:
    """Run recv in the background, send to where it listens; return both stderrs."""
    with background("recv", *recv_args, str(out), env=env) as receiver:
        address = receiver.listening("source")
        sent = run_cli("send", str(payload), *send_args(address), env=env)
        received = receiver.finish()
    assert sent.returncode == 0, sent.stderr
    assert received.returncode == 0, received.stderr
    assert out.read_bytes() == payload.read_bytes()
    return sent.stderr, received.stderr


@pytest.mark.parametrize(
    ("listen", "layers"),
    [
        ("tcp:127.0.0.1:0", []),
        ("tcp:[::1]:0", []),
        ("tcp:127.0.0.1:0", ["websocket:path=/mig"]),
        ("ws://127.0.0.1:0/mig", []),
    ],
    ids=["tcp", "tcp6", "websocket-layer", "ws-url"],
)
def test_recv_listens_and_send_connects(
    env: dict[str, str], payload: Path, tmp_path: Path, listen: str, layers: list[str]
) -> None:
    if listen.startswith("tcp:[::1]") and not socket.has_ipv6:
        pytest.skip("no IPv6")
    layer_args = [arg for layer in layers for arg in ("--layer", layer)]
    sent, received = _send_recv(
        env,
        payload,
        tmp_path / "out.bin",
        [listen, *layer_args],
        lambda address: [address, *layer_args],
    )
    size = payload.stat().st_size
    assert f"sent {size} bytes" in sent
    assert f"received {size} bytes" in received


def test_tls_both_ways_round(
    env: dict[str, str], payload: Path, tmp_path: Path, creds: Path
) -> None:
    tls = ["--layer", f"tls:creds={creds}"]
    _send_recv(
        env,
        payload,
        tmp_path / "out.bin",
        ["tcp:127.0.0.1:0", *tls],
        lambda address: [address, "--layer", f"tls:creds={creds},hostname=localhost"],
    )


def test_wss_url_with_tls_layer(
    env: dict[str, str], payload: Path, tmp_path: Path, creds: Path
) -> None:
    _send_recv(
        env,
        payload,
        tmp_path / "out.bin",
        ["wss://127.0.0.1:0/mig", "--layer", f"tls:creds={creds}"],
        lambda address: [
            address.replace("127.0.0.1", "localhost"),
            "--layer",
            f"tls:creds={creds}",
        ],
    )


def test_send_listens_and_recv_connects_over_unix(
    env: dict[str, str], payload: Path, tmp_path: Path
) -> None:
    sock = tmp_path / "s.sock"
    with background("send", str(payload), f"unix:{sock}", "--listen", env=env) as sender:
        sender.listening("destination")
        received = run_cli("recv", f"unix:{sock}", str(tmp_path / "out.bin"), "--connect", env=env)
        sent = sender.finish()
    assert received.returncode == 0, received.stderr
    assert sent.returncode == 0, sent.stderr
    assert (tmp_path / "out.bin").read_bytes() == payload.read_bytes()


def test_stdin_to_stdout_and_files_as_sources(
    env: dict[str, str], payload: Path, tmp_path: Path
) -> None:
    with background("recv", "tcp:127.0.0.1:0", "-", env=env) as receiver:
        address = receiver.listening()
        stdout = receiver.proc.stdout
        assert stdout is not None
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.append(stdout.read()), daemon=True)
        reader.start()  # drain the pipe while the stream flows
        sent = run_cli("send", "-", address, env=env, stdin=payload.read_bytes())
        assert sent.returncode == 0, sent.stderr
        reader.join(30)
        assert receiver.finish().returncode == 0
    assert chunks == [payload.read_bytes()]
    # a file: address is opened whatever the role
    copy = tmp_path / "copy.bin"
    result = run_cli("recv", f"file:{payload}", str(copy), env=env)
    assert result.returncode == 0, result.stderr
    assert copy.read_bytes() == payload.read_bytes()
    result = run_cli("send", str(payload), f"file:{tmp_path / 'sent.bin'}", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sent.bin").read_bytes() == payload.read_bytes()


def test_rate_limit_paces_the_stream(env: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "one-mib"
    data.write_bytes(bytes(1 << 20))
    out = tmp_path / "out"
    started = time.monotonic()
    result = run_cli("send", str(data), f"file:{out}", "--rate-limit", "4M", env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size == 1 << 20
    assert elapsed >= 0.2  # 1 MiB at 4 MiB/s takes a quarter of a second (less one chunk)


# -- exit semantics against raw socket peers ---------------------------------------------


@pytest.fixture
def raw_server() -> Iterator[tuple[socket.socket, int]]:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield server, server.getsockname()[1]
    finally:
        server.close()


def _reset(conn: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed or impatient peer does."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _serve_once(server: socket.socket, handle: Callable[[socket.socket], None]) -> threading.Thread:
    def run() -> None:
        conn, _ = server.accept()
        handle(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_send_succeeds_when_the_peer_resets_after_the_whole_file(
    env: dict[str, str], payload: Path, raw_server: tuple[socket.socket, int]
) -> None:
    server, port = raw_server
    got = bytearray()

    def read_all_then_reset(conn: socket.socket) -> None:
        while chunk := conn.recv(1 << 20):
            got.extend(chunk)
        _reset(conn)  # a migration destination closes like this

    thread = _serve_once(server, read_all_then_reset)
    result = run_cli("send", str(payload), f"tcp:127.0.0.1:{port}", env=env)
    thread.join(10)
    assert result.returncode == 0, result.stderr
    assert bytes(got) == payload.read_bytes()


def test_send_fails_when_the_peer_resets_early(
    env: dict[str, str], payload: Path, raw_server: tuple[socket.socket, int]
) -> None:
    server, port = raw_server

    def read_some_then_reset(conn: socket.socket) -> None:
        conn.recv(1000)
        _reset(conn)

    thread = _serve_once(server, read_some_then_reset)
    result = run_cli("send", str(payload), f"tcp:127.0.0.1:{port}", env=env)
    thread.join(10)
    line = assert_one_line_error(result, 1, "send to tcp:127.0.0.1", "failed after")
    assert "bytes" in line


def test_recv_fails_when_the_stream_is_cut(env: dict[str, str], tmp_path: Path) -> None:
    with background("recv", "tcp:127.0.0.1:0", str(tmp_path / "out"), env=env) as receiver:
        port = port_of(receiver.listening())
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"x" * 5000)
            _reset(conn)
        result = receiver.finish()
    assert_one_line_error(result, 1, "cut after 5000 bytes", "reset", "not created")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_recv_over_tls_fails_on_a_truncated_stream(
    env: dict[str, str], tmp_path: Path, creds: Path
) -> None:
    # a TLS stream that ends with a bare TCP close (no close_notify) is incomplete
    with background(
        "recv", "tcp:127.0.0.1:0", str(tmp_path / "out"), "--layer", f"tls:creds={creds}", env=env
    ) as receiver:
        port = port_of(receiver.listening())
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"\x16\x03\x01\x00\x05hello")  # not a TLS handshake either
        result = receiver.finish()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
