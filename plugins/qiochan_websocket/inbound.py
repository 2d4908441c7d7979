"""The inbound stream cut into frames: binary data carried here, the rest parsed by websockets.

A websocket channel is a byte stream, and nearly every frame it receives is
a final binary frame (QEMU, noVNC, websockify and the ``websockets`` clients
send nothing else for data).  Going through the websockets parser, such a
payload is gathered in a buffer, unmasked into a new ``bytes`` and copied into
the reader's buffer: three passes over memory that, with many connections,
has gone cold in between.  :class:`Inbound` reads each frame header itself
(Sans-I/O: the channel does the reading) and sorts the frames:

* a final binary frame with no extension bit, masked as the role requires,
  within ``max_size``, outside a fragmented message, while the session is
  open, is *carried*: its payload goes straight into the reader's buffers,
  unmasked where it lands (:meth:`Inbound.payload_into`,
  :meth:`Inbound.payload_read`);
* every other frame (control frames, fragments, text, anything malformed or
  too large) is *delegated*: its header and payload are fed, exactly, to the
  websockets protocol, which stays the authority on everything but those
  payload bytes (pongs, the close handshake, every protocol error).

Since the protocol sees only whole frames, it is at a frame boundary
whenever :class:`Inbound` is, and carried frames change none of its state: a
final binary frame outside a fragmented message leaves no trace in a parser.
The channel turns :class:`Inbound` on once the protocol is at a frame
boundary with nothing buffered (normally right after the opening handshake).
"""

from __future__ import annotations

from websockets.frames import BINARY, CONT, TEXT

from .framing import FIN_BINARY, header_size, parse_header, unmask_into

__all__ = ["Inbound"]

_FIN = 0x80


class Inbound:
    """Where the inbound stream stands between frames (see the module docstring).

    Attributes:
        active: set by the channel once the protocol is at a frame boundary;
            from then on every byte goes through this object.
        payload_left: payload bytes of the carried frame still to come.
        delegated_left: payload bytes of a delegated frame still to feed the protocol.
    """

    __slots__ = (
        "_fragmented",
        "_header",
        "_key",
        "_masked",
        "_max_size",
        "_offset",
        "active",
        "delegated_left",
        "payload_left",
    )

    def __init__(self, *, masked: bool, max_size: int | None) -> None:
        """``masked``: frames come masked (we are the server); ``max_size``: the message limit."""
        self.active = False
        self.payload_left = 0
        self.delegated_left = 0
        self._masked = masked
        self._max_size = max_size
        self._header = bytearray()  # a header split across reads, gathered
        self._key: bytes | None = None
        self._offset = 0  # how much of the carried payload came so far
        self._fragmented = False  # a fragmented message is in progress

    @property
    def at_boundary(self) -> bool:
        """True between frames: no header, payload or delegated bytes half read."""
        return not (self.payload_left or self.delegated_left or self._header)

    def begin(self, data: memoryview, *, carry: bool) -> tuple[int, bytes | None]:
        """Read the next frame's header from the start of ``data`` (call at a boundary).

        Args:
            carry: the session is open: a plain binary frame may be carried.
        Returns:
            ``(used, header)``: ``used`` bytes of ``data`` were taken; ``header``
            is the whole header when the frame is delegated (feed it to the
            protocol, then :attr:`delegated_left` payload bytes), else None
            (the frame is carried, or its header is not all there yet).
        """
        gathered = self._header
        if not gathered and data.nbytes >= 2 and data.nbytes >= (size := header_size(data)):
            used = size
            header: bytes | bytearray | memoryview = data[:used]
        else:
            used = min(data.nbytes, max(0, 2 - len(gathered)))
            gathered += data[:used]
            if len(gathered) < 2:
                return used, None
            size = header_size(gathered)
            more = min(size - len(gathered), data.nbytes - used)
            gathered += data[used : used + more]
            used += more
            if len(gathered) < size:
                return used, None
            header = bytes(gathered)
            gathered.clear()
        first, length, key = parse_header(header)
        if (
            carry
            and first == FIN_BINARY
            and (key is not None) == self._masked
            and not self._fragmented
            and (self._max_size is None or length <= self._max_size)
        ):
            self.payload_left, self._key, self._offset = length, key, 0
            return used, None
        opcode = first & 0x0F
        if opcode in (TEXT, BINARY):
            self._fragmented = not first & _FIN
        elif opcode == CONT and first & _FIN:
            self._fragmented = False
        self.delegated_left = length
        return used, bytes(header)

    def payload_into(self, iov: list[memoryview], data: memoryview) -> int:
        """Move carried payload from ``data`` into the buffers of ``iov``, unmasked.

        Returns:
            The bytes moved: as many as ``data``, the payload left and ``iov`` allow.
        """
        return self._unmask(iov, data, min(data.nbytes, self.payload_left))

    def payload_read(self, iov: list[memoryview], n: int) -> None:
        """Unmask, where they are, the ``n`` payload bytes just read into ``iov``."""
        self._unmask(iov, None, n)

    def _unmask(self, iov: list[memoryview], data: memoryview | None, size: int) -> int:
        done = 0
        key = self._key
        for target in iov:
            if done == size:
                break
            take = min(target.nbytes, size - done)
            piece = target[:take] if data is None else data[done : done + take]
            if key is not None:
                unmask_into(target[:take], piece, key, self._offset + done)
            elif data is not None:
                target[:take] = piece
            done += take
        self.payload_left -= done
        self._offset += done
        return done
