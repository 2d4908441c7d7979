"""QIOChannel base class: argument checking, *_all loops, errors, async twins."""

from __future__ import annotations

import array
import asyncio
import errno
import os
import threading
from collections.abc import Callable, Sequence

import pytest

from qiochan import (
    ERR_BLOCK,
    ChannelError,
    Condition,
    Feature,
    QIOChannel,
    ReadFlag,
    Shutdown,
    WriteFlag,
)
from qiochan_memory import QIOChannelBuffer, QIOChannelNull, memory_pipe
from tests.helpers.pipechannel import PipeChannel, pipe_pair


class TricklePipe(PipeChannel):
    """Moves at most 3 bytes per call, to exercise short reads and writes."""

    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        return super().io_readv([iov[0][:3]], want_fds, flags)

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        return super().io_writev([iov[0][:3]], fds, flags)


def trickle_pair() -> tuple[TricklePipe, TricklePipe]:
    read_fd, write_fd = os.pipe()
    return TricklePipe(write_fd, writable=True), TricklePipe(read_fd, writable=False)


def test_short_reads_and_writes_are_looped_over_iovecs() -> None:
    writer, reader = trickle_pair()
    with writer, reader:
        writer.writev_all([b"ab", b"", bytearray(b"cdefg"), memoryview(b"hij")])
        parts = [bytearray(4), bytearray(0), bytearray(6)]
        reader.readv_all(parts)
        assert b"".join(parts) == b"abcdefghij"


def test_writes_accept_any_buffer_without_copying_semantics() -> None:
    buf = QIOChannelBuffer()
    values = array.array("i", [1, 2, 3])
    buf.write_all(values)
    buf.write_all(memoryview(b"xyz")[1:])
    assert buf.usage == values.itemsize * 3 + 2
    assert buf.data.tobytes().endswith(b"yz")


def test_read_into_array_fills_its_bytes() -> None:
    buf = QIOChannelBuffer()
    buf.write_all(b"\x01\x00\x00\x00\x02\x00\x00\x00")
    buf.seek(0)
    target = array.array("i", [0, 0])
    buf.read_all(target)
    assert list(target) == [1, 2]


@pytest.mark.parametrize("bad", [b"bytes", "text", 42, [b"ok", 3], [None]])
def test_bad_read_iov_is_a_type_error(bad: object) -> None:
    with QIOChannelBuffer() as buf, pytest.raises(TypeError, match=r"iov|buffer|read-only"):
        buf.readv(bad)  # type: ignore[arg-type]


