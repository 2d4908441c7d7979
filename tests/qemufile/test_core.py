"""QEMUFile's two cores: the C fast paths (``qemufile._speedups``) against their Python twin.

Every other QEMUFile test runs on both cores (the ``qemufile_core`` fixture);
here random operation sequences, bad input included, go to a C-core file and
a Python-core file side by side, and everything observable must match: each
call's result or exception, every vectored write the channel saw, every read
it served, the latched error.  Then the C core's own duties: it must never
crash or leak whatever Python does to its state, and ``QIOCHAN_NO_SPEEDUPS``
must switch it off.
"""

from __future__ import annotations

import array
import ctypes
import gc
import os
import socket
import subprocess
import sys
import textwrap
import tracemalloc
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qiochan.qemufile._io
from qiochan import QEMUFile, QIOChannel
from qiochan.channel import WriteFlag
from qiochan.qemufile import _core as core
from qiochan.qemufile._core import MAX_IOV_SIZE
from qiochan_file import QIOChannelFile
from qiochan_memory import QIOChannelNull
from qiochan_socket import QIOChannelSocket
from tests.helpers.qemufile import Drain, ScriptedChannel

needs_c = pytest.mark.skipif(not core.ACCELERATED, reason="the C speedups are not built")

#: QEMUFile with the pure-Python fast paths installed over the C ones.
PyQEMUFile: type[QEMUFile] = type("PyQEMUFile", (QEMUFile,), core.python_fast_paths())

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
    files = [QEMUFile.new_output(channels[0]), PyQEMUFile.new_output(channels[1])]
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
    files = [QEMUFile.new_output(channels[0]), PyQEMUFile.new_output(channels[1])]
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
    files = [QEMUFile.new_input(channels[0]), PyQEMUFile.new_input(channels[1])]
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
    from qiochan.qemufile import _speedups

    assert (_speedups.IO_BUF_SIZE, _speedups.MAX_IOV_SIZE) == (
        core.IO_BUF_SIZE,
        core.MAX_IOV_SIZE,
    )
    assert isinstance(QEMUFile.new_output(QIOChannelNull()), _speedups.QEMUFileCore)


def test_the_fixture_installs_the_python_fast_paths(qemufile_core: str) -> None:
    python_method = isinstance(QEMUFile.__dict__.get("put_be64"), type(outcome))
    inherited = type(QEMUFile.put_be64).__name__
    if qemufile_core == "python":
        assert python_method
    else:
        assert inherited == "method_descriptor"


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


@needs_c
def test_garbage_state_never_crashes() -> None:
    """Positions set to anything from Python: every fast path raises or works, never crashes.

    Runs in a child process so that a crash fails this test instead of the run.
    """
    code = """
        import itertools
        from qiochan import QEMUFile
        from qiochan_memory import QIOChannelNull
        values = [-(2**63), -(2**62), -1, 0, 1, 32767, 32768, 32769, 2**40, 2**63 - 1]
        calls = [("put_byte", (1,)), ("put_be64", (1,)), ("put_buffer", (b"x" * 100,)),
                 ("put_buffer_async", (b"y" * 100,)), ("get_byte", ()), ("get_be64", ()),
                 ("get_buffer_in_place", (100,))]
        count = 0
        for index, size, seg, fast_end in itertools.product(values, repeat=4):
            for writable in (True, False):
                f = QEMUFile(QIOChannelNull(), writable)
                f._index, f._size, f._seg, f._fast_end = index, size, seg, fast_end
                for name, args in calls:
                    try:
                        getattr(f, name)(*args)
                    except Exception:
                        pass
                    count += 1
        f = QEMUFile.new_output(QIOChannelNull())
        f._iov = "not a list"
        try:
            f.put_buffer_async(b"z")
        except Exception:
            pass
        del f._iov
        try:
            f.put_buffer_async(b"z")
        except Exception:
            pass
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
def test_state_changed_by_a_collection_during_put_buffer_async() -> None:
    """A finalizer run by the garbage collection an allocation triggers replaces ``_iov``.

    The buffer must be queued on the list the file has once the call returns,
    never on the one it had when the call began (which the finalizer freed).
    """
    f = QEMUFile.new_output(QIOChannelNull())
    f.put_byte(1)  # an open buffer segment: put_buffer_async allocates a view of it
    original = f._iov
    replacement: list[memoryview] = []
    queued_when_swapped: list[int] = []

    class SwapsTheQueue:
        def __del__(self) -> None:
            queued_when_swapped.append(len(original))
            f._iov = replacement

    trap = SwapsTheQueue()
    trap.cycle = trap  # type: ignore[attr-defined]
    del trap
    page = memoryview(bytearray(4096))
    threshold = gc.get_threshold()
    gc.set_threshold(1)
    try:
        f.put_buffer_async(page)
    finally:
        gc.set_threshold(*threshold)
        gc.collect()
    if queued_when_swapped != [0]:
        f.fclose()
        pytest.skip("this interpreter did not collect inside the call's allocation")
    assert f._iov is replacement
    assert replacement[-1] is page
    assert not original
    f.fclose()


def test_the_buffer_cannot_be_resized() -> None:
    f = QEMUFile.new_output(QIOChannelNull())
    with pytest.raises(BufferError):
        f._buf.extend(b"x")
    f.fclose()


def dev_null() -> QIOChannel:
    """A file channel writing to /dev/null: it has an fd, so flushes are direct writes."""
    return QIOChannelFile.new_path("/dev/null", os.O_WRONLY)


@pytest.mark.parametrize("sink", [QIOChannelNull, dev_null])
def test_a_file_in_a_reference_cycle_is_collected(sink: Callable[[], QIOChannel]) -> None:
    f = QEMUFile.new_output(sink())
    page = memoryview(bytearray(4096))
    for _ in range(MAX_IOV_SIZE):  # flushes, and with an fd keeps views for reuse
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
def test_the_c_core_writes_fd_channels_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flushes of a channel with an io_write_fd bypass io_writev; the Python core's do not."""
    for direct in (True, False):
        if not direct:
            monkeypatch.setattr(qiochan.qemufile._io, "write_direct", None)
        ours, theirs = socket.socketpair()
        reader = Drain(theirs.recv)
        ioc = CountingSocket.from_socket(ours)
        f = (QEMUFile if direct else PyQEMUFile).new_output(ioc)
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
        if direct:
            assert writes == 0
        else:
            assert writes >= 200 * 2 // MAX_IOV_SIZE


