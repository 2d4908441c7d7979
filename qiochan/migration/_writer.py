"""Writing savevm streams and multifd channels with QEMUFile, record by record as QEMU does.

For tests, benchmarks and tools that need a stream without a QEMU: the
records are those of ``migration/savevm.c``, ``ram.c`` and ``multifd.c``
(QEMU 7.2), so what :func:`~qiochan.migration.inspect_stream` (or QEMU)
reads back is exactly what was written::

    w = SavevmWriter(QEMUFile.new_output(channel))
    w.header(machine="pc-i440fx-7.2")
    ram = w.section_start("ram", version=4)
    w.ram_setup({"pc.ram": 64 << 20})
    w.ram_eos()
    w.footer(ram)
    ...
    w.eof()
"""

from __future__ import annotations

import json
from typing import Any

from ..qemufile import QEMUFile
from ._format import (
    MIGRATION_CAPABILITY_SUBSECTION,
    MULTIFD_MAGIC,
    QEMU_VM_FILE_MAGIC,
    QEMU_VM_FILE_VERSION,
    MigCommand,
    RamFlag,
    VmRecord,
)

__all__ = ["MultifdWriter", "SavevmWriter"]


class SavevmWriter:
    """Writes the records of a savevm stream to an output :class:`QEMUFile`.

    Args:
        f: the output file (flushed or closed by the caller).
        page_size: the target page size of RAM records.
        footers: write section footers (every machine type since 2.4 does).
        first_id: the id of the first section started.
    """

    def __init__(
        self, f: QEMUFile, *, page_size: int = 4096, footers: bool = True, first_id: int = 0
    ) -> None:
        self.f = f
        self.page_size = page_size
        self.footers = footers
        self._next_id = first_id
        self._block: str | None = None

    def header(
        self, machine: str | None = "pc-i440fx-7.2", capabilities: tuple[str, ...] = ()
    ) -> None:
        """Write the magic, the version and (unless ``machine`` is None) the configuration."""
        f = self.f
        f.put_be32(QEMU_VM_FILE_MAGIC)
        f.put_be32(QEMU_VM_FILE_VERSION)
        if machine is None:
            return
        f.put_byte(VmRecord.CONFIGURATION)
        f.put_be32(len(machine))
        f.put_buffer(machine.encode())
        if capabilities:
            f.put_byte(VmRecord.SUBSECTION)
            f.put_counted_string(MIGRATION_CAPABILITY_SUBSECTION)
            f.put_be32(1)
            f.put_be32(len(capabilities))
            for cap in capabilities:
                f.put_counted_string(cap)

    def _header(self, kind: VmRecord, name: str, instance: int, version: int) -> int:
        section_id = self._next_id
        self._next_id += 1
        f = self.f
        f.put_byte(kind)
        f.put_be32(section_id)
        f.put_counted_string(name)
        f.put_be32(instance)
        f.put_be32(version)
        return section_id

    def section_start(self, name: str, instance: int = 0, version: int = 4) -> int:
        """Write a QEMU_VM_SECTION_START header; return the new section id."""
        return self._header(VmRecord.SECTION_START, name, instance, version)

    def section_full(self, name: str, instance: int = 0, version: int = 1) -> int:
        """Write a QEMU_VM_SECTION_FULL header; return the new section id."""
        return self._header(VmRecord.SECTION_FULL, name, instance, version)

    def section_part(self, section_id: int, end: bool = False) -> None:
        """Write a QEMU_VM_SECTION_PART (or, with ``end``, SECTION_END) header."""
        self.f.put_byte(VmRecord.SECTION_END if end else VmRecord.SECTION_PART)
        self.f.put_be32(section_id)

    def footer(self, section_id: int) -> None:
        """Write the footer of ``section_id`` (nothing when footers are off)."""
        if self.footers:
            self.f.put_byte(VmRecord.SECTION_FOOTER)
            self.f.put_be32(section_id)

    def device(self, name: str, data: bytes, instance: int = 0, version: int = 1) -> int:
        """Write a whole FULL section holding ``data``; return its id."""
        section_id = self.section_full(name, instance, version)
        self.f.put_buffer(data)
        self.footer(section_id)
        return section_id

    # -- RAM ----------------------------------------------------------------------------

    def ram_setup(self, blocks: dict[str, int]) -> None:
        """Write RAM_SAVE_FLAG_MEM_SIZE and the block list (names and used lengths)."""
        f = self.f
        f.put_be64(sum(blocks.values()) | RamFlag.MEM_SIZE)
        for name, size in blocks.items():
            f.put_counted_string(name)
            f.put_be64(size)
        self._block = None

    def _page_header(self, block: str, offset: int, flags: int) -> None:
        if block == self._block:
            self.f.put_be64(offset | flags | RamFlag.CONTINUE)
        else:
            self.f.put_be64(offset | flags)
            self.f.put_counted_string(block)
            self._block = block

    def ram_zero_page(self, block: str, offset: int) -> None:
        """Write a zero-page record (fill byte 0)."""
        self._page_header(block, offset, RamFlag.ZERO)
        self.f.put_byte(0)

    def ram_page(self, block: str, offset: int, page: Any) -> None:
        """Write a normal page record; ``page`` (a page-sized buffer) is queued, not copied."""
        self._page_header(block, offset, RamFlag.PAGE)
        self.f.put_buffer_async(page)

    def ram_eos(self) -> None:
        """Write RAM_SAVE_FLAG_EOS, which ends a RAM section record."""
        self.f.put_be64(RamFlag.EOS)

    # -- the rest -----------------------------------------------------------------------

    def command(self, cmd: MigCommand, data: bytes = b"") -> None:
        """Write a QEMU_VM_COMMAND record with its argument ``data``."""
        f = self.f
        f.put_byte(VmRecord.COMMAND)
        f.put_be16(cmd)
        f.put_be16(len(data))
        f.put_buffer(data)

    def eof(self, vmdesc: dict[str, Any] | None = None) -> None:
        """Write QEMU_VM_EOF and, when given, the device description after it."""
        self.f.put_byte(VmRecord.EOF)
        if vmdesc is not None:
            text = json.dumps(vmdesc).encode()
            self.f.put_byte(VmRecord.VMDESCRIPTION)
            self.f.put_be32(len(text))
            self.f.put_buffer(text)


