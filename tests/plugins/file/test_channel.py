"""QIOChannelFile: regular files (seek, positioned I/O, always-ready watches), pipes, FIFOs."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from qiochan.channel import ERR_BLOCK, Feature
from qiochan.errors import ChannelError
from qiochan.watch import Condition
from qiochan_file import QIOChannelFile, file_pipe
from tests.helpers.fds import open_fds


def test_regular_file_is_seekable(tmp_path: Path, no_fd_leak: None) -> None:
    path = tmp_path / "data"
    with QIOChannelFile.new_path(path, os.O_RDWR | os.O_CREAT, 0o640) as channel:
        assert channel.regular and channel.has_feature(Feature.SEEKABLE)
        channel.write_all(b"0123456789")
        assert channel.seek(2) == 2
        buf = bytearray(3)
        channel.read_all(buf)
        assert buf == b"234"
        assert channel.seek(-1, os.SEEK_END) == 9
        assert channel.seek(0, os.SEEK_CUR) == 9
    assert path.stat().st_mode & 0o777 == 0o640


def test_positioned_io_leaves_the_position_alone(tmp_path: Path, no_fd_leak: None) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"abcdefghij")
    with QIOChannelFile.new_path(path, os.O_RDWR) as channel:
        channel.seek(1)
        first, second = bytearray(2), bytearray(3)
        assert channel.preadv([first, second], 4) == 5
        assert (first, second) == (bytearray(b"ef"), bytearray(b"ghi"))
        assert channel.pwritev([b"XY", b"Z"], 0) == 3
        assert channel.seek(0, os.SEEK_CUR) == 1
        buf = bytearray(2)
        channel.read_all(buf)
        assert buf == b"YZ"
    assert path.read_bytes() == b"XYZdefghij"


def test_regular_file_watches_are_always_ready(
    tmp_path: Path, loop: asyncio.AbstractEventLoop, no_fd_leak: None
) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"x")
    with QIOChannelFile.new_path(path, os.O_RDWR) as channel:
        assert channel.wait(Condition.IN | Condition.OUT, timeout=0) & Condition.IN
        fired: list[Condition] = []

        async def scenario() -> None:
            done = asyncio.Event()

            def on_ready(_channel: QIOChannelFile, condition: Condition) -> bool:
                fired.append(condition)
                done.set()
                return False

            channel.add_watch_full(Condition.IN, on_ready, context=loop)
            await asyncio.wait_for(done.wait(), 10)

        loop.run_until_complete(scenario())
        assert fired and fired[0] & Condition.IN


def test_pipe_is_a_stream(no_fd_leak: None) -> None:
    writer, reader = file_pipe()
    with writer, reader:
        assert not reader.regular and not reader.has_feature(Feature.SEEKABLE)
        with pytest.raises(ChannelError) as info:
            reader.seek(0)
        assert info.value.errno == errno.ENOTSUP
        with pytest.raises(ChannelError) as info:
            reader.preadv([bytearray(1)], 0)
        assert info.value.errno == errno.ENOTSUP
        reader.set_blocking(False)
        assert reader.read(bytearray(1)) == ERR_BLOCK
        writer.writev_all([b"a", b"bc"])
        reader.wait(Condition.IN, timeout=10)
        buf = bytearray(3)
        assert reader.read(buf) == 3 and buf == b"abc"


def test_write_to_pipe_without_reader_raises_epipe(no_fd_leak: None) -> None:
    writer, reader = file_pipe()
    reader.close()
    with writer, pytest.raises(ChannelError) as info:
        writer.write_all(b"lost")
    assert info.value.errno == errno.EPIPE
    assert "Unable to write to file" in str(info.value)


def test_fifo_by_path(tmp_path: Path, no_fd_leak: None) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with QIOChannelFile.new_path(fifo, os.O_RDONLY | os.O_NONBLOCK) as reader:
        with QIOChannelFile.new_path(fifo, os.O_WRONLY) as writer:
            assert not writer.has_feature(Feature.SEEKABLE)
            writer.write_all(b"through the fifo")
        reader.set_blocking(True)
        buf = bytearray(16)
        reader.read_all(buf)
        assert buf == b"through the fifo"
        assert reader.read(bytearray(1)) == 0


def test_open_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ChannelError) as info:
        QIOChannelFile.new_path(tmp_path / "nope")
    assert info.value.errno == errno.ENOENT
    assert "nope" in str(info.value)
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(ChannelError) as info:
        QIOChannelFile.new_fd(fd)
    assert info.value.errno == errno.EBADF


def test_read_only_file_refuses_writes(tmp_path: Path, no_fd_leak: None) -> None:
    path = tmp_path / "ro"
    path.write_bytes(b"")
    with QIOChannelFile.new_path(path) as channel, pytest.raises(ChannelError) as info:
        channel.write(b"x")
    assert info.value.errno == errno.EBADF


def test_no_fd_leak_over_1000_cycles(tmp_path: Path) -> None:
    path = tmp_path / "cycle"
    path.write_bytes(b"cycle")
    before = len(open_fds())
    for _ in range(1000):
        with QIOChannelFile.new_path(path) as channel:
            channel.read_all(bytearray(5))
        writer, reader = file_pipe()
        writer.close()
        reader.close()
    assert len(open_fds()) == before
