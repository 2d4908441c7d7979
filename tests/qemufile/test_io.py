"""QEMUFile's channel access: direct first attempt, fallback to writev_all/wait, errors."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Sequence

import pytest

from qiochan import ChannelError, QEMUFile
from qiochan.channel import ReadFlag, WriteFlag
from qiochan.qemufile._io import read_once, write_all
from qiochan_file import file_pipe
from qiochan_socket import QIOChannelSocket, socket_pair
from tests.helpers.qemufile import Drain, ScriptedChannel

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


# -- direct writes (QIOChannel.io_write_fd) --------------------------------------------------

PAGE = 4096


def page_stream(f: QEMUFile, pages: int) -> bytes:
    """Write ``pages`` header+page records QEMU's way (plus a copied trailer); return the bytes."""
    expected = bytearray()
    for n in range(pages):
        page = bytes([n % 251]) * PAGE
        f.put_be64(n)
        f.put_buffer_async(page)
        expected += n.to_bytes(8, "big") + page
        if n % 5 == 0:
            f.put_buffer(page[:300])
            expected += page[:300]
    return bytes(expected)


@pytest.mark.parametrize("blocking", [True, False])
def test_a_socket_stream_arrives_intact_through_short_writes(
    blocking: bool, no_fd_leak: None
) -> None:
    """A 4 KiB send buffer makes every flush a short write (or a would-block)."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    reader = Drain(theirs.recv)
    ioc = QIOChannelSocket.from_socket(ours)
    ioc.set_blocking(blocking)
    f = QEMUFile.new_output(ioc)
    expected = page_stream(f, 300)
    assert f.fclose() == 0
    received = reader.finish()
    theirs.close()
    assert received == expected


def test_a_pipe_file_channel_is_written_with_writev(no_fd_leak: None) -> None:
    """A file channel's fd is no socket: the direct write falls back from sendmsg to writev."""
    writer, reader = file_pipe()
    drain = Drain(lambda size: os.read(reader.fd, size))
    f = QEMUFile.new_output(writer)
    expected = page_stream(f, 100)
    assert f.fclose() == 0
    received = drain.finish()
    reader.close()
    assert received == expected


def test_a_peer_that_went_away_latches_eio(no_fd_leak: None) -> None:
    ours, theirs = socket_pair()
    theirs.close()
    f = QEMUFile.new_output(ours)
    page_stream(f, 40)  # more than one flush
    ret, exc = f.get_error_obj()
    assert ret == -errno.EIO
    assert isinstance(exc, ChannelError) and exc.errno == errno.EPIPE
    assert f.fclose() == -errno.EIO


def test_no_sigpipe_when_the_peer_went_away() -> None:
    """sendmsg with MSG_NOSIGNAL: a process that did not ignore SIGPIPE survives."""
    script = textwrap.dedent(
        """
        import errno, signal
        from qiochan import QEMUFile
        from qiochan_socket import socket_pair
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        ours, theirs = socket_pair()
        theirs.close()
        f = QEMUFile.new_output(ours)
        for n in range(100):
            f.put_be64(n)
            f.put_buffer_async(bytes(4096))
        assert f.fclose() == -errno.EIO
        print("survived")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "survived"


@pytest.mark.parametrize("speedups", ["", "1"], ids=["as-built", "no-speedups"])
def test_a_signal_interrupts_a_blocked_flush(speedups: str) -> None:
    """A flush blocked on a peer that never reads still runs signal handlers promptly."""
    script = textwrap.dedent(
        """
        import signal, socket
        from qiochan import QEMUFile
        from qiochan_socket import QIOChannelSocket

        class Interrupted(Exception):
            pass

        def handler(signum, frame):
            raise Interrupted

        signal.signal(signal.SIGALRM, handler)
        ours, theirs = socket.socketpair()  # theirs never reads
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        f = QEMUFile.new_output(QIOChannelSocket.from_socket(ours))
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        try:
            f.put_buffer(bytes(4 << 20))
        except Interrupted:
            print("interrupted")
        """
    )
    env = {**os.environ, "QIOCHAN_NO_SPEEDUPS": speedups}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "interrupted"


def test_a_channel_closed_under_the_file_is_never_written_directly(no_fd_leak: None) -> None:
    """io_write_fd is asked at every flush: a reused fd number receives nothing."""
    ours, theirs = socket_pair()
    f = QEMUFile.new_output(ours)
    f.put_be64(1)
    old_fd = ours.fd
    read_end, write_end = os.pipe()
    ours.close()
    os.dup2(write_end, old_fd)  # the old number now writes into an unrelated pipe
    try:
        page_stream(f, 40)
        ret, exc = f.get_error_obj()
        assert ret == -errno.EIO
        assert isinstance(exc, ChannelError) and exc.errno == errno.EBADF
        os.set_blocking(read_end, False)
        with pytest.raises(BlockingIOError):
            os.read(read_end, 1)
    finally:
        for fd in (old_fd, read_end, write_end):
            os.close(fd)
        f.fclose()
        theirs.close()
