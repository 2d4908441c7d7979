"""Seeing inside a QEMU migration stream: the savevm format walked through :class:`QEMUFile`.

::

    from qiochan.migration import inspect_path, inspect_stream, format_report

    report = inspect_path("guest.mig")          # a capture (exec:cat > guest.mig)
    print(format_report(report))
    report.complete, report.ram.blocks["pc.ram"].size, report.to_json()

    report = inspect_stream(QEMUFile.new_input(channel))   # any channel, e.g. live

:func:`inspect_stream` recognises a main stream (``QEVM``), a multifd
channel (``0x11223344``) and a return path (the destination's replies).  It
never raises for what the stream contains: a truncated or malformed stream
gives ``complete=False`` and an ``error`` naming the offset and what was
expected there.  Guest pages are consumed in
QEMUFile's buffer, never copied; at most the 32 KiB buffer, one small record
and the JSON device description are held at a time.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import Any

from ..channel import QIOChannel
from ..qemufile import QEMUFile
from ._format import (
    MULTIFD_MAGIC,
    QEMU_VM_FILE_MAGIC,
    MigCommand,
    RamFlag,
    RpMessage,
    VmRecord,
)
from ._multifd import MultifdWalker
from ._reader import Reader, StreamError, TruncatedError
from ._render import format_report
from ._report import (
    CommandRecord,
    MultifdChannel,
    RamBlock,
    RamStats,
    ReturnPathMessage,
    SectionRecord,
    StreamReport,
    VmdescSummary,
)
from ._return_path import ReturnPathWalker, looks_like_return_path
from ._savevm import SavevmWalker
from ._vmdesc import find_vmdesc, parse_vmdesc
from ._writer import MultifdWriter, SavevmWriter

__all__ = [
    "MULTIFD_MAGIC",
    "QEMU_VM_FILE_MAGIC",
    "CommandRecord",
    "MigCommand",
    "MultifdChannel",
    "MultifdWriter",
    "RamBlock",
    "RamFlag",
    "RamStats",
    "Reader",
    "ReturnPathMessage",
    "RpMessage",
    "SavevmWriter",
    "SectionRecord",
    "StreamError",
    "StreamReport",
    "VmRecord",
    "VmdescSummary",
    "format_report",
    "inspect_fd",
    "inspect_path",
    "inspect_stream",
    "load_vmdesc",
]

log = logging.getLogger("qiochan.migration")


def inspect_stream(
    f: QEMUFile,
    *,
    vmdesc: dict[str, Any] | None = None,
    reply: QEMUFile | None = None,
    reader: Reader | None = None,
) -> StreamReport:
    """Walk the migration stream ``f`` to its end and report what it holds.

    Args:
        f: an input QEMUFile at the start of a main stream or a multifd channel.
        vmdesc: the stream's JSON device description when known beforehand
            (:func:`inspect_path` finds it in a file): device sections are then
            delimited by it rather than by scanning for their footers.
        reply: the return path (``f.get_return_path()`` on a two-way
            channel): PINGs are answered and SHUT is sent at the end, as a
            destination does, so that a source migrating here completes.
        reader: the :class:`Reader` to use (to interrupt it from another
            thread with a reason); by default one over ``f``.
    Returns:
        The report; ``complete`` is True when the stream's end record was
        reached.  ``f`` is left open.
    """
    reader = reader or Reader(f)
    report = StreamReport()
    try:
        head = reader.peek(4)[:4].tobytes()
        if int.from_bytes(head, "big") == MULTIFD_MAGIC:
            MultifdWalker(reader, report, _page_size(vmdesc)).run()
        elif looks_like_return_path(head):
            ReturnPathWalker(reader, report).run()
        else:
            SavevmWalker(reader, report, vmdesc=vmdesc, reply=reply).run()
    except StreamError as exc:
        report.complete = False
        report.error = str(exc)
        report.end_reason = "truncated" if isinstance(exc, TruncatedError) else "malformed"
        report.end_offset = exc.offset
        log.info("inspection stopped: %s", exc)
    else:
        report.end_offset = reader.tell()
    report.size = f.tell()
    return report


def _page_size(vmdesc: dict[str, Any] | None) -> int:
    size = vmdesc.get("page_size") if vmdesc else None
    return size if isinstance(size, int) and size > 0 else 4096


def inspect_path(path: str | os.PathLike[str]) -> StreamReport:
    """Inspect the migration stream saved in the file ``path``.

    The device description at the end of the file, when there is one, is
    read first and delimits the device sections.

    Raises:
        OSError: the file cannot be opened or read.
    """
    vmdesc = load_vmdesc(path)
    return inspect_fd(os.open(path, os.O_RDONLY | os.O_CLOEXEC), vmdesc=vmdesc)


def inspect_fd(fd: int, *, vmdesc: dict[str, Any] | None = None) -> StreamReport:
    """Inspect the stream read from the file descriptor ``fd``, which is closed at the end.

    Args:
        fd: a readable file, pipe or socket (taken over: closed when done).
        vmdesc: the stream's device description, when known beforehand.
    Raises:
        ChannelError: ``fd`` cannot be made a channel.
    """
    from ..transport import open_channel

    try:
        channel: QIOChannel = open_channel(f"fd:{fd}", "r")
    except BaseException:
        os.close(fd)
        raise
    f = QEMUFile.new_input(channel)
    try:
        return inspect_stream(f, vmdesc=vmdesc)
    finally:
        f.fclose()


def load_vmdesc(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Return the device description at the end of the savevm file ``path``, or None.

    None also when ``path`` is not a regular file (a FIFO or a device is not
    opened at all: its data is for the walk) or the description is not valid
    JSON.

    Raises:
        OSError: the file cannot be opened or read.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        return None
    with open(path, "rb") as file:
        text = find_vmdesc(file)
    if text is None:
        return None
    try:
        return parse_vmdesc(text)
    except ValueError:
        return None
