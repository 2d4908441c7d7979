"""QEMUFile lifecycle: error latch, fclose, shutdown, closed files, context manager, buffers."""

from __future__ import annotations

import errno
import logging
import mmap
import threading
from typing import Any

import pytest

import qiochan
from qiochan import ChannelError, QEMUFile
from qiochan.channel import Shutdown
from qiochan_memory import QIOChannelBuffer, QIOChannelNull, memory_pipe
from qiochan_socket import socket_pair
from tests.helpers.qemufile import JOIN_TIMEOUT, ScriptedChannel, private_anonymous_mmap

pytestmark = pytest.mark.usefixtures("qemufile_core")


def test_exported_from_the_package() -> None:
    assert qiochan.QEMUFile is QEMUFile
    from qiochan import qemufile

    assert qemufile.RAM_CONTROL_SETUP == 0
    assert qemufile.RAM_SAVE_CONTROL_NOT_SUPP == -1000


def test_directions_and_repr() -> None:
    ioc = QIOChannelNull()
    out = QEMUFile.new_output(ioc)
    back = out.get_return_path()
    assert out.writable and not back.writable
    assert back.get_ioc() is ioc is out.get_ioc()
    assert "output" in repr(out) and "input" in repr(back)
    with pytest.raises(TypeError):
        QEMUFile.new_output(object())  # type: ignore[arg-type]


# -- the error latch ---------------------------------------------------------------


def test_first_error_wins_with_its_exception(caplog: pytest.LogCaptureFixture) -> None:
    f = QEMUFile.new_output(ScriptedChannel())
    assert f.get_error_obj() == (0, None)
    first = ChannelError("first", errno.EPIPE)
    f.set_error_obj(-errno.EPIPE, first)
    with caplog.at_level(logging.WARNING, logger="qiochan.qemufile"):
        f.set_error_obj(-errno.EIO, ChannelError("second", errno.EIO))
    f.set_error(-errno.EINVAL)
    assert f.get_error() == -errno.EPIPE
    assert f.get_error_obj() == (-errno.EPIPE, first)
    assert "second" in caplog.text


def test_set_error_without_exception() -> None:
    f = QEMUFile.new_input(ScriptedChannel())
    f.set_error(0)  # not an error: nothing latched
    assert f.get_error() == 0
    f.set_error(-errno.ENOSPC)
    assert f.get_error_obj() == (-errno.ENOSPC, None)


def test_get_error_obj_any() -> None:
    good = QEMUFile.new_output(ScriptedChannel())
    bad = QEMUFile.new_output(ScriptedChannel())
    exc = ChannelError("broken", errno.EPIPE)
    bad.set_error_obj(-errno.EPIPE, exc)
    assert QEMUFile.get_error_obj_any(None, None) == (0, None)
    assert QEMUFile.get_error_obj_any(good, None) == (0, None)
    assert QEMUFile.get_error_obj_any(good, bad) == (-errno.EPIPE, exc)
    assert QEMUFile.get_error_obj_any(bad, good) == (-errno.EPIPE, exc)
    assert QEMUFile.get_error_obj_any(None, bad) == (-errno.EPIPE, exc)


def test_every_operation_after_an_error_is_a_no_op() -> None:
    channel = ScriptedChannel(b"\x01\x02")
    f = QEMUFile.new_output(channel)
    f.put_be32(1)
    f.set_error(-errno.EPIPE)
    f.put_byte(2)
    f.put_be64(3)
    f.put_buffer(b"x" * 100000)
    f.put_buffer_async(b"y")
    f.put_counted_string("z")
    f.fflush()
    assert channel.writes == []
    assert f.transferred() == 0
    assert f.rate_limit()
    assert f.fclose() == -errno.EPIPE
    assert channel.closed


def test_write_failure_latches_eio_and_keeps_the_exception() -> None:
    channel = ScriptedChannel(fail_after=0)
    f = QEMUFile.new_output(channel)
    f.put_be64(1)
    f.fflush()
    ret, exc = f.get_error_obj()
    assert ret == -errno.EIO
    assert isinstance(exc, ChannelError) and exc.errno == errno.EPIPE
    f.put_be64(2)
    f.fflush()
    assert len(channel.writes) == 1
    assert f.fclose() == -errno.EIO


# -- fclose and shutdown ---------------------------------------------------------------


def test_fclose_flushes_and_closes_the_channel() -> None:
    channel = ScriptedChannel()
    f = QEMUFile.new_output(channel)
    f.put_buffer(b"abc")
    assert f.fclose() == 0
    assert channel.written == b"abc"
    assert channel.closed
    assert f.closed


class _CloseFails(ScriptedChannel):
    def io_close(self) -> None:
        raise ChannelError("Child exited with status 3", errno.ECHILD)


