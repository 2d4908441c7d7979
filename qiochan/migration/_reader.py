"""Reading a stream through QEMUFile with errors that say where and what.

QEMUFile never raises mid-stream: at end of file it latches ``-EIO`` and
reads zeros.  :class:`Reader` turns that into :class:`StreamError`, naming the
offset and what was expected there, so a walker can simply read on and let
the first short or impossible value stop it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from ..qemufile import QEMUFile

__all__ = ["Reader", "StreamError", "TruncatedError"]


class StreamError(Exception):
    """The stream is not what the format says: ``offset N: expected X, found Y``.

    Attributes:
        offset: stream offset of the offending bytes.
    """

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(f"offset {offset}: {message}")
        self.offset = offset


class TruncatedError(StreamError):
    """The stream ended (or its source failed) before the record being read was whole."""


class Reader:
    """Typed reads over an input :class:`QEMUFile`, raising :class:`StreamError` on a short read.

    Attributes:
        f: the file.
        interrupted: set (to a reason) by whoever shuts the file down from
            another thread, e.g. a timeout; reported instead of "end of stream".
    """

    def __init__(self, f: QEMUFile) -> None:
        self.f = f
        self.interrupted: str | None = None

    def tell(self) -> int:
        """Return the offset of the next byte to read."""
        return self.f.tell()

    def check(self, what: str) -> None:
        """Raise :class:`TruncatedError` if the input failed (after a read that may be short).

        Only for reads whose shortness cannot be told otherwise: an error
        latched by a look-ahead at the very end of the stream also counts.
        """
        if self.f.get_error():
            self.truncated(what)

    def truncated(self, what: str) -> NoReturn:
        """Raise :class:`TruncatedError` for the latched error, saying what was being read."""
        _ret, exc = self.f.get_error_obj()
        if self.interrupted:
            why = self.interrupted
        elif exc is None or "end of QEMUFile input" in str(exc):
            why = "the stream ends"
        else:
            why = f"reading failed ({exc})"
        raise TruncatedError(self.tell(), f"{why} inside {what}")

    def fail(self, offset: int, expected: str, found: str | None = None) -> NoReturn:
        """Raise the error for a bad value at ``offset`` (or the truncation that caused it)."""
        if self.f.get_error():
            self.truncated(expected)
        message = f"expected {expected}"
        if found is not None:
            message += f", found {found}"
        raise StreamError(offset, message)

    def _value(self, get: Callable[[], int], width: int, what: str) -> int:
        f = self.f
        start = f.tell()
        value = get()
        if f.tell() - start != width:
            self.truncated(what)
        return value

    def byte(self, what: str) -> int:
        """Read one byte."""
        return self._value(self.f.get_byte, 1, what)

    def be16(self, what: str) -> int:
        """Read a big-endian 16-bit value."""
        return self._value(self.f.get_be16, 2, what)

    def be32(self, what: str) -> int:
        """Read a big-endian 32-bit value."""
        return self._value(self.f.get_be32, 4, what)

    def be64(self, what: str) -> int:
        """Read a big-endian 64-bit value."""
        return self._value(self.f.get_be64, 8, what)

    def expect_be32(self, expected: int, what: str) -> int:
        """Read a big-endian 32-bit value that must be ``expected`` (a magic, a version)."""
        offset = self.tell()
        value = self.be32(what)
        if value != expected:
            self.fail(offset, f"{what} {expected:#x}", f"{value:#x}")
        return value

    def counted_string(self, what: str) -> str:
        """Read a length byte and that many bytes of printable ASCII (an idstr)."""
        offset = self.tell()
        length = self.byte(f"the length of {what}")
        data = self.f.get_bytes(length)
        if len(data) != length:
            self.truncated(what)
        if not length or not _printable(data):
            self.fail(offset, what, f"{length} bytes {data[:32]!r}")
        return data.decode("ascii")

    def raw(self, size: int, what: str) -> bytes:
        """Read ``size`` bytes (small fields only: the bytes are copied)."""
        data = self.f.get_bytes(size)
        if len(data) != size:
            self.truncated(what)
        return data

    def skip(self, size: int, what: str) -> None:
        """Consume ``size`` bytes without copying them."""
        if self.f.discard(size) != size:
            self.truncated(what)

    def peek(self, size: int) -> memoryview:
        """Return the buffered unread bytes, at least ``size`` of them unless the stream ends."""
        return self.f.peek_available(size)

    def at_end(self) -> bool:
        """Return True when no byte follows (waits for one on a live source)."""
        return not len(self.f.peek_available(1))


def _printable(data: bytes) -> bool:
    return all(0x20 <= b < 0x7F for b in data)
