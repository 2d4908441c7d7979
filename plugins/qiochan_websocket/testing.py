"""Helpers for tests and tools: both ends of a session in one process, and a scriptable peer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.http11 import Request, Response
from websockets.protocol import Protocol
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from qiochan.channel import ERR_BLOCK, Feature, QIOChannel, Shutdown
from qiochan.errors import ChannelError, WebsocketHandshakeError
from qiochan.watch import Condition

from .channel import QIOChannelWebsock

__all__ = ["ProtocolPeer", "handshake_pair"]


def handshake_pair(
    server: QIOChannelWebsock, client: QIOChannelWebsock, *, timeout: float = 10.0
) -> None:
    """Complete the opening handshakes of two ends connected to each other, concurrently.

    Both run on a private event loop in this thread (no helper thread is
    left behind).

    Raises:
        WebsocketHandshakeError: either end failed (the first failure is
            raised, the other chained), or they did not finish in ``timeout``.
    """

    async def both() -> None:
        results = await asyncio.gather(
            server.ahandshake(), client.ahandshake(), return_exceptions=True
        )
        errors = [result for result in results if isinstance(result, BaseException)]
        if errors:
            if len(errors) > 1:
                raise errors[0] from errors[1]
            raise errors[0]

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(both(), timeout))
    except TimeoutError:
        raise WebsocketHandshakeError(
            f"Websocket handshakes did not complete within {timeout} s"
        ) from None
    finally:
        loop.close()


Event = Request | Response | Frame


class ProtocolPeer:
    """The far end of a websocket channel, scripted frame by frame.

    A ``websockets`` protocol object over a plain channel: what the test asks
    it to send goes out as is (pings, text frames, fragments, close codes),
    and :meth:`receive` returns what arrived, so a test can check exactly
    what a :class:`QIOChannelWebsock` put on the wire.

    Args:
        channel: the plain channel to the websocket under test.
        protocol: a ``ClientProtocol`` or ``ServerProtocol`` (see :meth:`client`
            and :meth:`server`).
    """

    def __init__(self, channel: QIOChannel, protocol: Protocol) -> None:
        self.channel = channel
        self.protocol = protocol
        self.eof = False
        #: set when writing an automatic answer failed (the other end closed)
        self.write_error: ChannelError | None = None
        self._buf = bytearray(64 << 10)

    @classmethod
    def client(
        cls,
        channel: QIOChannel,
        path: str = "/",
        *,
        origin: str | None = None,
        subprotocols: Sequence[str] | None = ("binary",),
        max_size: int | None = None,
    ) -> ProtocolPeer:
        """Return a client peer that has sent its upgrade request."""
        protocol = ClientProtocol(
            parse_uri(f"ws://localhost{path}"),
            origin=origin,  # type: ignore[arg-type]
            subprotocols=list(subprotocols) if subprotocols else None,  # type: ignore[arg-type]
            max_size=max_size,
        )
        peer = cls(channel, protocol)
        protocol.send_request(protocol.connect())
        peer.flush()
        return peer

    @classmethod
    def server(cls, channel: QIOChannel, *, max_size: int | None = None) -> ProtocolPeer:
        """Return a server peer; :meth:`accept` answers the upgrade request."""
        return cls(channel, ServerProtocol(max_size=max_size))

    def accept(self, timeout: float = 10.0) -> Request:
        """Wait for the upgrade request, accept it (101) and return it."""
        events = self.receive(lambda got: any(isinstance(e, Request) for e in got), timeout)
        request = next(e for e in events if isinstance(e, Request))
        assert isinstance(self.protocol, ServerProtocol)
        self.protocol.send_response(self.protocol.accept(request))
        self.flush()
        return request

    def send(self, action: Callable[[Protocol], Any]) -> None:
        """Run ``action(protocol)`` (``lambda p: p.send_ping(b"x")``) and write what it made."""
        action(self.protocol)
        self.flush()

    def send_raw(self, data: bytes) -> None:
        """Write ``data`` as is, bypassing the protocol (garbage, half frames)."""
        self.channel.write_all(data)

    def flush(self) -> None:
        """Write what the protocol has queued; an empty chunk half-closes the channel."""
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.channel.write_all(chunk)
            elif self.channel.has_feature(Feature.SHUTDOWN):
                self.channel.shutdown(Shutdown.WRITE)

    def pump(self) -> list[Event]:
        """Read once what the channel has now (without waiting) and return the new events."""
        blocking = self.channel.blocking
        self.channel.set_blocking(False)
        try:
            return self._read_once()
        finally:
            if not self.channel.closed:
                self.channel.set_blocking(blocking)

    def _read_once(self) -> list[Event]:
        n = self.channel.read(self._buf)
        if n == ERR_BLOCK:
            return []
        if n == 0:
            self.eof = True
            self.protocol.receive_eof()
        else:
            self.protocol.receive_data(bytes(self._buf[:n]))
        events = self.protocol.events_received()
        try:
            self.flush()  # pongs and close echoes, as a real peer would
        except ChannelError as exc:
            self.write_error = exc  # the websocket under test is gone: keep reading
        return events

    def receive(
        self, until: Callable[[list[Event]], bool] | None = None, timeout: float = 10.0
    ) -> list[Event]:
        """Read and decode until ``until(events so far)`` holds or EOF; return the events.

        Without ``until`` it reads until EOF.

        Raises:
            TimeoutError: neither happened within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        events: list[Event] = []
        blocking = self.channel.blocking
        self.channel.set_blocking(False)
        try:
            while not (until is not None and until(events)) and not self.eof:
                got = self._read_once()
                if not got and not self.eof:
                    self.channel.wait(Condition.IN, max(0.0, deadline - time.monotonic()))
                events.extend(got)
        finally:
            if not self.channel.closed:
                self.channel.set_blocking(blocking)
        return events

    def frames(self, until: Callable[[list[Frame]], bool] | None = None) -> list[Frame]:
        """As :meth:`receive`, keeping the frames only."""

        def frames_of(events: list[Event]) -> list[Frame]:
            return [event for event in events if isinstance(event, Frame)]

        stop = None if until is None else (lambda events: until(frames_of(events)))
        return frames_of(self.receive(stop))
