"""The frame layout of RFC 6455 section 5.2: binary data frames out, frame headers in.

Out: binary data frames, encoded without copying the payload more than masking needs.

``Protocol.send_binary`` in websockets serializes a frame into one
``bytes``: the payload is copied into an ``io.BytesIO`` (and, from a client,
masked into another copy first).  A byte-stream channel sends nothing but
binary frames with FIN set, so :func:`binary_frame` encodes those itself, as
RFC 6455 section 5.2 lays them out: a 2 to 14 byte header, then the payload
as it is (server) or masked with a fresh random key (client).  The protocol
object stays the authority on state: a frame is encoded here only while it
is OPEN, with no extension and no fragmented message in progress; otherwise
:func:`binary_frame` returns None and the caller lets ``send_binary`` raise
or encode.  Control frames (ping, pong, close) always come from the protocol.

In: :func:`header_size` and :func:`parse_header` read a frame header, and
:func:`unmask_into` unmasks a payload piece into a buffer (which may be the
piece itself), for :mod:`~qiochan_websocket.inbound`.
"""

from __future__ import annotations

import secrets
import struct
from typing import Any

from websockets.frames import BINARY
from websockets.protocol import CLIENT, OPEN, Protocol

try:  # websockets' C speedup, as its own frames use; the pure Python one otherwise
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its extension
    from websockets.utils import apply_mask

__all__ = ["FIN_BINARY", "binary_frame", "header_size", "parse_header", "unmask_into"]

#: The first header byte of a final binary frame with no extension bit.
FIN_BINARY = 0x80 | BINARY
_MASKED = 0x80
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")
# extra header bytes by the 7-bit length field: 126 and 127 announce a longer length
_LENGTH_EXTRA = (0,) * 126 + (2, 8)
# unmasked this many bytes at a time: a new bytes object this size per call stays
# below malloc's mmap threshold, in warm memory; a multiple of 4 keeps the key's phase
_UNMASK_PIECE = 64 << 10


def binary_frame(protocol: Protocol, payload: Any, *, copy: bool) -> list[Any] | None:
    """Encode ``payload`` as one final binary frame from ``protocol``'s side.

    Args:
        payload: a bytes-like object (a ``memoryview`` of the caller's buffer
            or ``bytes``).
        copy: copy an unmasked payload (the frame may stay queued after the
            caller reuses its buffer); a masked one is always a new object.
    Returns:
        The frame as chunks to write in order (header, payload), or None when
        the protocol is not in a state to send a plain data frame.
    """
    if protocol.state is not OPEN or protocol.extensions or protocol.expect_continuation_frame:
        return None
    length = len(payload)
    masked = protocol.side is CLIENT
    second = _MASKED if masked else 0
    if length < 126:
        header = bytes((FIN_BINARY, second | length))
    elif length < 65536:
        header = _HEAD_16.pack(FIN_BINARY, second | 126, length)
    else:
        header = _HEAD_64.pack(FIN_BINARY, second | 127, length)
    if masked:
        key = secrets.token_bytes(4)
        return [header + key, apply_mask(payload, key)]
    return [header, bytes(payload) if copy else payload]


def header_size(head: bytes | bytearray | memoryview) -> int:
    """Return the size of the frame header whose first two bytes start ``head``."""
    second = head[1]
    return 2 + _LENGTH_EXTRA[second & 0x7F] + (4 if second & _MASKED else 0)


def parse_header(header: bytes | bytearray | memoryview) -> tuple[int, int, bytes | None]:
    """Read a whole frame header (:func:`header_size` bytes).

    Returns:
        ``(first byte, payload length, masking key or None)``; the first byte
        holds FIN, the three extension bits and the opcode.
    """
    second = header[1]
    length = second & 0x7F
    end = 2 + _LENGTH_EXTRA[length]
    if end > 2:
        length = int.from_bytes(header[2:end], "big")
    key = bytes(header[end : end + 4]) if second & _MASKED else None
    return header[0], length, key


def unmask_into(target: memoryview, piece: memoryview, key: bytes, offset: int) -> None:
    """Write ``piece`` unmasked with ``key`` into ``target`` (as long; it may be ``piece``).

    ``offset`` is the position of ``piece`` in its frame's payload: the key
    applies from byte ``offset % 4`` on.
    """
    phase = offset % 4
    if phase:
        key = key[phase:] + key[:phase]
    for start in range(0, piece.nbytes, _UNMASK_PIECE):
        end = start + _UNMASK_PIECE
        target[start:end] = apply_mask(piece[start:end], key)
