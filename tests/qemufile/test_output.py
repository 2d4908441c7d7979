"""QEMUFile output: values, buffering, iovec batching, zero-copy writes, compression, counters."""

from __future__ import annotations

import errno
import mmap
import threading
import zlib
from typing import Any

import pytest

from qiochan import ChannelError, QEMUFile
from qiochan.qemufile import IO_BUF_SIZE, MAX_IOV_SIZE, compress_bound
from qiochan_memory import QIOChannelNull, memory_pipe
from tests.helpers.qemufile import JOIN_TIMEOUT, ScriptedChannel, private_anonymous_mmap

pytestmark = pytest.mark.usefixtures("qemufile_core")

PAGE = mmap.PAGESIZE


def output() -> tuple[QEMUFile, ScriptedChannel]:
    channel = ScriptedChannel()
    return QEMUFile.new_output(channel), channel


def test_values_are_big_endian_and_coalesce_into_one_iovec() -> None:
    f, channel = output()
    f.put_byte(0xAB)
    f.put_be16(0x0102)
    f.put_be32(0x03040506)
    f.put_be64(0x0708090A0B0C0D0E)
    f.put_buffer(b"xy")
    assert channel.writes == []
    f.fflush()
    assert channel.written == bytes.fromhex("ab0102030405060708090a0b0c0d0e") + b"xy"
    assert [len(iov) for iov in channel.writes] == [1]


@pytest.mark.parametrize(
    ("method", "top"),
    [("put_byte", 255), ("put_be16", 2**16 - 1), ("put_be32", 2**32 - 1), ("put_be64", 2**64 - 1)],
)
def test_extreme_values_are_accepted(method: str, top: int) -> None:
    f, channel = output()
    getattr(f, method)(0)
    getattr(f, method)(top)
    f.fflush()
    width = (top.bit_length() + 7) // 8
    assert channel.written == bytes(width) + top.to_bytes(width, "big")


@pytest.mark.parametrize(
    ("method", "bad"),
    [
        ("put_byte", 256),
        ("put_byte", -1),
        ("put_be16", 2**16),
        ("put_be16", -1),
        ("put_be32", 2**32),
        ("put_be32", -5),
        ("put_be64", 2**64),
        ("put_be64", -(2**63)),
    ],
)
@pytest.mark.parametrize("filled", [0, IO_BUF_SIZE - 3], ids=["fast-path", "buffer-edge"])
def test_out_of_range_value_raises_before_writing(method: str, bad: int, filled: int) -> None:
    f, channel = output()
    f.put_buffer(bytes(filled))
    before = f.transferred_noflush()
    with pytest.raises(ValueError, match=method):
        getattr(f, method)(bad)
    assert f.transferred_noflush() == before
    assert f.get_error() == 0
    f.fflush()
    assert channel.written == bytes(filled)


@pytest.mark.parametrize("method", ["put_byte", "put_be16", "put_be32", "put_be64"])
@pytest.mark.parametrize("bad", [1.5, "7", None])
def test_non_integer_value_raises_type_error(method: str, bad: Any) -> None:
    f, _channel = output()
    with pytest.raises(TypeError):
        getattr(f, method)(bad)
    assert f.buffer_empty()


def test_bad_value_raises_even_with_an_error_latched() -> None:
    f, _channel = output()
    f.set_error(-errno.EPIPE)
    with pytest.raises(ValueError):
        f.put_be32(2**32)


def test_put_buffer_copies_the_data() -> None:
    f, channel = output()
    source = bytearray(b"abc")
    f.put_buffer(source)
    source[:] = b"xyz"
    f.fflush()
    assert channel.written == b"abc"


def test_put_buffer_accepts_any_bytes_like_object() -> None:
    import array

    f, channel = output()
    f.put_buffer(array.array("H", [0x0102]))
    f.put_buffer(memoryview(b"abcdef")[::2])
    f.put_buffer(memoryview(b"QR").cast("c"))
    with pytest.raises(TypeError):
        f.put_buffer("text")
    f.fflush()
    assert channel.written == array.array("H", [0x0102]).tobytes() + b"ace" + b"QR"


def test_put_buffer_async_does_not_copy() -> None:
    f, channel = output()
    source = bytearray(b"abc")
    f.put_be16(1)
    f.put_buffer_async(source)
    source[0] = ord("x")
    f.fflush()
    assert channel.written == b"\x00\x01xbc"
    assert [len(iov) for iov in channel.writes] == [2]


def test_buffer_is_flushed_when_32k_are_buffered() -> None:
    f, channel = output()
    f.put_buffer(bytes(IO_BUF_SIZE - 1))
    assert channel.writes == []
    f.put_byte(1)
    assert [len(b"".join(iov)) for iov in channel.writes] == [IO_BUF_SIZE]
    f.put_buffer(b"\x02" * (IO_BUF_SIZE + 100))
    assert [len(b"".join(iov)) for iov in channel.writes] == [IO_BUF_SIZE, IO_BUF_SIZE]
    assert f.transferred_noflush() == 2 * IO_BUF_SIZE + 100
    f.fflush()
    assert len(channel.written) == 2 * IO_BUF_SIZE + 100
    assert channel.written[-101:] == b"\x02" * 101


