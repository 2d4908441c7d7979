"""A websockets ``StreamReader`` that lends frame payloads instead of copying them twice.

The websockets Sans-I/O parser (``Protocol.parse``, ``Frame.parse``) reads
through a :class:`~websockets.streams.StreamReader`: every chunk fed in is
appended to one ``bytearray`` and every ``read_exact`` slices a copy out of
it, so each payload byte is copied twice before the channel copies it into
the caller's buffer.  :class:`LendingReader` keeps the parser and its checks
and changes only where the bytes live, once the opening handshake is over
(:attr:`LendingReader.lending`):

* a chunk the pump feeds is *lent*: kept as a view of the pump's buffer, and a
  large payload wholly inside it is returned as a view of it (no copy);
* a large payload that is not all there yet is assembled in a buffer of its
  own size, and the pump reads the rest of it straight into that buffer
  (:meth:`LendingReader.space`, :meth:`LendingReader.commit`);
* after each feed the pump calls :meth:`LendingReader.settle`, which copies
  the few bytes the parser has not consumed (a partial header) into the
  ordinary buffer, so the pump may reuse its buffer for the next read.

The views handed out stay valid while the pump does not read into the same
buffer again: the websocket channel reads only once every payload delivered
so far has been consumed.

The parser asks :meth:`LendingReader.at_eof` between two frames, which sets
:attr:`LendingReader.between_frames` while it waits there: from that point
the channel cuts the frames itself (:mod:`~qiochan_websocket.inbound`), and
only the frames it does not carry come through here.
"""

from __future__ import annotations

import sys
from collections.abc import Generator

from websockets.streams import StreamReader

__all__ = ["LEND_MIN", "MAX_ASSEMBLED", "LendingReader"]

#: Reads of at least this many bytes (payloads) are lent; smaller ones (frame
#: headers, control frames) are copied into bytes of their own.
LEND_MIN = 1024
#: Largest payload assembled in a buffer allocated up front; larger ones (rare,
#: up to the channel's max_size) are buffered as they arrive, as websockets does.
MAX_ASSEMBLED = 4 << 20
#: The smallest assembly buffer made: payloads of a similar size then share one.
_ASSEMBLY_MIN = 64 * 1024
#: Assembly buffers kept for reuse.
_SPARES = 2


class LendingReader(StreamReader):
    """A ``StreamReader`` whose payload reads copy at most once (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        #: Set once the handshake is over: only frames are read from then on.
        self.lending = False
        self._lent: memoryview | None = None  # the chunk being parsed, not copied
        self._pos = 0  # how much of it the parser consumed
        self._target: memoryview | None = None  # a payload being assembled in place
        self._filled = 0
        self._spares: list[bytearray] = []  # recent assembly buffers, reused when free
        #: True while the parser waits for the next frame with nothing buffered
        #: (it asks :meth:`at_eof` between frames): the stream is at a frame boundary.
        self.between_frames = False

    # -- the pump's side -----------------------------------------------------------

    def feed_data(self, data: bytes | bytearray | memoryview) -> None:
        """Take a chunk: lent when lending and nothing is buffered, else copied.

        Raises:
            EOFError: the stream has ended.
        """
        if self.eof:
            raise EOFError("stream ended")
        view = memoryview(data)
        if self._target is not None and view.nbytes:
            take = min(view.nbytes, self._target.nbytes - self._filled)
            self._target[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
        if not view.nbytes:
            return
        if self.lending and not self.buffer and self._lent is None:
            self._lent, self._pos = view, 0
        else:
            self.settle()
            self.buffer += view

    def settle(self) -> None:
        """Copy what the parser left of the lent chunk into the buffer (call after each feed)."""
        lent = self._lent
        if lent is not None:
            self._lent = None
            self.buffer += lent[self._pos :]

    def space(self) -> memoryview | None:
        """The part of a payload being assembled that is still missing, or None.

        The pump reads into it and calls :meth:`commit` with the count.
        """
        target = self._target
        return None if target is None else target[self._filled :]

    def commit(self, n: int) -> None:
        """Record ``n`` bytes read into :meth:`space`."""
        self._filled += n

    # -- the parser's side ----------------------------------------------------------

    def read_exact(self, n: int) -> Generator[None, None, bytearray]:
        """Read ``n`` bytes: a view of a lent chunk when a payload lies within it.

        Raises:
            EOFError: the stream ends before ``n`` bytes.
        """
        while True:
            lent = self._lent
            if lent is not None and not self.buffer and lent.nbytes - self._pos >= n:
                start = self._pos
                self._pos = start + n
                piece = lent[start : start + n]
                # a view passes for the bytearray websockets expects: it only slices,
                # unpacks and unmasks it, and the channel only copies out of it
                return piece if n >= LEND_MIN else bytearray(piece)  # type: ignore[return-value]
            if self.lending and LEND_MIN <= n <= MAX_ASSEMBLED:
                return (yield from self._assemble(n))
            self.settle()
            if len(self.buffer) >= n:
                data = self.buffer[:n]
                del self.buffer[:n]
                return data
            if self.eof:
                raise EOFError(f"stream ends after {len(self.buffer)} bytes, expected {n} bytes")
            yield

    def _assembly_buffer(self, n: int) -> memoryview:
        """``n`` bytes to assemble a payload in: a recent payload's buffer when it is free.

        A masked payload is unmasked into new bytes, so its buffer is free
        once the frame is parsed; an unmasked one is delivered as a view of
        it, holding it until the reader consumed it (and the parser holds the
        last frame until the next one is parsed: hence two buffers).  A buffer
        nobody else refers to (no view left) is reused: a fresh one would be
        zeroed, and its pages faulted in, for every large frame.
        """
        for spare in self._spares:
            # unshared, it has three references: the list, spare, getrefcount's
            # argument; each payload view still alive (its managed buffer) adds one
            if len(spare) >= n and sys.getrefcount(spare) <= 3:
                return memoryview(spare)[:n]
        fresh = bytearray(max(n, _ASSEMBLY_MIN))
        self._spares = [*self._spares[-(_SPARES - 1) :], fresh]
        return memoryview(fresh)[:n]

    def _assemble(self, n: int) -> Generator[None, None, bytearray]:
        """Gather an ``n``-byte payload in its own buffer, the pump filling the rest."""
        view = self._assembly_buffer(n)
        filled = len(self.buffer)
        view[:filled] = self.buffer
        del self.buffer[:]
        lent = self._lent
        if lent is not None:
            take = min(n - filled, lent.nbytes - self._pos)
            view[filled : filled + take] = lent[self._pos : self._pos + take]
            self._pos += take
            filled += take
        self._target, self._filled = view, filled
        try:
            while self._filled < n:
                if self.eof:
                    raise EOFError(f"stream ends after {self._filled} bytes, expected {n} bytes")
                yield
        finally:
            self._target = None
        return view  # type: ignore[return-value]  # a view passes for it (see read_exact)

    def at_eof(self) -> Generator[None, None, bool]:
        """Tell whether the stream ended with everything read (waits for data or EOF)."""
        while True:
            if self.buffer or (self._lent is not None and self._pos < self._lent.nbytes):
                return False
            if self.eof:
                return True
            self.between_frames = True
            yield
            self.between_frames = False

    def discard(self) -> None:
        """Drop everything buffered, lent or being assembled (the stream goes on)."""
        self._lent = None
        self._target = None
        del self.buffer[:]
