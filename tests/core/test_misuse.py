"""Concurrent misuse is detected: a second reader (or writer) of one channel gets EBUSY at once."""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import Callable, Iterator, Sequence

import pytest

from qiochan import ChannelError, ReadFlag, WriteFlag
from qiochan_memory import memory_pipe
from tests.helpers.pipechannel import PipeChannel, pipe_pair

TIMEOUT = 30.0


class GatedPipe(PipeChannel):
    """A pipe end whose I/O, once entered, waits for :attr:`release` (the test knows it is in)."""

    def __init__(self, end: PipeChannel) -> None:
        super().__init__(end.fd, end.writable)
        end.fd = -1  # this channel owns the fd now
        self.entered = threading.Event()
        self.release = threading.Event()

    def _gate(self) -> None:
        self.entered.set()
        assert self.release.wait(TIMEOUT)

    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        self._gate()
        return super().io_readv(iov, want_fds, flags)

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        self._gate()
        return super().io_writev(iov, fds, flags)


@pytest.fixture
def gated() -> Iterator[tuple[GatedPipe, GatedPipe]]:
    """(writer, reader), both gated."""
    writer, reader = pipe_pair()
    pair = GatedPipe(writer), GatedPipe(reader)
    yield pair
    for end in pair:
        end.release.set()
        end.close()


def _busy(call: Callable[[], object]) -> ChannelError:
    with pytest.raises(ChannelError) as info:
        call()
    assert info.value.errno == errno.EBUSY
    return info.value


def _in_thread(call: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def test_a_second_reader_gets_ebusy_at_once(gated: tuple[GatedPipe, GatedPipe]) -> None:
    writer, reader = gated
    writer.release.set()
    writer.write_all(b"abcd")
    first = bytearray(2)
    thread = _in_thread(lambda: reader.read_all(first))
    assert reader.entered.wait(TIMEOUT)
    error = _busy(lambda: reader.read(bytearray(1)))
    assert "one reader at a time" in str(error)
    _busy(lambda: reader.read_all(bytearray(1)))
    _busy(lambda: reader.readv_full([bytearray(1)]))
    _busy(lambda: reader.readv_all_eof([bytearray(1)]))
    reader.release.set()
    thread.join(TIMEOUT)
    assert first == b"ab"
    second = bytearray(2)
    reader.read_all(second)  # the guard is free again
    assert second == b"cd"


def test_a_second_writer_gets_ebusy_at_once(gated: tuple[GatedPipe, GatedPipe]) -> None:
    writer, reader = gated
    thread = _in_thread(lambda: writer.write_all(b"first"))
    assert writer.entered.wait(TIMEOUT)
    _busy(lambda: writer.write(b"x"))
    _busy(lambda: writer.writev_all([b"x"]))
    _busy(lambda: writer.writev_full([b"x"]))
    writer.release.set()
    thread.join(TIMEOUT)
    reader.release.set()
    got = bytearray(5)
    reader.read_all(got)
    assert got == b"first"


def test_reading_and_writing_at_once_is_fine() -> None:
    left, right = memory_pipe(capacity=4)
    with left, right:
        received = bytearray(100_000)
        thread = _in_thread(lambda: right.read_all(received))
        left.write_all(bytes(range(256)) * 390 + bytes(160))  # blocks on the small pipe
        thread.join(TIMEOUT)
        assert received[:256] == bytes(range(256))


def test_two_concurrent_async_readers_or_writers(loop: asyncio.AbstractEventLoop) -> None:
    left, right = memory_pipe(capacity=16)

    async def scenario() -> None:
        reading = asyncio.create_task(right.aread_all(bytearray(8)))
        writing = asyncio.create_task(left.awrite_all(bytes(64)))  # more than the pipe holds
        await asyncio.sleep(0)  # both start, then wait for readiness
        with pytest.raises(ChannelError) as info:
            await right.aread_all(bytearray(1))
        assert info.value.errno == errno.EBUSY
        with pytest.raises(ChannelError) as info:
            await left.awrite_all(b"x")
        assert info.value.errno == errno.EBUSY
        await reading
        rest = bytearray(56)
        await right.aread_all(rest)
        await writing

    with left, right:
        loop.run_until_complete(asyncio.wait_for(scenario(), TIMEOUT))
        # the async twins leave the blocking mode as they found it
        assert left.blocking and right.blocking


def test_async_twins_restore_non_blocking_mode_too(loop: asyncio.AbstractEventLoop) -> None:
    left, right = memory_pipe()
    with left, right:
        right.set_blocking(False)
        left.write_all(b"xy")
        loop.run_until_complete(asyncio.wait_for(right.aread_all(bytearray(2)), TIMEOUT))
        assert not right.blocking
        assert right.read(bytearray(1)) == -2  # ERR_BLOCK: still non-blocking
