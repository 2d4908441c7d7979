"""``qiochan relay SRC DST``: a transport adapter copying both directions until EOF.

The relay accepts one peer on SRC (or connects, ``--connect-src``) before it
connects DST (or accepts on it, ``--listen-dst``), then copies both ways on
one asyncio loop through :mod:`qiochan.aio`, so every channel is only ever
used from one thread and a layer's records are never torn between threads.
Flow control is end to end: when one side's write buffer is full the relay
stops reading the other side.  A side's end of stream is passed on as a
half-close (``shutdown(WRITE)``), or as a close when that channel cannot
half-close.

Exit status 0 when both directions ended cleanly, or when, after a first clean
end of stream, the rest ended by a peer closing or resetting (a migration
destination closes this way once it has the whole stream); every byte read
must have been written on.  Anything else is a failure naming the side, the
error and the byte counts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..aio import ChannelTransport
from ..channel import QIOChannel
from ._common import EXIT_OK, CLIError, Endpoint, format_bytes, open_endpoint, say
from ._output import Progress

__all__ = ["RelayOutcome", "relay_channels", "run_relay"]

log = logging.getLogger("qiochan.cli.relay")


class _Side(asyncio.Protocol):
    """One side of the relay: what it reads goes to the other side's transport."""

    def __init__(self, relay: _Relay, endpoint: Endpoint) -> None:
        self.relay = relay
        self.endpoint = endpoint
        self.transport: ChannelTransport | None = None
        self.peer: _Side | None = None
        self.read_bytes = 0
        self.input_ended = False
        self.output_ended = False
        self.lost = False
        self.bar = 0

    @property
    def name(self) -> str:
        return f"{self.endpoint.label} {self.endpoint.describe()}"

    def _peer_transport(self) -> ChannelTransport:
        assert self.peer is not None and self.peer.transport is not None
        return self.peer.transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, ChannelTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.read_bytes += len(data)
        self._peer_transport().write(data)
        self.relay.progress.advance(self.bar, len(data))

    def eof_received(self) -> bool:
        self.input_ended = True
        self.relay.event(self, None)
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
            log.info("%s cannot half-close: closing it to pass the end of stream on", self.name)
            transport.close()

    def pause_writing(self) -> None:
        # our write buffer is full: stop reading what fills it
        self._peer_transport().pause_reading()

    def resume_writing(self) -> None:
        self._peer_transport().resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.input_ended:
            self.input_ended = True
            self.relay.event(self, exc)
        # nothing the other side sends can be delivered any more: flush and close it
        peer = self._peer_transport()
        if not peer.is_closing():
            peer.close()
        self.relay.side_lost()


@dataclass
class RelayOutcome:
    """How a relay ended.

    Attributes:
        forward: bytes copied source -> destination.
        backward: bytes copied destination -> source.
        failure: why it failed, or "" when it succeeded.
    """

    forward: int = 0
    backward: int = 0
    failure: str = ""


class _Relay:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.first_end_clean: bool | None = None
        self.first_error: tuple[_Side, Exception] | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.sides: list[_Side] = []

    def event(self, side: _Side, exc: Exception | None) -> None:
        """Record that reading ``side`` ended (cleanly when ``exc`` is None)."""
        log.debug("%s: input ended (%s)", side.name, exc or "end of stream")
        if self.first_end_clean is None:
            self.first_end_clean = exc is None
        if exc is not None and self.first_error is None:
            self.first_error = (side, exc)

    def side_lost(self) -> None:
        if all(side.lost for side in self.sides) and not self.done.done():
            self.done.set_result(None)


async def relay_channels(
    source: QIOChannel,
    destination: QIOChannel,
    src: Endpoint,
    dst: Endpoint,
    progress: Progress,
) -> RelayOutcome:
    """Copy both directions between two open channels until both have ended.

    The channels are owned (and closed) by the relay.

    Returns:
        The byte counts and, if it failed, why.
    """
    relay = _Relay(progress)
    src_side, dst_side = _Side(relay, src), _Side(relay, dst)
    src_side.peer, dst_side.peer = dst_side, src_side
    relay.sides = [src_side, dst_side]
    src_side.bar = progress.add(f"{src.label} -> {dst.label}", None)
    dst_side.bar = progress.add(f"{dst.label} -> {src.label}", None)
    # make both transports before either reads, so no data arrives before both exist
    loop = asyncio.get_running_loop()
    waiters = [loop.create_future(), loop.create_future()]
    try:
        ChannelTransport(source, src_side, loop, waiter=waiters[0])
        ChannelTransport(destination, dst_side, loop, waiter=waiters[1])
    except BaseException:
        source.close()
        destination.close()
        raise
    await asyncio.gather(*waiters)
    await relay.done
    return _outcome(relay, src_side, dst_side)


def _outcome(relay: _Relay, src_side: _Side, dst_side: _Side) -> RelayOutcome:
    outcome = RelayOutcome(forward=src_side.read_bytes, backward=dst_side.read_bytes)
    for reader, writer in ((src_side, dst_side), (dst_side, src_side)):
        assert writer.transport is not None
        lost = reader.read_bytes - writer.transport.bytes_written
        if lost:
            outcome.failure = (
                f"{lost} bytes from the {reader.endpoint.label} could not be written to "
                f"the {writer.name}"
            )
            if relay.first_error is not None:
                outcome.failure += f": {relay.first_error[1]}"
            return outcome
    if not relay.first_end_clean and relay.first_error is not None:
        side, exc = relay.first_error
        outcome.failure = f"{side.name}: {exc}"
    return outcome


def _counts(outcome: RelayOutcome, src: Endpoint, dst: Endpoint) -> str:
    return (
        f"{outcome.forward} bytes ({format_bytes(outcome.forward)}) {src.label} -> {dst.label}, "
        f"{outcome.backward} bytes ({format_bytes(outcome.backward)}) {dst.label} -> {src.label}"
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (faster), else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_relay(args: argparse.Namespace) -> int:
    """Relay between ``args.src`` and ``args.dst``; see the module docstring for exit status."""
    src = Endpoint(args.src, args.src_layers, listen=not args.connect_src, label="source")
    dst = Endpoint(args.dst, args.dst_layers, listen=args.listen_dst, label="destination")
    src.check()
    dst.check()
    source = open_endpoint(src)  # accept (or connect) SRC before DST
    try:
        destination = open_endpoint(dst)
    except BaseException:
        source.close()
        raise
    say(f"relaying {src.describe()} <-> {dst.describe()}")
    started = time.monotonic()
    with (
        Progress(args.progress) as progress,
        asyncio.Runner(loop_factory=_loop_factory()) as runner,
    ):
        outcome = runner.run(relay_channels(source, destination, src, dst, progress))
    elapsed = time.monotonic() - started
    if outcome.failure:
        raise CLIError(f"relay failed: {outcome.failure}; {_counts(outcome, src, dst)} passed")
    say(f"relay done in {elapsed:.2f} s: {_counts(outcome, src, dst)}")
    return EXIT_OK
