"""``qiochan relay`` as a subprocess: both directions, half-close, chains, exit semantics."""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import assert_one_line_error, background, cli_env, port_of

MIB = 1 << 20


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path)


def _pattern(size: int, seed: bytes) -> bytes:
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


class _Peer:
    """A raw socket peer on a thread: sends ``outgoing`` (then half-closes), reads to EOF."""

    def __init__(self, sock: socket.socket, outgoing: bytes, *, send_after_eof: bool) -> None:
        self.sock = sock
        self.outgoing = outgoing
        self.send_after_eof = send_after_eof
        self.received = hashlib.sha256()
        self.count = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _send(self) -> None:
        self.sock.sendall(self.outgoing)
        self.sock.shutdown(socket.SHUT_WR)

    def _run(self) -> None:
        try:
            sender = None
            if not self.send_after_eof:
                sender = threading.Thread(target=self._send, daemon=True)
                sender.start()
            while chunk := self.sock.recv(MIB):
                self.received.update(chunk)
                self.count += len(chunk)
            if self.send_after_eof:
                self._send()  # a reply after the other side's half-close
            if sender is not None:
                sender.join()
        except BaseException as exc:
            self.error = exc
        finally:
            self.sock.close()

    def join(self) -> None:
        self.thread.join(40)
        assert not self.thread.is_alive(), "peer did not finish"
        if self.error is not None:
            raise self.error


class _Accepted:
    """The peer a listening test socket accepts on a thread."""

    def __init__(self, server: socket.socket, outgoing: bytes, **kwargs: Any) -> None:
        self.peer: _Peer | None = None
        self._thread = threading.Thread(
            target=self._accept, args=(server, outgoing, kwargs), daemon=True
        )
        self._thread.start()

    def _accept(self, server: socket.socket, outgoing: bytes, kwargs: dict[str, Any]) -> None:
        conn, _ = server.accept()
        self.peer = _Peer(conn, outgoing, **kwargs)

    def get(self) -> _Peer:
        """Wait for the connection; return its peer."""
        self._thread.join(40)
        assert self.peer is not None, "nobody connected"
        return self.peer


def _connect_peer(address: str, outgoing: bytes, **kwargs: Any) -> _Peer:
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(address.removeprefix("unix:"))
    else:
        sock = socket.create_connection(("127.0.0.1", port_of(address)))
    return _Peer(sock, outgoing, **kwargs)


def test_relay_moves_64_mib_tcp_to_unix_both_ways_with_half_close(
    env: dict[str, str], tmp_path: Path
) -> None:
    forward, backward = _pattern(64 * MIB, b"forward"), _pattern(MIB + 123, b"backward")
    path = tmp_path / "dst.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    with server, background("relay", "--once", "tcp:127.0.0.1:0", f"unix:{path}", env=env) as relay:
        accepted = _Accepted(server, backward, send_after_eof=True)
        source = _connect_peer(relay.listening("source"), forward, send_after_eof=False)
        destination = accepted.get()
        source.join()
        destination.join()
        result = relay.finish()
    assert result.returncode == 0, result.stderr
    assert destination.received.digest() == hashlib.sha256(forward).digest()
    assert source.received.digest() == hashlib.sha256(backward).digest()
    assert f"{len(forward)} bytes (64.0 MiB) source -> destination" in result.stderr
    assert f"{len(backward)} bytes" in result.stderr


def test_relay_to_a_command_passes_the_half_close_on(env: dict[str, str]) -> None:
    data = _pattern(8 * MIB, b"cat")
    with background("relay", "--once", "tcp:127.0.0.1:0", "exec:cat", env=env) as relay:
        source = _connect_peer(relay.listening(), data, send_after_eof=False)
        source.join()  # cat sees EOF only if the half-close reached its stdin
        result = relay.finish()
    assert result.returncode == 0, result.stderr
    assert source.received.digest() == hashlib.sha256(data).digest()


