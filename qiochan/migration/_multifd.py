"""A multifd channel (QEMU 7.2's ``migration/multifd.c``): an initial packet, then page packets.

``MultiFDInit_t`` (64 bytes): be32 magic ``0x11223344``, be32 version (1),
uuid[16], id (one byte), 7 unused bytes, 4 unused be64.

Each ``MultiFDPacket_t``: be32 magic, version, flags, pages_alloc,
normal_pages, next_packet_size; be64 packet_num; 4 unused be64; ramblock[256]
(NUL-terminated); be64 offset[pages_alloc]; then ``next_packet_size`` bytes of
page data (``normal_pages`` whole pages unless the flags say zlib or zstd) when
``normal_pages`` is not 0: a packet without pages (a sync) has no data, whatever
its ``next_packet_size`` says (QEMU 7.2 leaves the previous packet's there).
The channel ends when the source closes it, between packets.
"""

from __future__ import annotations

from ._format import MULTIFD_MAGIC, uuid_text
from ._reader import Reader
from ._report import MultifdChannel, StreamReport

__all__ = ["MULTIFD_VERSION", "MultifdWalker"]

MULTIFD_VERSION = 1
_FLAG_SYNC = 0x1
_COMPRESSION_MASK = 0x6
_COMPRESSION = {0x0: "none", 0x2: "zlib", 0x4: "zstd"}
#: More page slots than any packet has (QEMU 7.2: 512 KiB / page size).
_MAX_PAGES = 1 << 16


class MultifdWalker:
    """Summarises one multifd channel into a :class:`StreamReport` (``kind="multifd"``).

    Args:
        reader: the channel, positioned at its initial packet.
        report: filled as the walk goes.
        page_size: the target page size (checks uncompressed data lengths).
    """

    def __init__(self, reader: Reader, report: StreamReport, page_size: int = 4096) -> None:
        self.reader = reader
        self.report = report
        self.page_size = page_size

    def run(self) -> None:
        """Walk the initial packet and every page packet up to the end of the channel.

        Raises:
            StreamError: a packet is malformed or the channel ends inside one.
        """
        reader = self.reader
        report = self.report
        reader.expect_be32(MULTIFD_MAGIC, "the multifd magic")
        report.kind, report.magic = "multifd", "MULTIFD"
        version = report.version = reader.expect_be32(MULTIFD_VERSION, "the multifd version")
        uuid = uuid_text(reader.raw(16, "the multifd UUID"))
        channel = reader.byte("the multifd channel id")
        reader.skip(7 + 32, "the multifd initial packet")
        summary = MultifdChannel(version, uuid, channel)
        report.multifd = summary
        while not reader.at_end():
            self._packet(summary)
        report.complete = True
        report.end_reason = "end of channel between packets"

    def _packet(self, summary: MultifdChannel) -> None:
        reader = self.reader
        offset = reader.tell()
        magic = reader.be32("a multifd packet's magic")
        version = reader.be32("a multifd packet's version")
        if magic != MULTIFD_MAGIC or version != MULTIFD_VERSION:
            reader.fail(offset, "a multifd packet header", f"magic {magic:#x} version {version}")
        flags = reader.be32("a multifd packet's flags")
        pages_alloc = reader.be32("a multifd packet's page slots")
        normal = reader.be32("a multifd packet's page count")
        data_size = reader.be32("a multifd packet's data size")
        reader.be64("a multifd packet's number")
        reader.skip(32, "a multifd packet's reserved fields")
        raw_name = reader.raw(256, "a multifd packet's block name")
        compression = _COMPRESSION.get(flags & _COMPRESSION_MASK)
        if pages_alloc > _MAX_PAGES or normal > pages_alloc or compression is None:
            reader.fail(
                offset,
                "a multifd packet with at most as many pages as slots",
                f"{normal} pages in {pages_alloc} slots, flags {flags:#x}",
            )
        if not normal:
            data_size = 0  # QEMU 7.2 leaves the last size in a packet without pages
        elif compression == "none" and data_size != normal * self.page_size:
            reader.fail(offset, f"{normal} pages of data", f"{data_size} bytes")
        reader.skip(8 * pages_alloc, "a multifd packet's page offsets")
        reader.skip(data_size, "a multifd packet's pages")
        summary.packets += 1
        summary.sync_packets += bool(flags & _FLAG_SYNC)
        summary.normal_pages += normal
        summary.data_bytes += data_size
        summary.compression = compression
        if normal:
            name = raw_name.split(b"\0", 1)[0].decode("ascii", "replace")
            summary.blocks[name] = summary.blocks.get(name, 0) + normal
        self.report.ram.page_size = self.page_size
