"""Binary data frames, encoded without copying the payload more than masking needs.

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

__all__ = ["binary_frame"]

_FIN_BINARY = 0x80 | BINARY
_MASKED = 0x80
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")


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
        header = bytes((_FIN_BINARY, second | length))
    elif length < 65536:
        header = _HEAD_16.pack(_FIN_BINARY, second | 126, length)
    else:
        header = _HEAD_64.pack(_FIN_BINARY, second | 127, length)
    if masked:
        key = secrets.token_bytes(4)
        return [header + key, apply_mask(payload, key)]
    return [header, bytes(payload) if copy else payload]
