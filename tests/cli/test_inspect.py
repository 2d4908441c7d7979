"""``qiochan inspect``: files, stdin, commands and listening addresses; output, exit codes.

The streams are written with SavevmWriter/MultifdWriter (the real-QEMU runs
are in test_inspect_qemu.py).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from qiochan import QEMUFile
from qiochan.migration import MigCommand, MultifdWriter, SavevmWriter
from tests.helpers.cli import Background, assert_one_line_error, cli_env, port_of, run_cli

PAGE = 4096
PAGE_DATA = memoryview(bytearray(os.urandom(PAGE)))


def write_stream(path: Path) -> bytes:
    f = QEMUFile.open_buffer("w")
    w = SavevmWriter(f)
    w.header()
    w.command(MigCommand.PING, (7).to_bytes(4, "big"))
    ram = w.section_start("ram")
    w.ram_setup({"pc.ram": 8 * PAGE, "pc.bios": 2 * PAGE})
    w.ram_eos()
    w.footer(ram)
    w.section_part(ram, end=True)
    for n in range(8):
        if n % 2:
            w.ram_page("pc.ram", n * PAGE, PAGE_DATA)
        else:
            w.ram_zero_page("pc.ram", n * PAGE)
    w.ram_page("pc.bios", 0, PAGE_DATA)
    w.ram_zero_page("pc.bios", PAGE)
    w.ram_eos()
    w.footer(ram)
    w.device("timer", bytes(24))
    w.device("cpu", os.urandom(100), version=12)
    desc = [
        {"name": name, "instance_id": 0, "fields": [{"name": "d", "type": "buffer", "size": size}]}
        for name, size in (("timer", 24), ("cpu", 100))
    ]
    w.eof({"page_size": PAGE, "devices": desc})
    data = f.buffer_contents()
    f.fclose()
    path.write_bytes(data)
    return data


@pytest.fixture
def stream(tmp_path: Path) -> Path:
    path = tmp_path / "guest.mig"
    write_stream(path)
    return path


def test_human_summary_of_a_file(stream: Path, tmp_path: Path) -> None:
    result = run_cli("inspect", str(stream), env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"stream: QEVM version 3, {stream.stat().st_size / 1024:.1f} KiB" in out
    assert "machine: pc-i440fx-7.2" in out
    assert "sections (3):" in out
    assert "cpu" in out and "version 12" in out and "[vmdesc]" in out
    assert "pc.ram" in out and "4 normal,        4 zero" in out
    assert "total  40.0 KiB in 2 blocks; 5 normal pages (20.0 KiB), 5 zero pages" in out
    assert "PING (7), 4 bytes" in out
    assert "device description: 2 devices, page size 4096" in out
    assert out.rstrip().endswith(
        f"complete: ended at offset {stream.stat().st_size} (QEMU_VM_EOF record)"
    )


def test_json_has_the_documented_keys(stream: Path, tmp_path: Path) -> None:
    result = run_cli("inspect", "--json", str(stream), env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["magic"] == "QEVM" and report["version"] == 3
    assert report["bytes"] == stream.stat().st_size
    assert report["complete"] is True and report["error"] is None
    assert report["configuration"]["machine"] == "pc-i440fx-7.2"
    assert [
        {k: s[k] for k in ("id", "name", "instance", "version")} for s in report["sections"]
    ] == [
        {"id": 0, "name": "ram", "instance": 0, "version": 4},
        {"id": 1, "name": "timer", "instance": 0, "version": 1},
        {"id": 2, "name": "cpu", "instance": 0, "version": 12},
    ]
    assert report["ram"]["blocks"] == {"pc.ram": 8 * PAGE, "pc.bios": 2 * PAGE}
    assert (report["ram"]["zero_pages"], report["ram"]["normal_pages"]) == (5, 5)
    assert [(c["cmd"], c["len"]) for c in report["commands"]] == [(2, 4)]
    assert report["vmdesc"]["page_size"] == PAGE and report["vmdesc"]["devices"] == 2
    compact = run_cli("inspect", "--json", "--compact", str(stream), env=cli_env(tmp_path))
    assert compact.stdout.count("\n") == 1 and json.loads(compact.stdout) == report


def test_a_cut_stream_on_stdin_exits_1_and_names_the_offset(stream: Path, tmp_path: Path) -> None:
    data = stream.read_bytes()[:5000]
    result = run_cli("inspect", "--json", "-", env=cli_env(tmp_path), stdin=data)
    assert_one_line_error(result, 1, "incomplete stream", "offset 5000", "the stream ends inside")
    report = json.loads(result.stdout)
    assert report["complete"] is False
    assert report["bytes"] == 5000
    assert report["error"].startswith("offset 5000: the stream ends inside a page of RAM block")
    assert report["end"] == {"offset": 5000, "reason": "truncated"}


def test_garbage_is_not_a_stream(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"hello world, not a migration")
    result = run_cli("inspect", str(path), env=cli_env(tmp_path))
    assert_one_line_error(result, 1, "offset 0: expected the magic QEVM")
    assert "stream: not a QEMU migration stream" in result.stdout


def test_command_output_and_a_multifd_channel(tmp_path: Path) -> None:
    f = QEMUFile.open_buffer("w")
    MultifdWriter(f, bytes(16), 1).packet("pc.ram", [(0, PAGE_DATA)], flags=1)
    path = tmp_path / "channel-1.bin"
    path.write_bytes(f.buffer_contents())
    f.fclose()
    result = run_cli("inspect", "--json", f"exec:cat {path}", env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["kind"], report["magic"], report["complete"]) == ("multifd", "MULTIFD", True)
    assert report["multifd"]["channel"] == 1 and report["multifd"]["normal_pages"] == 1
    human = run_cli("inspect", str(path), env=cli_env(tmp_path))
    assert "multifd channel 1 (version 1)" in human.stdout
    assert "1 packets (1 sync), 1 pages" in human.stdout


def test_live_over_a_unix_socket(stream: Path, tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    address = f"unix:{tmp_path}/inspect.sock"
    inspector = Background("inspect", "--json", "--timeout", "30", address, env=env)
    try:
        assert inspector.listening("source") == address
        sender = run_cli("send", str(stream), address, env=env)
        assert sender.returncode == 0, sender.stderr
        result = inspector.finish()
    finally:
        inspector.kill()
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["complete"] is True
    # live: devices delimited by their footers, then checked against the description
    assert [s["delimited"] for s in report["sections"]] == ["parsed", "footer-scan", "footer-scan"]
    assert report["vmdesc"]["mismatches"] == []


def test_no_peer_within_the_timeout(tmp_path: Path) -> None:
    result = run_cli("inspect", "--timeout", "0.3", "tcp:127.0.0.1:0", env=cli_env(tmp_path))
    assert_one_line_error(result, 1, "no peer within 0.3 s")


def test_a_stalled_peer_ends_with_the_timeout(tmp_path: Path) -> None:
    inspector = Background(
        "inspect", "--json", "--timeout", "0.4", "tcp:127.0.0.1:0", env=cli_env(tmp_path)
    )
    try:
        port = port_of(inspector.listening("source"))
        with socket.create_connection(("127.0.0.1", port)) as peer:
            peer.sendall(b"QEVM\0\0\0\3")
            result = inspector.finish()
    finally:
        inspector.kill()
    assert_one_line_error(result, 1, "offset 8: no data for 0.4 s (--timeout) inside a record type")
    assert json.loads(result.stdout)["complete"] is False


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["no-such-transport"], ["no such file, address or configured transport"]),
        (["tcp:127.0.0.1"], ["bad source"]),
        (["--layer", "tls:creds=/nonexistent", "{stream}"], ["--layer applies to an address"]),
        (["--layer", "tls:creds", "tcp:127.0.0.1:0"], ["bad source", "not of the form key=value"]),
    ],
)
def test_usage_errors_exit_2(
    stream: Path, tmp_path: Path, args: list[str], words: list[str]
) -> None:
    argv = [a.format(stream=stream) for a in args]
    result = run_cli("inspect", *argv, env=cli_env(tmp_path))
    assert_one_line_error(result, 2, *words)


def test_bad_timeout_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("inspect", "--timeout", "0", "x", env=cli_env(tmp_path))
    assert result.returncode == 2
    assert "must be more than 0" in result.stderr


def test_progress_bar_on_request(stream: Path, tmp_path: Path) -> None:
    pytest.importorskip("rich")
    result = run_cli("inspect", "--progress", str(stream), env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"inspect {stream}" in result.stderr.replace("\n", "")
    assert "complete:" in result.stdout


def test_a_named_pipe_is_read_once(stream: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "stream.fifo"
    os.mkfifo(fifo)
    env = cli_env(tmp_path)
    inspector = Background("inspect", "--json", str(fifo), env=env)
    try:
        with open(fifo, "wb") as writer:  # returns once the inspector opened it
            writer.write(stream.read_bytes())
        result = inspector.finish()
    finally:
        inspector.kill()
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["complete"] is True and report["bytes"] == stream.stat().st_size
