"""Driving a real QEMU (TCG) from tests: a QMP client and a guest context manager.

QEMU connects its QMP monitor to a unix socket the test listens on, so nothing
polls for a socket file to appear.  Guests start paused (``-S``) with no
default devices; the caller adds what it needs (``extra`` arguments).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

QEMU = "qemu-system-x86_64"
QMP_TIMEOUT = 60.0


def find_qemu() -> str | None:
    """Return the QEMU binary, installing Debian's package when missing and possible.

    ``QIOCHAN_NO_INSTALL=1`` turns the installation off.
    """
    found = shutil.which(QEMU)
    apt = shutil.which("apt-get")
    if found or apt is None or os.geteuid() != 0 or os.environ.get("QIOCHAN_NO_INSTALL"):
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [apt, "install", "-y", "-qq", "qemu-system-x86"]
    for command in (install, [apt, "update", "-qq"], install):
        try:
            subprocess.run(command, env=env, capture_output=True, timeout=240, check=False)
        except subprocess.TimeoutExpired:
            return None
        found = shutil.which(QEMU)
        if found:
            return found
    return None


class QMP:
    """A minimal QMP client over a connected socket (commands, and events kept aside)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(QMP_TIMEOUT)
        self.sock = sock
        self.file = sock.makefile("rwb")
        self.events: list[dict[str, Any]] = []
        greeting = self._read()
        assert "QMP" in greeting, greeting
        self.command("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self.file.readline()
        assert line, "QEMU closed its QMP connection"
        message: dict[str, Any] = json.loads(line)
        return message

    def command(self, name: str, **arguments: Any) -> Any:
        """Run a command; return its result or fail the test with QEMU's error."""
        request: dict[str, Any] = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        self.file.write(json.dumps(request).encode() + b"\n")
        self.file.flush()
        while True:
            message = self._read()
            if "event" in message:
                self.events.append(message)
                continue
            assert "error" not in message, f"{name}: {message['error']}"
            return message["return"]

    def hmp(self, command_line: str) -> str:
        """Run a human monitor command; return its text output."""
        return str(self.command("human-monitor-command", **{"command-line": command_line}))

    def wait_migration(self, final: tuple[str, ...] = ("completed", "failed")) -> str:
        """Block until a MIGRATION event reaches one of ``final``; return that status."""
        while True:
            for event in self.events:
                status = event.get("data", {}).get("status")
                if event["event"] == "MIGRATION" and status in final:
                    return str(status)
            self.events.append(self._read())

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@dataclass
class VM:
    """A running guest: its process, monitor and log file."""

    process: subprocess.Popen[bytes]
    qmp: QMP
    log: Path

    def ramblocks(self) -> dict[str, int]:
        """Return ``{block name: used length}`` from HMP ``info ramblock``."""
        blocks: dict[str, int] = {}
        for line in self.qmp.hmp("info ramblock").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 4:
                # Block Name, PSize (two words), Offset, Used, Total
                blocks[fields[0]] = int(fields[-2], 16)
        return blocks


@contextlib.contextmanager
def qemu_vm(
    qemu: str, workdir: Path, name: str, extra: Sequence[str] = (), ram_mib: int = 64
) -> Iterator[VM]:
    """Start a paused TCG guest with ``extra`` arguments; quit and reap it at the end."""
    qmp_path = workdir / f"{name}.qmp"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(qmp_path))
    listener.listen(1)
    listener.settimeout(QMP_TIMEOUT)
    argv = [
        qemu,
        "-machine", "pc,accel=tcg",
        "-m", str(ram_mib),
        "-nodefaults",
        "-nographic",
        "-S",
        "-chardev", f"socket,id=qmp,path={qmp_path}",
        "-mon", "chardev=qmp,mode=control",
        *extra,
    ]  # fmt: skip
    log = workdir / f"{name}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
    try:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            pytest.fail(f"{name}: QEMU never connected its monitor:\n{log.read_text()}")
        finally:
            listener.close()
        qmp = QMP(conn)
        try:
            qmp.command(
                "migrate-set-capabilities",
                capabilities=[{"capability": "events", "state": True}],
            )
            yield VM(process, qmp, log)
        finally:
            with contextlib.suppress(OSError, AssertionError):
                qmp.command("quit")
            qmp.close()
    finally:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
