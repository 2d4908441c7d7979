"""The return path: what a destination sends back to the source (``migration/migration.c``).

Each message is a be16 type, a be16 length and that many bytes: ``SHUT``
(be32 status, 0 = success), ``PONG`` (the be32 of the PING it answers),
``REQ_PAGES`` (be64 start, be32 length: a postcopy page request),
``REQ_PAGES_ID`` (the same and a counted RAM block name), ``RECV_BITMAP``
and ``RESUME_ACK`` (postcopy recovery).  It is the destination-to-source
direction of a main channel, e.g. a relay's ``dst-to-src`` tap.
"""

from __future__ import annotations

from ._format import RP_MESSAGE_LENGTHS, RpMessage
from ._reader import Reader
from ._report import ReturnPathMessage, StreamReport

__all__ = ["ReturnPathWalker", "looks_like_return_path"]

_MAX_LENGTH = 1 << 16


def _expected_length(kind: int) -> int | None:
    """Return the fixed length of message ``kind``, None if it varies.

    Raises:
        ValueError: ``kind`` is not a return-path message type.
    """
    return RP_MESSAGE_LENGTHS.get(RpMessage(kind))


def looks_like_return_path(head: bytes) -> bool:
    """Return True if the 4 bytes ``head`` can start a return path (a known type, its length)."""
    if len(head) < 4:
        return False
    kind, length = int.from_bytes(head[:2], "big"), int.from_bytes(head[2:4], "big")
    try:
        expected = _expected_length(kind)
    except ValueError:
        return False
    return length == expected if expected is not None else 0 < length < _MAX_LENGTH


class ReturnPathWalker:
    """Lists the messages of a return path into a :class:`StreamReport` (``kind="return-path"``)."""

    def __init__(self, reader: Reader, report: StreamReport) -> None:
        self.reader = reader
        self.report = report

    def run(self) -> None:
        """Walk messages up to the end of the stream.

        Raises:
            StreamError: a message is malformed or the stream ends inside one.
        """
        reader = self.reader
        report = self.report
        report.kind = "return-path"
        while not reader.at_end():
            offset = reader.tell()
            kind = reader.be16("a return-path message type")
            length = reader.be16("a return-path message length")
            try:
                name = RpMessage(kind).name
                expected = _expected_length(kind)
            except ValueError:
                reader.fail(offset, "a return-path message type of 1..6", str(kind))
            if expected is not None and length != expected:
                reader.fail(offset + 2, f"the length of {name} ({expected})", str(length))
            message = ReturnPathMessage(kind, name, length, offset)
            if kind == RpMessage.REQ_PAGES:
                message.start = reader.be64("the start of REQ_PAGES")
            if expected is not None:
                message.value = reader.be32(f"the value of {name}")
            else:
                reader.skip(length, f"the data of {name}")
            report.return_path.append(message)
        report.complete = True
        shut = report.return_path and report.return_path[-1].kind == RpMessage.SHUT
        report.end_reason = "end of stream after SHUT" if shut else "end of stream between messages"