class FdOnly:
    """The one channel method write_direct calls."""

    def __init__(self, fd: Any) -> None:
        self.fd = fd

    def io_write_fd(self) -> Any:
        return self.fd


@needs_c
def test_write_direct_writes_nothing_it_cannot_pin() -> None:
    """Anything but live contiguous memoryviews (or too many) is left to io_writev."""
    assert core.write_direct is not None
    write = core.write_direct
    read_end, write_end = os.pipe()
    try:
        released = memoryview(b"gone")
        released.release()
        for iov in (
            [memoryview(b"ok"), b"bytes"],
            [memoryview(b"ok"), released],
            [memoryview(b"ok"), memoryview(b"strided")[::2]],
            [memoryview(b"x")] * 129,
        ):
            assert write(FdOnly(write_end), iov) == 0  # type: ignore[arg-type]
        assert write(FdOnly(read_end), [memoryview(b"wrong end")]) == 0  # EBADF
        for no_fd in (-1, -5, 2**31, 2**80, "3", None):
            assert write(FdOnly(no_fd), [memoryview(b"x")]) == -1
        three = [memoryview(b"a"), memoryview(b""), memoryview(b"bc")]
        assert write(FdOnly(write_end), three) == 3
        assert os.read(read_end, 100) == b"abc"
        with pytest.raises(TypeError):
            write(FdOnly(write_end), (memoryview(b"a"),))  # type: ignore[arg-type]
    finally:
        os.close(read_end)
        os.close(write_end)


@needs_c
def test_write_direct_stops_at_a_full_non_blocking_socket() -> None:
    assert core.write_direct is not None
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        channel = FdOnly(ours.fileno())
        page = memoryview(bytes(65536))
        total = 0
        while (n := core.write_direct(channel, [page, page])) > 0:
            total += n
        assert total > 0
        assert core.write_direct(channel, [page]) == 0  # EAGAIN: nothing, no exception


def _offset(view: memoryview, buf: bytearray) -> int:
    """Return where ``view`` starts in ``buf``."""
    start = ctypes.addressof(ctypes.c_char.from_buffer(view))
    return start - ctypes.addressof(ctypes.c_char.from_buffer(buf))


@needs_c
def test_a_reused_view_is_one_nothing_else_reached_meanwhile() -> None:
    """gc.get_referents hands out the kept views: one taken there is never rewritten."""
    ours, theirs = socket.socketpair()
    reader = Drain(theirs.recv)
    f = QEMUFile.new_output(QIOChannelSocket.from_socket(ours))
    for n in range(MAX_IOV_SIZE // 2):  # one direct flush: the header views are kept
        f.put_be64(n)
        f.put_buffer_async(bytes(4096))
    kept = [o for o in gc.get_referents(f) if type(o) is memoryview and o is not f._view]
    assert kept, "the flush kept no views"
    regions = [(view.nbytes, _offset(view, f._buf)) for view in kept]
    for n in range(len(kept) + 2):
        f.put_be64(0xDEADBEEF00 + n)
        f.put_buffer_async(bytes(4096))
    assert [(view.nbytes, _offset(view, f._buf)) for view in kept] == regions
    assert not any(view is item for view in kept for item in f._iov)
    assert f.fclose() == 0
    reader.finish()
    theirs.close()


@needs_c
@settings(max_examples=40, deadline=None)
@given(ops=st.lists(_write_ops, max_size=60), blocking=st.booleans())
def test_writers_match_over_sockets(ops: list[tuple[str, Any]], blocking: bool) -> None:
    """Over real sockets: same results, same bytes (C core direct, Python core io_writev)."""
    streams = []
    for cls, channel_cls in ((QEMUFile, QIOChannelSocket), (PyQEMUFile, NoFdSocket)):
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
