"""Real QEMU guests for migration tests: install or skip, QMP, paused TCG VMs."""

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
RAM_MIB = 64
BLOB_ADDRESS = 0x1000000
BLOB_SIZE = 16 << 20
QMP_TIMEOUT = 60.0


def install_qemu() -> str | None:
    """Return the QEMU binary, installing Debian's package when missing and possible.

    ``QIOCHAN_NO_INSTALL=1`` turns the installation off.
    """
    found = shutil.which(QEMU)
    apt = shutil.which("apt-get")
    if found or apt is None or os.geteuid() != 0 or os.environ.get("QIOCHAN_NO_INSTALL"):
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [apt, "install", "-y", "-qq", "qemu-system-x86"]
    # try the package lists at hand first, then refreshed ones
    for command in (install, [apt, "update", "-qq"], install):
        try:
            subprocess.run(command, env=env, capture_output=True, timeout=240, check=False)
        except subprocess.TimeoutExpired:
            return None
        found = shutil.which(QEMU)
        if found:
            return found
    return None


def qemu_or_skip() -> str:
    """Return the QEMU binary (see :func:`install_qemu`), or skip the test."""
    binary = install_qemu()
    if binary is None:
        pytest.skip("qemu-system-x86_64 is not installed and could not be installed")
    return binary


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
    process: subprocess.Popen[bytes]
    qmp: QMP
    log: Path


@contextlib.contextmanager
def start_vm(
    qemu: str,
    workdir: Path,
    name: str,
    *,
    incoming: bool = False,
    extra: Sequence[str] = (),
    machine: str = "pc,accel=tcg",
    capabilities: Sequence[str] = (),
) -> Iterator[VM]:
    """Start a paused TCG guest whose QMP monitor connects to a socket we listen on.

    ``capabilities`` are turned on (besides ``events``) before the test gets the VM.
    """
    qmp_path = workdir / f"{name}.qmp"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(qmp_path))
    listener.listen(1)
    listener.settimeout(QMP_TIMEOUT)
    argv = [
        qemu,
        "-machine", machine,
        "-m", str(RAM_MIB),
        "-nodefaults",
        "-display", "none",
        "-S",
        "-chardev", f"socket,id=qmp,path={qmp_path}",
        "-mon", "chardev=qmp,mode=control",
        *extra,
    ]  # fmt: skip
    if incoming:
        argv += ["-incoming", "defer"]
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
                capabilities=[{"capability": c, "state": True} for c in ("events", *capabilities)],
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


def incoming_tcp(vm: VM) -> str:
    """Make an ``-incoming defer`` guest listen on a free loopback port; return its address."""
    vm.qmp.command("migrate-incoming", uri="tcp:127.0.0.1:0")
    info = vm.qmp.command("query-migrate")
    port = next(a["port"] for a in info["socket-address"] if a["type"] == "inet")
    return f"tcp:127.0.0.1:{port}"
