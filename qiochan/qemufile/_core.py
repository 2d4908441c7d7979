"""The state, fast paths and iovec queue of :class:`~qiochan.qemufile.QEMUFile`, in Python.

A migration stream calls a handful of operations once per value or per page:
``put_byte``, ``put_be16/32/64``, ``put_buffer``, ``put_buffer_async``,
``get_byte``, ``get_be16/32/64`` and ``get_buffer_in_place``.  They live in
the *core*, the last base class of every QEMUFile, together with the iovec
queue a flush sends (QEMU's ``add_to_iovec``/``add_buf_to_iovec``/``qemu_fflush``).
The value and copy fast paths handle only the common case (the data fits, the
value is in range, the file is open and error-free) and hand everything else
to a slow path of the same name in ``_output.py`` / ``_input.py``:

================================  ===========================
fast path                         slow path
================================  ===========================
``put_byte``, ``put_be*``         ``_put_value(width, v)``
``put_buffer``                    ``_put_buffer_slow(buf)``
``get_byte``, ``get_be*``         ``_get_value(width)``
``get_buffer_in_place``           ``_get_in_place_slow(size)``
================================  ===========================

``put_buffer_async`` and the queue (``_put_bytes``, ``_commit``, ``_flush``,
``_pending``, ``_discard_output``, ``_refresh_fast``) are the core's alone:
the mixins never see an iovec.  The mixins give the core its checks
(``_may_write``, ``_writer_ok``) and its channel access (``_send``,
``_release_pages``).

This module is the reference implementation, the specification.
``qiochan/qemufile/_speedups.c`` is its twin in C (the queue kept as
``struct iovec``s over pinned ``Py_buffer``s), used when it was built; set
``QIOCHAN_NO_SPEEDUPS=1`` to use this one anyway.  The test suite runs once on
each core, and ``tests/qemufile/test_core.py`` compares the two side by side.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any, cast

from ._pages import byte_view, merge_adjacent

__all__ = [
    "ACCELERATED",
    "IO_BUF_SIZE",
    "MAX_IOV_SIZE",
    "Core",
    "QEMUFileCore",
    "load_core",
]

#: Size of the internal buffer (QEMU's ``IO_BUF_SIZE``).
IO_BUF_SIZE = 32768

#: Most iovecs queued before a flush (QEMU's ``MIN(IOV_MAX, 64)``).
MAX_IOV_SIZE = min(os.sysconf("SC_IOV_MAX"), 64)

_FORMATS = {2: ">H", 4: ">I", 8: ">Q"}


def _value_writer(width: int) -> Callable[[QEMUFileCore, int], None]:
    """Return the fast path of ``put_be{8 * width}``."""
    pack = struct.Struct(_FORMATS[width]).pack_into
    bits = 8 * width

    def put(self: QEMUFileCore, v: int, /) -> None:
        i = self._index
        if i + width < self._fast_end:
            try:
                pack(self._buf, i, v)
            except struct.error:
                self._put_value(width, v)  # raises the error
                return
            self._index = i + width
        else:
            self._put_value(width, v)

    put.__name__ = f"put_be{bits}"
    put.__qualname__ = f"QEMUFileCore.put_be{bits}"
    put.__doc__ = f"""Write ``v`` as a big-endian {bits}-bit value.

        Raises:
            ValueError: ``v`` is not in 0..{(1 << bits) - 1} (nothing is written).
            TypeError: ``v`` is not an integer.
            ChannelError: the file is closed or is an input stream.
        """
    return put


def _value_reader(width: int) -> Callable[[QEMUFileCore], int]:
    """Return the fast path of ``get_be{8 * width}``."""
    unpack = struct.Struct(_FORMATS[width]).unpack_from
    bits = 8 * width

    def get(self: QEMUFileCore) -> int:
        i = self._index
        if self._size - i >= width:
            self._index = i + width
            value: int = unpack(self._buf, i)[0]
            return value
        return self._get_value(width)

    get.__name__ = f"get_be{bits}"
    get.__qualname__ = f"QEMUFileCore.get_be{bits}"
    get.__doc__ = f"""Read a big-endian {bits}-bit value.

        Returns:
            The value; bytes missing at end of file or after an error read as 0
            (the error is latched).
        Raises:
            ChannelError: the file is closed or is an output stream.
        """
    return get


class QEMUFileCore:
    """The buffer, positions and iovec queue of a QEMUFile, and its fast paths.

    This is the reference core: ``_speedups.c`` implements the same methods
    and the same queue in C.  The queue belongs to the core; the mixins see
    it only through ``_put_bytes``, ``_commit``, ``_flush``, ``_pending``,
    ``_discard_output`` and ``_refresh_fast``.

    Attributes (private, shared with the mixins; both cores have them):
        _buf, _view: the 32 KiB internal buffer and a view of it.
        _index: write position (writer) or read position (reader).
        _size: end of the buffered input (reader; always 0 for a writer).
        _total: bytes written to (or read from) the channel.
        _reading: True for an open input stream (the fast paths then refill
            the buffer themselves, as ``_fill`` does).
        _fast_end: writers take the fast path while ``_index + n < _fast_end``;
            0 when the file is a reader, closed, errored, or the next segment
            would be the last iovec allowed.

    The queue (this core only; the C core keeps it in C):
        _iov: the iovecs, byte views: slices of ``_buf`` and caller buffers.
        _iov_bytes: their size.
        _seg: start of the writer's open buffer segment ``_buf[_seg:_index]``,
            the next iovec when non-empty.
        _free: indices in ``_iov`` of ``may_free`` buffers.
    """

    def __init__(self) -> None:
        self._buf = bytearray(IO_BUF_SIZE)
        self._view = memoryview(self._buf)
        self._index = 0
        self._size = 0
        self._total = 0
        self._seg = 0
        self._fast_end = 0
        self._iov: list[memoryview] = []
        self._iov_bytes = 0
        self._free: list[int] = []
        self._reading = False

    # -- what the mixins provide (slow paths, checks, channel access) ----------------

    _error: int

    def _put_value(self, width: int, v: Any) -> None:
        raise NotImplementedError

    def _put_buffer_slow(self, buf: Any) -> None:
        raise NotImplementedError

    def _check_writable(self, what: str) -> None:
        raise NotImplementedError

    def _may_write(self, what: str) -> bool:
        raise NotImplementedError

    def _writer_ok(self) -> bool:
        raise NotImplementedError

    def _send(self, iov: list[memoryview], pending: int, written: int | None) -> None:
        raise NotImplementedError

    def _release_pages(self, regions: list[memoryview]) -> None:
        raise NotImplementedError

    def _get_value(self, width: int) -> int:
        raise NotImplementedError

    def _get_in_place_slow(self, size: int) -> memoryview:
        raise NotImplementedError

    # -- writers -----------------------------------------------------------------------

    def put_byte(self, v: int, /) -> None:
        """Write one byte.

        Raises:
            ValueError: ``v`` is not in 0..255 (nothing is written).
            TypeError: ``v`` is not an integer.
            ChannelError: the file is closed or is an input stream.
        """
        i = self._index
        if i + 1 < self._fast_end:
            try:
                self._buf[i] = v
            except (ValueError, TypeError):
                self._put_value(1, v)  # raises the error
                return
            self._index = i + 1
        else:
            self._put_value(1, v)

    put_be16 = _value_writer(2)
    put_be32 = _value_writer(4)
    put_be64 = _value_writer(8)

    def put_buffer(self, buf: Any, /) -> None:
        """Copy the bytes-like ``buf`` into the stream.

        Raises:
            TypeError: ``buf`` is not a bytes-like object.
            ChannelError: the file is closed or is an input stream.
        """
        kind = type(buf)
        if (
            kind is bytes
            or kind is bytearray
            or (kind is memoryview and buf.format == "B" and buf.ndim == 1)
        ):
            j = self._index + len(buf)
            if j < self._fast_end:
                self._view[self._index : j] = buf
                self._index = j
                return
        self._put_buffer_slow(buf)

    def put_buffer_async(self, buf: Any, may_free: bool = False) -> None:
        """Queue ``buf`` itself (no copy) to be sent by the next flush.

        The caller must keep ``buf`` unchanged until the next flush (``fflush``,
        a full buffer or iovec list, ``transferred``, ``fclose``); the core
        holds it (a bytearray cannot be resized, an mmap not closed) until then.
        A buffer adjacent in memory to the one queued just before it (for
        example the next page of the same ``mmap``) extends that iovec instead
        of taking a new one.  With ``may_free``, whole pages of an
        ``mmap``-backed ``buf`` are released with ``madvise(MADV_DONTNEED)``
        after the flush (a private anonymous mapping then reads back as zeros).

        Raises:
            TypeError: ``buf`` is not a C-contiguous bytes-like object.
            ChannelError: the file is closed or is an input stream.
        """
        kind = type(buf)
        if kind is memoryview and buf.format == "B" and buf.ndim == 1 and buf.c_contiguous:
            view = buf
        elif kind is bytes or kind is bytearray:
            view = memoryview(buf)
        else:
            view = byte_view(buf, "put_buffer_async")
        if not self._fast_end and not self._may_write("put_buffer_async"):
            return
        n = len(view)
        if not n:
            return
        iov = self._iov
        i = self._index
        seg = self._seg
        if i > seg:
            iov.append(self._view[seg:i])
            iov.append(view)
            self._iov_bytes += i - seg + n
            self._seg = i
        else:
            if not (iov and view.obj is iov[-1].obj and self._coalesce(view, bool(may_free))):
                iov.append(view)
            self._iov_bytes += n
        count = len(iov)
        if may_free and not (self._free and self._free[-1] == count - 1):
            self._free.append(count - 1)
        if count >= MAX_IOV_SIZE - 1:
            if count >= MAX_IOV_SIZE:
                self._flush()
            else:
                self._fast_end = 0

    def _coalesce(self, view: memoryview, may_free: bool) -> bool:
        """Extend the last queued iovec with ``view`` if adjacent and alike; return True if so."""
        last = len(self._iov) - 1
        prev = self._iov[last]
        if prev.obj is self._buf:
            return False
        if may_free != bool(self._free and self._free[-1] == last):
            return False
        merged = merge_adjacent(prev, view)
        if merged is None:
            return False
        self._iov[last] = merged
        return True

    def _put_bytes(self, data: Any, n: int) -> None:
        """Copy the ``n`` bytes of ``data`` (bytes-like, byte format) through the buffer.

        The buffer is flushed each time it fills (and when a new buffer segment
        is the 64th iovec), as QEMU's put_buffer/add_buf_to_iovec do; copying
        stops when a flush latches an error.  Only for an open, error-free writer.
        """
        view = self._view
        src = data if type(data) is memoryview else memoryview(data)
        done = 0
        while done < n:
            i = self._index
            chunk = min(IO_BUF_SIZE - i, n - done)
            view[i : i + chunk] = src[done : done + chunk]
            self._add_internal(chunk)
            if self._error:
                break
            done += chunk
        self._refresh_fast()

    def _commit(self, n: int) -> None:
        """Account ``n`` bytes the caller wrote into ``_buf`` at ``_index`` (they fit)."""
        self._add_internal(n)
        self._refresh_fast()

    def _add_internal(self, n: int) -> None:
        """Account ``n`` bytes just written at ``_index`` (QEMU's add_buf_to_iovec)."""
        i = self._index
        opens_iovec = i == self._seg
        self._index = i + n
        if (opens_iovec and len(self._iov) + 1 >= MAX_IOV_SIZE) or i + n == IO_BUF_SIZE:
            self._flush()

    def _pending(self) -> int:
        """Return the bytes queued for the next flush (open segment included)."""
        return self._iov_bytes + self._index - self._seg

    def _refresh_fast(self) -> None:
        """Open or close the writers' fast path after a slow-path operation."""
        if not self._writer_ok():
            self._fast_end = 0
        elif self._index > self._seg or len(self._iov) < MAX_IOV_SIZE - 1:
            self._fast_end = IO_BUF_SIZE
        else:
            self._fast_end = 0

    def _flush(self) -> None:
        """Send every queued iovec with one vectored write (QEMU's qemu_fflush).

        For an open, error-free output stream.  The queue is taken first, so
        the file is empty again whatever the write does; a failure is latched
        by ``_send``; ``may_free`` pages are released afterwards either way.
        """
        iov = self._iov
        free = self._free
        i = self._index
        seg = self._seg
        pending = self._iov_bytes
        if i > seg:
            iov.append(self._view[seg:i])
            pending += i - seg
        self._iov = []
        self._free = []
        self._iov_bytes = 0
        self._index = self._seg = 0
        if iov:
            self._send(iov, pending, None)
            if free:
                self._release_pages([iov[k] for k in free])
        self._refresh_fast()

    def _discard_output(self) -> None:
        """Forget everything queued (the caller buffers are let go)."""
        self._iov = []
        self._free = []
        self._iov_bytes = 0
        self._index = 0
        self._seg = 0
        self._refresh_fast()

    # -- readers -----------------------------------------------------------------------

    def get_byte(self) -> int:
        """Read one byte; 0 at end of file or on error (the error is latched).

        Raises:
            ChannelError: the file is closed or is an output stream.
        """
        i = self._index
        if i < self._size:
            self._index = i + 1
            return self._buf[i]
        return self._get_value(1)

    get_be16 = _value_reader(2)
    get_be32 = _value_reader(4)
    get_be64 = _value_reader(8)

    def get_buffer_in_place(self, size: int, /) -> memoryview:
        """Read ``size`` bytes, returning a view into the internal buffer when possible.

        When the bytes fit in the internal buffer the result is a view of it,
        valid until the next operation on the file; otherwise they are copied
        into a new buffer.

        Returns:
            A view of the bytes read: ``size`` of them, fewer at end of file or on error.
        Raises:
            ValueError: ``size`` is negative.
            ChannelError: the file is closed or is an output stream.
        """
        i = self._index
        if type(size) is int and size > 0 and i + size <= self._size:
            self._index = i + size
            return self._view[i : i + size]
        return self._get_in_place_slow(size)


def load_core() -> tuple[type[QEMUFileCore], bool]:
    """Return the core class to build QEMUFile on, and whether it is the C one.

    The C extension ``qiochan.qemufile._speedups`` is used when it was built, unless the
    environment variable ``QIOCHAN_NO_SPEEDUPS`` is set to a non-empty value.
    """
    if os.environ.get("QIOCHAN_NO_SPEEDUPS"):
        return QEMUFileCore, False
    try:
        from . import _speedups
    except ImportError:
        return QEMUFileCore, False
    if (_speedups.IO_BUF_SIZE, _speedups.MAX_IOV_SIZE) != (IO_BUF_SIZE, MAX_IOV_SIZE):
        return QEMUFileCore, False  # built from another version of this file: ignore it
    return cast("type[QEMUFileCore]", _speedups.QEMUFileCore), True


Core, ACCELERATED = load_core()