def test_fclose_reports_the_close_error_unless_an_earlier_one() -> None:
    assert QEMUFile.new_output(_CloseFails()).fclose() == -errno.ECHILD
    f = QEMUFile.new_output(_CloseFails())
    f.set_error(-errno.EPIPE)
    assert f.fclose() == -errno.EPIPE


def test_shutdown_latches_eio_before_shutting_the_channel_down() -> None:
    seen: list[int] = []

    class Observed(ScriptedChannel):
        def io_shutdown(self, how: Shutdown) -> None:
            seen.append(f.get_error())
            super().io_shutdown(how)

    channel = Observed()
    f = QEMUFile.new_input(channel)
    assert f.shutdown() == 0
    assert seen == [-errno.EIO]
    assert channel.shut == Shutdown.BOTH
    assert f.get_error() == -errno.EIO


def test_shutdown_keeps_an_earlier_error() -> None:
    f = QEMUFile.new_output(ScriptedChannel())
    f.set_error(-errno.EPIPE)
    assert f.shutdown() == 0
    assert f.get_error() == -errno.EPIPE


def test_shutdown_without_the_feature_returns_enosys() -> None:
    f = QEMUFile.new_output(ScriptedChannel(shutdown=False))
    assert f.shutdown() == -errno.ENOSYS
    assert f.get_error() == -errno.EIO


def test_shutdown_failure_returns_eio() -> None:
    class Fails(ScriptedChannel):
        def io_shutdown(self, how: Shutdown) -> None:
            raise ChannelError("Unable to shutdown", errno.ENOTCONN)

    assert QEMUFile.new_output(Fails()).shutdown() == -errno.EIO


@pytest.mark.parametrize("make_pair", [socket_pair, memory_pipe], ids=["socketpair", "memory"])
def test_shutdown_wakes_a_blocked_reader(make_pair: Any) -> None:
    a, b = make_pair()
    f = QEMUFile.new_input(b)
    started = threading.Event()
    results: list[int] = []

    def read() -> None:
        started.set()
        results.append(f.get_be64())

    thread = threading.Thread(target=read)
    thread.start()
    started.wait(JOIN_TIMEOUT)
    assert f.shutdown() == 0
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive()
    assert results == [0]
    assert f.get_error() == -errno.EIO
    assert f.fclose() == -errno.EIO
    a.close()


# -- closed files ----------------------------------------------------------------


_EVERY_CALL: list[tuple[str, tuple[Any, ...]]] = [
    ("put_byte", (1,)),
    ("put_be16", (1,)),
    ("put_be32", (1,)),
    ("put_be64", (1,)),
    ("put_buffer", (b"x",)),
    ("put_buffer_async", (b"x",)),
    ("put_counted_string", ("x",)),
    ("put_compression_data", (b"x",)),
    ("put_qemu_file", (QEMUFile.new_output(QIOChannelNull()),)),
    ("fflush", ()),
    ("buffer_empty", ()),
    ("get_byte", ()),
    ("peek_byte", (0,)),
    ("get_be16", ()),
    ("get_be32", ()),
    ("get_be64", ()),
    ("get_buffer", (bytearray(1),)),
    ("get_bytes", (0,)),
    ("get_bytes", (1,)),
    ("peek_buffer", (1,)),
    ("get_buffer_in_place", (0,)),
    ("get_buffer_in_place", (1,)),
    ("skip", (0,)),
    ("get_counted_string", ()),
    ("get_compression_data", ()),
    ("get_to_fd", (1, 1)),
    ("get_error", ()),
    ("get_error_obj", ()),
    ("set_error", (-5,)),
    ("set_error_obj", (-5, None)),
    ("fclose", ()),
    ("shutdown", ()),
    ("transferred", ()),
    ("transferred_noflush", ()),
    ("set_rate_limit", (10,)),
    ("get_rate_limit", ()),
    ("rate_limit", ()),
    ("reset_rate_limit", ()),
    ("set_hooks", (None,)),
    ("ram_control_before_iterate", (0,)),
    ("ram_control_after_iterate", (0,)),
    ("ram_control_load_hook", (0,)),
    ("ram_control_save_page", (0, 0, 4096)),
    ("set_blocking", (True,)),
    ("get_return_path", ()),
    ("buffer_contents", ()),
]


@pytest.mark.parametrize("writable", [True, False], ids=["output", "input"])
@pytest.mark.parametrize(("method", "args"), _EVERY_CALL, ids=[c[0] for c in _EVERY_CALL])
def test_using_a_closed_file_raises(writable: bool, method: str, args: tuple[Any, ...]) -> None:
    f = QEMUFile(ScriptedChannel(b"data"), writable)
    f.fclose()
    with pytest.raises(ChannelError) as info:
        getattr(f, method)(*args)
    assert info.value.errno == errno.EBADF