def test_relay_chain_tcp_wss_tcp(env: dict[str, str], tmp_path: Path) -> None:
    creds = tmp_path / "pki"
    from tests.helpers.cli import run_cli

    assert run_cli("certs", str(creds), env=env).returncode == 0
    tls = f"tls:creds={creds}"
    data = _pattern(16 * MIB, b"wss")
    server = socket.create_server(("127.0.0.1", 0))
    final = f"tcp:127.0.0.1:{server.getsockname()[1]}"
    with (
        server,
        background(
            "relay", "--once", "wss://127.0.0.1:0/mig", final, "--src-layer", tls, env=env
        ) as exit_,
    ):
        wss = exit_.listening().replace("127.0.0.1", "localhost")
        with background(
            "relay", "--once", "tcp:127.0.0.1:0", wss, "--dst-layer", tls, env=env
        ) as entry:
            # nothing comes back: a websocket close ends both directions (RFC 6455)
            accepted = _Accepted(server, b"", send_after_eof=True)
            source = _connect_peer(entry.listening(), data, send_after_eof=False)
            source.join()
            accepted.get().join()
            assert entry.finish().returncode == 0, entry.stderr
            assert exit_.finish().returncode == 0, exit_.stderr
    assert accepted.get().received.digest() == hashlib.sha256(data).digest()
    assert source.count == 0


def test_connect_src_and_listen_dst(env: dict[str, str]) -> None:
    data = _pattern(MIB, b"roles")
    server = socket.create_server(("127.0.0.1", 0))
    src = f"tcp:127.0.0.1:{server.getsockname()[1]}"
    with (
        server,
        background(
            "relay", "--once", src, "tcp:127.0.0.1:0", "--connect-src", "--listen-dst", env=env
        ) as r,
    ):
        accepted = _Accepted(server, data, send_after_eof=False)
        destination = _connect_peer(r.listening("destination"), b"", send_after_eof=True)
        destination.join()
        accepted.get().join()
        result = r.finish()
    assert result.returncode == 0, result.stderr
    assert destination.received.digest() == hashlib.sha256(data).digest()


