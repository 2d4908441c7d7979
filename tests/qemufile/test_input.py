"""QEMUFile input: values, refills, peek/skip rules, in-place reads, EOF and read errors."""

from __future__ import annotations

import errno
import os
import threading
import zlib
from typing import Any

import pytest

from qiochan import ChannelError, QEMUFile
from qiochan.qemufile import IO_BUF_SIZE
from qiochan_memory import memory_pipe
from tests.helpers.qemufile import JOIN_TIMEOUT, ScriptedChannel

pytestmark = pytest.mark.usefixtures("qemufile_core")

DATA = bytes(range(256)) * 300  # 76800 bytes: more than two buffers


def reader(data: bytes = DATA, **options: Any) -> tuple[QEMUFile, ScriptedChannel]:
    channel = ScriptedChannel(data, **options)
    return QEMUFile.new_input(channel), channel


def test_values_are_big_endian() -> None:
    f, _channel = reader(bytes.fromhex("ab0102030405060708090a0b0c0d0e"))
    assert f.get_byte() == 0xAB
    assert f.get_be16() == 0x0102
    assert f.get_be32() == 0x03040506
    assert f.get_be64() == 0x0708090A0B0C0D0E
    assert f.get_error() == 0
    assert f.transferred() == 15


@pytest.mark.parametrize("chunk", [1, 3, 4096, IO_BUF_SIZE])
def test_short_reads_are_collected(chunk: int) -> None:
    f, _channel = reader(chunk=chunk)
    assert f.get_bytes(5) == DATA[:5]
    assert f.get_be64() == int.from_bytes(DATA[5:13], "big")
    assert bytes(f.peek_buffer(300)) == DATA[13:313]
    assert bytes(f.get_buffer_in_place(40000)) == DATA[13:40013]
    out = bytearray(len(DATA) - 40013)
    assert f.get_buffer(out) == len(out)
    assert out == DATA[40013:]
    assert f.get_error() == 0


def test_end_of_stream_latches_eio_and_reads_zeros() -> None:
    f, channel = reader(b"\x01\x02\x03")
    assert f.get_be32() == 0x01020300
    assert f.get_error() == -errno.EIO
    ret, exc = f.get_error_obj()
    assert ret == -errno.EIO
    assert isinstance(exc, ChannelError)
    reads = channel.reads
    assert f.get_be64() == 0
    assert f.get_byte() == 0
    assert f.peek_byte() == 0
    assert f.get_bytes(4) == b""
    assert f.get_buffer(bytearray(10)) == 0
    assert bytes(f.get_buffer_in_place(4)) == b""
    assert channel.reads == reads  # nothing is read once an error is latched
    assert f.fclose() == -errno.EIO


def test_buffered_data_stays_readable_after_an_error() -> None:
    f, _channel = reader(b"\x00\x00\x00\x05hello")
    assert f.peek_byte(8) == ord("o")  # the whole input is buffered
    f.set_error(-errno.EPIPE)
    assert f.get_be32() == 5
    assert f.get_bytes(5) == b"hello"
    assert f.get_error() == -errno.EPIPE


def test_read_error_latches_eio_with_the_channel_exception() -> None:
    f, _channel = reader(fail_after=6)
    assert f.get_be32() == int.from_bytes(DATA[:4], "big")
    assert f.get_be32() == int.from_bytes(DATA[4:6], "big") << 16
    ret, exc = f.get_error_obj()
    assert ret == -errno.EIO
    assert isinstance(exc, ChannelError)
    assert exc.errno == errno.ECONNRESET


def test_peek_buffer_does_not_consume_and_honours_offset() -> None:
    f, _channel = reader()
    assert bytes(f.peek_buffer(4, 2)) == DATA[2:6]
    assert bytes(f.peek_buffer(2)) == DATA[:2]
    assert bytes(f.peek_buffer(10, IO_BUF_SIZE - 10)) == DATA[IO_BUF_SIZE - 10 : IO_BUF_SIZE]
    assert f.get_bytes(6) == DATA[:6]
    assert bytes(f.peek_buffer(0)) == b""


