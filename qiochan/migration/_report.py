"""What an inspection found: typed records, and their JSON form.

:class:`StreamReport` is filled as the stream is walked, so a stream that
breaks off still reports everything up to the break.  :meth:`StreamReport.to_json`
gives the object ``qiochan inspect --json`` prints; its documented keys
(``magic``, ``version``, ``bytes``, ``complete``, ``configuration``,
``sections``, ``ram``, ``commands``, ``vmdesc``, ``error``) are a contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "CommandRecord",
    "MultifdChannel",
    "RamBlock",
    "RamStats",
    "ReturnPathMessage",
    "SectionRecord",
    "StreamReport",
    "VmdescSummary",
]

#: How a section's data was delimited: parsed field by field, sized by the
#: JSON description, or found by scanning for its footer.
Delimiter = Literal["parsed", "vmdesc", "footer-scan"]


@dataclass
class SectionRecord:
    """One section (a device's state), listed once however many records it has.

    Attributes:
        id: the section id the stream gives it.
        name: the device's idstr (``"ram"``, ``"cpu"``, ``"0000:00:01.0/piix4_pm"``...).
        instance: its instance id.
        version: its version id.
        offset: stream offset of its first (START or FULL) record.
        records: how many START/PART/END/FULL records it had.
        size: bytes of data in those records (headers and footers excluded),
            ``"bytes"`` in JSON.
        delimited: how the data of its last record was delimited.
    """

    id: int
    name: str
    instance: int
    version: int
    offset: int
    records: int = 0
    size: int = 0
    delimited: Delimiter = "parsed"

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object for this section."""
        return {
            "id": self.id,
            "name": self.name,
            "instance": self.instance,
            "version": self.version,
            "offset": self.offset,
            "records": self.records,
            "bytes": self.size,
            "delimited": self.delimited,
        }


@dataclass
class CommandRecord:
    """One ``QEMU_VM_COMMAND`` record.

    Attributes:
        cmd: the command number (:class:`~qiochan.migration.MigCommand`).
        len: the length of its argument.
        name: QEMU's name for it (``"OPEN_RETURN_PATH"``, ``"PING"``...).
        offset: stream offset of the record.
        value: the PING value or the PACKAGED length, when the command has one.
    """

    cmd: int
    len: int
    name: str
    offset: int
    value: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object for this command."""
        data: dict[str, Any] = {"cmd": self.cmd, "len": self.len, "name": self.name}
        data["offset"] = self.offset
        if self.value is not None:
            data["value"] = self.value
        return data


@dataclass
class RamBlock:
    """A RAM block announced by the RAM section's setup, and the pages seen for it.

    Attributes:
        name: the block's idstr (``"pc.ram"``).
        size: its used length in bytes.
        page_size: the block's host page size when the stream carries it (postcopy).
        addr: its guest address when the stream carries it (``x-ignore-shared``).
        zero_pages, normal_pages, compressed_pages, xbzrle_pages: page records seen.
    """

    name: str
    size: int
    page_size: int | None = None
    addr: int | None = None
    zero_pages: int = 0
    normal_pages: int = 0
    compressed_pages: int = 0
    xbzrle_pages: int = 0


@dataclass
class RamStats:
    """The RAM section: blocks, and page counts over all of them.

    Attributes:
        page_size: the target page size used to split record headers.
        blocks: blocks by name, in stream order.
        multifd_flushes: ``RAM_SAVE_FLAG_MULTIFD_FLUSH`` records (QEMU 8.0+).
        eos: ``RAM_SAVE_FLAG_EOS`` records (one per RAM section record).
    """

    page_size: int = 4096
    blocks: dict[str, RamBlock] = field(default_factory=dict)
    multifd_flushes: int = 0
    eos: int = 0

    def total(self, attribute: str) -> int:
        """Return the sum of one page counter over every block."""
        return sum(getattr(block, attribute) for block in self.blocks.values())

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object for the RAM section."""
        return {
            "page_size": self.page_size,
            "blocks": {name: block.size for name, block in self.blocks.items()},
            "zero_pages": self.total("zero_pages"),
            "normal_pages": self.total("normal_pages"),
            "compressed_pages": self.total("compressed_pages"),
            "xbzrle_pages": self.total("xbzrle_pages"),
            "multifd_flushes": self.multifd_flushes,
            "pages": {
                name: {"zero": block.zero_pages, "normal": block.normal_pages}
                for name, block in self.blocks.items()
            },
        }


@dataclass
class VmdescSummary:
    """The trailing JSON device description (``QEMU_VM_VMDESCRIPTION``).

    Attributes:
        page_size: the target page size it states.
        devices: how many device sections it describes.
        size: length of the JSON text (``"bytes"`` in JSON).
        mismatches: sections whose data length differs from what it describes.
    """

    page_size: int
    devices: int
    size: int
    mismatches: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object for the description."""
        return {
            "page_size": self.page_size,
            "devices": self.devices,
            "bytes": self.size,
            "mismatches": list(self.mismatches),
        }


@dataclass
class MultifdChannel:
    """A multifd channel: its initial packet and a summary of its packets.

    Attributes:
        version: the ``MultiFDInit_t`` version (1 in QEMU 7.2).
        uuid: the source VM's UUID, as text.
        channel: the channel id.
        packets: packets seen; ``sync_packets`` of them had ``MULTIFD_FLAG_SYNC``.
        normal_pages: pages carried.
        data_bytes: bytes of page data carried (compressed size when compressed).
        compression: ``"none"``, ``"zlib"`` or ``"zstd"``, from the packet flags.
        blocks: pages per RAM block name.
    """

    version: int
    uuid: str
    channel: int
    packets: int = 0
    sync_packets: int = 0
    normal_pages: int = 0
    data_bytes: int = 0
    compression: str = "none"
    blocks: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object for the channel."""
        return {
            "version": self.version,
            "uuid": self.uuid,
            "channel": self.channel,
            "packets": self.packets,
            "sync_packets": self.sync_packets,
            "normal_pages": self.normal_pages,
            "data_bytes": self.data_bytes,
            "compression": self.compression,
            "blocks": dict(self.blocks),
        }


@dataclass
class ReturnPathMessage:
    """One return-path message (destination to source).

    Attributes:
        kind: the message type (:class:`~qiochan.migration.RpMessage`).
        name: QEMU's name for it (``"SHUT"``, ``"PONG"``, ``"REQ_PAGES"``...).
        len: the length of its data.
        offset: stream offset of the message.
        value: the SHUT status, the PONG value, the RESUME_ACK value, or the
            REQ_PAGES length.
        start: the REQ_PAGES start offset.
    """

    kind: int
    name: str
    len: int
    offset: int
    value: int | None = None
    start: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object for this message."""
        data: dict[str, Any] = {"type": self.kind, "name": self.name, "len": self.len}
        data["offset"] = self.offset
        if self.value is not None:
            data["value"] = self.value
        if self.start is not None:
            data["start"] = self.start
        return data


@dataclass
class StreamReport:
    """Everything one inspection found, including where and why the stream ended.

    Attributes:
        kind: ``"savevm"`` (a main migration stream), ``"multifd"`` (a multifd
            channel), ``"return-path"`` (what a destination sends back) or
            ``"unknown"`` (none of these).
        magic: ``"QEVM"`` for a savevm stream, ``"MULTIFD"`` for a multifd channel.
        version: the stream (or multifd) version.
        size: bytes consumed from the source (``"bytes"`` in JSON).
        complete: True when the stream reached its end record (``QEMU_VM_EOF``;
            for a multifd channel, a clean end between packets).
        machine: the machine type from the configuration section, if sent.
        capabilities: capabilities the configuration section lists.
        uuid: the source's UUID when the configuration section carries it.
        sections: sections in order of their first record.
        ram: the RAM section's blocks and pages.
        commands: every command record, in order.
        vmdesc: the JSON description, when the stream ends with one.
        multifd: the channel summary of a multifd channel.
        return_path: the messages of a return path.
        error: None, or what went wrong and at which offset.
        end_offset: offset where the walk stopped.
        end_reason: why it stopped, in words.
        notes: remarks on how much to trust the result (footer scans, trailing bytes).
    """

    kind: str = "unknown"
    magic: str | None = None
    version: int | None = None
    size: int = 0
    complete: bool = False
    machine: str | None = None
    capabilities: list[str] = field(default_factory=list)
    uuid: str | None = None
    sections: list[SectionRecord] = field(default_factory=list)
    ram: RamStats = field(default_factory=RamStats)
    commands: list[CommandRecord] = field(default_factory=list)
    vmdesc: VmdescSummary | None = None
    multifd: MultifdChannel | None = None
    return_path: list[ReturnPathMessage] = field(default_factory=list)
    error: str | None = None
    end_offset: int = 0
    end_reason: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the object ``qiochan inspect --json`` prints."""
        configuration: dict[str, Any] | None = None
        if self.machine is not None:
            configuration = {"machine": self.machine, "capabilities": list(self.capabilities)}
            if self.uuid is not None:
                configuration["uuid"] = self.uuid
        return {
            "kind": self.kind,
            "magic": self.magic,
            "version": self.version,
            "bytes": self.size,
            "complete": self.complete,
            "configuration": configuration,
            "sections": [section.to_json() for section in self.sections],
            "ram": self.ram.to_json(),
            "commands": [command.to_json() for command in self.commands],
            "vmdesc": None if self.vmdesc is None else self.vmdesc.to_json(),
            "multifd": None if self.multifd is None else self.multifd.to_json(),
            "return_path": [message.to_json() for message in self.return_path],
            "error": self.error,
            "end": {"offset": self.end_offset, "reason": self.end_reason},
            "notes": list(self.notes),
        }
