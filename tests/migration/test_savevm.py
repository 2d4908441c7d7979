"""The savevm walker on streams written record by record with SavevmWriter over QEMUFile."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qiochan import QEMUFile
from qiochan.migration import (
    MigCommand,
    SavevmWriter,
)
from qiochan.migration._format import RamFlag, VmRecord
from tests.helpers.migration import inspect_bytes

PAGE = 4096
RANDOM_PAGE = memoryview(bytearray(os.urandom(PAGE)))
BLOCKS = {"pc.ram": 16 * PAGE, "pc.bios": 4 * PAGE}
#: Device data including the footer bytes of its own section (id 1) followed by junk
#: that cannot start a record: footer scanning must not stop there.
TRICKY = b"\x01\x02" + b"\x7e\x00\x00\x00\x01" + b"\x55" * 20


def build(
    write: Callable[[SavevmWriter], None], *, footers: bool = True, first_id: int = 0
) -> bytes:
    """Return the bytes ``write`` puts through a SavevmWriter."""
    f = QEMUFile.open_buffer("w")
    write(SavevmWriter(f, footers=footers, first_id=first_id))
    data = f.buffer_contents()
    f.fclose()
    return data


def devices() -> list[tuple[str, bytes]]:
    return [("timer", bytes(24)), ("tricky", TRICKY), ("cpu", os.urandom(300))]


def vmdesc_of(devs: list[tuple[str, bytes]]) -> dict[str, Any]:
    return {
        "page_size": PAGE,
        "devices": [
            {
                "name": name,
                "instance_id": 0,
                "fields": [{"name": "data", "type": "buffer", "size": len(data)}],
            }
            for name, data in devs
        ],
    }


def migration(w: SavevmWriter, *, capabilities: tuple[str, ...] = ()) -> None:
    """A whole precopy migration: setup, two iterations, devices, EOF, description."""
    w.header(capabilities=capabilities)
    w.command(MigCommand.OPEN_RETURN_PATH)
    w.command(MigCommand.PING, (1).to_bytes(4, "big"))
    ram = w.section_start("ram", version=4)
    w.ram_setup(BLOCKS)
    w.ram_eos()
    w.footer(ram)
    w.section_part(ram)
    for offset in range(0, 16 * PAGE, PAGE):
        if offset % (2 * PAGE):
            w.ram_page("pc.ram", offset, RANDOM_PAGE)
        else:
            w.ram_zero_page("pc.ram", offset)
    w.ram_eos()
    w.footer(ram)
    w.section_part(ram, end=True)
    for offset in range(0, 4 * PAGE, PAGE):
        w.ram_page("pc.bios", offset, RANDOM_PAGE)
    w.ram_eos()
    w.footer(ram)
    devs = devices()
    for name, data in devs:
        w.device(name, data)
    w.eof(vmdesc_of(devs))


STREAM = build(migration)


def test_whole_stream_is_reported_field_by_field() -> None:
    report = inspect_bytes(STREAM)
    assert report.error is None
    assert report.complete
    assert (report.kind, report.magic, report.version) == ("savevm", "QEVM", 3)
    assert report.size == len(STREAM)
    assert report.machine == "pc-i440fx-7.2"
    assert [(s.id, s.name, s.instance, s.version) for s in report.sections] == [
        (0, "ram", 0, 4),
        (1, "timer", 0, 1),
        (2, "tricky", 0, 1),
        (3, "cpu", 0, 1),
    ]
    ram = report.sections[0]
    assert (ram.records, ram.delimited) == (3, "parsed")
    assert [s.size for s in report.sections[1:]] == [24, len(TRICKY), 300]
    assert {n: b.size for n, b in report.ram.blocks.items()} == BLOCKS
    pc_ram, bios = report.ram.blocks["pc.ram"], report.ram.blocks["pc.bios"]
    assert (pc_ram.zero_pages, pc_ram.normal_pages) == (8, 8)
    assert (bios.zero_pages, bios.normal_pages) == (0, 4)
    assert [(c.cmd, c.len, c.name, c.value) for c in report.commands] == [
        (1, 0, "OPEN_RETURN_PATH", None),
        (2, 4, "PING", 1),
    ]
    assert report.vmdesc is not None
    assert (report.vmdesc.page_size, report.vmdesc.devices, report.vmdesc.mismatches) == (
        PAGE,
        3,
        [],
    )
    assert report.end_reason == "QEMU_VM_EOF record"
    data = report.to_json()
    assert data["ram"]["zero_pages"] == 8 and data["ram"]["normal_pages"] == 12
    assert data["configuration"] == {"machine": "pc-i440fx-7.2", "capabilities": []}
    assert data["commands"][0] == {"cmd": 1, "len": 0, "name": "OPEN_RETURN_PATH", "offset": 8 + 18}


def test_device_sections_are_delimited_by_a_description_given_first() -> None:
    report = inspect_bytes(STREAM, vmdesc=vmdesc_of(devices()))
    assert report.complete, report.error
    assert [s.delimited for s in report.sections] == ["parsed", "vmdesc", "vmdesc", "vmdesc"]
    assert [s.size for s in report.sections[1:]] == [24, len(TRICKY), 300]


def test_a_footer_lookalike_followed_by_a_plausible_record_misleads_the_scan() -> None:
    """The documented limit of footer scanning, caught by the description at the end."""
    lookalike = b"\x7e\x00\x00\x00\x00" + bytes((VmRecord.EOF,)) + b"rest of the device"

    def write(w: SavevmWriter) -> None:
        w.header()
        w.device("victim", lookalike)
        w.eof(vmdesc_of([("victim", lookalike)]))

    data = build(write)
    scanned = inspect_bytes(data)
    # the scan stopped at the lookalike: the section looks empty and the walk "ends" there
    assert scanned.sections[0].size == 0
    assert scanned.vmdesc is None
    assert scanned.notes == [
        f"bytes after QEMU_VM_EOF at offset {data.index(b'rest')} were ignored"
    ]
    sized = inspect_bytes(data, vmdesc=vmdesc_of([("victim", lookalike)]))
    assert sized.complete, sized.error
    assert sized.sections[0].size == len(lookalike)


def test_description_mismatch_is_reported() -> None:
    def write(w: SavevmWriter) -> None:
        w.header()
        w.device("dev", bytes(10))
        w.eof({"page_size": PAGE, "devices": [{"name": "dev", "instance_id": 0, "fields": []}]})

    report = inspect_bytes(build(write))
    assert report.complete
    assert report.vmdesc is not None
    assert report.vmdesc.mismatches == [
        "dev (instance 0): 10 bytes in the stream, 0 in the description"
    ]


def test_subsections_and_compressed_arrays_in_the_description() -> None:
    desc = {
        "name": "dev",
        "instance_id": 0,
        "fields": [{"name": "regs", "type": "uint32", "size": 4, "array_len": 5}],
        "subsections": [
            {"vmsd_name": "dev/extra", "fields": [{"name": "x", "type": "uint8", "size": 1}]}
        ],
    }
    body = bytes(20) + bytes((VmRecord.SUBSECTION, 9)) + b"dev/extra" + bytes(4) + b"\x01"

    def write(w: SavevmWriter) -> None:
        w.header()
        w.device("dev", body)
        w.eof({"page_size": PAGE, "devices": [desc]})

    report = inspect_bytes(build(write), vmdesc={"page_size": PAGE, "devices": [desc]})
    assert report.complete, report.error
    assert report.sections[0].size == len(body) == 20 + 6 + 9 + 1


def test_without_footers_only_the_description_delimits_devices() -> None:
    data = build(migration, footers=False)
    with_desc = inspect_bytes(data, vmdesc=vmdesc_of(devices()))
    assert with_desc.complete, with_desc.error
    assert "the stream has no section footers" in with_desc.notes
    blind = inspect_bytes(data)
    assert not blind.complete
    assert blind.error is not None and "no section footers" in blind.error


def test_capabilities_uuid_and_ignore_shared_block_addresses() -> None:
    def write(w: SavevmWriter) -> None:
        w.header(capabilities=("x-ignore-shared",))
        f = w.f
        f.put_byte(VmRecord.SUBSECTION)
        f.put_counted_string("configuration/uuid")
        f.put_be32(1)
        f.put_buffer(bytes(range(16)))
        ram = w.section_start("ram")
        f.put_be64(PAGE | RamFlag.MEM_SIZE)
        f.put_counted_string("shared")
        f.put_be64(PAGE)
        f.put_be64(0x100000)  # the block's address
        w.ram_eos()
        w.footer(ram)
        w.eof()

    report = inspect_bytes(build(write))
    assert report.complete, report.error
    assert report.capabilities == ["x-ignore-shared"]
    assert report.uuid == "00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert report.ram.blocks["shared"].addr == 0x100000


def test_postcopy_block_page_size_and_packaged_stream() -> None:
    def write(w: SavevmWriter) -> None:
        w.header()
        w.command(MigCommand.POSTCOPY_ADVISE, bytes(16))
        ram = w.section_start("ram")
        f = w.f
        f.put_be64((2 << 20) + PAGE | RamFlag.MEM_SIZE)
        f.put_counted_string("huge")
        f.put_be64(2 << 20)
        f.put_be64(2 << 20)  # its page size
        f.put_counted_string("small")
        f.put_be64(PAGE)
        w.ram_eos()
        w.footer(ram)

        def package(iw: SavevmWriter) -> None:
            iw.device("dev", b"abc")
            iw.command(MigCommand.POSTCOPY_RUN)

        inner = build(package, first_id=1)
        w.command(MigCommand.PACKAGED, len(inner).to_bytes(4, "big"))
        f.put_buffer(inner)
        w.eof()

    report = inspect_bytes(build(write))
    assert report.complete, report.error
    assert report.ram.blocks["huge"].page_size == 2 << 20
    assert report.ram.blocks["small"].page_size is None
    assert [c.name for c in report.commands] == ["POSTCOPY_ADVISE", "PACKAGED", "POSTCOPY_RUN"]
    assert [s.name for s in report.sections] == ["ram", "dev"]


def test_compressed_xbzrle_and_multifd_flush_records() -> None:
    def write(w: SavevmWriter) -> None:
        w.header()
        ram = w.section_start("ram")
        w.ram_setup({"pc.ram": 4 * PAGE})
        f = w.f
        f.put_be64(RamFlag.COMPRESS_PAGE)
        f.put_counted_string("pc.ram")
        f.put_be32(10)
        f.put_buffer(bytes(10))
        f.put_be64(PAGE | RamFlag.XBZRLE | RamFlag.CONTINUE)
        f.put_byte(1)
        f.put_be16(7)
        f.put_buffer(bytes(7))
        f.put_be64(RamFlag.MULTIFD_FLUSH)
        w.ram_eos()
        w.footer(ram)
        w.eof()

    report = inspect_bytes(build(write))
    assert report.complete, report.error
    block = report.ram.blocks["pc.ram"]
    assert (block.compressed_pages, block.xbzrle_pages) == (1, 1)
    assert report.ram.multifd_flushes == 1


def _setup_then(extra: Callable[[SavevmWriter], None]) -> bytes:
    def write(w: SavevmWriter) -> None:
        w.header()
        ram = w.section_start("ram")
        w.ram_setup({"pc.ram": 4 * PAGE})
        w.ram_eos()
        w.footer(ram)
        w.section_part(ram)
        extra(w)

    return build(write)


def _put64(value: int) -> Callable[[SavevmWriter], None]:
    return lambda w: w.f.put_be64(value)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"QEVN\0\0\0\3", r"^offset 0: expected the magic QEVM 0x5145564d, found 0x5145564e$"),
        (b"QEVM\0\0\0\2", r"^offset 4: expected the stream version 0x3, found 0x2$"),
        (b"QEVM\0\0\0\3\x09", r"^offset 8: expected a record type .*found 0x09$"),
        (b"QEVM\0\0\0\3\x02\0\0\0\x07", r"^offset 9: expected the id of a started section"),
        (b"QEVM\0\0\0\3\x08\0\x63\0\0", r"^offset 9: expected a command number up to 10"),
        (b"QEVM\0\0\0\3\x08\0\x02\0\x05", r"^offset 11: expected the length of PING, found 5"),
        (_setup_then(_put64(0x400)), r"expected RAM record flags, found 0x400"),
        (_setup_then(_put64(RamFlag.PAGE | RamFlag.CONTINUE)), r"RAM_SAVE_FLAG_CONTINUE before"),
        (
            _setup_then(lambda w: w.ram_zero_page("nope", 0)),
            r"expected a RAM block from the setup record, found 'nope'",
        ),
        (
            _setup_then(lambda w: w.ram_zero_page("pc.ram", 8 * PAGE)),
            r"expected a page offset inside RAM block pc.ram \(0x4000 bytes\), found 0x8000",
        ),
        (
            _setup_then(lambda w: w.f.put_buffer(b"\0\0\0\0\0\0\0\x10\x7e\0\0\0\x07")),
            r"expected the footer of section 0 \(ram\), found 0x7e with id 7",
        ),
    ],
)
def test_malformed_streams_name_the_offset_and_what_was_expected(data: bytes, pattern: str) -> None:
    report = inspect_bytes(data)
    assert not report.complete
    assert report.end_reason == "malformed"
    assert report.error is not None and re.search(pattern, report.error), report.error


def test_truncation_at_every_byte_of_a_small_stream() -> None:
    """Every cut gives either an incomplete report naming the cut, or (past EOF) a complete one."""
    eof_at = STREAM.rindex(bytes((VmRecord.EOF, VmRecord.VMDESCRIPTION)))
    records = range(200, len(STREAM) - 1000)  # mostly page data: sampled
    for cut in (c for c in range(len(STREAM)) if c not in records or c % 61 == 0):
        report = inspect_bytes(STREAM[:cut])
        if cut > eof_at:
            assert report.complete, (cut, report.error)
            assert report.vmdesc is None
            continue
        assert not report.complete, cut
        assert report.end_reason == "truncated", (cut, report.error)
        assert report.error is not None
        assert report.error.startswith(f"offset {cut}: the stream ends inside "), report.error
        assert report.size == cut


def test_flipped_bytes_give_only_documented_outcomes() -> None:
    for position in range(len(STREAM) - 1):
        if 200 < position < len(STREAM) - 1000 and position % 61:
            continue  # inside page data: nothing to check, sample only
        damaged = bytearray(STREAM)
        damaged[position] ^= 0xFF
        report = inspect_bytes(bytes(damaged))
        assert report.size <= len(damaged)
        if report.complete:
            continue
        assert report.error is not None
        match = re.match(r"^offset (\d+): (expected|the stream ends inside) ", report.error)
        assert match, (position, report.error)
        # nothing before the damaged byte changed: a record header at most precedes it
        assert int(match.group(1)) >= position - 300, (position, report.error)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(STREAM) - 1), st.binary(max_size=12), st.integers(0, 12)),
        min_size=1,
        max_size=4,
    )
)
def test_spliced_streams_never_raise(edits: list[tuple[int, bytes, int]]) -> None:
    """Bytes inserted and removed anywhere: a report, never an exception or a hang."""
    data = bytearray(STREAM)
    for position, inserted, removed in edits:
        data[position : position + removed] = inserted
    report = inspect_bytes(bytes(data))
    assert report.size <= len(data)
    if not report.complete:
        assert report.error is not None
        assert re.match(r"^offset \d+: (expected |the stream ends inside )", report.error)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_after_a_header_never_raises(tail: bytes) -> None:
    for head in (b"QEVM\0\0\0\3", b"\x11\x22\x33\x44\0\0\0\1", b"\0\2\0\4"):
        report = inspect_bytes(head + tail)
        assert report.complete or (report.error or "").startswith("offset ")
