"""QIOChannelWebsock: a byte stream carried in binary websocket frames over any master channel.

The framing, masking, ping/pong and close handshake are the ``websockets``
Sans-I/O protocol objects': bytes read from the master are fed to
``receive_data()``, and whatever ``data_to_send()`` returns is written to the
master.  This module maps that onto the :class:`~qiochan.QIOChannel`
contract, as QEMU's ``io/channel-websock.c`` does for VNC, in both roles:

* a write becomes binary frames of at most ``frame_size`` bytes, each a whole
  message (so peers with a message size limit accept them);
* a read returns payload bytes across frame boundaries, as a stream; a
  plain binary frame's payload is read straight into the caller's buffer
  (:mod:`~qiochan_websocket.inbound`), every other frame goes through the
  protocol;
* a text frame is a protocol error (the connection is failed with 1003);
* a ping is answered while reading; a peer's close frame is EOF (an error
  when its code is not a normal one), and so is the master's EOF at a frame
  boundary;
* :meth:`QIOChannelWebsock.close` sends a close frame with a status code
  (it does not wait for the peer's, as QEMU never blocks on a peer); there is no
  ``SHUTDOWN`` feature: a close frame ends both directions (RFC 6455 section
  5.5.1), so the protocol offers no half-close (:meth:`~QIOChannelWebsock.send_close`
  starts the close handshake and keeps reading);
* ``max_size`` bounds a received message: beyond it the connection is
  closed with 1009 and reads raise :class:`~qiochan.WebsocketError`.

A reader and a writer may run in two threads at once.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Self

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState, PayloadTooBig, ProtocolError
from websockets.frames import BINARY, CLOSE, CONT, OK_CLOSE_CODES, TEXT, Close, CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from qiochan.channel import ERR_BLOCK, Feature, QIOChannel, ReadFlag, Steps, WriteFlag
from qiochan.errors import ChannelError, WebsocketError, WebsocketHandshakeError
from qiochan.iov import ByteQueue, advance, clip, iov_size
from qiochan.layer import QIOChannelLayer
from qiochan.watch import ChildWatchSource, Condition, WatchSource

from . import handshake
from .buffers import Outbox
from .framing import binary_frame
from .handshake import Origins
from .inbound import Inbound
from .reader import LendingReader

__all__ = [
    "DEFAULT_FRAME_SIZE",
    "DEFAULT_MAX_REQUEST",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_TIMEOUT",
    "QIOChannelWebsock",
]

log = logging.getLogger("qiochan.websocket")

#: Largest payload of a frame we send.  Frames below malloc's mmap threshold
#: (128 KiB) are framed, masked and parsed in reused, cache-warm memory: 64 KiB
#: frames move about three times more data per CPU second than 1 MiB ones.
DEFAULT_FRAME_SIZE = 64 << 10
#: Largest message payload we accept by default.
DEFAULT_MAX_SIZE = 64 << 20
#: Seconds the opening handshake may take.
DEFAULT_TIMEOUT = 10.0
#: Largest upgrade request (request line and headers) a server accepts, in bytes.
DEFAULT_MAX_REQUEST = 16 << 10
#: Seconds close() spends flushing what is queued before giving up on a stalled peer.
CLOSE_FLUSH_TIMEOUT = 5.0

# reads from the master start small (idle channels stay cheap) and grow while they fill up
_FIRST_READ_SIZE = 16 << 10
_MAX_READ_SIZE = 256 << 10
_SERVER_HANDSHAKE_READ = 4096
# a blocking write sends its frames in batches of about this many payload bytes, one
# vectored write each: a server's frames are views of the caller's buffer, a client's
# are masked copies, kept few enough to stay in the cache until they are written
_WRITE_BATCH = 2 << 20
_MASKED_WRITE_BATCH = 512 << 10
_HEAD_KEPT = 256
_CLOSE_MEANINGS: dict[int, int] = {
    CloseCode.PROTOCOL_ERROR: errno.EPROTO,
    CloseCode.UNSUPPORTED_DATA: errno.EPROTO,
    CloseCode.INVALID_DATA: errno.EPROTO,
    CloseCode.MESSAGE_TOO_BIG: errno.EMSGSIZE,
}

Role = Literal["client", "server"]
_Protocol = ServerProtocol | ClientProtocol


def _fresh(exc: ChannelError) -> ChannelError:
    """A new exception like ``exc`` (raising one instance twice grows its traceback)."""
    return type(exc)(exc.message, exc.errno)


def _lending_reader(protocol: _Protocol) -> LendingReader:
    """Give a protocol nothing has been fed yet a :class:`LendingReader`; return it.

    The parser coroutine holds its reader's methods from its first step, so
    it is started again over the new reader (nothing was parsed yet).
    """
    reader = LendingReader()
    protocol.reader = reader
    protocol.parser = protocol.parse()
    next(protocol.parser)
    return reader


def _payloads(iov: list[memoryview], frame_size: int, budget: int) -> Iterator[Any]:
    """Cut up to ``budget`` bytes of ``iov`` into frame payloads of at most ``frame_size``.

    A payload that is one piece of one buffer is a view (no copy); small
    buffers are joined so that many of them make one frame.
    """
    pieces: list[memoryview] = []
    size = 0
    for buffer in iov:
        view = buffer
        while view.nbytes and budget:
            take = min(view.nbytes, frame_size - size, budget)
            pieces.append(view[:take])
            view = view[take:]
            size += take
            budget -= take
            if size == frame_size:
                yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                pieces, size = [], 0
        if not budget:
            break
    if pieces:
        yield pieces[0] if len(pieces) == 1 else b"".join(pieces)


class QIOChannelWebsock(QIOChannelLayer):
    """A websocket session over ``master``, as a byte-stream channel.

    Make one with :meth:`new_server` or :meth:`new_client`, then run
    :meth:`handshake` (or :meth:`ahandshake`) before any I/O: the handshake
    driver is :class:`~qiochan.layer.QIOChannelLayer`'s, bounded by
    ``handshake_timeout`` (a server answers 408 when it passes).  Closing it
    closes the master.

    Attributes:
        master: the wrapped channel.
        role: ``"server"`` or ``"client"``.
        subprotocol: the negotiated subprotocol (``"binary"`` or None) once the
            handshake is done.
        origin: the request's ``Origin`` header (server) or the one sent (client).
        request_path: the path the client asked for (server) or sent (client).
    """

    def __init__(
        self,
        master: QIOChannel,
        protocol: _Protocol,
        role: Role,
        *,
        path: str | handshake.Route,
        host: str | None = None,
        frame_size: int = DEFAULT_FRAME_SIZE,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_request: int = DEFAULT_MAX_REQUEST,
        max_size: int | None = DEFAULT_MAX_SIZE,
    ) -> None:
        """Use :meth:`new_server` or :meth:`new_client` (``max_size`` is the protocol's)."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout}")
        super().__init__(master, handshake_timeout=timeout)
        if frame_size <= 0:
            raise ValueError(f"frame_size must be > 0, got {frame_size}")
        if max_request <= 0:
            raise ValueError(f"max_request must be > 0, got {max_request}")
        self.role: Role = role
        self.subprotocol: str | None = None
        self.origin: str | None = None
        self.request_path = path if isinstance(path, str) else ""
        self._path = path
        self._protocol = protocol
        self._reader = _lending_reader(protocol)
        self._host = host
        self._frame_size = frame_size
        self._max_request = max_request
        self._proto_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._rx = ByteQueue()
        self._in_view = memoryview(bytearray(_FIRST_READ_SIZE))
        self._inbound = Inbound(masked=role == "server", max_size=max_size)
        self._inbox = memoryview(b"")  # read from the master, not yet through _inbound
        self._outbox = Outbox(master)
        # payload bytes already framed by a non-blocking write that returned ERR_BLOCK
        self._unacked = 0
        # session state (the handshake's outcome as the protocol saw it)
        self._hs_done = False
        self._hs_error: WebsocketHandshakeError | None = None
        self._hs_fed = 0
        self._hs_head = bytearray()  # the first bytes the peer sent, for error messages
        self._eof = False
        self._read_error: ChannelError | None = None
        self._write_error: ChannelError | None = None
        self._close_code: int = CloseCode.NORMAL_CLOSURE
        self._close_reason = ""
        #: the close frame the peer sent, once received
        self.peer_close: Close | None = None
        # no SHUTDOWN: a close frame ends both directions (RFC 6455 5.5.1), so the
        # protocol has no half-close to offer, whatever the master can do
        self._features.discard(Feature.SHUTDOWN)
        self.set_name(f"websocket-{role}")

    # -- construction ------------------------------------------------------------

    @classmethod
    def new_server(
        cls,
        master: QIOChannel,
        *,
        origins: Origins | None = None,
        max_size: int | None = DEFAULT_MAX_SIZE,
        path: str | handshake.Route = "/",
        timeout: float | None = DEFAULT_TIMEOUT,
        max_request: int = DEFAULT_MAX_REQUEST,
        frame_size: int = DEFAULT_FRAME_SIZE,
    ) -> Self:
        """Return the server side of a websocket session over ``master`` (handshake not run).

        Args:
            origins: allowed ``Origin`` values (strings, compiled patterns; None
                in the list admits a request without one); None checks nothing.
                A refused origin gets 403.
            max_size: largest message payload accepted; None for no limit.
            path: the path clients must ask for (404 otherwise), or a
                :data:`~qiochan_websocket.handshake.Route` callable given each
                request target (``/vm1?token=x``): False refuses it with 404.
                :attr:`request_path` tells which target was admitted.
            timeout: seconds the handshake may take (408 after); None waits forever.
            max_request: largest upgrade request in bytes (431 beyond it).
            frame_size: largest payload of a frame we send.
        Raises:
            TypeError: ``master`` is not a QIOChannel. ValueError: a bad limit or path.
        """
        if isinstance(path, str):
            _check_path(path)
        elif not callable(path):
            raise TypeError(f"path must be a string or a callable, not {type(path).__name__}")
        protocol = handshake.make_server(origins, _check_max_size(max_size))
        return cls(
            master,
            protocol,
            "server",
            path=path,
            frame_size=frame_size,
            timeout=timeout,
            max_request=max_request,
            max_size=max_size,
        )

    @classmethod
    def new_client(
        cls,
        master: QIOChannel,
        host: str,
        path: str = "/",
        *,
        origin: str | None = None,
        subprotocols: Sequence[str] = (handshake.BINARY,),
        max_size: int | None = DEFAULT_MAX_SIZE,
        timeout: float | None = DEFAULT_TIMEOUT,
        frame_size: int = DEFAULT_FRAME_SIZE,
        secure: bool = False,
    ) -> Self:
        """Return the client side of a websocket session over ``master`` (handshake not run).

        Args:
            host: the ``Host`` header (``"example.com:5700"``).
            path: the request path, with an optional ``?query``.
            origin: the ``Origin`` header to send (servers that only admit
                browsers check it); None sends none.
            subprotocols: offered subprotocols; ``binary`` by default, which
                QEMU's VNC websocket server answers.
            max_size: largest message payload accepted; None for no limit.
            timeout: seconds the handshake may take; None waits forever.
            frame_size: largest payload of a frame we send.
            secure: the URL is ``wss://`` (only changes the default port in ``Host``).
        Raises:
            TypeError: ``master`` is not a QIOChannel. ValueError: an empty host,
                a path not starting with ``/``, a bad limit.
        """
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty string, got {host!r}")
        _check_path(path.partition("?")[0])
        if isinstance(subprotocols, str):
            subprotocols = (subprotocols,)
        protocol = handshake.make_client(
            host,
            path,
            origin=origin,
            subprotocols=subprotocols,
            max_size=_check_max_size(max_size),
            secure=secure,
        )
        channel = cls(
            master,
            protocol,
            "client",
            path=path,
            host=host,
            frame_size=frame_size,
            timeout=timeout,
            max_size=max_size,
        )
        channel.origin = origin
        return channel

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._hs_done else "handshaking")
        return f"<QIOChannelWebsock {self.role} {state} over {self.master!r}>"

    # -- handshake --------------------------------------------------------------

    handshake_error = WebsocketHandshakeError

    def handshake_label(self) -> str:
        return f"websocket {self.role}"

    def handshake_steps(self) -> Steps[None]:
        """The opening handshake: one pump reading the master into the protocol.

        A server answers a refused or malformed request (4xx) and a stalled
        one (408, when the deadline passes) before failing.
        """
        if self._hs_error is not None:
            raise _fresh(self._hs_error)
        if isinstance(self._protocol, ClientProtocol):
            self._send_request(self._protocol)
        while True:
            try:
                if self._outbox.pending and not self._outbox.flush(wait=False):
                    yield Condition.OUT
                    continue
                if self._hs_done or self._hs_error is not None:
                    break
                if self._handshake_receive() == ERR_BLOCK:
                    yield Condition.IN
            except TimeoutError:
                self._handshake_timed_out()
                break
            except ChannelError as exc:
                self._hs_error = _as_handshake_error(exc)
                break
        if self._hs_error is not None:
            self._outbox.clear()
            raise _fresh(self._hs_error)
        log.debug("websocket %s handshake complete (subprotocol %s)", self.role, self.subprotocol)

    def _send_request(self, protocol: ClientProtocol) -> None:
        assert self._host is not None
        request = handshake.client_request(protocol, self._host)
        with self._proto_lock:
            protocol.send_request(request)
            self._outbox.push(protocol.data_to_send())

    def _fill(self, size: int) -> tuple[int, memoryview, bool]:
        """Read the master once: the one inbound pump, for the handshake and frames alike.

        At most ``size`` bytes are read, unless a payload is being assembled.

        Returns:
            ``(n, view, assembled)``: ``n`` bytes (0 at EOF, or ERR_BLOCK) read
            into ``view``; ``assembled`` when they went straight into the
            payload the reader is assembling (already committed to it).
        """
        reader = self._reader
        space = reader.space()
        if space is not None:  # the rest of a payload: straight into its own buffer
            n = self.master.read(space)
            if n > 0:
                reader.commit(n)
            return n, space, True
        view = self._in_view
        n = self.master.read(view[:size] if size < view.nbytes else view)
        if n == view.nbytes and n < _MAX_READ_SIZE:
            self._in_view = memoryview(bytearray(2 * n))  # the master has more: read more at once
        return n, view, False

    def _parse(self, data: memoryview | bytes | None) -> tuple[list[Any], list[bytes]]:
        """Feed ``data`` (None: the master's EOF) to the protocol; return its events and output.

        A lent chunk is settled before returning: the pump may read into its
        buffer again once the events' payloads are consumed.
        """
        protocol = self._protocol
        with self._proto_lock:
            if data is None:
                protocol.receive_eof()
            else:
                protocol.receive_data(data)  # type: ignore[arg-type]  # lent, see LendingReader
                self._reader.settle()
            return protocol.events_received(), protocol.data_to_send()

    def _handshake_receive(self) -> int:
        """Pump once and advance the handshake; return what the pump read."""
        protocol = self._protocol
        if isinstance(protocol, ServerProtocol):
            # never read past the bound: a request larger than it cannot complete
            size = max(1, min(_SERVER_HANDSHAKE_READ, self._max_request - self._hs_fed))
        else:
            size = _FIRST_READ_SIZE
        n, view, _assembled = self._fill(size)  # nothing is assembled before frames
        if n == ERR_BLOCK:
            return n
        events, out = self._parse(view[:n] if n else None)
        if n and len(self._hs_head) < _HEAD_KEPT:
            self._hs_head += view[: min(n, _HEAD_KEPT - len(self._hs_head))]
        self._hs_fed += max(n, 0)
        if isinstance(protocol, ServerProtocol):
            self._server_progress(protocol, events, out, client_left=n == 0)
        else:
            self._client_progress(protocol, events, out)
        if n == 0 and not (self._hs_done or self._hs_error):
            self._hs_error = WebsocketHandshakeError(
                "Websocket handshake failed: the peer closed the connection", errno.ECONNRESET
            )
        return n

    def _server_progress(
        self, protocol: ServerProtocol, events: list[Any], out: list[bytes], client_left: bool
    ) -> None:
        request = events[0] if events and isinstance(events[0], Request) else None
        if request is not None:
            response, why = handshake.answer_request(protocol, request, self._path)
            self.request_path = request.path
            with self._proto_lock:
                protocol.send_response(response)
                out.extend(protocol.data_to_send())
            self._outbox.push(out)
            if response.status_code == 101:
                self._opened(protocol.subprotocol)
                self.origin = protocol.origin
                self._deliver(events[1:], protocol)
            else:
                self._refused(response, why)
        elif protocol.handshake_exc is not None:
            # websockets could not parse the request: answer it our way, then close
            why = handshake.server_failure(protocol, client_left)
            status = handshake.unparsable_request_status(protocol, client_left)
            if status is None:
                self._hs_error = WebsocketHandshakeError(f"Websocket handshake failed: {why}")
                self._outbox.push(out)
            else:
                response = handshake.refusal(protocol, status, why)
                self._outbox.push([response.serialize(), b""])
                self._refused(response, why)
        elif self._hs_fed >= self._max_request:
            self._server_refuses(
                protocol, 431, f"the upgrade request exceeds {self._max_request} bytes"
            )
        else:
            self._outbox.push(out)

    def _server_refuses(self, protocol: ServerProtocol, status: int, why: str) -> None:
        response = handshake.refusal(protocol, status, why)
        with self._proto_lock:
            protocol.send_response(response)
            self._outbox.push(protocol.data_to_send())
        self._refused(response, why)

    def _refused(self, response: Response, why: str) -> None:
        self._hs_error = WebsocketHandshakeError(
            f"Websocket handshake failed: refused with {response.status_code} "
            f"{response.reason_phrase}: {why}"
        )

    def _client_progress(
        self, protocol: ClientProtocol, events: list[Any], out: list[bytes]
    ) -> None:
        self._outbox.push(out)
        response = events[0] if events and isinstance(events[0], Response) else None
        if response is not None and protocol.handshake_exc is None:
            # accepted; frames right behind the 101 may already have failed the session
            self._opened(protocol.subprotocol)
            self._deliver(events[1:], protocol)
        elif protocol.handshake_exc is not None:
            why = handshake.client_failure(protocol, response, self._hs_head)
            self._hs_error = WebsocketHandshakeError(f"Websocket handshake failed: {why}")

    def _opened(self, subprotocol: str | None) -> None:
        self._hs_done = True
        self._reader.lending = True  # only frames from here on
        self._cut_from_here()
        self.subprotocol = subprotocol

    def _handshake_timed_out(self) -> None:
        protocol = self._protocol
        if self._hs_error is None:
            why = f"the upgrade did not complete within {self.handshake_timeout} s"
            if isinstance(protocol, ServerProtocol) and not protocol.eof_sent:
                self._server_refuses(protocol, 408, why)
            else:
                self._hs_error = WebsocketHandshakeError(
                    f"Websocket handshake failed: {why}", errno.ETIMEDOUT
                )
        try:
            self._outbox.flush(wait=False)  # best effort: the peer may not be reading
        except ChannelError:
            pass
        if self._hs_error is not None and self._hs_error.errno is None:
            self._hs_error = WebsocketHandshakeError(self._hs_error.message, errno.ETIMEDOUT)

    def _require_session(self) -> None:
        if not self._hs_done:
            self._require_handshake()

    # -- receiving ------------------------------------------------------------------

    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        self._require_session()
        with self._read_lock:
            while True:
                if self._rx:
                    return self._rx.copy_into(iov), []
                if self._read_error is not None:
                    raise _fresh(self._read_error)
                if self._eof:
                    return 0, []
                if self._outbox.pending:
                    self._flush_quietly()
                if self._inbound.active:
                    n = self._split_read(iov)
                    if n:
                        return n, []
                elif self._receive() == ERR_BLOCK:
                    return ERR_BLOCK, []

    def _split_read(self, iov: list[memoryview]) -> int:
        """Fill ``iov`` with carried payload, across frames, as far as it goes without waiting.

        A non-blocking read goes on until ``iov`` is full or the master has
        nothing more; a blocking one returns what it has before reading the
        master again (that read could wait).

        Returns:
            The bytes put into ``iov``; 0 when none but the state changed
            (frames delivered to the queue, the stream ended, an error);
            ERR_BLOCK when the master has nothing to read.
        """
        done = 0
        room = iov_size(iov)
        while True:
            n = self._split_step(advance(iov, done) if done else iov)
            if n == ERR_BLOCK:
                return done or n
            done += n
            if done == room or self._rx or self._eof or self._read_error is not None:
                return done
            if done and not self._inbox and self._blocking:
                return done

    def _split_step(self, iov: list[memoryview]) -> int:
        """Take the stream one step through :attr:`_inbound`.

        Returns:
            The payload bytes put into ``iov``; 0 when none (look at the
            state again: frames may have been delivered, the stream may have
            ended); ERR_BLOCK when the master has nothing to read.
        """
        inbound = self._inbound
        inbox = self._inbox
        if not inbox:
            if inbound.payload_left:
                # straight into the caller's buffer, and no further than the frame's end
                # (reading past it costs the peer more: on loopback, about 10 % of its
                # CPU when it streams 64 KiB frames)
                return self._read_payload(iov)
            n, view, assembled = self._fill(_MAX_READ_SIZE)
            if n == ERR_BLOCK:
                return n
            if not n:
                self._master_ended(mid_frame=not inbound.at_boundary)
                return 0
            if assembled:  # the rest of a delegated payload, read where websockets wants it
                inbound.delegated_left -= n
                self._feed(b"")
                return 0
            inbox = view[:n]
        if inbound.payload_left:
            n = inbound.payload_into(iov, inbox)
            self._inbox = inbox[n:]
            return n
        if inbound.delegated_left:
            take = min(inbox.nbytes, inbound.delegated_left)
            inbound.delegated_left -= take
            self._inbox = inbox[take:]
            self._feed(inbox[:take])
            return 0
        used, header = inbound.begin(inbox, carry=self._protocol.state is OPEN)
        self._inbox = inbox[used:]
        if header is not None:
            self._feed(header)
        return 0

    def _read_payload(self, iov: list[memoryview]) -> int:
        """Read the carried frame's payload from the master straight into ``iov``.

        Returns:
            The bytes read (unmasked in place), 0 at the master's EOF (which
            cuts the frame short), or ERR_BLOCK.
        """
        inbound = self._inbound
        target = clip(iov, inbound.payload_left)
        n = self.master.readv(target)
        if n > 0:
            inbound.payload_read(target, n)
        elif not n:
            self._master_ended(mid_frame=True)
        return n

    def _feed(self, data: memoryview | bytes | None) -> None:
        """Feed ``data`` (None: the EOF) to the protocol; deliver frames, send its output."""
        events, out = self._parse(data)
        if out:
            self._outbox.push(out)
        self._deliver(events, self._protocol)
        if self._outbox.pending:
            self._flush_quietly()

    def _receive(self) -> int:
        """Pump once and deliver the frames; return bytes read, 0 at EOF, or ERR_BLOCK."""
        n, view, assembled = self._fill(_MAX_READ_SIZE)
        if n == ERR_BLOCK:
            return n
        if n:
            self._feed(b"" if assembled else view[:n])
        else:
            self._master_ended(mid_frame=False)
        self._cut_from_here()
        return n

    def _cut_from_here(self) -> None:
        """Let :attr:`_inbound` cut the frames once the protocol is between two of them."""
        self._inbound.active = self._reader.between_frames

    def _master_ended(self, *, mid_frame: bool) -> None:
        """The master's EOF: tell the protocol, then end the stream.

        It ends in error when it cut a frame short: ``mid_frame``, or inside a
        frame the protocol was parsing.
        """
        self._feed(None)
        if not (self._eof or self._read_error):
            self._transport_eof(mid_frame or _truncated(self._protocol.parser_exc))

    def _deliver(self, events: list[Any], protocol: _Protocol) -> None:
        """Queue the payload of data frames; act on text and close frames; note a failure."""
        rx = self._rx
        for frame in events:
            opcode = frame.opcode
            if opcode is BINARY or opcode is CONT:
                rx.append(frame.data)
            elif opcode is TEXT:
                self._fail(
                    CloseCode.UNSUPPORTED_DATA,
                    "Websocket peer sent a text frame: only binary frames carry the byte stream",
                )
                return
            elif opcode is CLOSE:
                self._peer_closed(protocol.close_rcvd)
        failure = protocol.parser_exc
        if failure is not None and self._read_error is None and not isinstance(failure, EOFError):
            self._protocol_failed(failure)

    def _peer_closed(self, close: Close | None) -> None:
        self.peer_close = close
        code = CloseCode.NO_STATUS_RCVD if close is None else close.code
        log.debug("websocket %s: peer closed with %s", self.role, close)
        if code in OK_CLOSE_CODES:
            self._eof = True
        else:
            reason = f" ({close.reason})" if close is not None and close.reason else ""
            self._read_error = WebsocketError(
                f"Websocket peer closed the connection with code {code}{reason}",
                _CLOSE_MEANINGS.get(code, errno.ECONNRESET),
            )
        self._write_error = self._write_error or ChannelError(
            "Unable to write to websocket: the peer closed it", errno.EPIPE
        )

    def _protocol_failed(self, failure: Exception) -> None:
        if isinstance(failure, PayloadTooBig):
            error = WebsocketError(f"Websocket message too big: {failure}", errno.EMSGSIZE)
        elif isinstance(failure, (ProtocolError, UnicodeDecodeError)):
            error = WebsocketError(f"Websocket protocol error: {failure}", errno.EPROTO)
        else:
            error = WebsocketError(f"Websocket frame decoding failed: {failure}", errno.EPROTO)
        log.info("websocket %s: %s", self.role, error.message)
        self._read_error = error
        self._write_error = self._write_error or error

    def _fail(self, code: int, message: str) -> None:
        """Fail the connection with close ``code``; reads and writes then raise ``message``."""
        with self._proto_lock:
            self._protocol.fail(code, message.partition(": ")[2][:120])
            self._outbox.push(self._protocol.data_to_send())
        error = WebsocketError(message, errno.EPROTO)
        log.info("websocket %s: %s", self.role, message)
        self._read_error = error
        self._write_error = self._write_error or error

    def _transport_eof(self, mid_frame: bool) -> None:
        if mid_frame:
            self._read_error = WebsocketError(
                "Websocket connection closed in the middle of a frame", errno.ECONNRESET
            )
        else:
            log.debug("websocket %s: master EOF without a close frame", self.role)
            self._eof = True
        self._write_error = self._write_error or ChannelError(
            "Unable to write to websocket: the connection is closed", errno.EPIPE
        )

    # -- sending ---------------------------------------------------------------------

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        self._require_session()
        if self._write_error is not None:
            raise _fresh(self._write_error)
        total = sum(view.nbytes for view in iov)
        if not total:
            return 0
        with self._outbox.writing():
            try:
                if self._unacked:
                    return self._acknowledge(total)
                if self._blocking:
                    return self._write_blocking(iov, total)
                return self._write_nonblocking(iov, total)
            except ChannelError as exc:
                if self._write_error is None:
                    self._write_error = exc
                raise

    def _write_blocking(self, iov: list[memoryview], total: int) -> int:
        # frames point into the caller's buffers until they are written
        batch = _MASKED_WRITE_BATCH if self.role == "client" else _WRITE_BATCH
        queued = 0
        try:
            for payload in _payloads(iov, self._frame_size, total):
                self._encode(payload, copy=False)
                queued += len(payload)
                if queued >= batch:
                    self._flush_blocking()
                    queued = 0
            self._flush_blocking()
        except BaseException:
            self._outbox.own()  # what stays queued must not change with the caller's buffers
            raise
        return total

    def _flush_blocking(self) -> None:
        while not self._outbox.flush(wait=True):
            self.master.wait(Condition.OUT)

    def _write_nonblocking(self, iov: list[memoryview], total: int) -> int:
        """Frame and send as much as the master takes now, one frame at a time.

        A frame counts once it is fully out.  As with non-blocking TLS writes,
        a frame the master took only part of stays queued and is not counted:
        the call returns the bytes of the frames before it, or ERR_BLOCK when
        there are none; the caller retries with the rest of its data, and the
        retry reports that frame's bytes once it is out.  So nothing is ever
        left unsent behind the caller's back, and no byte is framed twice.
        """
        outbox = self._outbox
        if outbox.pending and not outbox.flush(wait=False):
            return ERR_BLOCK
        done = 0
        try:
            for payload in _payloads(iov, self._frame_size, total):
                self._encode(payload, copy=False)
                if not outbox.flush(wait=False):
                    self._unacked = len(payload)
                    return done or ERR_BLOCK
                done += len(payload)
        finally:
            if outbox.pending:
                outbox.own()  # what stays queued must not change with the caller's buffers
        return done

    def _acknowledge(self, total: int) -> int:
        """Report the frame of an earlier ERR_BLOCK write once it is fully out.

        A retry shorter than that frame is told only its own length; the rest
        of the frame is reported to the calls that follow with the rest of the
        same data (as TLS does), so no byte is ever framed twice.
        """
        if self._blocking:
            self._flush_blocking()
        elif not self._outbox.flush(wait=False):
            return ERR_BLOCK
        done = min(self._unacked, total)
        self._unacked -= done
        return done

    def _encode(self, payload: Any, *, copy: bool) -> None:
        """Queue ``payload`` as one binary frame (``copy``: see :func:`framing.binary_frame`)."""
        protocol = self._protocol
        with self._proto_lock:
            frame = binary_frame(protocol, payload, copy=copy)
            if frame is None:  # not open: the protocol says why (or frames it anyway)
                try:
                    protocol.send_binary(payload)
                except InvalidState:
                    state = protocol.state.name.lower()
                    raise ChannelError(
                        f"Unable to write to websocket: the connection is {state}", errno.EPIPE
                    ) from None
                frame = []
            # what the protocol queued (a pong) goes out before the new frame
            self._outbox.push([*protocol.data_to_send(), *frame])

    def _flush_quietly(self) -> None:
        """Write control frames (pongs, close echoes) now; a failure only affects writers."""
        try:
            self._outbox.flush_control()
        except ChannelError as exc:
            self._write_error = self._write_error or exc
            log.debug("websocket %s: flushing control frames failed: %s", self.role, exc)

    # -- close and shutdown ---------------------------------------------------------

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send a close frame with ``code`` and ``reason``, then close the master.

        Idempotent.  What is queued is flushed first, for at most
        :data:`CLOSE_FLUSH_TIMEOUT` seconds when the peer stalls.  It does not
        wait for the peer's answering close frame (as QEMU, it never blocks on
        the peer); to finish the close handshake first, ``shutdown(WRITE)``
        and read until EOF.

        Raises:
            ValueError: ``code`` is not a valid close code (1000-1003,
                1007-1011, 3000-4999) or ``reason`` is too long.
            ChannelError: closing the master failed.
        """
        if not self._closed:
            try:
                Close(code, reason).check()
            except ProtocolError:
                raise ValueError(f"invalid websocket close code {code}") from None
            if len(reason.encode()) > 123:
                raise ValueError("a websocket close reason is at most 123 bytes of UTF-8")
            self._close_code, self._close_reason = code, reason
        super().close()

    def send_close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the close handshake: send a close frame now and keep reading.

        Reads go on until the peer's answering close frame, which ends the
        stream (EOF); writes fail with ``EPIPE`` from now on.  (A websocket has
        no half-close: the peer stops sending once it sees the close frame.)

        Raises:
            ChannelError: the handshake is not done, or the master failed.
        """
        self._check_open()
        self._require_session()
        self._send_close(code, reason)
        self._write_error = self._write_error or ChannelError(
            "Unable to write to websocket: the close handshake has started", errno.EPIPE
        )
        self._flush_quietly()

    def io_close_layer(self) -> None:
        try:
            if self._hs_done:
                self._send_close(self._close_code, self._close_reason)
                deadline = time.monotonic() + CLOSE_FLUSH_TIMEOUT
                self._flush_before_close(deadline)
        except ChannelError as exc:
            log.debug("websocket %s: close handshake not sent: %s", self.role, exc)
        finally:
            self._outbox.clear()
            self._rx.clear()

    def io_close_layer_nowait(self) -> bool:
        """Send the close frame, and what is queued before it, if that needs no waiting.

        Returns:
            True when all of it is out (or the master failed: nothing more
            can go); False when the master would block (``close()`` then
            flushes the rest, for at most :data:`CLOSE_FLUSH_TIMEOUT` seconds).
        """
        return self._close_frame_now(self._close_code, self._close_reason)

    def io_abort_layer(self) -> None:
        """Send close code 1011 if it goes out without waiting (the base then aborts the master)."""
        try:
            self._close_frame_now(CloseCode.INTERNAL_ERROR, "aborted", push=True)
        finally:
            self._outbox.clear()
            self._rx.clear()

    def _close_frame_now(self, code: int, reason: str, *, push: bool = False) -> bool:
        """Queue a close frame (once the handshake is done); write what the master takes now.

        ``push`` turns Nagle off first, so the frame leaves before a TCP reset.

        Returns:
            True when everything queued is out, or nothing more can go (no
            handshake, the master failed); False when the master would block.
        """
        if not self._hs_done:
            return True
        try:
            self._send_close(code, reason)
            self.master.set_blocking(False)
            if push:
                self.master.set_delay(False)
            return self._outbox.flush(wait=False)
        except ChannelError as exc:
            log.debug("websocket %s: close frame %d not sent: %s", self.role, code, exc)
            return True

    def _send_close(self, code: int, reason: str) -> None:
        with self._proto_lock:
            if self._protocol.state is not OPEN:
                return
            self._protocol.send_close(code, reason)
            self._outbox.push(self._protocol.data_to_send())
        log.debug("websocket %s: close frame sent (%d)", self.role, code)

    def _flush_before_close(self, deadline: float) -> None:
        outbox = self._outbox
        if not outbox.pending:
            return
        self.master.set_blocking(False)
        while not outbox.flush(wait=True):
            try:
                self.master.wait(Condition.OUT, timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                log.warning(
                    "websocket %s: peer not reading; dropping %d unsent bytes on close",
                    self.role,
                    outbox.pending_bytes,
                )
                return

    # -- the rest of the contract ------------------------------------------------------

    def _ready_now(self) -> Condition:
        ready = Condition(0)
        if self._rx or self._inbox or self._eof or self._read_error is not None:
            ready |= Condition.IN
        if self._write_error is not None:
            ready |= Condition.OUT
        return ready

    def io_create_watch(self, condition: Condition) -> WatchSource:
        master_condition = None
        if condition & Condition.IN and self._outbox.pending:
            # a reader must also wake to push out the pong or close echo it queued
            master_condition = condition | Condition.OUT
        return ChildWatchSource(
            self.master, condition, pending=self._ready_now, master_condition=master_condition
        )

    def io_set_blocking(self, enabled: bool) -> None:
        super().io_set_blocking(enabled)
        self._blocking = enabled
        if enabled and self._hs_done and self._outbox.pending:
            try:
                self._flush_blocking()
            except ChannelError as exc:
                self._write_error = self._write_error or exc


def _truncated(failure: Exception | None) -> bool:
    """True when the master's EOF cut a frame short (not at a frame boundary).

    At a boundary the protocol reports "unexpected end of stream"; inside a
    frame its stream reader reports how many bytes were missing.
    """
    return isinstance(failure, EOFError) and str(failure).startswith("stream ends after")


def _as_handshake_error(exc: ChannelError) -> WebsocketHandshakeError:
    if isinstance(exc, WebsocketHandshakeError):
        return exc
    return WebsocketHandshakeError(f"Websocket handshake failed: {exc.message}", exc.errno)


def _check_path(path: str) -> None:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"a websocket path must start with '/', got {path!r}")


def _check_max_size(max_size: int | None) -> int | None:
    if max_size is not None and max_size <= 0:
        raise ValueError(f"max_size must be > 0 or None, got {max_size}")
    return max_size
