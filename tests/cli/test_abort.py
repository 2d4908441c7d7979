"""A transfer stopped before its end is never a clean end: real signals to real commands.

``qiochan send`` is fed through a pipe, so the test knows the stream is under way
(``recv`` printed the first bytes) when the signal arrives; the receiver must then
report a cut stream, over every transport and layer that can tell.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.cli import (
    Background,
    assert_one_line_error,
    background,
    cli_env,
    feeding,
    port_of,
    read_at_least,
    run_cli,
)

# what the sender is given before the signal: less than a pipe holds, so no write blocks
_FIRST = 48 << 10


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path)


# name -> (recv's listening address and options, send's arguments for the announced address)
Chain = tuple[Callable[[Path, Path], list[str]], Callable[[str, Path], list[str]]]
CHAINS: dict[str, Chain] = {
    "tcp": (lambda _d, _c: ["tcp:127.0.0.1:0"], lambda a, _c: [a]),
    "tls": (
        lambda _d, c: ["tcp:127.0.0.1:0", "--layer", f"tls:creds={c}"],
        lambda a, c: [a, "--layer", f"tls:creds={c},hostname=localhost"],
    ),
    "websocket": (
        lambda _d, _c: ["tcp:127.0.0.1:0", "--layer", "websocket:path=/m"],
        lambda a, _c: [a, "--layer", "websocket:path=/m"],
    ),
    "wss": (
        lambda _d, c: ["wss://127.0.0.1:0/m", "--layer", f"tls:creds={c}"],
        lambda a, c: [a.replace("127.0.0.1", "localhost"), "--layer", f"tls:creds={c}"],
    ),
    "tls-over-unix": (
        lambda d, c: [f"unix:{d}/t.sock", "--layer", f"tls:creds={c}"],
        lambda a, c: [a, "--layer", f"tls:creds={c},hostname=localhost"],
    ),
    "websocket-over-unix": (
        lambda d, _c: [f"unix:{d}/w.sock", "--layer", "websocket:path=/m"],
        lambda a, _c: [a, "--layer", "websocket:path=/m"],
    ),
}


def _recv_to_stdout(args: list[str], env: dict[str, str]) -> Background:
    return Background("recv", args[0], "-", *args[1:], env=env)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("chain", list(CHAINS))
def test_a_signalled_send_is_a_cut_stream_for_recv(
    env: dict[str, str], tmp_path: Path, creds: Path, chain: str, sig: signal.Signals
) -> None:
    listen_args, send_args = CHAINS[chain]
    receiver = _recv_to_stdout(listen_args(tmp_path, creds), env)
    try:
        address = receiver.listening("source")
        with feeding("send", "-", *send_args(address, creds), env=env) as sender:
            assert sender.stdin is not None and receiver.proc.stdout is not None
            sender.stdin.write(b"\x5a" * _FIRST)
            sender.stdin.flush()
            got = read_at_least(receiver.proc.stdout.fileno(), _FIRST)
            sender.send_signal(sig)  # blocked reading its stdin, mid-stream
            _out, err = sender.communicate(timeout=50)
        received = receiver.finish()
    finally:
        receiver.kill()
    sent = subprocess.CompletedProcess(sender.args, sender.returncode, "", err.decode())
    assert_one_line_error(sent, 128 + sig, f"interrupted by {sig.name}", "aborted")
    line = assert_one_line_error(received, 1, "cut after")
    assert got == b"\x5a" * _FIRST
    assert f"cut after {_FIRST} bytes" in line


def test_a_clean_end_stays_exit_0_over_the_same_pipe(env: dict[str, str], tmp_path: Path) -> None:
    receiver = _recv_to_stdout(["tcp:127.0.0.1:0"], env)
    try:
        address = receiver.listening("source")
        with feeding("send", "-", address, "--json", env=env) as sender:
            out, err = sender.communicate(b"\x5a" * _FIRST, timeout=50)
        received = receiver.finish()
    finally:
        receiver.kill()
    assert sender.returncode == 0, err
    assert received.returncode == 0, received.stderr
    assert received.stdout == "\x5a" * _FIRST
    record = json.loads(out)
    assert record["command"] == "send" and record["name"] == "-"
    assert record["outcome"] == "ok" and record["error"] is None
    assert record["bytes"] == _FIRST and record["peer"] == address


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_a_signalled_recv_makes_send_fail(
    env: dict[str, str], tmp_path: Path, transport: str
) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"precious")
    listen = "tcp:127.0.0.1:0" if transport == "tcp" else f"unix:{tmp_path}/r.sock"
    with background("-vv", "recv", listen, str(out), env=env) as receiver:
        address = receiver.listening("source")
        with feeding("send", "-", address, env=env) as sender:
            assert sender.stdin is not None
            sender.stdin.write(b"\x5a" * _FIRST)
            sender.stdin.flush()
            receiver.expect("socket accept")  # recv has its peer: the stream is under way
            receiver.proc.send_signal(signal.SIGTERM)
            received = receiver.finish()
            try:
                sender.stdin.write(b"\x5a" * (8 << 20))  # the sender writes on into a dead peer
                sender.stdin.close()
            except BrokenPipeError:
                pass  # it noticed already
            _out, err = sender.communicate(timeout=50)
    assert_one_line_error(received, 143, "interrupted by SIGTERM", "left unchanged")
    assert out.read_bytes() == b"precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.bin.")]
    sent = subprocess.CompletedProcess(sender.args, sender.returncode, "", err.decode())
    assert_one_line_error(sent, 1, "send to", "failed after")


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()


@pytest.mark.parametrize("keep", [False, True], ids=["discard", "keep-partial"])
def test_a_cut_stream_never_touches_the_existing_file(
    env: dict[str, str], tmp_path: Path, keep: bool
) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"precious" * 1000)
    flags = ["--keep-partial"] if keep else []
    with background("recv", "tcp:127.0.0.1:0", str(out), *flags, "--json", env=env) as receiver:
        port = port_of(receiver.listening())
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"new" * 5000)
            _reset(conn)
        result = receiver.finish()
    line = assert_one_line_error(result, 1, "cut after 15000 bytes", "reset")
    assert out.read_bytes() == b"precious" * 1000
    partial = tmp_path / "out.bin.partial"
    if keep:
        assert partial.read_bytes() == b"new" * 5000
        assert "out.bin.partial" in line
    else:
        assert not partial.exists()
        assert "left unchanged" in line
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.bin.")]
    record = json.loads(result.stdout)
    assert record["outcome"] == "cut" and record["bytes"] == 15000
    assert record["command"] == "recv" and "reset" in record["error"]


def test_a_clean_end_replaces_the_file_and_keeps_its_mode(
    env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    out.chmod(0o640)
    with background("recv", "tcp:127.0.0.1:0", str(out), "--json", env=env) as receiver:
        port = port_of(receiver.listening())
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"new" * 5000)
        result = receiver.finish()
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == b"new" * 5000
    assert out.stat().st_mode & 0o777 == 0o640
    record = json.loads(result.stdout)
    assert record["outcome"] == "ok" and record["error"] is None
    assert record["bytes"] == 15000 and record["seconds"] >= 0 and "mib_per_s" in record


def test_a_clean_end_through_a_symlink_replaces_what_it_points_to(
    env: dict[str, str], tmp_path: Path
) -> None:
    real = tmp_path / "real.bin"
    real.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    with background("recv", "tcp:127.0.0.1:0", str(link), env=env) as receiver:
        port = port_of(receiver.listening())
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"new")
        result = receiver.finish()
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and real.read_bytes() == b"new"


def test_recv_does_not_touch_the_file_when_it_cannot_listen(
    env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"x" * (1 << 20))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("recv", f"tcp:127.0.0.1:{port}", str(out), env=env)
    assert_one_line_error(result, 1, "in use")
    assert out.stat().st_size == 1 << 20
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_send_timeout_aborts_a_stalled_stream(env: dict[str, str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        args = ["send", "-", f"tcp:127.0.0.1:{port}", "--timeout", "0.5", "--json"]
        with feeding(*args, env=env) as sender:
            assert sender.stdin is not None
            conn, _ = server.accept()
            with conn:
                sender.stdin.write(b"abc")
                sender.stdin.flush()  # then nothing more: the stream stalls
                got = b""
                with pytest.raises(ConnectionResetError):
                    while chunk := conn.recv(65536):
                        got += chunk
            out, err = sender.communicate(timeout=50)
    result = subprocess.CompletedProcess(sender.args, sender.returncode, "", err.decode())
    assert_one_line_error(result, 1, "nothing moved for 0.5 s", "after 3 bytes", "aborted")
    assert got == b"abc"
    record = json.loads(out)
    assert record["outcome"] == "timeout" and record["bytes"] == 3


def test_recv_timeout_without_a_peer(env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli("recv", "tcp:127.0.0.1:0", str(tmp_path / "o"), "--timeout", "0.3", env=env)
    assert_one_line_error(result, 1, "nothing moved for 0.3 s", "after 0 bytes")
    assert not (tmp_path / "o").exists()


def test_json_with_stdout_as_the_file_is_a_usage_error(env: dict[str, str]) -> None:
    result = run_cli("recv", "tcp:127.0.0.1:0", "-", "--json", env=env)
    assert_one_line_error(result, 2, "--json")


def test_a_failing_command_source_leaves_no_file(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    source = "exec:head -c 100 /dev/zero; exit 3"
    result = run_cli("recv", "--connect", source, str(out), "--json", env=env)
    line = assert_one_line_error(result, 1, "exited with status 3", "100 bytes passed")
    assert "not created" in line and not out.exists()
    record = json.loads(result.stdout)
    assert record["outcome"] == "failed" and record["bytes"] == 100
