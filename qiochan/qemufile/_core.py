"""The state and fast paths of :class:`~qiochan.qemufile.QEMUFile`, in Python.

A migration stream calls a handful of operations once per value or per page:
``put_byte``, ``put_be16/32/64``, ``put_buffer``, ``put_buffer_async``,
``get_byte``, ``get_be16/32/64`` and ``get_buffer_in_place``.  They live in
the *core*, the base class of every QEMUFile, which handles only the common
case (the data fits, the value is in range, the file is open and error-free)
and hands everything else to a slow path of the same name in
``_output.py`` / ``_input.py``:

================================  ===========================
fast path                         slow path
================================  ===========================
``put_byte``, ``put_be*``         ``_put_value(width, v)``
``put_buffer``                    ``_put_buffer_slow(buf)``
``put_buffer_async``              ``_put_buffer_async_slow(buf, may_free)``
``get_byte``, ``get_be*``         ``_get_value(width)``
``get_buffer_in_place``           ``_get_in_place_slow(size)``
================================  ===========================

This module is the reference implementation.  ``qiochan/qemufile/_speedups.c`` is its
twin in C, used when it was built (set ``QIOCHAN_NO_SPEEDUPS=1`` to use this
one anyway); both keep the state in the same attributes, so the slow paths
cannot tell them apart, and the test suite runs against both
(:func:`python_fast_paths`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any, cast

__all__ = [
    "ACCELERATED",
    "FAST_PATHS",
    "IO_BUF_SIZE",
    "MAX_IOV_SIZE",
    "QEMUFileCore",
    "load_core",
    "python_fast_paths",
    "write_direct",
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

    Attributes (private, shared with the slow paths):
        _buf, _view: the 32 KiB internal buffer and a view of it.
        _index: write position (writer) or read position (reader).
        _size: end of the buffered input (reader; always 0 for a writer).
        _iov: queued views a writer has closed; ``_iov_bytes`` their size.
        _seg: start of the writer's open buffer segment ``_buf[_seg:_index]``,
            the last iovec when non-empty.
        _free: indices in ``_iov`` of ``may_free`` buffers.
        _reading: True for an open input stream (the C fast paths then refill
            the buffer themselves, as ``_fill`` does).
        _fast_end: writers take the fast path while ``_index + n < _fast_end``;
            0 when the file is a reader, closed, errored, or the next segment
            would be the last iovec allowed.
    """

    def __init__(self) -> None:
        self._buf = bytearray(IO_BUF_SIZE)
        self._view = memoryview(self._buf)
        self._index = 0
        self._size = 0
        self._seg = 0
        self._fast_end = 0
        self._iov: list[memoryview] = []
        self._iov_bytes = 0
        self._free: list[int] = []
        self._reading = False

    # -- the slow paths (implemented by the output and input mixins) -------------------

    def _put_value(self, width: int, v: Any) -> None:
        raise NotImplementedError

    def _put_buffer_slow(self, buf: Any) -> None:
        raise NotImplementedError

    def _put_buffer_async_slow(self, buf: Any, may_free: bool = False) -> None:
        raise NotImplementedError

    def _flush(self, written: int | None = None) -> None:
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
        a full buffer or iovec list, ``transferred``, ``fclose``).  A buffer
        adjacent in memory to the one queued just before it (for example the
        next page of the same ``mmap``) extends that iovec instead of taking a
        new one.  With ``may_free``, whole pages of an ``mmap``-backed ``buf``
        are released with ``madvise(MADV_DONTNEED)`` after the flush (a private
        anonymous mapping then reads back as zeros).

        Raises:
            TypeError: ``buf`` is not a C-contiguous bytes-like object.
            ChannelError: the file is closed or is an input stream.
        """
        if (
            type(buf) is not memoryview
            or may_free
            or not self._fast_end
            or buf.format != "B"
            or buf.ndim != 1
            or not buf.c_contiguous
        ):
            self._put_buffer_async_slow(buf, may_free)
            return
        n = len(buf)
        if not n:
            return
        iov = self._iov
        i = self._index
        seg = self._seg
        if i > seg:
            iov.append(self._view[seg:i])
            self._seg = i
        elif iov and buf.obj is iov[-1].obj:
            self._put_buffer_async_slow(buf, may_free)  # maybe adjacent: coalesce
            return
        iov.append(buf)
        self._iov_bytes += i - seg + n
        if len(iov) >= MAX_IOV_SIZE - 1:
            if len(iov) >= MAX_IOV_SIZE:
                self._flush()
            else:
                self._fast_end = 0

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


#: The operations the core implements (the C and Python twins both define them).
FAST_PATHS = (
    "put_byte",
    "put_be16",
    "put_be32",
    "put_be64",
    "put_buffer",
    "put_buffer_async",
    "get_byte",
    "get_be16",
    "get_be32",
    "get_be64",
    "get_buffer_in_place",
)


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


def python_fast_paths() -> dict[str, Any]:
    """Return the pure-Python fast paths by name, to install over the C ones (tests do).

    Both twins keep their state in the same attributes, so a QEMUFile subclass
    (or a monkeypatched QEMUFile) with these methods runs the Python fast paths
    on top of the C state.
    """
    return {name: QEMUFileCore.__dict__[name] for name in FAST_PATHS}


Core, ACCELERATED = load_core()

#: The C core's direct writer, ``write_direct(channel, views)``: the bytes it
#: wrote with one system call on ``channel.io_write_fd()``, or -1 when the
#: channel offers no fd; None with the Python core.
write_direct: Callable[[Any, list[memoryview]], int] | None = None
if ACCELERATED:
    from ._speedups import write_direct
