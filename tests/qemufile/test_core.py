"""QEMUFile's two cores side by side: the C core (``qemufile._speedups``) against the Python one.

The whole QEMUFile suite runs once per core (CI runs it again with
``QIOCHAN_NO_SPEEDUPS=1``); here both cores are imported into one process:
random operation sequences, bad input included, go to a C-core file and a
Python-core file side by side, and everything observable must match: each
call's result or exception, every vectored write the channel saw, every read
it served, the latched error.  Then the C core's own duties: public C API
only, never a crash or a leak whatever Python does to its state or however
many threads use it, and ``QIOCHAN_NO_SPEEDUPS`` must switch it off.
"""

from __future__ import annotations

import array
import gc
import mmap
import os
import re
import socket
import subprocess
import sys
import sysconfig
import textwrap
import tracemalloc
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qiochan import QEMUFile, QIOChannel
from qiochan.channel import WriteFlag
from qiochan.qemufile import _core as core
from qiochan.qemufile._core import MAX_IOV_SIZE, QEMUFileCore
from qiochan.qemufile._file import qemufile_on
from qiochan_file import QIOChannelFile
from qiochan_memory import QIOChannelNull
from qiochan_socket import QIOChannelSocket
from tests.helpers.qemufile import Drain, ScriptedChannel

try:  # the C core even when QIOCHAN_NO_SPEEDUPS makes QEMUFile use the Python one
    from qiochan.qemufile import _speedups
except ImportError:
    _speedups = None  # type: ignore[assignment]

needs_c = pytest.mark.skipif(_speedups is None, reason="the C core is not built")

#: QEMUFile on the pure-Python core, whatever QEMUFile itself runs on.
PyQEMUFile = qemufile_on(QEMUFileCore)

#: QEMUFile on the C core (QEMUFile itself when it was built and not switched off).
CQEMUFile = (
    qemufile_on(cast("type[QEMUFileCore]", _speedups.QEMUFileCore))
    if _speedups is not None
    else QEMUFile
)

SOURCE = Path(core.__file__).with_name("_speedups.c")

#: The argument of operations that take none.
NOARG = object()

#: One shared exporter, so that consecutive slices of it are adjacent (coalescing).
POOL = bytes(range(256)) * 256


def outcome(f: QEMUFile, op: str, arg: Any) -> tuple[str, Any]:
    """Return what ``op`` did to ``f``: ``("ok", result)`` or ``("raised", (type, message))``.

    ``arg`` NOARG calls ``op`` without arguments; the writer pseudo-op
    ``put_buffer_async_kw`` passes keywords.
    """
    result: Any = None
    try:
        if op == "put_buffer_async_kw":
            f.put_buffer_async(buf=arg, may_free=False)
        elif arg is NOARG:
            result = getattr(f, op)()
        else:
            result = getattr(f, op)(arg)
    except Exception as exc:
        return "raised", (type(exc).__name__, str(exc))
    if isinstance(result, memoryview):  # the bytes, and whether they are a view of the buffer
        result = result.tobytes(), result.obj is f._buf
    return "ok", result


# -- writers -------------------------------------------------------------------------------

_bad_values = st.sampled_from([True, False, 1.5, "7", None, -1, 2**64, 2**70, -(2**64)])
_values = {
    "put_byte": st.integers(-2, 257) | _bad_values,
    "put_be16": st.integers(-2, 2**16 + 1) | _bad_values,
    "put_be32": st.sampled_from([0, 1, 2**32 - 1, 2**32, -1]) | st.integers(0, 2**32) | _bad_values,
    "put_be64": st.sampled_from([0, 2**64 - 1, 2**63]) | st.integers(0, 2**64 - 1) | _bad_values,
}


