"""The example plugin passes qiochan's conformance kit and is found through its entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from qiochan_xor import QIOChannelXor, wrap

import qiochan
from qiochan import AddressError, QIOChannel
from qiochan.testing import check_two_way_channel

KEY = bytes.fromhex("5a17c3")


def _socket_pair() -> tuple[QIOChannel, QIOChannel]:
    """A connected pair of socket channels, through qiochan's own socket plugin."""
    with qiochan.listen("tcp:127.0.0.1:0") as listener:
        client = qiochan.connect(str(listener.address))
        return client, listener.accept()


def xor_pair() -> tuple[QIOChannel, QIOChannel]:
    a, b = _socket_pair()
    return QIOChannelXor(a, KEY), QIOChannelXor(b, KEY)


def test_conformance() -> None:
    check_two_way_channel(xor_pair)


def test_the_wire_carries_xored_bytes() -> None:
    with qiochan.listen("tcp:127.0.0.1:0") as listener:
        sender = qiochan.connect(str(listener.address), layers=["xor:key=5a17c3"])
        raw = listener.accept()  # no layer on this end: it sees the wire
    with sender, raw:
        sender.write_all(b"\x00\x00\x00hello")
        wire = bytearray(8)
        raw.read_all(wire)
    assert wire[:3] == KEY
    assert bytes(b ^ KEY[i % 3] for i, b in enumerate(wire[3:], 3)) == b"hello"


def test_discovered_through_the_entry_point() -> None:
    backend = qiochan.backends()["xor"]
    assert backend.kind == "layer" and backend.available
    assert backend.plugin == "xor"


def test_options_are_checked() -> None:
    a, b = _socket_pair()
    with a, b:
        for options, message in (
            ({}, "needs key"),
            ({"key": "zz"}, "not hexadecimal"),
            ({"key": "00" * 65}, "1 to 64 bytes"),
            ({"key": "5a", "mode": "x"}, "unknown option"),
        ):
            with pytest.raises(AddressError, match=message):
                wrap(a, "client", **options)


def test_qiochan_command_uses_the_layer(tmp_path: Path) -> None:
    original = tmp_path / "original.bin"
    original.write_bytes(bytes(range(256)) * 4096)
    encoded, decoded = tmp_path / "encoded.bin", tmp_path / "decoded.bin"
    qiochan_cli = [sys.executable, "-m", "qiochan"]
    layer = ["--layer", "xor:key=5a17c3"]
    for args in (
        ["send", str(original), f"file:{encoded}", *layer],
        ["recv", f"file:{encoded}", str(decoded), *layer],
    ):
        subprocess.run([*qiochan_cli, *args], capture_output=True, timeout=60, check=True)
    assert encoded.read_bytes() != original.read_bytes()
    assert decoded.read_bytes() == original.read_bytes()
