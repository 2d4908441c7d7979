"""Walking a savevm stream (``QEVM``, version 3) record by record, as QEMU loads it.

Records::

    QEMU_VM_CONFIGURATION  be32 len, machine type; subsections (capabilities, uuid)
    QEMU_VM_SECTION_START  be32 id, idstr, be32 instance, be32 version, data, footer
    QEMU_VM_SECTION_FULL   (as START)
    QEMU_VM_SECTION_PART   be32 id, data, footer
    QEMU_VM_SECTION_END    (as PART)
    QEMU_VM_COMMAND        be16 cmd, be16 len, len bytes (PACKAGED: a whole stream follows)
    QEMU_VM_EOF            then, optionally, QEMU_VM_VMDESCRIPTION be32 len, JSON

with a footer (``QEMU_VM_SECTION_FOOTER``, be32 id) after each section's
data on every machine type since 2.4.  Section data is delimited by:

* parsing, for the RAM section;
* the JSON device description (``vmdesc``) when it was found first (a file);
* otherwise scanning for the section's footer: the 5 bytes ``0x7e, be32 id``
  followed by something that can start the next record.  Device data that
  happens to contain those bytes followed by a plausible record header would
  end the section early; the description, when the stream ends with one,
  then reports the mismatch.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from typing import Any

from ..qemufile import IO_BUF_SIZE, QEMUFile
from ._format import (
    COMMAND_LENGTHS,
    MIGRATION_CAPABILITY_SUBSECTION,
    QEMU_VM_FILE_MAGIC,
    QEMU_VM_FILE_VERSION,
    TARGET_PAGE_BITS_SUBSECTION,
    UUID_SUBSECTION,
    MigCommand,
    RpMessage,
    VmRecord,
    uuid_text,
)
from ._ram import RAM_SECTION, RAM_VERSION, RamParser
from ._reader import Reader, StreamError
from ._report import CommandRecord, SectionRecord, StreamReport, VmdescSummary
from ._vmdesc import MAX_VMDESC, DeviceSize, device_sizes, parse_vmdesc

__all__ = ["SavevmWalker"]

log = logging.getLogger("qiochan.migration")

_MAX_COMMAND_LEN = 1 << 16
_MAX_RECORD = max(VmRecord.COMMAND, VmRecord.SECTION_FULL)
_START_LIKE = (VmRecord.SECTION_START, VmRecord.SECTION_FULL)
_PART_LIKE = (VmRecord.SECTION_PART, VmRecord.SECTION_END)


class SavevmWalker:
    """Walks one savevm stream into a :class:`StreamReport`.

    Args:
        reader: the stream, positioned at its magic.
        report: filled as the walk goes.
        vmdesc: the stream's device description, when it was found beforehand.
        reply: the return path (an output QEMUFile over the same channel):
            answers PING with PONG and says SHUT at the end, as a destination
            does, so a source migrating to the inspector completes.
    """

    def __init__(
        self,
        reader: Reader,
        report: StreamReport,
        *,
        vmdesc: dict[str, Any] | None = None,
        reply: QEMUFile | None = None,
    ) -> None:
        self.reader = reader
        self.report = report
        self.reply = reply
        self.return_path = False
        self.postcopy_advised = False
        self.footers: bool | None = None
        self.sections: dict[int, SectionRecord] = {}
        self.ram: RamParser | None = None
        self.sizes: deque[DeviceSize] = deque()
        self.full_records: list[DeviceSize] = []
        if vmdesc is not None:
            page_size = vmdesc.get("page_size")
            if isinstance(page_size, int) and page_size > 0:
                report.ram.page_size = page_size
            try:
                self.sizes.extend(device_sizes(vmdesc))
            except ValueError as exc:
                report.notes.append(f"device description not used to delimit sections: {exc}")

    # -- the stream -------------------------------------------------------------------

    def run(self) -> None:
        """Walk the whole stream; the report says how far it got.

        Raises:
            StreamError: the stream is malformed or ends early (the report
                holds everything before that point).
        """
        reader = self.reader
        report = self.report
        reader.expect_be32(QEMU_VM_FILE_MAGIC, "the magic QEVM")
        report.kind, report.magic = "savevm", "QEVM"
        report.version = reader.expect_be32(QEMU_VM_FILE_VERSION, "the stream version")
        if self._records(None):
            report.complete = True
            report.end_reason = "QEMU_VM_EOF record"
            self._shut()
            try:
                self._trailer()
            except StreamError as exc:  # the stream itself was complete
                report.notes.append(f"the device description after QEMU_VM_EOF is unusable: {exc}")

    def _records(self, end: int | None) -> bool:
        """Walk records until QEMU_VM_EOF (True) or, inside a package, its ``end`` (False)."""
        reader = self.reader
        while end is None or reader.tell() < end:
            offset = reader.tell()
            kind = reader.byte("a record type")
            if kind == VmRecord.EOF:
                return True
            if kind in _START_LIKE or kind in _PART_LIKE:
                self._section(VmRecord(kind), offset)
            elif kind == VmRecord.COMMAND:
                self._command(offset)
            elif kind == VmRecord.CONFIGURATION and offset == 8:
                self._configuration()
            else:
                reader.fail(offset, "a record type (0x00-0x04 or 0x08)", f"{kind:#04x}")
        if reader.tell() != end:
            reader.fail(end, "a package to end between two records")
        return False

    # -- configuration ------------------------------------------------------------------

    def _configuration(self) -> None:
        reader = self.reader
        offset = reader.tell()
        length = reader.be32("the machine type's length")
        if not 0 < length <= 256:
            reader.fail(offset, "a machine type length of 1..256", str(length))
        self.report.machine = reader.raw(length, "the machine type").decode("ascii", "replace")
        while self._peek_byte() == VmRecord.SUBSECTION:
            sub_offset = reader.tell()
            reader.byte("a subsection marker")
            name = reader.counted_string("a configuration subsection name").encode()
            reader.be32(f"the version of {name.decode()}")
            if name == MIGRATION_CAPABILITY_SUBSECTION:
                count = reader.be32("the number of capabilities")
                for _ in range(count):
                    cap = reader.counted_string("a capability name")
                    self.report.capabilities.append(cap)
            elif name == TARGET_PAGE_BITS_SUBSECTION:
                bits = reader.be32("the target page bits")
                if not 10 <= bits <= 20:
                    reader.fail(sub_offset, "target page bits of 10..20", str(bits))
                self.report.ram.page_size = 1 << bits
            elif name == UUID_SUBSECTION:
                self.report.uuid = uuid_text(reader.raw(16, "the source's UUID"))
            else:
                reader.fail(sub_offset, "a known configuration subsection", repr(name))

    def _peek_byte(self) -> int | None:
        view = self.reader.peek(1)
        return view[0] if len(view) else None

    # -- sections -----------------------------------------------------------------------

    def _section(self, kind: VmRecord, offset: int) -> None:
        reader = self.reader
        section_id = reader.be32("a section id")
        if kind in _START_LIKE:
            name = reader.counted_string("a section name")
            instance = reader.be32(f"the instance id of {name}")
            version = reader.be32(f"the version id of {name}")
            section = self.sections.get(section_id)
            if section is None:
                section = SectionRecord(section_id, name, instance, version, offset)
                self.sections[section_id] = section
                self.report.sections.append(section)
            elif section.name != name:
                reader.fail(offset + 1, f"section id {section_id} to stay {section.name}", name)
        else:
            found = self.sections.get(section_id)
            if found is None:
                reader.fail(offset + 1, "the id of a started section", str(section_id))
            section = found
        section.records += 1
        start = reader.tell()
        try:
            if section.name == RAM_SECTION:
                section.delimited = "parsed"
                self._ram(section, offset).parse()
            elif kind == VmRecord.SECTION_FULL and self._sized_by_vmdesc(section):
                section.delimited = "vmdesc"
            else:
                section.delimited = "footer-scan"
                self._scan_to_footer(section)
        finally:  # a record cut short still counts what it had
            size = reader.tell() - start
            section.size += size
        if kind == VmRecord.SECTION_FULL:
            self.full_records.append(DeviceSize(section.name, section.instance, size))
        self._footer(section)

    def _ram(self, section: SectionRecord, offset: int) -> RamParser:
        if section.version != RAM_VERSION:
            self.reader.fail(offset, f"RAM section version {RAM_VERSION}", str(section.version))
        if self.ram is None:
            ignore_shared = "x-ignore-shared" in self.report.capabilities
            self.ram = RamParser(self.reader, self.report.ram, ignore_shared=ignore_shared)
            self.ram.postcopy_advised = self.postcopy_advised
        return self.ram

    def _footer(self, section: SectionRecord) -> None:
        reader = self.reader
        if self.footers is None:
            self.footers = self._peek_byte() == VmRecord.SECTION_FOOTER
            if not self.footers:
                self.report.notes.append("the stream has no section footers")
        if not self.footers:
            return
        offset = reader.tell()
        marker = reader.byte("a section footer")
        found_id = reader.be32("a section footer's id")
        if marker != VmRecord.SECTION_FOOTER or found_id != section.id:
            reader.fail(
                offset,
                f"the footer of section {section.id} ({section.name})",
                f"{marker:#04x} with id {found_id}",
            )

    def _sized_by_vmdesc(self, section: SectionRecord) -> bool:
        """Consume a FULL section's data by the length the description gives; False if none."""
        sizes = self.sizes
        if not sizes or (sizes[0].name, sizes[0].instance) != (section.name, section.instance):
            return False
        size = sizes.popleft().size
        self.reader.skip(size, f"section {section.id} ({section.name})")
        return True

    def _scan_to_footer(self, section: SectionRecord) -> None:
        """Consume a section's data up to its footer, found by scanning."""
        reader = self.reader
        if self.footers is False:
            reader.fail(
                reader.tell(),
                f"a way to delimit section {section.id} ({section.name}): the stream has "
                "no section footers and no device description was found first",
            )
        pattern = bytes((VmRecord.SECTION_FOOTER,)) + section.id.to_bytes(4, "big")
        what = f"section {section.id} ({section.name}): no footer found"
        while True:
            window = reader.peek(len(pattern)).tobytes()
            pos = window.find(pattern)
            if pos < 0:
                if len(window) < len(pattern):
                    reader.skip(len(window), what)
                    reader.truncated(what)
                reader.skip(len(window) - len(pattern) + 1, what)
                continue
            reader.skip(pos, what)
            if self._plausible_after_footer():
                return
            reader.skip(1, what)

    def _plausible_after_footer(self) -> bool:
        """Return True if the buffered bytes (a footer candidate first) can end a section."""
        reader = self.reader
        view = reader.peek(6)
        if len(view) < 6:
            return len(view) == 5  # the stream ends right after it: let the walk say so
        kind = view[5]
        if kind == VmRecord.EOF:
            return True
        if kind == VmRecord.COMMAND:
            view = reader.peek(8)
            return len(view) >= 8 and int.from_bytes(view[6:8], "big") <= max(MigCommand)
        if kind in _PART_LIKE:
            view = reader.peek(10)
            return len(view) >= 10 and int.from_bytes(view[6:10], "big") in self.sections
        if kind in _START_LIKE:
            view = reader.peek(11)
            if len(view) < 11 or not view[10]:
                return False
            end = 11 + view[10]
            view = reader.peek(min(end, IO_BUF_SIZE))
            return len(view) >= end and all(0x20 <= b < 0x7F for b in view[11:end])
        return False

    # -- commands -----------------------------------------------------------------------

    def _command(self, offset: int) -> None:
        reader = self.reader
        cmd = reader.be16("a command number")
        length = reader.be16("a command length")
        try:
            name = MigCommand(cmd).name
        except ValueError:
            reader.fail(offset + 1, f"a command number up to {max(MigCommand)}", str(cmd))
        expected = COMMAND_LENGTHS.get(MigCommand(cmd))
        if (expected is not None and length != expected) or length > _MAX_COMMAND_LEN:
            reader.fail(offset + 3, f"the length of {name}", str(length))
        record = CommandRecord(cmd, length, name, offset)
        self.report.commands.append(record)
        if cmd == MigCommand.PING:
            record.value = reader.be32("the PING value")
            self._pong(record.value)
        elif cmd == MigCommand.PACKAGED:
            record.value = reader.be32("the package length")
            package_end = reader.tell() + record.value
            if self._records(package_end):
                self.report.notes.append(f"the package at offset {offset} holds a QEMU_VM_EOF")
        else:
            reader.skip(length, f"the argument of {name}")
            if cmd == MigCommand.OPEN_RETURN_PATH:
                self.return_path = True
            elif cmd == MigCommand.POSTCOPY_ADVISE:
                self.postcopy_advised = True
                if self.ram is not None:
                    self.ram.postcopy_advised = True

    # -- the return path ---------------------------------------------------------------

    def _send(self, message: RpMessage, value: int) -> None:
        reply = self.reply
        if reply is None or not self.return_path:
            return
        reply.put_be16(message)
        reply.put_be16(4)
        reply.put_be32(value)
        reply.fflush()
        if reply.get_error():
            log.info("return path failed: %s", reply.get_error_obj()[1])
            self.reply = None

    def _pong(self, value: int) -> None:
        self._send(RpMessage.PONG, value)

    def _shut(self) -> None:
        self._send(RpMessage.SHUT, 0)

    # -- after QEMU_VM_EOF --------------------------------------------------------------

    def _trailer(self) -> None:
        """Read the device description that may follow QEMU_VM_EOF."""
        reader = self.reader
        if reader.at_end():
            return
        offset = reader.tell()
        if self._peek_byte() != VmRecord.VMDESCRIPTION:
            self.report.notes.append(f"bytes after QEMU_VM_EOF at offset {offset} were ignored")
            return
        reader.byte("the description marker")
        length = reader.be32("the description's length")
        if length > MAX_VMDESC:
            reader.fail(offset + 1, f"a description of at most {MAX_VMDESC} bytes", str(length))
        text = reader.raw(length, "the device description")
        try:
            vmdesc = parse_vmdesc(text)
        except ValueError as exc:
            message = f"expected the device description's JSON: {exc}"
            raise StreamError(offset + 5, message) from None
        summary = VmdescSummary(vmdesc["page_size"], len(vmdesc["devices"]), length)
        self.report.vmdesc = summary
        try:
            summary.mismatches = self._compare(device_sizes(vmdesc))
        except ValueError as exc:
            self.report.notes.append(f"the device description has no usable sizes: {exc}")
        if not reader.at_end():
            self.report.notes.append(f"bytes after the description at offset {reader.tell()}")

    def _compare(self, described: Iterable[DeviceSize]) -> list[str]:
        """Return how the FULL sections seen differ from the description's lengths."""
        seen = iter(self.full_records)
        mismatches: list[str] = []
        for device in described:
            for record in seen:
                if (record.name, record.instance) == (device.name, device.instance):
                    if record.size != device.size:
                        mismatches.append(
                            f"{device.name} (instance {device.instance}): {record.size} "
                            f"bytes in the stream, {device.size} in the description"
                        )
                    break
            else:
                mismatches.append(f"{device.name} (instance {device.instance}): not in the stream")
                break
        return mismatches
