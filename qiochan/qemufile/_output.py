"""The writing half of :class:`~qiochan.qemufile.QEMUFile`: put_*, iovec batching, flush.

Bytes written with ``put_*`` are copied into the internal buffer; the buffer
region written since the last zero-copy buffer forms one open iovec segment
(``_buf[_seg:_index]``), so consecutive puts coalesce for free.
``put_buffer_async`` closes that segment and queues the caller's memory itself.
A flush sends every queued iovec with a single ``writev_all``; it happens when
the buffer is full, when the 64th iovec is queued, and on ``fflush``.

The fast paths (``put_byte``, ``put_be*``, ``put_buffer`` while the data fits,
``put_buffer_async`` of a plain buffer) are the core's (``_core`` or
its C twin); anything unusual (full buffer, error, closed, input stream, bad
input) comes here, to the slow path of the same operation.
"""

from __future__ import annotations

import errno
import struct
import zlib
from typing import Any

from ._base import (
    BE16,
    BE32,
    BE64,
    BYTE,
    IO_BUF_SIZE,
    MAX_IOV_SIZE,
    QEMUFileBase,
    bad_value,
)
from ._io import write_all
from ._pages import byte_view, merge_adjacent, release_pages

__all__ = ["OutputMixin", "compress_bound"]

_LENGTH_SIZE = BE32.size


def compress_bound(size: int) -> int:
    """Return zlib's ``compressBound(size)``: the most ``size`` bytes can deflate to."""
    return size + (size >> 12) + (size >> 14) + (size >> 25) + 13


_VALUES = {
    1: (BYTE, "put_byte"),
    2: (BE16, "put_be16"),
    4: (BE32, "put_be32"),
    8: (BE64, "put_be64"),
}


