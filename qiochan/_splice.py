"""Copying both directions between two channels on one loop, until each has ended.

Each channel is driven by a :class:`~qiochan.aio.ChannelTransport`.  Flow
control is end to end: when one side's write buffer is full, the splice
stops reading the other side.  A side's end of stream is passed on as a
half-close (``shutdown(WRITE)``), or as a close when that channel cannot
half-close.

A splice succeeds when both directions ended cleanly, or when, after a first
clean end of stream, the rest ended by a peer closing or resetting (a
migration destination closes this way once it has the whole stream); every
byte read must have been written on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from .aio import ChannelTransport
from .channel import QIOChannel
from .errors import ChannelError

__all__ = ["Splice"]

log = logging.getLogger("qiochan.relay")

#: Called with the byte count of each chunk a side reads.
Counter = Callable[[int], None]


class Tap(Protocol):
    """Where a copy of one direction goes."""

    def take(self, buffer: memoryview, size: int, /) -> memoryview:
        """Take ``buffer[:size]`` (the buffer itself or a copy); return the buffer to read into."""


#: Bytes read from a side at once.  Larger reads mean fewer reads and sends
#: per byte (each send on loopback also runs the receiver's TCP work): 1 MiB
#: costs the relay about a fifth less CPU per GiB than 256 KiB with 16 streams.
READ_SIZE = 1024 * 1024


class _ReadBuffer(threading.local):
    """The buffer every side reads into: one per thread, so one per loop.

    A side hands each chunk on before any side of its loop reads again (the
    peer's transport copies what it cannot send at once), so all of them can
    share one (warm) buffer instead of holding one each; a tap takes it with
    a chunk and leaves another in its place.
    """

    def __init__(self) -> None:
        self.view = memoryview(bytearray(READ_SIZE))


_shared = _ReadBuffer()


class _Side(asyncio.BufferedProtocol):
    """One side: what it reads goes to the other side's transport (and to its tap).

    Reads land in the loop's shared buffer, passed on without a copy when
    the other side's channel takes it at once (the transport copies only
    what it must keep).
    """

    def __init__(self, splice: Splice, label: str, count: Counter, tap: Tap | None) -> None:
        self.splice = splice
        self.label = label
        self.count = count
        self.tap = tap
        self.transport: ChannelTransport | None = None
        self.peer: _Side | None = None
        self.read_bytes = 0
        self.input_ended = False
        self.output_ended = False
        self.lost = False

    def _peer_transport(self) -> ChannelTransport:
        assert self.peer is not None and self.peer.transport is not None
        return self.peer.transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, ChannelTransport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return _shared.view

    def buffer_updated(self, nbytes: int) -> None:
        data = _shared.view[:nbytes]
        self.read_bytes += nbytes
        self.count(nbytes)
        self._peer_transport().write(data)  # keeps a copy of what it cannot send now
        if self.tap is not None:
            # the tap may keep the buffer: the loop then reads into the one it gives back
            _shared.view = self.tap.take(_shared.view, nbytes)

    def eof_received(self) -> bool:
        self.input_ended = True
        self.splice.input_ended(self, None)
        assert self.peer is not None
        self.peer.end_output()
        if self.output_ended and self.transport is not None:
            self.transport.close()  # both directions of this side are over
        return True  # keep the transport: the other direction may go on

    def end_output(self) -> None:
        """The other side's stream ended: pass the end of stream on to this side."""
        self.output_ended = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.input_ended:
            transport.close()
        elif transport.can_write_eof():
            transport.write_eof()
        else:
            log.debug("%s cannot half-close: closing it to pass the end of stream on", self.label)
            transport.close()

    def pause_writing(self) -> None:
        # our write buffer is full: stop reading what fills it
        self._peer_transport().pause_reading()

    def resume_writing(self) -> None:
        self._peer_transport().resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        cut = not self.input_ended and exc is not None
        if not self.input_ended:
            self.input_ended = True
            self.splice.input_ended(self, exc)
        peer = self._peer_transport()
        if cut and not self.splice.ending_cleanly:
            # what the other side was getting from us stops short: it must not look complete
            _abort_transport(peer)
        elif not peer.is_closing():
            # nothing the other side sends can be delivered any more: flush and close it
            peer.close()
        self.splice.side_lost()


def _abort_transport(transport: ChannelTransport) -> None:
    """End ``transport`` so its peer cannot take it for a clean end of stream.

    The channel's ``abort()`` resets a TCP connection, ends TLS without
    close_notify, sends websocket close 1011; the transport then drops what
    it buffered.
    """
    with contextlib.suppress(ChannelError, OSError):
        transport.channel.abort()
    transport.abort()


class Splice:
    """Both directions between two open channels, which it owns (and closes).

    Args:
        labels: how messages name the two sides (``"source ..."``, ``"destination ..."``).
        forward, backward: called with each chunk's size, source to destination
            and back (live byte counters).
        taps: files that get a copy of each direction (``None`` for none).
    """

    def __init__(
        self,
        labels: tuple[str, str],
        forward: Counter,
        backward: Counter,
        taps: tuple[Tap | None, Tap | None] = (None, None),
    ) -> None:
        self._src = _Side(self, labels[0], forward, taps[0])
        self._dst = _Side(self, labels[1], backward, taps[1])
        self._src.peer, self._dst.peer = self._dst, self._src
        self._first_end_clean: bool | None = None
        self._first_error: tuple[_Side, Exception] | None = None
        self._aborted = ""
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run(self, source: QIOChannel, destination: QIOChannel) -> str:
        """Copy between ``source`` and ``destination`` (handshakes done) until both have ended.

        Returns:
            ``""`` when the splice succeeded, else why it failed.
        """
        # make both transports before either reads, so no data arrives before both exist
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future(), loop.create_future()]
        try:
            ChannelTransport(source, self._src, loop, waiter=waiters[0])
            ChannelTransport(destination, self._dst, loop, waiter=waiters[1])
        except BaseException:
            source.close()
            destination.close()
            raise
        await asyncio.gather(*waiters)
        await self._done
        return self._failure()

    def abort(self, why: str) -> None:
        """End both sides now, so neither peer takes it for a clean end; the splice fails."""
        if self._done.done() or self._aborted:
            return
        self._aborted = why
        for side in (self._src, self._dst):
            if side.transport is not None:
                _abort_transport(side.transport)

    def input_ended(self, side: _Side, exc: Exception | None) -> None:
        """Record that reading ``side`` ended (cleanly when ``exc`` is None)."""
        log.debug("%s: input ended (%s)", side.label, exc or "end of stream")
        if self._first_end_clean is None:
            self._first_end_clean = exc is None
        if exc is not None and self._first_error is None:
            self._first_error = (side, exc)

    @property
    def ending_cleanly(self) -> bool:
        """True when the first end of stream was clean (a later reset is then a normal close)."""
        return bool(self._first_end_clean)

    def side_lost(self) -> None:
        """A side's channel is closed; the splice is over once both are."""
        if self._src.lost and self._dst.lost and not self._done.done():
            self._done.set_result(None)

    def _failure(self) -> str:
        if self._aborted:
            return self._aborted
        for reader, writer in ((self._src, self._dst), (self._dst, self._src)):
            assert writer.transport is not None
            lost = reader.read_bytes - writer.transport.bytes_written
            if lost:
                failure = (
                    f"{lost} bytes from the {reader.label} could not be written to "
                    f"the {writer.label}"
                )
                if self._first_error is not None:
                    failure += f": {self._first_error[1]}"
                return failure
        if not self._first_end_clean and self._first_error is not None:
            side, exc = self._first_error
            return f"{side.label}: {exc}"
        return ""
