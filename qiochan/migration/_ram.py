"""The RAM section (``"ram"``, version 4), parsed record by record as ``ram_load_precopy`` does.

Each record starts with a be64 whose low bits (below the target page size)
are ``RAM_SAVE_FLAG_*`` flags and whose high bits are a page offset in the
current block.  A record without ``RAM_SAVE_FLAG_CONTINUE`` names its block
(a counted string) first.  The setup record (``RAM_SAVE_FLAG_MEM_SIZE``)
lists the blocks; page records carry a zero-page fill byte, a whole page,
an XBZRLE delta or a compressed page; ``RAM_SAVE_FLAG_EOS`` ends the section
record.

Page bytes are consumed with ``QEMUFile.get_buffer_in_place``: a view into
QEMUFile's own buffer, never copied into a Python object.  The two records a
migration is made of (a continued normal page, a continued zero page) take a
fast path with one comparison each.
"""

from __future__ import annotations

from ._format import RamFlag
from ._reader import Reader
from ._report import RamBlock, RamStats

__all__ = ["RAM_SECTION", "RAM_VERSION", "RamParser"]

RAM_SECTION = "ram"
RAM_VERSION = 4

_KNOWN = (
    RamFlag.ZERO
    | RamFlag.MEM_SIZE
    | RamFlag.PAGE
    | RamFlag.EOS
    | RamFlag.CONTINUE
    | RamFlag.XBZRLE
    | RamFlag.COMPRESS_PAGE
    | RamFlag.MULTIFD_FLUSH
)
_WITH_BLOCK = RamFlag.ZERO | RamFlag.PAGE | RamFlag.XBZRLE | RamFlag.COMPRESS_PAGE
_PAGE_CONT = RamFlag.PAGE | RamFlag.CONTINUE
_ZERO_CONT = RamFlag.ZERO | RamFlag.CONTINUE
#: ``ENCODING_FLAG_XBZRLE``: the only XBZRLE encoding byte QEMU sends.
_XBZRLE_ENCODING = 0x1