def test_refused_destination_fails_after_accepting_the_source(env: dict[str, str]) -> None:
    with background("relay", "--once", "tcp:127.0.0.1:0", "tcp:127.0.0.1:1", env=env) as relay:
        source = _connect_peer(relay.listening(), b"", send_after_eof=True)
        result = relay.finish()
        source.join()  # the relay closed the source: it reads EOF
    assert_one_line_error(result, 1, "destination tcp:127.0.0.1:1", "refused", "0 bytes passed")


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def test_destination_reset_mid_stream_fails_with_counts(env: dict[str, str]) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    dst = f"tcp:127.0.0.1:{server.getsockname()[1]}"
    accepted = threading.Event()

    def reset_early() -> None:
        conn, _ = server.accept()
        conn.recv(4096)
        accepted.set()
        _reset(conn)

    resetter = threading.Thread(target=reset_early, daemon=True)
    with server, background("relay", "--once", "tcp:127.0.0.1:0", dst, env=env) as relay:
        resetter.start()
        sock = socket.create_connection(("127.0.0.1", port_of(relay.listening())))
        with sock:
            try:
                sock.sendall(_pattern(32 * MIB, b"cut"))
            except OSError:
                pass  # the relay gave up on the source too
            result = relay.finish()
        resetter.join(10)
    line = assert_one_line_error(result, 1, "relay failed", "source -> destination")
    assert "reset" in line.lower() or "broken pipe" in line.lower()
    assert accepted.is_set()


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    """A threaded echo server on loopback: every connection gets its bytes back."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve_one(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(MIB):
                conn.sendall(data)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def _echo_once(address: str, data: bytes) -> bytes:
    """Send ``data`` (from a thread) and read as many bytes back, then close.

    No half-close before the echo is in: a websocket hop would end both directions.
    """
    with socket.create_connection(("127.0.0.1", port_of(address)), timeout=40) as sock:
        sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
        sender.start()
        received = bytearray()
        while len(received) < len(data) and (chunk := sock.recv(MIB)):
            received += chunk
        sender.join(40)
        return bytes(received)


def test_serving_relay_prints_json_per_connection_and_stops_on_sigterm(
    env: dict[str, str], tmp_path: Path
) -> None:
    import json
    import signal

    server, _thread = _echo_server()
    echo = f"tcp:127.0.0.1:{server.getsockname()[1]}"
    with server, background("relay", "tcp:127.0.0.1:0", echo, "--json", env=env) as relay:
        address = relay.listening("source")
        payloads = [_pattern(100_000 + n, b"json") for n in range(3)]
        for data in payloads:
            assert _echo_once(address, data) == data
        relay.expect(r"#3 .*: ok in")
        relay.proc.send_signal(signal.SIGTERM)
        result = relay.finish(timeout=5)
    assert result.returncode == 0, result.stderr
    assert "3 connections" in result.stderr
    # one object per connection as each ends (not necessarily in id order)
    objects = sorted(
        (json.loads(line) for line in result.stdout.splitlines()), key=lambda o: o["id"]
    )
    assert [o["id"] for o in objects] == [1, 2, 3]
    assert [o["bytes_src_to_dst"] for o in objects] == [len(p) for p in payloads]
    assert {(o["command"], o["outcome"], o["error"]) for o in objects} == {("relay", "ok", None)}
    assert all(o["seconds"] >= 0 for o in objects)
    assert all(o["target"] == echo and o["peer"].startswith("tcp:127.0.0.1:") for o in objects)


def test_relay_routes_tokens_from_a_targets_file(env: dict[str, str], tmp_path: Path) -> None:
    server, _thread = _echo_server()
    targets = tmp_path / "targets.toml"
    targets.write_text(f'[targets]\nvm1 = "tcp:127.0.0.1:{server.getsockname()[1]}"\n')
    with (
        server,
        background("relay", "ws://127.0.0.1:0/", "--targets", str(targets), env=env) as gateway,
    ):
        url = gateway.listening("source")
        with socket.create_connection(("127.0.0.1", port_of(url)), timeout=40) as sock:
            sock.sendall(
                b"GET /vm2 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            assert sock.makefile("rb").readline().startswith(b"HTTP/1.1 404")
        gateway.expect(r"#1 .*rejected")
        data = _pattern(MIB, b"token")
        with background(
            "relay", "--once", "tcp:127.0.0.1:0", url.rstrip("/") + "/?token=vm1", env=env
        ) as entry:
            assert _echo_once(entry.listening("source"), data) == data
            assert entry.finish().returncode == 0, entry.stderr
        gateway.expect(r"#2 .*ok in")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["ws://127.0.0.1:0/"], ["DST or --targets"]),
        (["tcp:127.0.0.1:0", "tcp:127.0.0.1:1", "--targets", "t.toml"], ["DST or --targets"]),
        (["ws://127.0.0.1:0/", "--targets", "absent.toml"], ["absent.toml"]),
    ],
)
def test_relay_usage_errors(env: dict[str, str], args: list[str], words: list[str]) -> None:
    from tests.helpers.cli import run_cli

    assert_one_line_error(run_cli("relay", *args, env=env), 2, *words)


def test_once_drops_a_silent_client_after_the_handshake_timeout(
    env: dict[str, str], tls_creds_dir: Path
) -> None:
    server, _thread = _echo_server()
    echo = f"tcp:127.0.0.1:{server.getsockname()[1]}"
    tls = f"tls:creds={tls_creds_dir}"
    args = ("--once", "--handshake-timeout", "1", "--src-layer", tls)
    with server, background("relay", "tcp:127.0.0.1:0", echo, *args, env=env) as relay:
        address = relay.listening("source")
        with socket.create_connection(("127.0.0.1", port_of(address))) as silent:
            # within --handshake-timeout, not the layer's own 10 s
            relay.expect(r"#1 .*rejected after [1-9]\.\d+ s: .*in time")
            assert silent.recv(1) == b""  # the relay let go of it
        data = _pattern(MIB, b"after")
        client = f"tls:creds={tls_creds_dir},hostname=localhost"
        with background(
            "relay", "--once", "tcp:127.0.0.1:0", address, "--dst-layer", client, env=env
        ) as entry:
            assert _echo_once(entry.listening("source"), data) == data
            assert entry.finish().returncode == 0, entry.stderr
        result = relay.finish()
    assert result.returncode == 0, result.stderr
    assert "#2 " in result.stderr and "relay done" in result.stderr


def test_hundred_concurrent_clients_through_serving_tcp_ws_tcp_relays(
    env: dict[str, str],
) -> None:
    import signal
    from concurrent.futures import ThreadPoolExecutor

    server, _thread = _echo_server()
    echo = f"tcp:127.0.0.1:{server.getsockname()[1]}"
    payloads = [_pattern(64 * 1024 + n, b"%d" % n) for n in range(100)]
    with (
        server,
        background("relay", "ws://127.0.0.1:0/hop", echo, env=env) as exit_,
    ):
        hop = exit_.listening("source")
        with background("relay", "tcp:127.0.0.1:0", hop, env=env) as entry:
            address = entry.listening("source")
            with ThreadPoolExecutor(max_workers=100) as pool:
                echoed = list(pool.map(lambda data: _echo_once(address, data), payloads))
            assert echoed == payloads
            for relay in (entry, exit_):
                relay.expect(r"#100 ")  # the last one accepted ended; the drain waits for any other
                relay.proc.send_signal(signal.SIGTERM)
            results = [relay.finish(timeout=20) for relay in (entry, exit_)]
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "100 connections" in result.stderr
        assert result.stderr.count(": ok in ") == 100
