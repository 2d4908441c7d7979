"""The demo's migration-like stream: RAM page records through :class:`~qiochan.QEMUFile`.

The layout borrows QEMU's RAM section: a ``QEVM`` magic and version, then one
record per 4 KiB page -- ``be64(address | flags)`` followed by the page
(``RAM_SAVE_FLAG_PAGE``) or by one zero byte for an all-zero page
(``RAM_SAVE_FLAG_ZERO``) -- and an ``RAM_SAVE_FLAG_EOS`` record carrying the
SHA-256 of every record.  Page contents are deterministic, so the receiver
checks each page address in sequence and both the trailer and its own digest
against the digest of the stream that was meant to be sent: every byte is
verified.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from functools import cached_property

from ..errors import ChannelError
from ..qemufile import QEMUFile

__all__ = ["FLAG_EOS", "FLAG_PAGE", "FLAG_ZERO", "PAGE_SIZE", "PageStream", "StreamError"]

PAGE_SIZE = 4096
FLAG_ZERO = 0x02  # QEMU's RAM_SAVE_FLAG_ZERO
FLAG_PAGE = 0x08  # RAM_SAVE_FLAG_PAGE
FLAG_EOS = 0x10  # RAM_SAVE_FLAG_EOS
_FLAG_MASK = PAGE_SIZE - 1
_MAGIC = 0x5145564D  # "QEVM", QEMU_VM_FILE_MAGIC
_VERSION = 3
_POOL_PAGES = 257  # a prime, so page contents repeat only every 257 pages
_ZERO_EVERY = 8  # one page in eight is a zero page, as idle guest RAM gives
_PROGRESS_EVERY = 256  # pages between progress reports
_ZERO_PAGE = bytes(PAGE_SIZE)

Report = Callable[[int], None]


class StreamError(Exception):
    """The received stream differs from the one sent; the message says where."""


class PageStream:
    """A stream of ``size`` bytes of guest RAM (rounded up to whole pages).

    Args:
        size: bytes of RAM to send (at least one page).
    """

    def __init__(self, size: int) -> None:
        self.pages = max(1, -(-size // PAGE_SIZE))
        self._pool = random.Random(_MAGIC).randbytes(_POOL_PAGES * PAGE_SIZE)

    @property
    def ram_size(self) -> int:
        """Bytes of RAM the stream carries."""
        return self.pages * PAGE_SIZE

    @cached_property
    def wire_size(self) -> int:
        """Bytes the stream takes on the wire."""
        zero = len(range(0, self.pages, _ZERO_EVERY))
        full = self.pages - zero
        trailer = 8 + hashlib.sha256().digest_size
        return 8 + zero * 9 + full * (8 + PAGE_SIZE) + trailer

    def page(self, index: int) -> memoryview | None:
        """Return page ``index``'s contents, or None for a zero page."""
        if index % _ZERO_EVERY == 0:
            return None
        start = (index % _POOL_PAGES) * PAGE_SIZE
        return memoryview(self._pool)[start : start + PAGE_SIZE]

    @cached_property
    def digest(self) -> bytes:
        """The SHA-256 of every page record as sent."""
        digest = hashlib.sha256()
        for index in range(self.pages):
            content = self.page(index)
            flags = FLAG_ZERO if content is None else FLAG_PAGE
            digest.update((index * PAGE_SIZE | flags).to_bytes(8, "big"))
            digest.update(_ZERO_PAGE if content is None else content)
        return digest.digest()

    def send(self, f: QEMUFile, report: Report) -> None:
        """Write the whole stream to ``f`` and flush it; ``report(n)`` after each batch.

        Raises:
            ChannelError: the stream latched an error (the channel failed).
        """
        f.put_be32(_MAGIC)
        f.put_be32(_VERSION)
        batch = 8
        for index in range(self.pages):
            address = index * PAGE_SIZE
            content = self.page(index)
            if content is None:
                f.put_be64(address | FLAG_ZERO)
                f.put_byte(0)
                batch += 9
            else:
                f.put_be64(address | FLAG_PAGE)
                f.put_buffer_async(content)  # the pool never changes: no copy needed
                batch += 8 + PAGE_SIZE
            if index % _PROGRESS_EVERY == _PROGRESS_EVERY - 1:
                _raise_latched(f)
                report(batch)
                batch = 0
        f.put_be64(FLAG_EOS)
        f.put_buffer(self.digest)
        f.fflush()
        _raise_latched(f)
        report(batch + 8 + len(self.digest))

    def receive(self, f: QEMUFile, report: Report) -> None:
        """Read the stream from ``f`` and verify every byte; ``report(n)`` after each batch.

        Raises:
            StreamError: a record, a page or the digest differs.
            ChannelError: the stream latched an error (the channel failed or ended early).
        """
        if f.get_be32() != _MAGIC or f.get_be32() != _VERSION:
            _raise_latched(f)
            raise StreamError("the stream does not start with the QEVM magic and version")
        digest = hashlib.sha256()
        batch = 8
        for index in range(self.pages):
            header = f.get_be64()
            address, flags = header & ~_FLAG_MASK, header & _FLAG_MASK
            if address != index * PAGE_SIZE or flags not in (FLAG_PAGE, FLAG_ZERO):
                _raise_latched(f)
                raise StreamError(
                    f"record {index}: expected page {index * PAGE_SIZE:#x}, got header {header:#x}"
                )
            digest.update(header.to_bytes(8, "big"))
            if flags == FLAG_ZERO:
                if f.get_byte() != 0:
                    _raise_latched(f)
                    raise StreamError(f"zero page {address:#x} has a non-zero fill byte")
                digest.update(_ZERO_PAGE)
                batch += 9
            else:
                digest.update(f.get_buffer_in_place(PAGE_SIZE))
                batch += 8 + PAGE_SIZE
            if index % _PROGRESS_EVERY == _PROGRESS_EVERY - 1:
                _raise_latched(f)
                report(batch)
                batch = 0
        if f.get_be64() != FLAG_EOS:
            _raise_latched(f)
            raise StreamError("no end-of-stream record after the last page")
        trailer = f.get_bytes(len(self.digest))
        _raise_latched(f)
        if trailer != self.digest:
            raise StreamError("the sender's checksum differs from the stream that was meant")
        if digest.digest() != self.digest:
            raise StreamError("the pages received differ from the pages sent (SHA-256 mismatch)")
        report(batch + 8 + len(trailer))


def _raise_latched(f: QEMUFile) -> None:
    """Raise the error ``f`` latched, if any."""
    ret, exc = f.get_error_obj()
    if ret:
        if exc is not None:
            raise exc
        raise ChannelError(f"the stream ended early or failed: {os.strerror(-ret)}", -ret)
