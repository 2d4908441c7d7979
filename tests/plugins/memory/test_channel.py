"""qiochan_memory: QIOChannelBuffer as a seekable file, QIOChannelNull, memory pipes."""

from __future__ import annotations

import os
import threading

import pytest

import qiochan
from qiochan import ERR_BLOCK, AddressError, ChannelError, Condition, Feature, Shutdown
from qiochan_memory import QIOChannelBuffer, QIOChannelNull, memory_pipe


def test_buffer_reads_and_writes_at_offset() -> None:
    with QIOChannelBuffer(capacity=4) as buf:
        assert buf.has_feature(Feature.SEEKABLE) and buf.capacity == 4
        buf.writev_all([b"hello", b" ", b"world"])
        assert (buf.usage, buf.offset) == (11, 11)
        assert buf.read(bytearray(4)) == 0, "reading at usage is EOF"
        buf.seek(6)
        out = bytearray(5)
        buf.read_all(out)
        assert out == b"world"
        buf.seek(0)
        buf.write_all(b"J")
        assert buf.data.tobytes() == b"Jello world"
        assert buf.getvalue() == b"Jello world"


def test_write_past_usage_zero_fills_the_gap() -> None:
    with QIOChannelBuffer() as buf:
        buf.write_all(b"ab")
        buf.seek(5)
        buf.write_all(b"z")
        assert buf.data.tobytes() == b"ab\x00\x00\x00z" and buf.usage == 6
        assert buf.seek(0, os.SEEK_END) == 6
        assert buf.seek(-2, os.SEEK_CUR) == 4


def test_data_view_survives_growth() -> None:
    with QIOChannelBuffer() as buf:
        buf.write_all(b"first")
        view = buf.data
        buf.write_all(b"x" * 100_000)
        assert view.tobytes() == b"first" and view.readonly


def test_positioned_io_leaves_offset_alone() -> None:
    with QIOChannelBuffer() as buf:
        buf.write_all(b"0123456789")
        assert buf.pwritev([b"AB"], 3) == 2
        out = bytearray(4)
        assert buf.preadv([out], 2) == 4
        assert out == b"2AB5" and buf.offset == 10
        with pytest.raises(ChannelError, match="negative"):
            buf.preadv([out], -1)


def test_buffer_shutdown() -> None:
    with QIOChannelBuffer() as buf:
        buf.write_all(b"data")
        buf.shutdown(Shutdown.WRITE)
        with pytest.raises(ChannelError, match="shut down"):
            buf.write(b"x")
        buf.seek(0)
        buf.shutdown(Shutdown.READ)
        assert buf.read(bytearray(4)) == 0


def test_buffer_rejects_negative_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        QIOChannelBuffer(-1)


def test_null_discards_and_reads_eof() -> None:
    null = QIOChannelNull()
    assert null.write(b"abc") == 3
    assert null.writev([b"ab", b"cde"]) == 5
    assert null.read(bytearray(3)) == 0
    assert null.wait(Condition.IN | Condition.OUT, timeout=0) == Condition.IN | Condition.OUT
    null.set_blocking(False)
    null.close()
    with pytest.raises(ChannelError):
        null.write(b"x")


def test_memory_pipe_nonblocking_and_shutdown() -> None:
    left, right = memory_pipe(capacity=4)
    with left, right:
        left.set_blocking(False)
        assert left.write(b"123456") == 4
        assert left.write(b"56") == ERR_BLOCK
        right.read_all(bytearray(4))
        right.shutdown(Shutdown.READ)
        with pytest.raises(ChannelError, match="Broken pipe"):
            left.write(b"x")
        assert right.wait(Condition.IN, timeout=1) & Condition.IN


def test_memory_pipe_close_wakes_blocked_writer() -> None:
    left, right = memory_pipe(capacity=1)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            left.write_all(b"more than fits")
        except ChannelError as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    right.read_all(bytearray(1))
    right.close()
    thread.join(5)
    left.close()
    assert not thread.is_alive() and errors


def test_memory_pipe_rejects_bad_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        memory_pipe(0)


def test_open_channel_by_address() -> None:
    with qiochan.open_channel("buffer:", "rw", capacity=16) as buf:
        assert isinstance(buf, QIOChannelBuffer) and buf.capacity == 16
    with qiochan.open_channel("null:", "w") as null:
        assert isinstance(null, QIOChannelNull)
    with pytest.raises(AddressError, match="takes no options"):
        qiochan.open_channel("null:x", "w")
    with pytest.raises(AddressError, match="unknown options"):
        qiochan.open_channel("buffer:", "w", size=3)
