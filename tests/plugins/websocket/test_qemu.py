"""Our websocket client against QEMU's own VNC websocket server (``-vnc ...,websocket=``).

QEMU connects to a QMP socket we listen on; once ``qmp_capabilities`` is
answered its displays are up, and ``query-vnc-servers`` tells the websocket
port it picked (port 0), so nothing polls or sleeps.  Our client offers the
``binary`` subprotocol, which QEMU answers, and speaks RFB with the VNC server
behind it: version handshake, security "None", ClientInit and ServerInit.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

import qiochan
from qiochan import QIOChannel
from qiochan_websocket import QIOChannelWebsock

QEMU = "qemu-system-x86_64"
TIMEOUT = 30.0


class QMP:
    """Just enough QMP: the greeting, commands and their returns (events skipped)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(TIMEOUT)
        self.sock = sock
        self.file = sock.makefile("rwb")
        assert "QMP" in json.loads(self.file.readline())
        self.command("qmp_capabilities")

    def command(self, name: str) -> Any:
        self.file.write(json.dumps({"execute": name}).encode() + b"\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            assert line, "QEMU closed its QMP connection"
            message = json.loads(line)
            if "event" not in message:
                assert "error" not in message, message
                return message["return"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture(scope="module")
def qemu_websocket_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Run a QEMU without a guest whose VNC server has a websocket listener; yield its port."""
    binary = shutil.which(QEMU)
    if binary is None:
        pytest.skip(f"{QEMU} is not installed")
    directory = tmp_path_factory.mktemp("qemu-vnc")
    qmp_path = directory / "qmp.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(qmp_path))
        listener.listen(1)
        listener.settimeout(TIMEOUT)
        process = subprocess.Popen(
            [
                binary,
                *("-machine", "none", "-nodefaults", "-display", "none", "-S"),
                *("-vnc", f"unix:{directory / 'vnc.sock'},websocket=127.0.0.1:0"),
                *("-qmp", f"unix:{qmp_path}"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            process.kill()
            _, stderr = process.communicate()
            pytest.fail(f"QEMU did not start: {stderr.decode(errors='replace')}")
    qmp = QMP(connection)
    try:
        servers = qmp.command("query-vnc-servers")
        ports = [int(s["service"]) for vnc in servers for s in vnc["server"] if s["websocket"]]
        assert ports, f"no websocket listener in {servers}"
        yield ports[0]
    finally:
        qmp.close()
        process.terminate()
        process.communicate(timeout=TIMEOUT)


def _rfb_session(channel: QIOChannel) -> tuple[int, int, bytes]:
    """Run RFB 3.8 up to ServerInit with security None; return width, height and name."""
    version = bytearray(12)
    channel.read_all(version)
    assert version == b"RFB 003.008\n"
    channel.write_all(b"RFB 003.008\n")
    count = bytearray(1)
    channel.read_all(count)
    types = bytearray(count[0])
    channel.read_all(types)
    assert 1 in types, f"security None not offered: {list(types)}"
    channel.write_all(b"\x01")
    result = bytearray(4)
    channel.read_all(result)
    assert result == b"\0\0\0\0", "security handshake failed"
    channel.write_all(b"\x01")  # ClientInit: shared
    head = bytearray(24)
    channel.read_all(head)
    width, height = struct.unpack_from(">HH", head)
    name = bytearray(struct.unpack_from(">I", head, 20)[0])
    channel.read_all(name)
    return width, height, bytes(name)


def test_our_client_speaks_rfb_through_qemu_vnc_websocket(qemu_websocket_port: int) -> None:
    with qiochan.connect(f"ws://127.0.0.1:{qemu_websocket_port}/") as channel:
        assert isinstance(channel, QIOChannelWebsock)
        assert channel.subprotocol == "binary"  # QEMU answers the subprotocol we offer
        width, height, _name = _rfb_session(channel)
        assert width > 0 and height > 0


def test_websocket_layer_over_tcp_reaches_qemu(qemu_websocket_port: int) -> None:
    address = f"tcp:127.0.0.1:{qemu_websocket_port}"
    with qiochan.connect(address, layers=["websocket:host=qemu.example"]) as channel:
        version = bytearray(12)
        channel.read_all(version)
        assert version == b"RFB 003.008\n"


def test_qemu_refusal_reaches_us_with_its_status_line(qemu_websocket_port: int) -> None:
    """QEMU's rule, which our server copies: offered subprotocols must include binary."""
    with socket.create_connection(("127.0.0.1", qemu_websocket_port), timeout=TIMEOUT) as sock:
        master = qiochan.open_channel(f"fd:{sock.detach()}", "rw")
    channel = QIOChannelWebsock.new_client(master, "localhost", subprotocols=("chat",))
    with channel, pytest.raises(qiochan.WebsocketHandshakeError, match=r"HTTP/1\.1 400"):
        channel.handshake()
