"""QEMUFile's reading helpers for stream walkers: peek_available, discard, tell (both cores)."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from qiochan import ChannelError, QEMUFile
from qiochan.qemufile import IO_BUF_SIZE
from tests.helpers.qemufile import ScriptedChannel

pytestmark = pytest.mark.usefixtures("qemufile_core")

DATA = bytes(range(256)) * 500  # 128000 bytes: several buffers


def reader(data: bytes = DATA, **options: Any) -> tuple[QEMUFile, ScriptedChannel]:
    channel = ScriptedChannel(data, **options)
    return QEMUFile.new_input(channel), channel


def test_peek_available_reads_only_while_short() -> None:
    f, channel = reader(chunk=100)
    view = f.peek_available(10)
    assert bytes(view) == DATA[:100]  # everything one read brought
    reads = channel.reads
    assert bytes(f.peek_available(100)) == DATA[:100]
    assert channel.reads == reads  # enough buffered: no read
    assert bytes(f.peek_available(150)) == DATA[:200]
    assert f.get_bytes(3) == DATA[:3]
    assert bytes(f.peek_available(0)) == DATA[3:200]
    assert f.tell() == 3


def test_peek_available_at_the_end_returns_the_rest_and_latches() -> None:
    f, _channel = reader(b"abc")
    assert bytes(f.peek_available(5)) == b"abc"
    assert f.get_error() == -errno.EIO
    assert f.get_bytes(3) == b"abc"  # buffered bytes are still handed out


@pytest.mark.parametrize("size", [-1, IO_BUF_SIZE + 1])
def test_peek_available_beyond_the_buffer_raises(size: int) -> None:
    f, _channel = reader()
    with pytest.raises(ValueError):
        f.peek_available(size)


@pytest.mark.parametrize("chunk", [1, 4096, IO_BUF_SIZE])
def test_discard_consumes_any_amount_through_the_buffer(chunk: int) -> None:
    f, _channel = reader(chunk=chunk)
    assert f.get_be16() == int.from_bytes(DATA[:2], "big")
    assert f.discard(100_000) == 100_000
    assert f.tell() == 100_002
    assert f.get_byte() == DATA[100_002]
    assert f.discard(0) == 0
    assert f.discard(len(DATA)) == len(DATA) - 100_003  # the rest, then the end
    assert f.get_error() == -errno.EIO
    assert f.tell() == len(DATA)


def test_discard_and_tell_check_their_use() -> None:
    f, _channel = reader()
    with pytest.raises(ValueError):
        f.discard(-1)
    with pytest.raises(TypeError):
        f.discard(1.5)  # type: ignore[arg-type]
    out = QEMUFile.open_buffer("w")
    out.put_be32(7)
    assert out.tell() == 4  # an output stream: bytes written so far
    with pytest.raises(ChannelError):
        out.discard(1)
    out.fclose()
    f.fclose()
    with pytest.raises(ChannelError):
        f.tell()


def test_tell_counts_what_the_reader_consumed() -> None:
    f, _channel = reader(chunk=1000)
    assert f.tell() == 0
    f.peek_available(500)
    assert f.tell() == 0
    f.get_buffer_in_place(4096)
    assert f.tell() == 4096
    assert f.get_bytes(10) == DATA[4096:4106]
    assert f.tell() == 4106
