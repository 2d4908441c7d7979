"""The JSON device description QEMU appends after ``QEMU_VM_EOF`` (``QEMU_VM_VMDESCRIPTION``).

QEMU writes it while saving the non-iterable devices: for each device
section, every field with the bytes it actually wrote (``size``, times
``array_len`` for a compressed array) and every subsection sent.  So the data
length of each device section follows from it exactly:

* a field: ``size * array_len`` (``array_len`` only for compressed arrays);
* a subsection: 1 (``QEMU_VM_SUBSECTION``) + 1 + len(name) + 4 (version)
  + its own fields and subsections.

A file can be searched for the description from its end before it is
walked (:func:`find_vmdesc`), so device sections are delimited by it; a live
stream gets it last, and it then checks what footer scanning found.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from ._format import VmRecord

__all__ = ["MAX_VMDESC", "DeviceSize", "device_sizes", "find_vmdesc", "parse_vmdesc"]

#: Longest description accepted (QEMU's are tens to hundreds of KiB).
MAX_VMDESC = 64 << 20
#: How far from the end of a file the description is searched for.
_SEARCH_LIMIT = MAX_VMDESC + 6
_CHUNK = 64 << 10


@dataclass(frozen=True)
class DeviceSize:
    """A device section the description describes, and its data length."""

    name: str
    instance: int
    size: int


def parse_vmdesc(text: bytes) -> dict[str, Any]:
    """Parse the description's JSON text.

    Raises:
        ValueError: not JSON, or not an object with ``page_size`` and ``devices``.
    """
    data = json.loads(text)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("page_size"), int)
        or not isinstance(data.get("devices"), list)
    ):
        raise ValueError("not a QEMU device description (page_size and devices)")
    return data


def _fields_size(entry: Any) -> int:
    """Return the bytes ``entry`` (a device or subsection description) stands for."""
    if not isinstance(entry, dict):
        raise ValueError(f"a device description entry is not an object: {entry!r:.60}")
    total = 0
    for field in entry.get("fields", ()):
        size = field.get("size") if isinstance(field, dict) else None
        count = field.get("array_len", 1) if isinstance(field, dict) else None
        if not isinstance(size, int) or not isinstance(count, int):
            raise ValueError(f"a field without a size: {field!r:.60}")
        total += size * count
    for sub in entry.get("subsections", ()):
        name = sub.get("vmsd_name") if isinstance(sub, dict) else None
        if not isinstance(name, str):
            raise ValueError(f"a subsection without a name: {sub!r:.60}")
        total += 6 + len(name.encode()) + _fields_size(sub)
    return total


def device_sizes(vmdesc: dict[str, Any]) -> Iterator[DeviceSize]:
    """Yield each described device section with its data length, in stream order.

    Raises:
        ValueError: an entry lacks a name, an instance id or field sizes.
    """
    for device in vmdesc["devices"]:
        if not isinstance(device, dict):
            raise ValueError(f"a device entry is not an object: {device!r:.60}")
        name, instance = device.get("name"), device.get("instance_id")
        if not isinstance(name, str) or not isinstance(instance, int):
            raise ValueError(f"a device entry without name and instance_id: {device!r:.60}")
        yield DeviceSize(name, instance, _fields_size(device))


def find_vmdesc(file: BinaryIO) -> bytes | None:
    """Return the description's JSON text from the end of a seekable savevm file, or None.

    Looks backwards, 64 KiB at a time and at most 64 MiB from the end, for
    ``QEMU_VM_EOF, QEMU_VM_VMDESCRIPTION, be32 length, '{'`` whose length
    reaches exactly to the end of the file.  The file position is restored.

    Raises:
        OSError: reading the file failed.
    """
    start = file.tell()
    try:
        end = file.seek(0, os.SEEK_END)
        found = _search_backwards(file, end)
        if found is None:
            return None
        file.seek(found)
        text = file.read(end - found)
        return text if len(text) == end - found else None
    finally:
        file.seek(start)


def _search_backwards(file: BinaryIO, end: int) -> int | None:
    """Return where the JSON text starts, or None."""
    marker = bytes((VmRecord.EOF, VmRecord.VMDESCRIPTION))
    floor = max(0, end - _SEARCH_LIMIT)
    high = end
    while high > floor:
        low = max(floor, high - _CHUNK)
        file.seek(low)
        # 6 bytes of overlap: a marker and its length may straddle chunks
        chunk = file.read(min(end, high + 6) - low)
        pos = len(chunk)
        while True:
            pos = chunk.rfind(marker, 0, pos)
            if pos < 0:
                break
            json_at = low + pos + 6
            length = int.from_bytes(chunk[pos + 2 : pos + 6], "big")
            if json_at + length == end and chunk[pos + 6 : pos + 7] in (b"{", b""):
                return json_at
        high = low
    return None