@pytest.mark.parametrize(
    ("size", "offset"),
    [(IO_BUF_SIZE + 1, 0), (10, IO_BUF_SIZE - 5), (1, IO_BUF_SIZE), (-1, 0), (1, -1)],
)
def test_peeking_beyond_the_buffer_raises(size: int, offset: int) -> None:
    f, channel = reader()
    with pytest.raises(ValueError):
        f.peek_buffer(size, offset)
    assert channel.reads == 0


@pytest.mark.parametrize("offset", [IO_BUF_SIZE, -1])
def test_peek_byte_beyond_the_buffer_raises(offset: int) -> None:
    f, _channel = reader()
    with pytest.raises(ValueError):
        f.peek_byte(offset)


def test_peek_byte_refills_once() -> None:
    f, _channel = reader(chunk=10)
    assert f.peek_byte(3) == DATA[3]
    assert f.peek_byte(9) == DATA[9]
    assert f.peek_byte(15) == DATA[15]  # one more refill brings it
    assert f.peek_byte(100) == 0  # beyond what one refill gives: 0, as in QEMU
    assert f.get_error() == 0
    assert f.get_byte() == DATA[0]


def test_skip_only_moves_within_the_buffered_data() -> None:
    f, _channel = reader(chunk=100)
    f.peek_byte()
    f.skip(10)
    assert f.get_byte() == DATA[10]
    f.skip(500)  # beyond the 89 bytes buffered: ignored
    assert f.get_byte() == DATA[11]
    with pytest.raises(ValueError):
        f.skip(-1)


def test_get_buffer_in_place_returns_a_view_of_the_internal_buffer() -> None:
    f, _channel = reader()
    first = f.get_buffer_in_place(4096)
    second = f.get_buffer_in_place(4096)
    assert bytes(first) == DATA[:4096]
    assert bytes(second) == DATA[4096:8192]
    assert first.obj is second.obj is f.peek_buffer(1).obj
    large = f.get_buffer_in_place(IO_BUF_SIZE)  # too large to stay in place: a copy
    assert bytes(large) == DATA[8192 : 8192 + IO_BUF_SIZE]
    assert large.obj is not first.obj


def test_get_buffer_in_place_moves_the_tail_to_make_room() -> None:
    f, _channel = reader()
    f.get_bytes(IO_BUF_SIZE - 100)
    view = f.get_buffer_in_place(4096)  # straddles the first refill
    assert bytes(view) == DATA[IO_BUF_SIZE - 100 : IO_BUF_SIZE + 3996]
    assert view.obj is f.peek_buffer(1).obj


def test_get_buffer_in_place_is_short_at_end_of_stream() -> None:
    f, _channel = reader(b"abc")
    assert bytes(f.get_buffer_in_place(10)) == b"abc"
    assert f.get_error() == -errno.EIO


def test_get_buffer_reads_large_buffers_and_counts_them() -> None:
    f, _channel = reader(chunk=5000)
    assert f.get_byte() == 0
    out = bytearray(len(DATA) - 1)
    assert f.get_buffer(memoryview(out)) == len(out)
    assert out == DATA[1:]
    assert f.transferred() == len(DATA)
    assert f.get_buffer(bytearray(1)) == 0
    assert f.get_error() == -errno.EIO


def test_get_buffer_needs_a_writable_buffer() -> None:
    f, _channel = reader()
    with pytest.raises(TypeError):
        f.get_buffer(b"read-only")


@pytest.mark.parametrize("size", [-1])
def test_negative_sizes_raise(size: int) -> None:
    f, _channel = reader()
    for call in (f.get_bytes, f.get_buffer_in_place, f.skip):
        with pytest.raises(ValueError):
            call(size)
    with pytest.raises(ValueError):
        f.get_to_fd(1, size)