def test_bad_write_data_is_a_type_error() -> None:
    with QIOChannelNull() as null:
        with pytest.raises(TypeError, match="bytes-like"):
            null.write("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="iov item 1"):
            null.writev([b"ok", 3])  # type: ignore[list-item]


def test_non_contiguous_buffer_is_refused() -> None:
    with QIOChannelNull() as null, pytest.raises(TypeError, match="contiguous"):
        null.writev([memoryview(b"abcdef")[::2]])


def test_negative_seek_is_a_channel_error() -> None:
    with QIOChannelBuffer() as buf:
        with pytest.raises(ChannelError, match="negative") as info:
            buf.seek(-1)
        assert info.value.errno == errno.EINVAL
        with pytest.raises(ChannelError, match="whence"):
            buf.seek(0, 7)
        buf.write_all(b"abc")
        assert buf.seek(-1, os.SEEK_END) == 2
        with pytest.raises(ChannelError, match="negative"):
            buf.seek(-10, os.SEEK_CUR)


def test_seek_without_support_is_enotsup() -> None:
    writer, reader = pipe_pair()
    with writer, reader:
        with pytest.raises(ChannelError) as info:
            reader.seek(0)
        assert info.value.errno == errno.ENOTSUP
        with pytest.raises(ChannelError) as info:
            reader.preadv([bytearray(1)], 0)
        assert info.value.errno == errno.ENOTSUP
        with pytest.raises(ChannelError) as info:
            reader.peerpid()
        assert info.value.errno == errno.ENOTSUP


def test_fds_without_fd_pass_are_refused() -> None:
    with QIOChannelBuffer() as buf:
        with pytest.raises(ChannelError, match="file descriptor passing"):
            buf.writev_full([b"x"], fds=[0])
        with pytest.raises(ChannelError, match="file descriptor passing"):
            buf.readv_full([bytearray(1)], want_fds=True)
        with pytest.raises(ChannelError, match="Zero Copy"):
            buf.writev_full([b"x"], flags=WriteFlag.ZERO_COPY)


def test_peek_needs_the_feature() -> None:
    writer, reader = pipe_pair()
    with writer, reader, pytest.raises(ChannelError, match="peek"):
        reader.readv_full([bytearray(1)], flags=ReadFlag.MSG_PEEK)


def test_peek_does_not_consume() -> None:
    left, right = memory_pipe()
    with left, right:
        left.write_all(b"peekaboo")
        buf = bytearray(4)
        assert right.readv_full([buf], flags=ReadFlag.MSG_PEEK) == (4, [])
        everything = bytearray(8)
        right.read_all(everything)
        assert buf == b"peek" and everything == b"peekaboo"


def test_unknown_feature_is_a_channel_error() -> None:
    with QIOChannelNull() as null:
        with pytest.raises(ChannelError, match="Unknown channel feature 99"):
            null.has_feature(99)
        with pytest.raises(ChannelError, match="Unknown"):
            null.set_feature(-1)
        null.set_feature(Feature.LISTEN)
        assert null.has_feature(Feature.LISTEN) and null.features == {Feature.LISTEN}


def test_closed_channel_refuses_everything() -> None:
    null = QIOChannelNull()
    null.set_name("sink")
    null.close()
    null.close()
    assert null.closed
    calls: list[Callable[[], object]] = [
        lambda: null.write(b"x"),
        lambda: null.read(bytearray(1)),
        lambda: null.writev_all([b"x"]),
        lambda: null.seek(0),
        null.flush,
        lambda: null.set_blocking(False),
        lambda: null.set_cork(True),
        lambda: null.create_watch(Condition.IN),
        lambda: null.wait(Condition.IN),
    ]
    for call in calls:
        with pytest.raises(ChannelError, match="'sink' is closed") as info:
            call()
        assert info.value.errno == errno.EBADF


def test_shutdown_without_feature_is_enotsup_but_hints_are_ignored() -> None:
    writer, reader = pipe_pair()
    with writer, reader:
        with pytest.raises(ChannelError) as info:
            writer.shutdown(Shutdown.WRITE)
        assert info.value.errno == errno.ENOTSUP
        writer.set_cork(True)
        writer.set_delay(False)
        assert writer.flush() == 0


def test_read_all_eof_semantics() -> None:
    with QIOChannelBuffer() as buf:
        buf.write_all(b"12345")
        buf.seek(0)
        assert buf.read_all_eof(bytearray(5)) is True
        assert buf.read_all_eof(bytearray(5)) is False
        buf.seek(2)
        with pytest.raises(ChannelError, match="Unexpected end-of-file"):
            buf.read_all(bytearray(5))
        buf.seek(2)
        relaxed = bytearray(5)
        assert buf.readv_full_all_eof([relaxed], flags=ReadFlag.RELAXED_EOF) == (True, [])
        assert relaxed[:3] == b"345"
        with pytest.raises(ChannelError, match="Unexpected end-of-file"):
            buf.readv_full_all([bytearray(1)])


def test_zero_length_reads_and_writes() -> None:
    with QIOChannelBuffer() as buf:
        buf.write_all(b"")
        buf.writev_all([])
        assert buf.read_all_eof(bytearray(0)) is True
        with pytest.raises(ChannelError, match="at least one byte"):
            buf.writev_full_all([], fds=[1])


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "non-blocking"])
def test_a_read_of_no_bytes_returns_0_at_once_and_takes_nothing(blocking: bool) -> None:
    # a blocking memory pipe used to wait here for data it could not take
    writer, reader = memory_pipe()
    with writer, reader:
        reader.set_blocking(blocking)
        assert reader.read(bytearray(0)) == 0
        assert reader.readv([bytearray(0), memoryview(bytearray(4))[:0]]) == 0
        assert reader.readv([]) == 0
        writer.write_all(b"abc")
        assert reader.read(bytearray(0)) == 0
        buf = bytearray(3)
        reader.wait(Condition.IN, timeout=5)
        assert reader.read(buf) == 3 and buf == b"abc"


