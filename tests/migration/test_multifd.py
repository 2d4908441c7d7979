"""Multifd channels (QEMU 7.2's MultiFDInit_t and MultiFDPacket_t) written with MultifdWriter."""

from __future__ import annotations

import io
import os

from qiochan import QEMUFile
from qiochan.migration import MultifdWriter
from qiochan.migration._vmdesc import find_vmdesc
from tests.helpers.migration import inspect_bytes

PAGE = 4096
UUID = bytes(range(16))
PAGES = [(n * PAGE, memoryview(bytearray(os.urandom(PAGE)))) for n in range(5)]


def channel_bytes(packets: int = 3) -> bytes:
    f = QEMUFile.open_buffer("w")
    w = MultifdWriter(f, UUID, 2)
    for n in range(packets):
        w.packet("pc.ram", PAGES[: n + 1], flags=1 if n == packets - 1 else 0)
    data = f.buffer_contents()
    f.fclose()
    return data


def test_a_multifd_channel_is_summarised() -> None:
    data = channel_bytes()
    report = inspect_bytes(data)
    assert report.error is None
    assert report.complete
    assert (report.kind, report.magic, report.version, report.size) == (
        "multifd",
        "MULTIFD",
        1,
        len(data),
    )
    m = report.multifd
    assert m is not None
    assert (m.uuid, m.channel, m.packets, m.sync_packets) == (
        "00010203-0405-0607-0809-0a0b0c0d0e0f",
        2,
        3,
        1,
    )
    assert (m.normal_pages, m.data_bytes, m.blocks) == (6, 6 * PAGE, {"pc.ram": 6})
    assert report.to_json()["multifd"]["channel"] == 2


def test_a_channel_with_only_its_initial_packet_is_complete() -> None:
    report = inspect_bytes(channel_bytes(0))
    assert report.complete
    assert report.multifd is not None and report.multifd.packets == 0


def test_cuts_inside_packets_are_reported_with_their_offset() -> None:
    data = channel_bytes()
    packet_ends = {64}
    size = 64
    for n in range(3):
        size += 320 + 128 * 8 + (n + 1) * PAGE
        packet_ends.add(size)
    assert size == len(data)
    for cut in range(0, len(data), 37):
        report = inspect_bytes(data[:cut])
        if cut in packet_ends:
            assert report.complete, cut
            continue
        assert not report.complete
        assert report.error is not None
        assert report.error.startswith(f"offset {cut}: the stream ends inside "), report.error


def test_a_bad_packet_header_is_named() -> None:
    data = bytearray(channel_bytes())
    data[64 + 16 : 64 + 20] = (200).to_bytes(4, "big")  # normal_pages > pages_alloc
    report = inspect_bytes(bytes(data))
    assert not report.complete
    assert report.error == (
        "offset 64: expected a multifd packet with at most as many pages as slots, "
        "found 200 pages in 128 slots, flags 0x0"
    )


def test_find_vmdesc_needs_the_length_to_reach_the_end() -> None:
    text = b'{"page_size": 4096, "devices": []}'
    tail = b"\x00\x06" + len(text).to_bytes(4, "big") + text
    file = io.BytesIO(os.urandom(200_000) + tail)
    assert find_vmdesc(file) == text
    assert find_vmdesc(io.BytesIO(os.urandom(1000) + tail + b"x")) is None
    assert find_vmdesc(io.BytesIO(b"")) is None