def test_value_straddling_the_buffer_end_is_split_across_flushes() -> None:
    f, channel = output()
    f.put_buffer(bytes(IO_BUF_SIZE - 3))
    f.put_be64(0x1122334455667788)
    assert len(channel.written) == IO_BUF_SIZE
    f.fflush()
    assert channel.written[-8:] == bytes.fromhex("1122334455667788")


def test_the_64th_iovec_triggers_one_vectored_write() -> None:
    f, channel = output()
    pages = [bytes([n]) * 100 for n in range(MAX_IOV_SIZE // 2)]
    for n, page in enumerate(pages[:-1]):
        f.put_be64(n)
        f.put_buffer_async(page)
    f.put_be64(len(pages) - 1)
    assert channel.writes == []  # 63 iovecs queued
    f.put_buffer_async(pages[-1])
    assert [len(iov) for iov in channel.writes] == [MAX_IOV_SIZE]
    assert f.buffer_empty()
    expected = b"".join(n.to_bytes(8, "big") + page for n, page in enumerate(pages))
    assert channel.written == expected


def test_a_buffer_segment_as_64th_iovec_flushes_at_once() -> None:
    f, channel = output()
    for n in range(MAX_IOV_SIZE - 1):
        f.put_buffer_async(bytes([n]))  # distinct objects: no coalescing
    assert channel.writes == []
    f.put_byte(0xFF)
    assert [len(iov) for iov in channel.writes] == [MAX_IOV_SIZE]
    assert channel.written == bytes(range(MAX_IOV_SIZE - 1)) + b"\xff"


def test_each_flush_is_one_vectored_write() -> None:
    f, channel = output()
    page = bytes(range(256)) * 16
    f.put_be64(1)
    f.put_buffer_async(page)
    f.put_be32(2)
    f.put_buffer(b"tail")
    f.fflush()
    f.fflush()  # nothing queued: no write
    assert len(channel.writes) == 1
    assert channel.writes[0] == [(1).to_bytes(8, "big"), page, (2).to_bytes(4, "big") + b"tail"]


def test_adjacent_async_buffers_are_coalesced() -> None:
    f, channel = output()
    block = bytearray(range(256)) * 80
    view = memoryview(block)
    f.put_buffer_async(view[0:4096])
    f.put_buffer_async(view[4096:8192])  # adjacent: extends the iovec
    f.put_buffer_async(view[12288:16384])  # gap: new iovec
    f.put_buffer_async(view[16384:16484], may_free=True)  # adjacent but may_free differs
    f.put_buffer_async(bytes(view[16484:16584]))  # another object
    f.fflush()
    assert channel.writes == [
        [block[:8192], block[12288:16384], block[16384:16484], block[16484:16584]]
    ]


def test_may_free_releases_whole_mmap_pages_after_the_flush() -> None:
    mapping = private_anonymous_mmap(4 * PAGE)
    try:
        mapping[:] = b"\xaa" * (4 * PAGE)
        f, channel = output()
        f.put_buffer_async(memoryview(mapping)[PAGE : 3 * PAGE], may_free=True)
        assert mapping[PAGE : PAGE + 4] == b"\xaa" * 4  # still there before the flush
        f.fflush()
        assert channel.written == b"\xaa" * (2 * PAGE)
        assert mapping[PAGE : 3 * PAGE] == bytes(2 * PAGE)
        assert mapping[:PAGE] == b"\xaa" * PAGE
        assert mapping[3 * PAGE :] == b"\xaa" * PAGE
    finally:
        mapping.close()


def test_may_free_leaves_partial_pages_alone() -> None:
    mapping = private_anonymous_mmap(4 * PAGE)
    try:
        mapping[:] = b"\xbb" * (4 * PAGE)
        f, _channel = output()
        f.put_buffer_async(memoryview(mapping)[100 : 2 * PAGE + 100], may_free=True)
        f.fflush()
        assert mapping[:PAGE] == b"\xbb" * PAGE  # the first page is only partly queued
        assert mapping[PAGE : 2 * PAGE] == bytes(PAGE)
        assert mapping[2 * PAGE :] == b"\xbb" * (2 * PAGE)
    finally:
        mapping.close()


def test_may_free_regions_adjacent_in_memory_are_released_together() -> None:
    mapping = private_anonymous_mmap(4 * PAGE)
    half = PAGE // 2
    try:
        mapping[:] = b"\xcc" * (4 * PAGE)
        f, channel = output()
        view = memoryview(mapping)
        f.put_buffer_async(view[half : PAGE + half], may_free=True)
        f.put_be32(7)  # separates the two iovecs
        f.put_buffer_async(view[PAGE + half : 2 * PAGE + half], may_free=True)
        f.fflush()
        view.release()
        assert len(channel.writes[0]) == 3
        # neither region holds a whole page; together they hold page 1
        assert mapping[PAGE : 2 * PAGE] == bytes(PAGE)
        assert mapping[:PAGE] == b"\xcc" * PAGE
        assert mapping[2 * PAGE :] == b"\xcc" * (2 * PAGE)
    finally:
        mapping.close()


def test_may_free_ignores_memory_that_is_not_mmapped() -> None:
    f, channel = output()
    data = bytearray(b"\x11" * (2 * PAGE))
    f.put_buffer_async(data, may_free=True)
    f.fflush()
    assert channel.written == data == b"\x11" * (2 * PAGE)


def test_counted_strings() -> None:
    f, channel = output()
    f.put_counted_string("é!")
    f.put_counted_string(b"ab")
    f.put_counted_string("x" * 255)
    f.fflush()
    assert channel.written == b"\x03\xc3\xa9!" + b"\x02ab" + b"\xff" + b"x" * 255


@pytest.mark.parametrize("text", ["x" * 256, b"y" * 300, "é" * 128])
def test_counted_string_of_256_bytes_or_more_raises(text: str | bytes) -> None:
    f, _channel = output()
    with pytest.raises(ValueError, match="too long"):
        f.put_counted_string(text)
    assert f.buffer_empty()


def test_put_compression_data_writes_length_and_zlib_stream() -> None:
    f, channel = output()
    data = b"page " * 800
    n = f.put_compression_data(data)
    packed = zlib.compress(data, 1)
    assert n == 4 + len(packed)
    f.fflush()
    assert channel.written == len(packed).to_bytes(4, "big") + packed
    assert zlib.decompress(channel.written[4:]) == data


def test_put_compression_data_returns_minus_one_when_it_cannot_fit() -> None:
    f, _channel = output()
    f.put_buffer(bytes(IO_BUF_SIZE - compress_bound(4096)))
    assert f.put_compression_data(bytes(4096)) == -1
    assert f.transferred_noflush() == IO_BUF_SIZE - compress_bound(4096)
    assert f.put_compression_data(bytes(IO_BUF_SIZE)) == -1
    f.fflush()
    assert f.put_compression_data(bytes(4096)) > 0


def test_put_compression_data_checks_the_level() -> None:
    f, _channel = output()
    with pytest.raises(ValueError, match="level"):
        f.put_compression_data(b"x", level=10)


def test_put_qemu_file_moves_the_buffered_bytes() -> None:
    f, channel = output()
    scratch = QEMUFile.new_output(QIOChannelNull())
    scratch.put_be32(7)
    scratch.put_buffer(b"abc")
    assert f.put_qemu_file(scratch) == 7
    assert scratch.buffer_empty()
    assert f.put_qemu_file(scratch) == 0
    f.fflush()
    assert channel.written == b"\x00\x00\x00\x07abc"
    with pytest.raises(ValueError):
        f.put_qemu_file(f)
    with pytest.raises(ChannelError):
        f.put_qemu_file(QEMUFile.new_input(QIOChannelNull()))


def test_transfer_counters() -> None:
    f, channel = output()
    f.put_be64(1)
    f.put_buffer_async(b"x" * 100)
    f.put_byte(2)
    assert f.transferred_noflush() == 109
    assert channel.written == b""
    assert not f.buffer_empty()
    assert f.transferred() == 109
    assert len(channel.written) == 109
    assert f.buffer_empty()
    assert f.transferred_noflush() == 109


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("get_byte", ()),
        ("get_be16", ()),
        ("get_be32", ()),
        ("get_be64", ()),
        ("peek_byte", (0,)),
        ("peek_buffer", (4,)),
        ("get_buffer", (bytearray(4),)),
        ("get_bytes", (4,)),
        ("get_buffer_in_place", (4,)),
        ("skip", (1,)),
        ("get_counted_string", ()),
        ("get_compression_data", ()),
        ("get_to_fd", (1, 4)),
    ],
)
def test_reading_an_output_stream_raises(method: str, args: tuple[Any, ...]) -> None:
    f, _channel = output()
    f.put_be64(1)
    with pytest.raises(ChannelError) as info:
        getattr(f, method)(*args)
    assert info.value.errno == errno.EINVAL


def test_non_blocking_writer_waits_for_room() -> None:
    a, b = memory_pipe(capacity=1000)
    f = QEMUFile.new_output(a)
    f.set_blocking(False)
    data = bytes(range(256)) * 200
    received = bytearray(2 * len(data))
    thread = threading.Thread(target=b.read_all, args=(received,))
    thread.start()
    f.put_buffer(data)
    f.put_buffer_async(data)
    f.fflush()
    thread.join(JOIN_TIMEOUT)
    assert received == data + data
    assert f.fclose() == 0
    b.close()