def test_counted_strings() -> None:
    f, _channel = reader(b"\x03abc\x00\x05xy")
    assert f.get_counted_string() == b"abc"
    assert f.get_counted_string() == b""
    assert f.get_error() == 0
    assert f.get_counted_string() == b""  # truncated
    assert f.get_error() == -errno.EIO


def test_compression_data_round_trip_and_garbage() -> None:
    packed = zlib.compress(b"z" * 5000, 1)
    block = len(packed).to_bytes(4, "big") + packed
    f, _channel = reader(block + b"\x00\x00\x00\x03abc")
    assert f.get_compression_data() == b"z" * 5000
    assert f.get_compression_data() == b""
    ret, exc = f.get_error_obj()
    assert ret == -errno.EINVAL
    assert isinstance(exc, ChannelError)


def test_compression_block_larger_than_the_buffer_is_refused() -> None:
    f, channel = reader((IO_BUF_SIZE).to_bytes(4, "big") + bytes(IO_BUF_SIZE))
    assert f.get_compression_data() == b""
    assert f.get_error() == -errno.EINVAL
    assert channel.position < IO_BUF_SIZE + 4  # the oversized block was not read


def test_compressed_block_inflating_beyond_32k_is_refused() -> None:
    packed = zlib.compress(bytes(IO_BUF_SIZE + 1))
    f, _channel = reader(len(packed).to_bytes(4, "big") + packed)
    assert f.get_compression_data() == b""
    assert f.get_error() == -errno.EINVAL


def test_get_to_fd_copies_to_a_pipe() -> None:
    f, _channel = reader(DATA[:50000], chunk=7000)
    read_fd, write_fd = os.pipe()
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(read_fd, 65536):
            received.extend(chunk)

    thread = threading.Thread(target=drain)
    thread.start()
    try:
        assert f.get_byte() == 0
        assert f.get_to_fd(write_fd, 40000) == 0
        assert f.get_to_fd(write_fd, 20000) == -errno.EIO  # the stream ends first
    finally:
        os.close(write_fd)
        thread.join(JOIN_TIMEOUT)
        os.close(read_fd)
    assert received == DATA[1:50000]


def test_get_to_fd_reports_the_write_error() -> None:
    f, _channel = reader()
    read_fd, write_fd = os.pipe()
    os.close(write_fd)
    try:
        assert f.get_to_fd(write_fd, 10) == -errno.EBADF
    finally:
        os.close(read_fd)


def test_non_blocking_channel_waits_for_data() -> None:
    f, channel = reader(chunk=1000, would_block=True)
    f.set_blocking(False)
    assert f.get_bytes(3000) == DATA[:3000]
    assert channel.blocked >= 3
    assert f.get_error() == 0


def test_non_blocking_memory_pipe_reader_waits_for_the_writer() -> None:
    a, b = memory_pipe()
    f = QEMUFile.new_input(b)
    f.set_blocking(False)
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(f.get_be64()))
    thread.start()
    a.write_all(b"\x00\x00\x00\x00\x00\x00\x01\x02")
    thread.join(JOIN_TIMEOUT)
    assert results == [0x102]
    assert f.get_error() == 0
    a.close()
    assert f.fclose() == 0


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("put_byte", (1,)),
        ("put_be16", (1,)),
        ("put_be32", (1,)),
        ("put_be64", (1,)),
        ("put_buffer", (b"x",)),
        ("put_buffer_async", (b"x",)),
        ("put_counted_string", ("x",)),
        ("put_compression_data", (b"x",)),
        ("buffer_empty", ()),
    ],
)
def test_writing_an_input_stream_raises(method: str, args: tuple[Any, ...]) -> None:
    f, _channel = reader()
    with pytest.raises(ChannelError) as info:
        getattr(f, method)(*args)
    assert info.value.errno == errno.EINVAL
    assert f.get_byte() == DATA[0]
