"""QEMUFile's channel access: direct first attempt, fallback to writev_all/wait, errors."""

from __future__ import annotations

import errno
from collections.abc import Sequence

import pytest
from test_qemufile_support import ScriptedChannel

from qiochan import ChannelError, QEMUFile
from qiochan._qemufile_io import read_once, write_all
from qiochan.channel import ReadFlag, WriteFlag

pytestmark = pytest.mark.usefixtures("qemufile_core")


def test_short_writes_are_completed() -> None:
    channel = ScriptedChannel(max_write=7)
    data = [memoryview(b"0123456789"), memoryview(b"abcdefghij"), memoryview(b"XYZ")]
    write_all(channel, data, 23)
    assert channel.written == b"0123456789abcdefghijXYZ"
    assert [b"".join(w) for w in channel.writes][1] == b"789abcdefghijXYZ"


def test_a_flush_with_short_writes_sends_everything_once() -> None:
    channel = ScriptedChannel(max_write=1000)
    f = QEMUFile.new_output(channel)
    f.put_be64(1)
    f.put_buffer_async(bytes(5000))
    f.put_buffer(b"end")
    assert f.transferred() == 5011
    assert channel.written == (1).to_bytes(8, "big") + bytes(5000) + b"end"
    assert f.get_error() == 0


def test_writing_to_a_closed_channel_raises_the_channel_error() -> None:
    channel = ScriptedChannel()
    channel.close()
    with pytest.raises(ChannelError) as info:
        write_all(channel, [memoryview(b"x")], 1)
    assert info.value.errno == errno.EBADF
    with pytest.raises(ChannelError) as info:
        read_once(channel, memoryview(bytearray(1)))
    assert info.value.errno == errno.EBADF


class _RawOSError(ScriptedChannel):
    """A backend letting a bare OSError escape, as a careless one might."""

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")


def test_bare_os_errors_become_channel_errors() -> None:
    out = QEMUFile.new_output(_RawOSError())
    out.put_byte(1)
    out.fflush()
    ret, exc = out.get_error_obj()
    assert ret == -errno.EIO
    assert isinstance(exc, ChannelError) and exc.errno == errno.EPIPE
    inp = QEMUFile.new_input(_RawOSError())
    assert inp.get_byte() == 0
    ret, exc = inp.get_error_obj()
    assert isinstance(exc, ChannelError) and exc.errno == errno.ECONNRESET


def test_read_once_waits_while_the_channel_would_block() -> None:
    channel = ScriptedChannel(b"abc", would_block=True)
    channel.set_blocking(False)
    target = bytearray(3)
    assert read_once(channel, memoryview(target)) == 3
    assert target == b"abc"
    assert channel.blocked == 1
    assert read_once(channel, memoryview(target)) == 0
