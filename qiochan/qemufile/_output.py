"""The writing half of :class:`~qiochan.qemufile.QEMUFile`: put_*, iovec batching, flush.

Bytes written with ``put_*`` are copied into the internal buffer; the buffer
region written since the last zero-copy buffer forms one open iovec segment
(``_buf[_seg:_index]``), so consecutive puts coalesce for free.
``put_buffer_async`` closes that segment and queues the caller's memory itself.
A flush sends every queued iovec with a single ``writev_all``; it happens when
the buffer is full, when the 64th iovec is queued, and on ``fflush``.

The fast paths (``put_byte``, ``put_be*``, ``put_buffer`` while the data
fits), ``put_buffer_async`` and the queue itself are the core's (``_core`` or
its C twin); anything unusual for a copy (full buffer, error, closed, input
stream, bad input) comes here, to the slow path of the same operation, and
the core's flush writes through :meth:`OutputMixin._send`.
"""

from __future__ import annotations

import errno
import struct
import zlib
from typing import Any

from ._base import BE16, BE32, BE64, BYTE, IO_BUF_SIZE, QEMUFileBase, bad_value
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
    """put_* operations, fflush and the channel side of the core's flush."""

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
            self._put_bytes(self._scratch_view, width)

    def _put_buffer_slow(self, buf: Any) -> None:
        """put_buffer when the fast path declined: any bytes-like object, any size."""
        if not (type(buf) is memoryview and buf.format == "B" and buf.ndim == 1):
            buf = byte_view(buf, "put_buffer")
        if not buf.c_contiguous:
            buf = memoryview(buf.tobytes())  # the core copies contiguous bytes
        self._check_writable("put_buffer")
        if not self._error:
            self._put_bytes(buf, len(buf))

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
        self._commit(_LENGTH_SIZE + blen)
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

    def _send(self, iov: list[memoryview], pending: int, written: int | None) -> None:
        """Write the ``pending`` bytes of the queue ``iov`` for the core's flush.

        ``written`` says how many bytes of ``iov`` a direct write (the C core's)
        already sent before it stopped short; None when nothing was tried.  A
        failure latches ``-EIO`` with the channel's exception; success counts
        the bytes as transferred.
        """
        try:
            write_all(self._ioc, iov, pending, written)
        except OSError as exc:
            self._latch(-errno.EIO, exc)
        else:
            self._total += pending

    def _release_pages(self, regions: list[memoryview]) -> None:
        """Release the whole mmap pages of the flushed ``may_free`` regions (never raises)."""
        release_pages(regions)

    def _joined_views(self, buffers: tuple[Any, ...]) -> list[memoryview]:
        """Return byte views of ``buffers``, adjacent ones joined (the C core's coalesced iovecs).

        The C core keeps one coalesced iovec as the caller buffers it joins
        and asks for views of it only when the queue goes to a channel's
        ``io_writev`` or to ``madvise``: one view when they merge, as the
        Python core's queue holds them.
        """
        views = [byte_view(buf, "put_buffer_async") for buf in buffers]
        joined = views[:1]
        for view in views[1:]:
            merged = merge_adjacent(joined[-1], view) if joined[-1].obj is view.obj else None
            if merged is None:
                joined.append(view)
            else:
                joined[-1] = merged
        return joined

    def buffer_empty(self) -> bool:
        """Return True when nothing is queued for the next flush.

        Raises:
            ChannelError: the file is closed or is an input stream.
        """
        self._check_writable("buffer_empty")
        return self._pending() == 0
