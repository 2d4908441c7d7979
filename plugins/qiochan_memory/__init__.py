"""The memory backends: :class:`QIOChannelBuffer`, :class:`QIOChannelNull` and memory pipes.

Registered through the ``qiochan.plugins`` entry point like any third-party
plugin.  Addresses: ``buffer:`` (a new growable buffer), ``null:`` (a sink).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from qiochan.channel import Feature, QIOChannel
from qiochan.errors import AddressError
from qiochan.options import parse_int
from qiochan.plugin import Backend, hookimpl

from .buffer import QIOChannelBuffer, QIOChannelNull
from .pipe import QIOChannelMemoryPipe, memory_pipe

__all__ = [
    "MemoryAddress",
    "QIOChannelBuffer",
    "QIOChannelMemoryPipe",
    "QIOChannelNull",
    "memory_pipe",
    "qiochan_backends",
]


@dataclass(frozen=True)
class MemoryAddress:
    """``buffer:`` or ``null:``."""

    kind: str
    schemes: ClassVar[tuple[str, ...]] = ("buffer", "null")

    @property
    def scheme(self) -> str:
        """The address scheme (``buffer`` or ``null``)."""
        return self.kind

    def __str__(self) -> str:
        return f"{self.kind}:"


def parse(text: str) -> MemoryAddress:
    """Parse ``buffer:`` or ``null:``.

    Raises:
        AddressError: another scheme, or anything after the colon.
    """
    scheme, _sep, rest = text.partition(":")
    scheme = scheme.strip().lower()
    if scheme not in MemoryAddress.schemes:
        raise AddressError(f"Address {text!r}: scheme must be 'buffer' or 'null'")
    if rest:
        raise AddressError(f"Address {text!r}: '{scheme}:' takes no options, got {rest!r}")
    return MemoryAddress(scheme)


def open_memory(address: MemoryAddress, mode: str, **options: Any) -> QIOChannel:
    """Open a new buffer (``capacity=N`` option) or null channel."""
    if address.kind == "null":
        if options:
            raise AddressError(f"null: takes no options, got {', '.join(options)}")
        return QIOChannelNull()
    capacity = parse_int(options.pop("capacity", 0), "capacity", "buffer:")
    if options:
        raise AddressError(f"buffer: unknown options {', '.join(options)}")
    return QIOChannelBuffer(capacity)


@hookimpl
def qiochan_backends() -> list[Backend]:
    """Declare the memory backend."""
    return [
        Backend(
            name="memory",
            schemes=MemoryAddress.schemes,
            kind="transport",
            features=frozenset({Feature.SEEKABLE, Feature.SHUTDOWN, Feature.READ_MSG_PEEK}),
            open=open_memory,
            parse=parse,
            description="in-memory buffer, null sink and memory pipe pairs",
        )
    ]