class RamParser:
    """Walks RAM section records for one stream, accumulating into a :class:`RamStats`.

    Args:
        reader: the stream.
        stats: where blocks and page counts go (its ``page_size`` splits headers).
        ignore_shared: the stream was made with ``x-ignore-shared`` (each block
            in the setup record carries its guest address).
    """

    def __init__(self, reader: Reader, stats: RamStats, *, ignore_shared: bool = False) -> None:
        self.reader = reader
        self.stats = stats
        self.ignore_shared = ignore_shared
        #: A POSTCOPY_ADVISE command was seen: blocks may carry a page size.
        self.postcopy_advised = False
        self._block: RamBlock | None = None

    # -- one section record ------------------------------------------------------------

    def parse(self) -> None:
        """Consume records up to and including ``RAM_SAVE_FLAG_EOS``.

        Raises:
            StreamError: a record is malformed or the stream ends inside one.
        """
        reader = self.reader
        f = reader.f
        get_be64 = f.get_be64
        get_byte = f.get_byte
        get_in_place = f.get_buffer_in_place
        page = self.stats.page_size
        mask = page - 1
        block = self._block
        limit = block.size if block is not None else 0
        normal = zero = 0
        try:
            while True:
                header = get_be64()
                flags = header & mask
                if header < limit:  # fast paths: a page of the current block
                    if flags == _PAGE_CONT:
                        if len(get_in_place(page)) == page:
                            normal += 1
                            continue
                        reader.truncated(f"a page of RAM block {self._name()}")
                    if flags == _ZERO_CONT:
                        get_byte()
                        zero += 1
                        continue
                if block is not None:
                    block.normal_pages += normal
                    block.zero_pages += zero
                    normal = zero = 0
                if self._record(header, flags):
                    break
                block = self._block
                limit = block.size if block is not None else 0
        finally:
            if block is not None:
                block.normal_pages += normal
                block.zero_pages += zero
        reader.check("a RAM record")

    def _name(self) -> str:
        return self._block.name if self._block is not None else "?"

    def _record(self, header: int, flags: int) -> bool:
        """Handle one record the fast path did not; return True at ``RAM_SAVE_FLAG_EOS``."""
        reader = self.reader
        offset = reader.tell() - 8
        reader.check("a RAM record header")
        if flags & RamFlag.HOOK:
            what = "a RAM record other than an RDMA hook (RDMA streams cannot be inspected)"
            reader.fail(offset, what, f"flags {flags:#x}")
        if flags & ~_KNOWN:
            reader.fail(offset, "RAM record flags", f"{flags:#x} (header {header:#018x})")
        addr = header - flags
        if flags & _WITH_BLOCK:
            if not flags & RamFlag.CONTINUE:
                name = reader.counted_string("a RAM block name")
                block = self.stats.blocks.get(name)
                if block is None:
                    reader.fail(offset, "a RAM block from the setup record", repr(name))
                self._block = block
            elif self._block is None:
                reader.fail(offset, "a block name (RAM_SAVE_FLAG_CONTINUE before any block)")
            block = self._block
            assert block is not None
            if addr >= block.size:
                reader.fail(
                    offset,
                    f"a page offset inside RAM block {block.name} ({block.size:#x} bytes)",
                    f"{addr:#x}",
                )
        kind = flags & ~RamFlag.CONTINUE
        if kind == RamFlag.MEM_SIZE:
            self._setup(addr, offset)
        elif kind == RamFlag.ZERO:
            reader.byte("a zero page's fill byte")
            self._current().zero_pages += 1
        elif kind == RamFlag.PAGE:
            page = self.stats.page_size
            if len(reader.f.get_buffer_in_place(page)) != page:
                reader.truncated(f"a page of RAM block {self._name()}")
            self._current().normal_pages += 1
        elif kind == RamFlag.COMPRESS_PAGE:
            length = reader.be32("a compressed page's length")
            if length > 2 * self.stats.page_size:
                reader.fail(offset, "a compressed page length", str(length))
            reader.skip(length, "a compressed page")
            self._current().compressed_pages += 1
        elif kind == RamFlag.XBZRLE:
            encoding = reader.byte("an XBZRLE encoding byte")
            if encoding != _XBZRLE_ENCODING:
                reader.fail(offset + 8, "XBZRLE encoding 0x1", f"{encoding:#x}")
            length = reader.be16("an XBZRLE length")
            if length > self.stats.page_size:
                reader.fail(offset, "an XBZRLE length up to a page", str(length))
            reader.skip(length, "an XBZRLE page")
            self._current().xbzrle_pages += 1
        elif kind == RamFlag.EOS:
            self.stats.eos += 1
            return True
        elif kind == RamFlag.MULTIFD_FLUSH:
            self.stats.multifd_flushes += 1
        else:
            reader.fail(offset, "one RAM record kind", f"flags {flags:#x}")
        return False

    def _current(self) -> RamBlock:
        assert self._block is not None
        return self._block

    def _setup(self, total: int, offset: int) -> None:
        """Read the block list of ``RAM_SAVE_FLAG_MEM_SIZE`` (``total`` bytes of RAM)."""
        reader = self.reader
        remaining = total
        while remaining > 0:
            name = reader.counted_string("a RAM block name in the setup record")
            size = reader.be64(f"the size of RAM block {name}")
            block = RamBlock(name, size)
            if self.postcopy_advised and self._page_size_follows():
                block.page_size = reader.be64(f"the page size of RAM block {name}")
            if self.ignore_shared:
                block.addr = reader.be64(f"the address of RAM block {name}")
            if size > remaining or size % self.stats.page_size:
                reader.fail(
                    offset,
                    f"RAM block sizes adding up to {total:#x} in whole pages",
                    f"{name} of {size:#x} with {remaining:#x} left",
                )
            self.stats.blocks[name] = block
            remaining -= size

    def _page_size_follows(self) -> bool:
        """With postcopy advised, a block whose page size differs from the host's carries it.

        The stream does not say which blocks do: a be64 that is a power of two
        above the target page size (e.g. 2 MiB) is taken for one, as nothing
        else that can follow (a block name's length byte, a record header
        with flags) has that form.
        """
        view = self.reader.peek(8)
        if len(view) < 8:
            return False
        value = int.from_bytes(view[:8], "big")
        return value > self.stats.page_size and value & (value - 1) == 0