class OutputMixin(QEMUFileBase):
    """put_* operations, the iovec queue and fflush."""

    # -- slow paths of the core's put_* (see _core) --------------------------------

    def _put_value(self, width: int, v: Any) -> None:
        """put_byte/put_be16/32/64 when the fast path declined: checks, then copies."""
        packer, what = _VALUES[width]
        self._check_writable(what)
        try:
            packer.pack_into(self._scratch, 0, v)
        except struct.error:
            raise bad_value(what, 8 * width, v) from None
        if not self._error:
            self._put_view(self._scratch_view, width)

    def _put_buffer_slow(self, buf: Any) -> None:
        """put_buffer when the fast path declined: any bytes-like object, any size."""
        if not (type(buf) is memoryview and buf.format == "B" and buf.ndim == 1):
            buf = byte_view(buf, "put_buffer")
        self._check_writable("put_buffer")
        if not self._error:
            self._put_view(buf, len(buf))

    def _put_view(self, data: Any, n: int) -> None:
        """Copy the ``n`` bytes of ``data`` (bytes-like, byte format) through the buffer.

        The buffer is flushed each time it fills (and when a new buffer segment
        is the 64th iovec), as QEMU's put_buffer/add_buf_to_iovec do.
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

    def _add_internal(self, n: int) -> None:
        """Account ``n`` bytes just written at ``_index`` (QEMU's add_buf_to_iovec)."""
        i = self._index
        opens_iovec = i == self._seg
        self._index = i + n
        if (opens_iovec and len(self._iov) + 1 >= MAX_IOV_SIZE) or i + n == IO_BUF_SIZE:
            self._flush()

    def _put_buffer_async_slow(self, buf: Any, may_free: bool = False) -> None:
        """put_buffer_async in full: conversion, checks, coalescing, ``may_free``."""
        kind = type(buf)
        if kind is memoryview and buf.format == "B" and buf.ndim == 1 and buf.c_contiguous:
            view = buf
        elif kind is bytes or kind is bytearray:
            view = memoryview(buf)
        else:
            view = byte_view(buf, "put_buffer_async")
        if not self._fast_end:
            self._check_writable("put_buffer_async")
            if self._error:
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
            if not (iov and view.obj is iov[-1].obj and self._coalesce(view, may_free)):
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

    def put_counted_string(self, s: str | bytes) -> None:
        """Write a length byte followed by ``s`` (a ``str`` is encoded as UTF-8).

        Raises:
            ValueError: ``s`` is 256 bytes or longer (nothing is written).
            TypeError: ``s`` is neither str nor bytes-like.
            ChannelError: the file is closed or is an input stream.
        """
        data = s.encode() if isinstance(s, str) else byte_view(s, "put_counted_string")
        n = len(data) if isinstance(data, bytes) else data.nbytes
        if n >= 256:
            raise ValueError(f"put_counted_string: string of {n} bytes is too long (max 255)")
        self._check_writable("put_counted_string")
        self.put_byte(n)
        self.put_buffer(data)

    def put_compression_data(self, data: Any, level: int = 1) -> int:
        """Deflate ``data`` (zlib format) into the internal buffer, preceded by its be32 length.

        Nothing is flushed to make room: the compressed block must fit in the
        space left in the buffer, whatever ``data`` compresses to
        (``compressBound``), as in QEMU.

        Returns:
            The bytes added to the stream (length field included), or -1 when
            the block cannot fit.
        Raises:
            ValueError: ``level`` is not in -1..9.
            TypeError: ``data`` is not bytes-like.
            ChannelError: the file is closed or is an input stream.
        """
        self._check_writable("put_compression_data")
        if not isinstance(level, int) or not -1 <= level <= 9:
            raise ValueError(f"put_compression_data: level must be -1..9, not {level!r}")
        view = byte_view(data, "put_compression_data")
        i = self._index
        room = IO_BUF_SIZE - i - _LENGTH_SIZE
        if room < compress_bound(view.nbytes):
            return -1
        packed = zlib.compress(view, level)
        blen = len(packed)
        if self._error:
            return blen + _LENGTH_SIZE
        BE32.pack_into(self._buf, i, blen)
        start = i + _LENGTH_SIZE
        self._buf[start : start + blen] = packed
        self._add_internal(_LENGTH_SIZE + blen)
        self._refresh_fast()
        return blen + _LENGTH_SIZE

    def put_qemu_file(self, src: QEMUFileBase) -> int:
        """Copy what ``src`` holds in its internal buffer into this stream and empty ``src``.

        ``src`` is typically an output file over a null channel used to build a
        block (QEMU's compression threads); its queued zero-copy buffers are
        dropped, as in QEMU.

        Returns:
            The number of bytes moved.
        Raises:
            ChannelError: either file is closed, or is not an output stream.
            ValueError: ``src`` is this file.
        """
        self._check_writable("put_qemu_file")
        if not isinstance(src, OutputMixin):
            raise TypeError(f"put_qemu_file needs a QEMUFile, not {type(src).__name__}")
        src._check_writable("put_qemu_file source")
        if src is self:
            raise ValueError("put_qemu_file: a file cannot be copied into itself")
        n = src._index
        if n > 0:
            self.put_buffer(src._view[:n])
            src._discard_output()
        return n

    def _discard_output(self) -> None:
        """Forget everything queued (the views of caller buffers are released)."""
        self._iov = []
        self._free = []
        self._iov_bytes = 0
        self._index = 0
        self._seg = 0
        self._refresh_fast()

    # -- flushing and accounting -----------------------------------------------------

    def fflush(self) -> None:
        """Send every queued byte with one vectored write.

        Does nothing on an input stream or once an error is latched.  A write
        failure latches ``-EIO`` with the channel's exception.  ``may_free``
        pages are released afterwards, whether the write succeeded or not.

        Raises:
            ChannelError: the file is closed.
        """
        self._check_open()
        if self._writable and not self._error:
            self._flush()

    def _flush(self, written: int | None = None) -> None:
        """fflush for an open, error-free output stream.

        ``written`` is set by the C core after its direct write sent that many
        bytes of the queue (open segment included) and stopped short.
        """
        iov = self._iov
        i = self._index
        seg = self._seg
        pending = self._iov_bytes
        if i > seg:
            iov.append(self._view[seg:i])
            pending += i - seg
        if iov:
            try:
                write_all(self._ioc, iov, pending, written)
            except OSError as exc:
                self._latch(-errno.EIO, exc)
            else:
                self._total += pending
            if self._free:
                release_pages([iov[k] for k in self._free])
                self._free = []
            self._iov = []
            self._iov_bytes = 0
        self._index = self._seg = 0
        self._fast_end = 0 if self._error else IO_BUF_SIZE

    def buffer_empty(self) -> bool:
        """Return True when nothing is queued for the next flush.

        Raises:
            ChannelError: the file is closed or is an input stream.
        """
        self._check_writable("buffer_empty")
        return not self._iov and self._index == self._seg
