"""The numbers of QEMU's savevm stream format (QEMU 7.2, with later RAM flags accepted).

Names follow QEMU's ``migration/savevm.c``, ``migration/ram.c`` and
``migration/multifd.h``.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "COMMAND_LENGTHS",
    "MIGRATION_CAPABILITY_SUBSECTION",
    "MULTIFD_MAGIC",
    "QEMU_VM_FILE_MAGIC",
    "QEMU_VM_FILE_VERSION",
    "RP_MESSAGE_LENGTHS",
    "TARGET_PAGE_BITS_SUBSECTION",
    "UUID_SUBSECTION",
    "MigCommand",
    "RamFlag",
    "RpMessage",
    "VmRecord",
    "uuid_text",
]

#: ``QEVM``: the first four bytes of a savevm stream.
QEMU_VM_FILE_MAGIC = 0x5145564D
#: The only version QEMU has written since 2008 (it refuses version 2).
QEMU_VM_FILE_VERSION = 3

#: The first four bytes of every multifd channel (and of each of its packets).
MULTIFD_MAGIC = 0x11223344

#: Subsections of the configuration section that QEMU 7.2 may send.
MIGRATION_CAPABILITY_SUBSECTION = b"configuration/capabilities"
UUID_SUBSECTION = b"configuration/uuid"
TARGET_PAGE_BITS_SUBSECTION = b"configuration/target-page-bits"


class VmRecord(IntEnum):
    """The byte that starts each record of the stream (``QEMU_VM_*``)."""

    EOF = 0x00
    SECTION_START = 0x01
    SECTION_PART = 0x02
    SECTION_END = 0x03
    SECTION_FULL = 0x04
    SUBSECTION = 0x05
    VMDESCRIPTION = 0x06
    CONFIGURATION = 0x07
    COMMAND = 0x08
    SECTION_FOOTER = 0x7E


class MigCommand(IntEnum):
    """``QEMU_VM_COMMAND`` sub-commands (``enum qemu_vm_cmd``)."""

    INVALID = 0
    OPEN_RETURN_PATH = 1
    PING = 2
    POSTCOPY_ADVISE = 3
    POSTCOPY_LISTEN = 4
    POSTCOPY_RUN = 5
    POSTCOPY_RAM_DISCARD = 6
    PACKAGED = 7
    ENABLE_COLO = 8
    POSTCOPY_RESUME = 9
    RECV_BITMAP = 10


#: Fixed argument lengths of the commands that have one (the others vary).
COMMAND_LENGTHS = {
    MigCommand.OPEN_RETURN_PATH: 0,
    MigCommand.PING: 4,
    MigCommand.POSTCOPY_LISTEN: 0,
    MigCommand.POSTCOPY_RUN: 0,
    MigCommand.PACKAGED: 4,
    MigCommand.ENABLE_COLO: 0,
    MigCommand.POSTCOPY_RESUME: 0,
}


class RamFlag(IntEnum):
    """The flags in the low bits of each RAM record's be64 header (``RAM_SAVE_FLAG_*``)."""

    FULL = 0x01  # obsolete, never sent
    ZERO = 0x02
    MEM_SIZE = 0x04
    PAGE = 0x08
    EOS = 0x10
    CONTINUE = 0x20
    XBZRLE = 0x40
    HOOK = 0x80  # RDMA only
    COMPRESS_PAGE = 0x100
    MULTIFD_FLUSH = 0x200  # QEMU 8.0 and later


class RpMessage(IntEnum):
    """Return-path messages a destination sends (``enum mig_rp_message_type``)."""

    SHUT = 1
    PONG = 2
    REQ_PAGES_ID = 3
    REQ_PAGES = 4
    RECV_BITMAP = 5
    RESUME_ACK = 6


#: Fixed lengths of the return-path messages that have one (the others vary).
RP_MESSAGE_LENGTHS = {
    RpMessage.SHUT: 4,
    RpMessage.PONG: 4,
    RpMessage.REQ_PAGES: 12,
    RpMessage.RESUME_ACK: 4,
}


def uuid_text(raw: bytes) -> str:
    """Return 16 raw UUID bytes in the usual 8-4-4-4-12 form."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