class MultifdWriter:
    """Writes a multifd channel (QEMU 7.2): the initial packet, then page packets.

    Args:
        f: the output file.
        uuid: the source's 16-byte UUID.
        channel: the channel id.
        page_size: the target page size.
        pages_alloc: page slots per packet (QEMU 7.2: 512 KiB / page size).
    """

    def __init__(
        self,
        f: QEMUFile,
        uuid: bytes,
        channel: int,
        *,
        page_size: int = 4096,
        pages_alloc: int = 128,
    ) -> None:
        self.f = f
        self.page_size = page_size
        self.pages_alloc = pages_alloc
        self._number = 0
        f.put_be32(MULTIFD_MAGIC)
        f.put_be32(1)
        f.put_buffer(uuid)
        f.put_byte(channel)
        f.put_buffer(bytes(7 + 32))

    def packet(self, block: str, pages: list[tuple[int, Any]], flags: int = 0) -> None:
        """Write one packet carrying ``pages`` (offset, page-sized buffer) of ``block``."""
        f = self.f
        f.put_be32(MULTIFD_MAGIC)
        f.put_be32(1)
        f.put_be32(flags)
        f.put_be32(self.pages_alloc)
        f.put_be32(len(pages))
        f.put_be32(len(pages) * self.page_size)
        f.put_be64(self._number)
        self._number += 1
        f.put_buffer(bytes(32))
        f.put_buffer(block.encode().ljust(256, b"\0"))
        offsets = [offset for offset, _page in pages]
        offsets += [0] * (self.pages_alloc - len(offsets))
        f.put_buffer(b"".join(o.to_bytes(8, "big") for o in offsets))
        for _offset, page in pages:
            f.put_buffer_async(page)