@st.composite
def _buffers(draw: st.DrawFn) -> Any:
    """A buffer of one of the kinds callers pass, or something that is not one."""
    start = draw(st.integers(0, len(POOL) - 1))
    size = draw(st.sampled_from([0, 1, 8, 4096, 4104, 20000, 40000]) | st.integers(0, 9000))
    data = POOL[start : start + size]
    kind = draw(st.sampled_from(["bytes", "bytearray", "view", "pool", "strided", "shorts", "str"]))
    if kind == "bytearray":
        return bytearray(data)
    if kind == "view":
        return memoryview(bytearray(data))
    if kind == "pool":
        return memoryview(POOL)[start : start + size]
    if kind == "strided":
        return memoryview(data)[::2]
    if kind == "shorts":
        return memoryview(array.array("H", data[: len(data) // 2 * 2]))
    if kind == "str":
        return "not bytes"
    return data


_write_ops = st.one_of(
    *(st.tuples(st.just(name), values) for name, values in _values.items()),
    st.tuples(st.just("put_buffer"), _buffers()),
    st.tuples(st.just("put_buffer_async"), _buffers()),
    st.tuples(st.just("put_buffer_async_kw"), _buffers()),
    st.tuples(st.just("fflush"), st.just(NOARG)),
)


@needs_c
@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(_write_ops, max_size=40),
    fail_after=st.none() | st.integers(0, 100_000),
    max_write=st.sampled_from([1 << 30, 5000]),
)
def test_writers_match(ops: list[tuple[str, Any]], fail_after: int | None, max_write: int) -> None:
    channels = [ScriptedChannel(fail_after=fail_after, max_write=max_write) for _ in range(2)]
    files = [CQEMUFile.new_output(channels[0]), PyQEMUFile.new_output(channels[1])]
    for op, arg in ops:
        c_result, py_result = (outcome(f, op, arg) for f in files)
        assert c_result == py_result, (op, arg)
        assert [f.transferred_noflush() for f in files].count(files[0].transferred_noflush()) == 2
    assert files[0].get_error() == files[1].get_error()
    assert files[0].fclose() == files[1].fclose()
    assert channels[0].writes == channels[1].writes


def test_writers_match_at_the_iovec_limit() -> None:
    """63 and 64 queued iovecs: the fast path must hand over exactly where Python does."""
    channels = [ScriptedChannel() for _ in range(2)]
    files = [CQEMUFile.new_output(channels[0]), PyQEMUFile.new_output(channels[1])]
    pages = [bytes([n]) * 4096 for n in range(200)]
    for f in files:
        for n, page in enumerate(pages):
            f.put_be64(n)
            f.put_buffer_async(page)
            if n % 7 == 0:
                f.put_buffer(page[:100])
        assert f.fclose() == 0
    assert channels[0].writes == channels[1].writes
    assert max(len(write) for write in channels[0].writes) == core.MAX_IOV_SIZE


# -- readers -----------------------------------------------------------------------------------

_read_ops = st.one_of(
    st.tuples(st.sampled_from(["get_byte", "get_be16", "get_be32", "get_be64"]), st.just(NOARG)),
    st.tuples(
        st.just("get_buffer_in_place"),
        st.sampled_from([0, 1, 4096, 32767, 32768, 40000, -1, 2**70, 1.0, "8"])
        | st.integers(0, 9000),
    ),
    st.tuples(st.just("get_bytes"), st.integers(0, 5000)),
    st.tuples(st.just("peek_byte"), st.integers(0, 100)),
)


@needs_c
@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(_read_ops, max_size=40),
    size=st.integers(0, 150_000),
    chunk=st.sampled_from([1, 7, 4096, 5000, 1 << 30]),
    fail_after=st.none() | st.integers(0, 150_000),
    eof=st.booleans(),
)
def test_readers_match(
    ops: list[tuple[str, Any]], size: int, chunk: int, fail_after: int | None, eof: bool
) -> None:
    data = (POOL * 3)[:size]
    channels = [ScriptedChannel(data, chunk=chunk, fail_after=fail_after, eof=eof) for _ in "cp"]
    files = [CQEMUFile.new_input(channels[0]), PyQEMUFile.new_input(channels[1])]
    for op, arg in ops:
        c_result, py_result = (outcome(f, op, arg) for f in files)
        assert c_result == py_result, (op, arg)
    assert [f.get_error() for f in files].count(files[0].get_error()) == 2
    assert [f.transferred() for f in files].count(files[0].transferred()) == 2
    assert channels[0].reads == channels[1].reads
    assert channels[0].late_reads == channels[1].late_reads == 0
    for f in files:
        f.fclose()


# -- the C core's own duties ------------------------------------------------------------------


@needs_c
def test_constants_match_the_python_core() -> None:
    assert (_speedups.IO_BUF_SIZE, _speedups.MAX_IOV_SIZE) == (
        core.IO_BUF_SIZE,
        core.MAX_IOV_SIZE,
    )
    assert isinstance(CQEMUFile.new_output(QIOChannelNull()), _speedups.QEMUFileCore)
    assert not isinstance(PyQEMUFile.new_output(QIOChannelNull()), _speedups.QEMUFileCore)


def test_the_fixture_names_the_core_qemufile_runs_on(qemufile_core: str) -> None:
    is_c = _speedups is not None and issubclass(QEMUFile, _speedups.QEMUFileCore)
    assert qemufile_core == ("c" if is_c else "python")
    assert qemufile_core == ("c" if core.ACCELERATED else "python")


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def test_qiochan_no_speedups_selects_the_python_core() -> None:
    code = "from qiochan.qemufile import _core as c; print(c.ACCELERATED, c.Core.__module__)"
    result = _run_python(code, QIOCHAN_NO_SPEEDUPS="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "qiochan.qemufile._core"]


def test_the_c_core_uses_only_the_public_c_api() -> None:
    """No private CPython structures or names, no ownership guessed from reference counts."""
    source = SOURCE.read_text()
    private = re.findall(r"PyMemoryViewObject|->mbuf|->exports|_Py_\w+|Py_REFCNT", source)
    assert not private


def _gil_disabled_build() -> bool:
    """True on a free-threaded (``--disable-gil``) build of CPython."""
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


@needs_c
@pytest.mark.skipif(not _gil_disabled_build(), reason="not a free-threaded (3.13t) interpreter")
def test_the_c_core_keeps_a_free_threaded_interpreter_free() -> None:
    """Importing the C core leaves the GIL off (it declares ``Py_mod_gil``)."""
    code = """
        import sys
        import qiochan.qemufile._speedups
        print(sys._is_gil_enabled())
    """
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]
    assert "GIL" not in result.stderr  # no "enabled the GIL" RuntimeWarning


@needs_c
def test_garbage_state_never_crashes() -> None:
    """Positions set to anything from Python: every operation raises or works, never crashes.

    Runs in a child process so that a crash fails this test instead of the run.
    """
    code = """
        import itertools
        from qiochan.qemufile import _speedups
        from qiochan.qemufile._file import qemufile_on
        from qiochan_memory import QIOChannelNull
        QEMUFile = qemufile_on(_speedups.QEMUFileCore)
        values = [-(2**63), -(2**62), -1, 0, 1, 32767, 32768, 32769, 2**40, 2**63 - 1]
        calls = [("put_byte", (1,)), ("put_be64", (1,)), ("put_buffer", (b"x" * 100,)),
                 ("put_buffer_async", (b"y" * 100,)), ("get_byte", ()), ("get_be64", ()),
                 ("get_buffer_in_place", (100,)), ("_put_bytes", (b"z" * 40000, 40000)),
                 ("_commit", (10,)), ("_pending", ()), ("fflush", ()), ("_discard_output", ())]
        count = 0
        for index, size, fast_end in itertools.product(values, repeat=3):
            for writable in (True, False):
                f = QEMUFile(QIOChannelNull(), writable)
                f.put_buffer_async(bytes(10)) if writable else None
                f._index, f._size, f._fast_end = index, size, fast_end
                for name, args in calls:
                    try:
                        getattr(f, name)(*args)
                    except Exception:
                        pass
                    count += 1
        f = QEMUFile.open_buffer("r", b"abc" * 100)
        f._view.release()
        try:
            f.get_buffer_in_place(10)
        except ValueError:
            pass
        print(count)
    """
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 10_000


@needs_c
def test_threads_sharing_one_file_never_crash() -> None:
    """Unsupported, but memory-safe: three threads on one file at once.

    One thread queues pages (bytearrays, and mmap pages with ``may_free``) and
    copies, one flushes and discards, one closes the file midway in some
    rounds; over a direct-write fd, a Python channel and a socket.  The bytes
    that arrive are undefined, ChannelError or RuntimeError ("inconsistent
    buffer positions") may be raised; the process must
    survive (a child process, so that a crash fails this test, not the run).
    """
    code = """
        import mmap, os, socket, threading
        from qiochan.errors import ChannelError
        from qiochan.qemufile import _speedups
        from qiochan.qemufile._file import qemufile_on
        from qiochan_file import QIOChannelFile
        from qiochan_memory import QIOChannelNull
        from qiochan_socket import QIOChannelSocket
        QEMUFile = qemufile_on(_speedups.QEMUFileCore)

        def drained_socket():
            ours, theirs = socket.socketpair()
            def drain():
                while theirs.recv(1 << 20):
                    pass
                theirs.close()
            threading.Thread(target=drain, daemon=True).start()
            return QIOChannelSocket.from_socket(ours)

        def dev_null():
            return QIOChannelFile.new_path("/dev/null", os.O_WRONLY)

        def round_(channel, close_midway):
            f = QEMUFile.new_output(channel)
            mapping = mmap.mmap(-1, 64 * 4096)
            ram = memoryview(mapping)
            pages = [bytearray(4096) for _ in range(8)]
            start, midway = threading.Barrier(3), threading.Event()

            def writer():
                start.wait()
                try:
                    for n in range(20000):
                        if n == 5000:
                            midway.set()
                        f.put_be64(n)
                        f.put_buffer_async(pages[n % 8], may_free=n % 3 == 0)
                        f.put_buffer_async(ram[n % 64 * 4096 :][:4096], may_free=n % 2 == 0)
                        f.put_buffer(pages[n % 5][: n % 4097])
                except (ChannelError, RuntimeError):
                    pass
                midway.set()

            def flusher():
                start.wait()
                try:
                    for n in range(5000):
                        f.fflush()
                        f.transferred_noflush()
                        if n % 100 == 0:
                            f._discard_output()
                except (ChannelError, RuntimeError):
                    pass

            def closer():
                start.wait()
                midway.wait()
                if close_midway:
                    try:
                        f.fclose()
                    except (ChannelError, RuntimeError):
                        pass

            threads = [threading.Thread(target=t) for t in (writer, flusher, closer)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if not f.closed:
                f.fclose()
            ram.release()
            mapping.close()

        for make in (dev_null, QIOChannelNull, drained_socket):
            for close_midway in (False, True):
                round_(make(), close_midway)
        print("survived")
    """
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["survived"]
    assert "Traceback" not in result.stderr  # no thread died of anything else


@pytest.mark.parametrize("make", [PyQEMUFile, CQEMUFile], ids=["python", "c"])
def test_queued_buffers_are_held_until_the_flush(make: type[QEMUFile]) -> None:
    """A queued bytearray cannot be resized, nor a queued mmap closed, until the flush."""
    f = make.new_output(QIOChannelNull())
    data = bytearray(b"page" * 1024)
    mapping = mmap.mmap(-1, mmap.PAGESIZE)
    f.put_buffer_async(data)
    f.put_buffer_async(memoryview(mapping)[:100])
    with pytest.raises(BufferError):
        data.extend(b"more")
    with pytest.raises(BufferError):
        mapping.close()
    f.fflush()
    data.extend(b"more")
    mapping.close()
    assert f.fclose() == 0


class KeepsViews(QIOChannelNull):
    """A channel that keeps the views io_writev is given (a badly behaved queueing channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[memoryview] = []

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        self.kept.extend(iov)
        return sum(view.nbytes for view in iov)


@pytest.mark.parametrize("make", [PyQEMUFile, CQEMUFile], ids=["python", "c"])
def test_views_a_channel_keeps_stay_valid(make: type[QEMUFile]) -> None:
    """What io_writev was given stays readable after the flush: views own their memory."""
    channel = KeepsViews()
    f = make.new_output(channel)
    pages = [bytearray([n]) * 4096 for n in range(3)]
    for n, page in enumerate(pages):
        f.put_be64(n)
        f.put_buffer_async(page)
    f.put_buffer_async(b"tail")
    assert f.fclose() == 0
    del pages, f
    gc.collect()
    assert (
        b"".join(bytes(view) for view in channel.kept)
        == b"".join(n.to_bytes(8, "big") + bytes([n]) * 4096 for n in range(3)) + b"tail"
    )


@pytest.mark.parametrize("make", [PyQEMUFile, CQEMUFile], ids=["python", "c"])
def test_adjacent_pages_of_one_exporter_share_an_iovec(make: type[QEMUFile]) -> None:
    channel = ScriptedChannel()
    f = make.new_output(channel)
    view = memoryview(POOL)
    for n in range(10):  # adjacent: one iovec
        f.put_buffer_async(view[n * 100 : (n + 1) * 100])
    f.put_buffer_async(bytes(POOL[1000:1100]))  # adjacent in value only: a new iovec
    f.put_buffer_async(view[2000:2100])  # not adjacent: a new iovec
    f.fflush()
    assert [len(part) for part in channel.writes[0]] == [1000, 100, 100]
    assert f.fclose() == 0


def test_the_buffer_cannot_be_resized() -> None:
    f = QEMUFile.new_output(QIOChannelNull())
    with pytest.raises(BufferError):
        f._buf.extend(b"x")
    f.fclose()


def dev_null() -> QIOChannel:
    """A file channel writing to /dev/null: it has an fd, so the C core writes directly."""
    return QIOChannelFile.new_path("/dev/null", os.O_WRONLY)


@pytest.mark.parametrize("sink", [QIOChannelNull, dev_null])
def test_a_file_in_a_reference_cycle_is_collected(sink: Callable[[], QIOChannel]) -> None:
    f = QEMUFile.new_output(sink())
    page = memoryview(bytearray(4096))
    for _ in range(MAX_IOV_SIZE + 3):  # flushes once, then holds a few pages
        f.put_be64(1)
        f.put_buffer_async(page)
    f.cycle = f  # type: ignore[attr-defined]
    ref = weakref.ref(f)
    del f
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("sink", [QIOChannelNull, dev_null])
def test_fast_paths_do_not_leak(sink: Callable[[], QIOChannel]) -> None:
    """Fast-path calls, flushes, refills and rejected values leave nothing allocated."""
    pages = [memoryview(bytearray(4096)) for _ in range(64)]
    data = bytes(range(256)) * 16 * 64

    def workload() -> None:
        f = QEMUFile.new_output(sink())
        for round_ in range(40):
            for n, page in enumerate(pages):
                f.put_be64(round_ * 64 + n)
                f.put_buffer_async(page)
                f.put_buffer(page[:100])
                f.put_byte(n)
        for bad in (-1, "x"):
            with pytest.raises((ValueError, TypeError)):
                f.put_be32(bad)  # type: ignore[arg-type]
        f.fclose()
        r = QEMUFile.open_buffer("r", data * 4)
        for _ in range(4 * 64):
            r.get_be64()
            r.get_buffer_in_place(4088)
        r.get_be64()  # past the end: -EIO latched
        r.fclose()

    workload()  # warm caches (interned strings, free lists)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5):
            workload()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes still allocated"


# -- direct writes ------------------------------------------------------------------------------


class CountingSocket(QIOChannelSocket):
    """A socket channel counting the writes that went through io_writev."""

    io_writes = 0

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        self.io_writes += 1
        return super().io_writev(iov, fds, flags)


class NoFdSocket(QIOChannelSocket):
    """A socket channel that offers no fd for direct writes: every write is an io_writev."""

    def io_write_fd(self) -> int:
        return -1


@needs_c
def test_the_c_core_writes_fd_channels_directly() -> None:
    """Flushes of a channel with an io_write_fd bypass io_writev; the Python core's do not."""
    for cls in (CQEMUFile, PyQEMUFile):
        ours, theirs = socket.socketpair()
        reader = Drain(theirs.recv)
        ioc = CountingSocket.from_socket(ours)
        f = cls.new_output(ioc)
        expected = bytearray()
        for n in range(200):
            f.put_be64(n)
            f.put_buffer_async(POOL[n : n + 4096])
            f.put_buffer(POOL[:100])
            expected += n.to_bytes(8, "big") + POOL[n : n + 4096] + POOL[:100]
        f.fflush()
        writes = ioc.io_writes
        assert f.fclose() == 0
        received = reader.finish()
        theirs.close()
        assert received == expected
        if cls is CQEMUFile:
            assert writes == 0
        else:
            assert writes >= 200 * 2 // MAX_IOV_SIZE


@needs_c
@settings(max_examples=40, deadline=None)
@given(ops=st.lists(_write_ops, max_size=60), blocking=st.booleans())
def test_writers_match_over_sockets(ops: list[tuple[str, Any]], blocking: bool) -> None:
    """Over real sockets: same results, same bytes (C core direct, Python core io_writev)."""
    streams = []
    for cls, channel_cls in ((CQEMUFile, QIOChannelSocket), (PyQEMUFile, NoFdSocket)):
        ours, theirs = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        ioc = channel_cls.from_socket(ours)
        ioc.set_blocking(blocking)
        streams.append((cls.new_output(ioc), Drain(theirs.recv), theirs))
    for op, arg in ops:
        assert outcome(streams[0][0], op, arg) == outcome(streams[1][0], op, arg), (op, arg)
    assert streams[0][0].fclose() == streams[1][0].fclose() == 0
    received = []
    for _f, reader, theirs in streams:
        received.append(reader.finish())
        theirs.close()
    assert received[0] == received[1]
