"""The reading half of :class:`~qiochan.qemufile.QEMUFile`: buffer refill, peek, get_*.

The unread input is ``_buf[_index:_size]``.  A refill moves it to the front
and reads as much as the channel gives into the rest (one ``read``; on a
non-blocking channel it waits with ``wait(IN)`` first).  End of file and
read errors latch ``-EIO``; from then on nothing more is read and values that
could not be read are zero, as in QEMU.

The fast paths (``get_byte``, ``get_be*``, ``get_buffer_in_place`` while the
data is buffered) are the core's (``_core`` or its C twin); when the
data is not buffered they come here, to the slow path of the same operation.
"""

from __future__ import annotations

import errno
import operator
import os
import zlib
from typing import Any

from ..errors import ChannelError
from ._base import BE32, EMPTY, IO_BUF_SIZE, QEMUFileBase
from ._io import read_once
from ._pages import byte_view

__all__ = ["InputMixin"]

_EIO = -errno.EIO
_VALUE_NAMES = {1: "get_byte", 2: "get_be16", 4: "get_be32", 8: "get_be64"}


class InputMixin(QEMUFileBase):
    """get_*/peek_* operations over the internal read buffer."""

    # -- reading from the channel -------------------------------------------------

    def _read_into(self, target: memoryview) -> int:
        """Read once from the channel into ``target``, waiting while it would block.

        Returns:
            Bytes read (> 0), or -EIO with the error latched (end of file
            included).  Nothing is read once an error is latched (returns 0).
        """
        if self._error:
            return 0
        try:
            n = read_once(self._ioc, target)
        except OSError as exc:
            self._latch(_EIO, exc)
            return _EIO
        if n > 0:
            self._total += n
            return n
        self._latch(_EIO, ChannelError("Unexpected end of QEMUFile input stream", errno.EIO))
        return _EIO

    def _fill(self) -> int:
        """Move the unread bytes to the front and read more after them (qemu_fill_buffer).

        Returns:
            Bytes added, 0 if an error was already latched, or -EIO.
        """
        i = self._index
        pending = self._size - i
        view = self._view
        if i:
            if pending > 0:
                view[:pending] = view[i : self._size]
            self._index = 0
            self._size = pending
        n = self._read_into(view[pending:])
        if n > 0:
            self._size = pending + n
        return n

    def _ensure(self, need: int) -> int:
        """Refill until ``need`` (<= 32768) unread bytes are buffered or the input fails.

        Returns:
            The unread bytes now buffered (fewer than ``need`` only on error).
        """
        available = self._size - self._index
        while available < need:
            if self._fill() <= 0:
                break
            available = self._size
        return available

    def _read_size(self, what: str, size: int) -> int:
        """Check that this is an open input stream and ``size`` an int >= 0; return it.

        Raises:
            ChannelError: the file is closed or is an output stream.
            TypeError: ``size`` is not an integer.
            ValueError: ``size`` is negative.
        """
        self._check_readable(what)
        size = operator.index(size)
        if size < 0:
            raise ValueError(f"{what}: size must be >= 0, not {size}")
        return size

    # -- peeking and skipping -------------------------------------------------------

    def peek_buffer(self, size: int, offset: int = 0) -> memoryview:
        """Return up to ``size`` bytes at ``offset`` past the read position, without consuming.

        Reads from the channel until the bytes are buffered.  The view points
        into the internal buffer and is valid until the next operation.

        Returns:
            A view of ``size`` bytes, fewer at end of file or on error.
        Raises:
            ValueError: ``offset`` is not in 0..32767, or ``size`` is negative or
                goes beyond the internal buffer (``size > 32768 - offset``).
            ChannelError: the file is closed or is an output stream.
        """
        self._check_readable("peek_buffer")
        if not 0 <= offset < IO_BUF_SIZE:
            raise ValueError(f"peek_buffer: offset {offset} is outside 0..{IO_BUF_SIZE - 1}")
        if not 0 <= size <= IO_BUF_SIZE - offset:
            raise ValueError(
                f"peek_buffer: {size} bytes at offset {offset} go beyond the "
                f"{IO_BUF_SIZE}-byte buffer"
            )
        pending = self._ensure(offset + size) - offset
        if pending <= 0:
            return EMPTY
        index = self._index + offset
        return self._view[index : index + min(size, pending)]

    def peek_byte(self, offset: int = 0) -> int:
        """Return the byte ``offset`` bytes past the read position, without consuming.

        Refills the buffer at most once, so a far offset may see 0 before its
        byte arrived (as in QEMU).

        Returns:
            The byte, or 0 at end of file or on error.
        Raises:
            ValueError: ``offset`` is not in 0..32767.
            ChannelError: the file is closed or is an output stream.
        """
        i = self._index + offset
        if offset >= 0 and i < self._size:
            return self._buf[i]
        self._check_readable("peek_byte")
        if not 0 <= offset < IO_BUF_SIZE:
            raise ValueError(f"peek_byte: offset {offset} is outside 0..{IO_BUF_SIZE - 1}")
        self._fill()
        i = self._index + offset
        return self._buf[i] if i < self._size else 0

    def skip(self, size: int) -> None:
        """Consume ``size`` already-buffered bytes; does nothing if fewer are buffered.

        Raises:
            ValueError: ``size`` is negative.
            TypeError: ``size`` is not an integer.
            ChannelError: the file is closed or is an output stream.
        """
        size = self._read_size("skip", size)
        if self._index + size <= self._size:
            self._index += size

    def peek_available(self, size: int = 1) -> memoryview:
        """Return a view of every unread byte buffered, reading only while fewer than ``size`` are.

        Unlike :meth:`peek_buffer`, the view may be longer than ``size`` (up to
        the whole 32 KiB buffer) and no read happens when ``size`` bytes are
        already buffered, so a scanner can look at what has arrived without
        waiting for more.  The view is valid until the next operation.

        Returns:
            The buffered unread bytes: at least ``size`` of them, fewer only at
            end of file or on error (the error is latched).
        Raises:
            ValueError: ``size`` is not in 0..32768.
            ChannelError: the file is closed or is an output stream.
        """
        self._check_readable("peek_available")
        if not 0 <= size <= IO_BUF_SIZE:
            raise ValueError(f"peek_available: size {size} is outside 0..{IO_BUF_SIZE}")
        self._ensure(size)
        return self._view[self._index : self._size]

    def discard(self, size: int) -> int:
        """Consume ``size`` bytes of the stream without handing them out.

        The bytes pass through the internal buffer only: nothing is allocated
        or copied for the caller, whatever ``size`` is (QEMU's
        ``qemu_file_skip`` on buffered data, extended to refill as needed).

        Returns:
            Bytes consumed: ``size``, fewer at end of file or on error.
        Raises:
            ValueError: ``size`` is negative.
            TypeError: ``size`` is not an integer.
            ChannelError: the file is closed or is an output stream.
        """
        size = self._read_size("discard", size)
        done = 0
        while done < size:
            available = self._size - self._index
            if available <= 0:
                if self._fill() <= 0:
                    break
                continue
            n = min(available, size - done)
            self._index += n
            done += n
        return done

    def tell(self) -> int:
        """Return the stream offset of the next byte a reader gets (bytes consumed so far).

        For an output stream this is :meth:`transferred_noflush`.

        Raises:
            ChannelError: the file is closed.
        """
        self._check_open()
        if self._writable:
            return self.transferred_noflush()
        return self._total - (self._size - self._index)

    # -- values -------------------------------------------------------------------

    def _get_value(self, width: int) -> int:
        """get_byte/get_be16/32/64 when the value is not buffered: refill, or zeros."""
        self._check_readable(_VALUE_NAMES[width])
        n = min(self._ensure(width), width)
        i = self._index
        self._index = i + n
        return int.from_bytes(self._view[i : i + n], "big") << (8 * (width - n))

    # -- buffers -------------------------------------------------------------------

    def get_buffer(self, buf: Any) -> int:
        """Fill the writable ``buf`` from the stream.

        Large reads go straight from the channel into ``buf`` once the
        internal buffer is drained.

        Returns:
            Bytes read: ``len(buf)``, fewer at end of file or on error.
        Raises:
            TypeError: ``buf`` is not a writable C-contiguous buffer.
            ChannelError: the file is closed or is an output stream.
        """
        self._check_readable("get_buffer")
        out = byte_view(buf, "get_buffer")
        if out.readonly:
            raise TypeError("get_buffer needs a writable buffer")
        return self._get_into(out)

    def _get_into(self, out: memoryview) -> int:
        size = out.nbytes
        done = 0
        while done < size:
            i = self._index
            available = self._size - i
            if available <= 0:
                if size - done >= IO_BUF_SIZE and not self._error:
                    n = self._read_into(out[done:])
                    if n <= 0:
                        break
                    done += n
                    continue
                if self._fill() <= 0:
                    break
                continue
            n = min(available, size - done)
            out[done : done + n] = self._view[i : i + n]
            self._index = i + n
            done += n
        return done

    def get_bytes(self, size: int) -> bytes:
        """Read ``size`` bytes and return them (fewer at end of file or on error).

        Raises:
            ValueError: ``size`` is negative.
            TypeError: ``size`` is not an integer.
            ChannelError: the file is closed or is an output stream.
        """
        i = self._index
        j = i + size
        if size > 0 and j <= self._size:
            self._index = j
            return self._view[i:j].tobytes()
        size = self._read_size("get_bytes", size)
        out = memoryview(bytearray(size))
        n = self._get_into(out)
        return out[:n].tobytes()

    def _get_in_place_slow(self, size: int) -> memoryview:
        """get_buffer_in_place when the bytes are not all buffered: refill or copy."""
        size = self._read_size("get_buffer_in_place", size)
        if size < IO_BUF_SIZE and self._ensure(size) >= size:
            i = self._index
            self._index = i + size
            return self._view[i : i + size]
        out = memoryview(bytearray(size))
        return out[: self._get_into(out)]

    def get_counted_string(self) -> bytes:
        """Read a length byte and that many bytes.

        Returns:
            The string's bytes; ``b""`` when it could not be read whole (the
            error is latched).
        Raises:
            ChannelError: the file is closed or is an output stream.
        """
        length = self.get_byte()
        data = self.get_bytes(length)
        return data if len(data) == length else b""

    def get_compression_data(self) -> bytes:
        """Read a block written by ``put_compression_data`` and inflate it.

        Returns:
            The original bytes; ``b""`` on error.  A block longer than the
            internal buffer or that does not inflate to at most 32 KiB latches
            ``-EINVAL`` (the peer sent garbage).
        Raises:
            ChannelError: the file is closed or is an output stream.
        """
        blen = self.get_be32()
        if self._error:
            return b""
        if blen > IO_BUF_SIZE - BE32.size:
            self._latch(
                -errno.EINVAL,
                ChannelError(f"Compressed block of {blen} bytes is too large", errno.EINVAL),
            )
            return b""
        packed = self.get_buffer_in_place(blen)
        if packed.nbytes != blen:
            return b""
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(packed, IO_BUF_SIZE)
        except zlib.error as exc:
            self._latch(-errno.EINVAL, ChannelError(f"Bad compressed block: {exc}", errno.EINVAL))
            return b""
        if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
            self._latch(
                -errno.EINVAL,
                ChannelError("Compressed block is truncated or too large", errno.EINVAL),
            )
            return b""
        return data

    def get_to_fd(self, fd: int, size: int) -> int:
        """Read ``size`` bytes from the stream and write them to the file descriptor ``fd``.

        Returns:
            0, or a negative errno: the write's error, or ``-EIO`` when the
            stream ended or failed first.
        Raises:
            ValueError: ``size`` is negative.
            TypeError: ``size`` is not an integer.
            ChannelError: the file is closed or is an output stream.
        """
        size = self._read_size("get_to_fd", size)
        while size:
            i = self._index
            pending = self._size - i
            if not pending:
                rc = self._fill()
                if rc < 0:
                    return rc
                if rc == 0:
                    return _EIO
                continue
            try:
                rc = os.write(fd, self._view[i : i + min(pending, size)])
            except OSError as exc:
                return -(exc.errno or errno.EIO)
            if rc == 0:
                return _EIO
            self._index = i + rc
            size -= rc
        return 0