def test_os_errors_become_channel_errors() -> None:
    writer, reader = pipe_pair()
    reader.close()
    with writer, pytest.raises(ChannelError, match="Unable to write to pipe") as info:
        writer.write_all(b"x" * 100)
    assert info.value.errno == errno.EPIPE
    assert isinstance(info.value, OSError)


def test_backend_must_implement_the_mandatory_methods() -> None:
    class Incomplete(QIOChannel):
        def io_readv(
            self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
        ) -> tuple[int, list[int]]:
            return 0, []

    with pytest.raises(TypeError, match="abstract") as info:
        Incomplete()  # type: ignore[abstract]
    message = str(info.value)
    for name in ("io_close", "io_create_watch", "io_set_blocking", "io_writev"):
        assert name in message
    assert "io_readv" not in message


def test_nonblocking_all_waits_for_readiness() -> None:
    left, right = memory_pipe(capacity=10)
    with left, right:
        left.set_blocking(False)
        right.set_blocking(False)
        assert not left.blocking
        assert right.read(bytearray(1)) == ERR_BLOCK
        data = os.urandom(100_000)
        received = bytearray(len(data))
        reader = threading.Thread(target=right.read_all, args=(received,))
        reader.start()
        left.write_all(data)
        reader.join(10)
        assert not reader.is_alive() and received == data


def test_wait_timeout_and_ready_condition() -> None:
    left, right = memory_pipe()
    with left, right:
        with pytest.raises(TimeoutError):
            right.wait(Condition.IN, timeout=0.01)
        assert left.wait(Condition.OUT, timeout=1) & Condition.OUT
        left.write(b"x")
        assert right.wait(Condition.IN, timeout=1) & Condition.IN


def test_wait_reports_hangup_of_a_pipe() -> None:
    writer, reader = pipe_pair()
    writer.close()
    with reader:
        assert reader.wait(Condition.IN, timeout=1) & Condition.HUP
        assert reader.read(bytearray(1)) == 0


@pytest.mark.parametrize("use_uvloop", [False, True])
def test_async_twins(use_uvloop: bool) -> None:
    if use_uvloop:
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    left, right = memory_pipe(capacity=4096)
    data = os.urandom(300_000)

    async def scenario() -> tuple[bytearray, bool]:
        received = bytearray(len(data))
        await asyncio.gather(left.awritev_all([data[:5], data[5:]]), right.aread_all(received))
        left.shutdown(Shutdown.WRITE)
        at_eof = await right.aread_all_eof(bytearray(1))
        return received, at_eof

    try:
        with left, right:
            received, at_eof = loop.run_until_complete(asyncio.wait_for(scenario(), 10))
            assert received == data and at_eof is False
            assert left.blocking and right.blocking, "async twins restore the mode they found"
    finally:
        loop.close()


def test_async_partial_eof_raises(loop: asyncio.AbstractEventLoop) -> None:
    left, right = memory_pipe()
    with left, right:
        left.write_all(b"abc")
        left.shutdown(Shutdown.WRITE)
        with pytest.raises(ChannelError, match="Unexpected end-of-file"):
            loop.run_until_complete(right.areadv_all([bytearray(10)]))


def test_name_and_repr() -> None:
    null = QIOChannelNull()
    assert null.name is None
    null.name = "migration-out"
    assert "migration-out" in repr(null)
    null.close()
    assert "closed" in repr(null)


def test_channel_error_message_and_errno() -> None:
    exc = ChannelError("Unable to read from socket: Connection reset by peer", errno.ECONNRESET)
    assert str(exc) == "Unable to read from socket: Connection reset by peer"
    assert exc.errno == errno.ECONNRESET and isinstance(exc, OSError)
    plain = ChannelError("no errno")
    assert plain.errno is None and str(plain) == "no errno"


def test_write_refuses_a_strided_view() -> None:
    with QIOChannelNull() as null, pytest.raises(TypeError, match="contiguous"):
        null.write(memoryview(b"abcdef")[::2])