# -- context manager ------------------------------------------------------------------


def test_context_manager_closes() -> None:
    channel = ScriptedChannel()
    with QEMUFile.new_output(channel) as f:
        f.put_be32(9)
    assert f.closed and channel.closed
    assert channel.written == b"\x00\x00\x00\x09"


def test_context_manager_raises_the_latched_error() -> None:
    channel = ScriptedChannel(fail_after=2)
    with pytest.raises(ChannelError) as info, QEMUFile.new_output(channel) as f:
        f.put_be32(9)
    assert info.value.errno == errno.EIO
    assert isinstance(info.value.__cause__, ChannelError)
    assert info.value.__cause__.errno == errno.EPIPE
    assert channel.closed


def test_context_manager_raises_the_close_error() -> None:
    with pytest.raises(ChannelError) as info, QEMUFile.new_output(_CloseFails()):
        pass
    assert info.value.errno == errno.ECHILD


def test_context_manager_lets_the_body_exception_through() -> None:
    channel = ScriptedChannel(fail_after=0)
    with pytest.raises(KeyError), QEMUFile.new_output(channel) as f:
        f.put_be32(9)
        raise KeyError("body")
    assert f.closed


def test_context_manager_after_explicit_fclose() -> None:
    with QEMUFile.new_input(ScriptedChannel()) as f:
        assert f.fclose() == 0


# -- return path, blocking, buffers ---------------------------------------------------


def test_return_path_uses_the_same_channel_both_ways() -> None:
    a, b = socket_pair()
    out_a = QEMUFile.new_output(a)
    in_b = QEMUFile.new_input(b)
    out_b = in_b.get_return_path()
    in_a = out_a.get_return_path()
    out_a.put_be32(0x11223344)
    out_a.fflush()
    assert in_b.get_be32() == 0x11223344
    out_b.put_counted_string("ack")
    out_b.fflush()
    assert in_a.get_counted_string() == b"ack"
    assert out_a.fclose() == 0
    assert in_b.fclose() == 0


def test_set_blocking_reaches_the_channel() -> None:
    channel = ScriptedChannel()
    f = QEMUFile.new_input(channel)
    f.set_blocking(False)
    assert not channel.blocking
    f.set_blocking(True)
    assert channel.blocking


def test_open_buffer_write_then_read() -> None:
    w = QEMUFile.open_buffer("w")
    assert isinstance(w.get_ioc(), QIOChannelBuffer)
    w.put_be16(0xBEEF)
    w.put_buffer_async(b"async")
    assert w.buffer_contents() == b"\xbe\xefasync"
    w.put_byte(1)
    assert w.buffer_contents() == b"\xbe\xefasync\x01"
    assert w.fclose() == 0
    r = QEMUFile.open_buffer("r", bytearray(b"\xbe\xefasync\x01"))
    assert r.get_be16() == 0xBEEF
    assert r.get_bytes(5) == b"async"
    assert r.buffer_contents() == b"\xbe\xefasync\x01"
    assert r.get_byte() == 1
    assert r.get_byte() == 0
    assert r.fclose() == -errno.EIO
    empty = QEMUFile.open_buffer("r")
    assert empty.get_byte() == 0 and empty.get_error() == -errno.EIO


@pytest.mark.parametrize(("mode", "data"), [("rb", None), ("x", None), ("w", b"data")])
def test_open_buffer_rejects_bad_arguments(mode: str, data: bytes | None) -> None:
    with pytest.raises(ValueError):
        QEMUFile.open_buffer(mode, data)


def test_buffer_contents_needs_a_buffer_channel() -> None:
    f = QEMUFile.new_output(QIOChannelNull())
    with pytest.raises(ChannelError) as info:
        f.buffer_contents()
    assert info.value.errno == errno.ENOTSUP


def test_a_kept_error_does_not_pin_caller_buffers() -> None:
    reader = QEMUFile.new_input(ScriptedChannel(bytes(100), fail_after=50))
    target = bytearray(100000)
    assert reader.get_buffer(target) == 50
    assert isinstance(reader.get_error_obj()[1], ChannelError)
    target.extend(b"resizable")  # no export of it survives in the kept exception

    mapping = private_anonymous_mmap(2 * mmap.PAGESIZE)
    writer = QEMUFile.new_output(ScriptedChannel(fail_after=10))
    writer.put_buffer_async(memoryview(mapping)[: mmap.PAGESIZE], may_free=True)
    writer.fflush()
    assert writer.get_error() == -errno.EIO
    mapping.close()  # would raise BufferError if a view of it were still held
