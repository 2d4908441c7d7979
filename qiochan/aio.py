"""asyncio embedding: any :class:`~qiochan.QIOChannel` as an asyncio transport or stream pair.

Existing asyncio code runs unchanged over every qiochan transport and layer
chain::

    reader, writer = await qiochan.aio.open_connection(
        "tcp:127.0.0.1:4444", layers=["tls:creds=/etc/pki/qemu"]
    )
    writer.write(b"hello")
    await writer.drain()
    reply = await reader.readexactly(5)
    writer.close()
    await writer.wait_closed()

The channel is put in non-blocking mode and driven by its own watches on the
running loop (asyncio or uvloop), so the loop never blocks on it; data a layer
already holds (decrypted TLS records, decoded websocket frames) is delivered at
once.  Layer handshakes run on the loop too, in non-blocking mode and under a
deadline, so a stalled peer never holds anyone else up; what may still block
-- a transport's connect (name resolution), closing a command pipe -- runs in
the loop's executor.

* :class:`ChannelTransport` is an :class:`asyncio.Transport` over a channel:
  flow control (``pause_reading``/``resume_reading``, write-buffer limits that
  pause and resume the protocol, so ``StreamWriter.drain`` works), half-close
  (``write_eof`` shuts the channel's write direction down when it has
  ``Feature.SHUTDOWN``) and clean close.
* :func:`connect_channel` / :func:`channel_streams` wrap an existing channel.
* :func:`create_connection` / :func:`open_connection` connect to an address.
* :func:`create_server` / :func:`start_server` listen on one and return a
  :class:`ChannelServer`.
* :func:`alisten` / :class:`LayerAcceptor` and :func:`aconnect` give layered
  channels (handshakes done) on a loop, for gateways.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import itertools
import logging
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Self, TypeVar

from . import _hooks
from . import transport as _transport
from .channel import ERR_BLOCK, Feature, QIOChannel, Shutdown
from .errors import (
    ACCEPT_RETRY_DELAY,
    RESOURCE_ERRNOS,
    ChannelError,
    Error,
    HandshakeError,
    PluginError,
    unsupported,
)
from .layer import aapply_layers, acomplete_handshakes, deadline_after, layer_specs
from .watch import Condition, Watch

__all__ = [
    "DEFAULT_LIMIT",
    "ChannelServer",
    "ChannelTransport",
    "LayerAcceptor",
    "aconnect",
    "alisten",
    "channel_streams",
    "connect_channel",
    "create_connection",
    "create_server",
    "open_connection",
    "start_server",
]

log = logging.getLogger("qiochan.aio")

#: The default buffer limit of the stream readers made here (asyncio's own default).
DEFAULT_LIMIT = 2**16

_READ_CHUNK = 256 * 1024
_READS_PER_EVENT = 4  # reads per readiness event before other callbacks get a turn
_ACCEPTS_PER_EVENT = 64  # clients accepted per readiness event of a listening channel
_MAX_IOV = 64
_DEFAULT_HIGH_WATER = 64 * 1024

_P = TypeVar("_P", bound=asyncio.BaseProtocol)
ProtocolFactory = Callable[[], _P]
ClientConnectedCallback = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None
]

_QUIET_ERRNOS = frozenset(
    {errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ESHUTDOWN, errno.EBADF}
)


def _address_info(address: Any) -> Any:
    """Return ``(host, port)`` for an inet address object, else the address as given."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return (host, port)
    return address


def _channel_chain(channel: QIOChannel) -> Iterable[Any]:
    """Yield ``channel`` and the masters of the layers it is made of, outermost first."""
    current: Any = channel
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "master", None)


def _extra_info(channel: QIOChannel) -> dict[str, Any]:
    extra: dict[str, Any] = {"qiochan_channel": channel}
    for item in _channel_chain(channel):
        for attr, key in (("remote_address", "peername"), ("local_address", "sockname")):
            if key in extra:
                continue
            try:
                value = getattr(item, attr, None)
            except (ChannelError, OSError):
                value = None
            if value is not None:
                extra[key] = _address_info(value)
        pid = getattr(item, "pid", None)
        if isinstance(pid, int) and "pid" not in extra:
            extra["pid"] = pid
    return extra


def _write_limits(high: int | None, low: int | None) -> tuple[int, int]:
    if high is None:
        high = _DEFAULT_HIGH_WATER if low is None else 4 * low
    if low is None:
        low = high // 4
    if not high >= low >= 0:
        raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
    return high, low


class ChannelTransport(asyncio.Transport):
    """An asyncio transport over a :class:`~qiochan.QIOChannel`.

    Made by :func:`connect_channel`; the transport owns the channel from then
    on: it switches it to non-blocking mode, turns Nagle-style delays off
    (``set_delay(False)``, as asyncio does for TCP) and closes it when the
    transport closes.  ``get_extra_info("qiochan_channel")`` returns the channel;
    ``"peername"``/``"sockname"`` are ``(host, port)`` for inet sockets, the
    address object for others; ``"pid"`` is a command pipe's child pid.

    A ``Protocol``'s ``data_received`` gets a :class:`bytearray` it owns
    (read into once, never reused), not :class:`bytes`: one copy less per
    read.

    Args:
        channel: the connected channel.
        protocol: the protocol that receives the data (``Protocol`` or
            ``BufferedProtocol``).
        loop: the loop whose watches drive the channel (default: the running loop).
        extra: more ``get_extra_info`` entries.
        waiter: a future resolved once ``connection_made`` has run.
    """

    def __init__(
        self,
        channel: QIOChannel,
        protocol: asyncio.BaseProtocol,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        extra: dict[str, Any] | None = None,
        waiter: asyncio.Future[None] | None = None,
    ) -> None:
        info = _extra_info(channel)
        info.update(extra or {})
        super().__init__(info)
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._channel = channel
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._buffer: collections.deque[memoryview] = collections.deque()
        self._buffer_size = 0
        self._written = 0
        self._high_water, self._low_water = _write_limits(None, None)
        self._read_watch: Watch | None = None
        self._write_watch: Watch | None = None
        self._reading_paused = False
        self._read_eof = False
        self._eof_requested = False
        self._eof_sent = False
        self._closing = False
        self._lost = False
        self._protocol_paused = False
        channel.set_blocking(False)
        channel.set_delay(False)  # no Nagle delays, as asyncio's own TCP transports
        self._loop.call_soon(self._protocol.connection_made, self)
        self._loop.call_soon(self._start_reading)
        if waiter is not None:
            self._loop.call_soon(_resolve_waiter, waiter)

    def __repr__(self) -> str:
        state = "closing" if self._closing else "open"
        return f"<ChannelTransport {state} {self._channel!r} buffered={self._buffer_size}>"

    # -- the asyncio.BaseTransport interface ------------------------------------

    @property
    def channel(self) -> QIOChannel:
        """The channel this transport drives."""
        return self._channel

    def get_protocol(self) -> asyncio.BaseProtocol:
        """Return the current protocol."""
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Switch to a new protocol (``Protocol`` or ``BufferedProtocol``)."""
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def is_closing(self) -> bool:
        """Return True once the transport is closing or closed."""
        return self._closing

    def close(self) -> None:
        """Stop reading, flush the write buffer, end the stream, then close the channel.

        A channel that can half-close gets ``shutdown(WRITE)`` once it is
        writable, so a layer's own end of stream (TLS close_notify, a
        websocket close frame) goes out rather than being dropped by a full
        socket.  The protocol's ``connection_lost(None)`` runs once the channel
        is closed; :meth:`abort` closes at once.
        """
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if self._buffer or self._ends_stream():
            self._start_writing()  # _on_writable flushes, ends the stream, then closes
        else:
            self._connection_lost(None)

    def abort(self) -> None:
        """Close at once, dropping buffered data; ``connection_lost(None)`` follows."""
        self._force_close(None)

    # -- reading --------------------------------------------------------------

    def is_reading(self) -> bool:
        """Return True while the transport delivers incoming data."""
        return not self._reading_paused and not self._closing

    def pause_reading(self) -> None:
        """Stop delivering data until :meth:`resume_reading`; the channel buffers it."""
        if self._closing or self._reading_paused:
            return
        self._reading_paused = True
        if self._read_watch is not None:
            self._read_watch.pause()

    def resume_reading(self) -> None:
        """Deliver data again after :meth:`pause_reading`."""
        if self._closing or not self._reading_paused:
            return
        self._reading_paused = False
        if self._read_watch is not None:
            self._read_watch.resume()
        else:
            self._start_reading()

    def _start_reading(self) -> None:
        if (
            self._read_watch is not None
            or self._reading_paused
            or self._closing
            or self._read_eof
            or self._lost
        ):
            return
        self._read_watch = self._channel.add_watch_source(
            Condition.IN, self._on_readable, context=self._loop
        )

    def _stop_reading(self) -> None:
        # removed here, synchronously, even from inside its own callback: the loop
        # must forget the fd before a worker thread may close it
        watch, self._read_watch = self._read_watch, None
        if watch is not None:
            watch.remove()

    def _stop_writing(self) -> None:
        watch, self._write_watch = self._write_watch, None
        if watch is not None:
            watch.remove()

    def _read_once(self) -> int:
        if self._buffered:
            protocol: Any = self._protocol
            buf = protocol.get_buffer(-1)
            if not len(buf):
                raise RuntimeError("get_buffer() returned an empty buffer")
            n = self._channel.read(buf)
            if n > 0:
                protocol.buffer_updated(n)
            return n
        # a fresh buffer per read, handed over to the protocol: one copy (the
        # channel's into it), as a socket's recv() does
        data = bytearray(_READ_CHUNK)
        n = self._channel.read(data)
        if n > 0:
            if n < _READ_CHUNK:
                del data[n:]
            self._protocol.data_received(data)  # type: ignore[attr-defined]
        return n

    def _on_readable(self, _channel: QIOChannel, _condition: Condition) -> bool:
        watch = self._read_watch
        if watch is None:
            return False
        for _ in range(_READS_PER_EVENT):
            try:
                n = self._read_once()
            except ChannelError as exc:
                self._fatal_error(exc, "read from the channel failed")
                return False
            except Exception as exc:
                self._fatal_error(exc, "the protocol failed to take the data")
                return False
            if n == ERR_BLOCK:
                return True
            if n == 0:
                self._on_eof()
                return False
            if self._read_watch is not watch:
                return False  # closed by the protocol
            if self._reading_paused:
                return True  # the watch is paused until resume_reading()
        return True

    def _on_eof(self) -> None:
        self._read_eof = True
        self._stop_reading()
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        except Exception as exc:
            self._fatal_error(exc, "the protocol failed to handle end of file")
            return
        if not keep_open:
            self.close()

    # -- writing --------------------------------------------------------------

    @property
    def bytes_written(self) -> int:
        """Bytes the channel has accepted so far (what :meth:`write` got, less the buffer)."""
        return self._written

    def get_write_buffer_size(self) -> int:
        """Return the number of bytes waiting to be written."""
        return self._buffer_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """Return the ``(low, high)`` water marks of the write buffer."""
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks that pause (above ``high``) and resume (at ``low``) writing.

        Raises:
            ValueError: ``high`` < ``low`` or a negative mark.
        """
        self._high_water, self._low_water = _write_limits(high, low)
        self._maybe_pause_protocol()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; what the channel does not take at once is written as it drains.

        Raises:
            TypeError: ``data`` is not bytes-like.
            RuntimeError: called after :meth:`write_eof`.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if self._eof_requested:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._lost or self._closing:
            log.debug("write() on a closing transport %r ignored", self)
            return
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        if not self._buffer:
            try:
                n = self._channel.write(view)
            except ChannelError as exc:
                self._fatal_error(exc, "write to the channel failed")
                return
            if n == ERR_BLOCK:
                n = 0
            self._written += n
            if n == view.nbytes:
                return
            view = view[n:]
            self._start_writing()
        self._buffer.append(memoryview(bytes(view)))
        self._buffer_size += view.nbytes
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write every buffer of ``list_of_data`` in order."""
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        """Return True when the channel can half-close (it has ``Feature.SHUTDOWN``)."""
        return self._channel.has_feature(Feature.SHUTDOWN)

    def write_eof(self) -> None:
        """Half-close: shut the channel's write direction once the buffer is flushed.

        The shutdown waits for the channel to be writable, so a layer's end of
        stream (TLS close_notify) is not lost to a full socket.  Reading goes on
        until the peer's end of stream.

        Raises:
            ChannelError: the channel cannot half-close (``ENOTSUP``; see :meth:`can_write_eof`).
        """
        if self._closing or self._eof_requested:
            return
        if not self.can_write_eof():
            raise unsupported(f"Half-close of {type(self._channel).__name__}")
        self._eof_requested = True
        self._start_writing()

    def _ends_stream(self) -> bool:
        """True while a ``shutdown(WRITE)`` is still due before the channel closes."""
        return not self._eof_sent and self.can_write_eof()

    def _shutdown_write(self) -> None:
        self._eof_sent = True
        try:
            self._channel.shutdown(Shutdown.WRITE)
        except ChannelError as exc:
            if self._closing:
                log.debug("%r: ending the stream before closing failed: %s", self, exc)
            else:
                self._fatal_error(exc, "half-close of the channel failed")

    def _start_writing(self) -> None:
        if self._write_watch is None and not self._lost:
            self._write_watch = self._channel.add_watch_source(
                Condition.OUT, self._on_writable, context=self._loop
            )

    def _on_writable(self, _channel: QIOChannel, _condition: Condition) -> bool:
        if self._write_watch is None:
            return False
        if self._buffer:
            try:
                n = self._channel.writev(list(itertools.islice(self._buffer, _MAX_IOV)))
            except ChannelError as exc:
                self._fatal_error(exc, "write to the channel failed")
                return False
            if n == ERR_BLOCK:
                return True
            self._written += n
            self._consume(n)
            self._maybe_resume_protocol()
            if self._buffer:
                return True
        self._stop_writing()
        if (self._eof_requested or self._closing) and self._ends_stream():
            self._shutdown_write()
        if self._closing:
            self._connection_lost(None)
        return False

    def _consume(self, n: int) -> None:
        self._buffer_size -= n
        while n:
            head = self._buffer[0]
            if n < head.nbytes:
                self._buffer[0] = head[n:]
                return
            n -= head.nbytes
            self._buffer.popleft()

    def _maybe_pause_protocol(self) -> None:
        if self._buffer_size > self._high_water and not self._protocol_paused:
            self._protocol_paused = True
            self._tell_protocol("pause_writing")

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self._buffer_size <= self._low_water:
            self._protocol_paused = False
            self._tell_protocol("resume_writing")

    def _tell_protocol(self, method: str) -> None:
        try:
            getattr(self._protocol, method)()
        except Exception as exc:
            self._report(f"protocol.{method}() failed", exc)

    # -- errors and closing -----------------------------------------------------

    def _report(self, message: str, exc: Exception) -> None:
        self._loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
        )

    def _fatal_error(self, exc: Exception, message: str) -> None:
        if isinstance(exc, OSError) and (exc.errno in _QUIET_ERRNOS or exc.errno is None):
            log.debug("%r: %s: %s", self, message, exc)
        else:
            self._report(f"Fatal error on qiochan transport: {message}", exc)
        self._force_close(exc)

    def _force_close(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._buffer.clear()
        self._buffer_size = 0
        self._closing = True
        self._stop_reading()
        self._connection_lost(exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        """Remove the watches, close the channel, then tell the protocol (on a later turn).

        A channel whose close would wait (:meth:`QIOChannel.close_nowait`
        says False) is closed in a worker thread.
        """
        if self._lost:
            return
        self._lost = True
        self._stop_reading()
        self._stop_writing()
        # a socket or a file, a layer whose goodbye goes out at once: closing
        # here is cheaper than in a thread (whose turns at the GIL the loop
        # would wait for)
        closed, close_error = self._close_here(self._channel.close_nowait)
        if closed:
            try:
                self._loop.call_soon(self._finish, exc, close_error)
            except RuntimeError:  # the loop is closed: nothing else will run, tell it now
                self._finish(exc, close_error)
            return
        # watches are gone (on this thread), so the fds may now close anywhere:
        # in a worker, since closing may wait (a command's exit, a close handshake)
        try:
            closing = self._loop.run_in_executor(None, self._channel.close)
        except RuntimeError:  # the loop is shutting its executor down: close here
            self._finish(exc, self._close_here(self._channel.close)[1])
            return
        closing.add_done_callback(functools.partial(self._channel_closed, exc))

    def _close_here(self, close: Callable[[], bool | None]) -> tuple[bool, Exception | None]:
        """Run ``close`` (the channel's ``close`` or ``close_nowait``) on this thread.

        Returns:
            Whether the channel is closed (only ``close_nowait`` may say False)
            and the error closing it raised, if any (it is closed all the same).
        """
        try:
            return close() is not False, None
        except ChannelError as error:
            return True, error

    def _channel_closed(self, exc: Exception | None, closing: asyncio.Future[None]) -> None:
        close_error = None if closing.cancelled() else closing.exception()
        self._finish(exc, close_error if isinstance(close_error, Exception) else None)

    def __del__(self) -> None:
        # like asyncio's transports: a transport dropped while open closes its channel
        if not getattr(self, "_lost", True):
            warnings.warn(f"unclosed transport {self!r}", ResourceWarning, stacklevel=1)
            with contextlib.suppress(ChannelError):
                self._channel.close()

    def _finish(self, exc: Exception | None, close_error: Exception | None) -> None:
        if close_error is not None:
            log.debug("%r: closing the channel failed: %s", self, close_error)
            if exc is None:
                exc = close_error
        self._protocol.connection_lost(exc)


def _resolve_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _in_thread(func: Callable[[], QIOChannel]) -> QIOChannel:
    """Run ``func`` (which returns a new channel) in a worker thread and return its channel.

    If the caller is cancelled meanwhile, the channel is closed when it arrives.
    """
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, func)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_close_orphan)
        raise


async def _on_loop(connecting: Awaitable[QIOChannel]) -> QIOChannel:
    """Await a backend's ``aconnect``; check that it kept the contract."""
    channel = await connecting
    if not isinstance(channel, QIOChannel):
        raise PluginError(f"aconnect returned {type(channel).__name__}, not a QIOChannel")
    return channel


def _close_orphan(future: asyncio.Future[QIOChannel]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


async def aconnect(
    address: Any, *, layers: Iterable[Any] = (), timeout: float | None = None, **options: Any
) -> QIOChannel:
    """Connect to ``address`` and apply ``layers`` as a client, on the running loop.

    The async twin of :func:`qiochan.connect`: a backend with ``aconnect``
    (the socket backend: ``tcp:``, ``unix:``, ``vsock:``) connects on the
    loop, with no thread unless a host name must be looked up; any other
    transport's connect runs in the loop's executor.  Every layer handshake
    then runs on the loop in non-blocking mode, never in a thread.  ``timeout`` bounds the
    connect and every handshake together (each layer's ``handshake-timeout``
    applies too).  Cancelling it closes whatever was opened.

    Returns:
        The outermost channel, in blocking mode, handshakes done (the caller owns it).
    Raises:
        AddressError, PluginError, ChannelError, HandshakeError (``ETIMEDOUT``
        past the deadline): as :func:`qiochan.connect`.
    """
    address, layers, options, configured_timeout = _transport._configured(address, layers, options)
    if timeout is None:
        timeout = configured_timeout
    deadline = deadline_after(timeout)
    backend, parsed = _transport.resolve_address(address)
    func = backend.require("connect")
    if timeout is not None:
        options["timeout"] = timeout
    specs = layer_specs(layers)
    if backend.own_layers:
        # the backend builds its layer chain; the handshakes are ours to run
        options.update(layers=specs, handshake=False)
        raw = await _in_thread(functools.partial(func, parsed, **options))
        try:
            await acomplete_handshakes(raw, deadline)
        except BaseException:
            raw.close()
            raise
        channel = raw
    else:
        if backend.aconnect is not None:  # the backend connects on the loop: no thread
            raw = await _on_loop(backend.aconnect(parsed, **options))
        else:
            raw = await _in_thread(functools.partial(func, parsed, **options))
        channel = await aapply_layers(raw, specs, "client", deadline=deadline)
    _hooks.channel_opened(channel, parsed)
    return channel


async def connect_channel(
    channel: QIOChannel,
    protocol_factory: ProtocolFactory[_P],
    *,
    extra: dict[str, Any] | None = None,
) -> tuple[ChannelTransport, _P]:
    """Wrap a connected ``channel`` in a :class:`ChannelTransport` on the running loop.

    The transport owns the channel from then on.

    Returns:
        ``(transport, protocol)`` once the protocol's ``connection_made`` has run.
    Raises:
        ChannelError: the channel is closed or cannot switch to non-blocking mode.
    """
    loop = asyncio.get_running_loop()
    protocol = protocol_factory()
    waiter: asyncio.Future[None] = loop.create_future()
    transport = ChannelTransport(channel, protocol, loop, extra=extra, waiter=waiter)
    try:
        await waiter
    except BaseException:
        transport.abort()
        raise
    return transport, protocol


def _stream_protocol(
    limit: int,
    callback: ClientConnectedCallback | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamReaderProtocol]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    return reader, asyncio.StreamReaderProtocol(reader, callback, loop=loop)


async def channel_streams(
    channel: QIOChannel, *, limit: int = DEFAULT_LIMIT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Return an :class:`asyncio.StreamReader`/:class:`asyncio.StreamWriter` pair over ``channel``.

    The streams own the channel: ``writer.close()`` closes it.

    Args:
        limit: the reader's buffer limit (reading pauses above it).
    """
    reader, protocol = _stream_protocol(limit)
    transport, _ = await connect_channel(channel, lambda: protocol)
    writer = asyncio.StreamWriter(transport, protocol, reader, asyncio.get_running_loop())
    return reader, writer


async def create_connection(
    protocol_factory: ProtocolFactory[_P],
    address: Any,
    *,
    layers: Iterable[Any] = (),
    timeout: float | None = None,
    **options: Any,
) -> tuple[ChannelTransport, _P]:
    """Connect to ``address`` with ``layers`` (as :func:`qiochan.connect`) and wrap the channel.

    As :func:`aconnect`: the handshakes run on the loop, bounded by ``timeout``.

    Returns:
        ``(transport, protocol)``.
    Raises:
        AddressError: the address or a layer spec is malformed.
        ConfigError: the transports file is invalid.
        PluginError: no available backend serves the scheme or a layer.
        ChannelError: the connection failed (refused, unreachable...).
        HandshakeError: a layer's handshake failed.
    """
    channel = await aconnect(address, layers=layers, timeout=timeout, **options)
    return await connect_channel(channel, protocol_factory)


async def open_connection(
    address: Any,
    *,
    layers: Iterable[Any] = (),
    limit: int = DEFAULT_LIMIT,
    timeout: float | None = None,
    **options: Any,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``address`` with ``layers``; return a ``(StreamReader, StreamWriter)`` pair.

    The qiochan twin of :func:`asyncio.open_connection`: ``address`` is any
    qiochan address (``"tcp:HOST:PORT"``, ``"unix:PATH"``, ``"wss://..."``, a
    configured transport name...) and ``layers`` the layer specs to apply.

    Raises:
        AddressError: the address or a layer spec is malformed.
        ConfigError: the transports file is invalid.
        PluginError: no available backend serves the scheme or a layer.
        ChannelError: the connection failed (refused, unreachable...).
        HandshakeError: a layer's handshake failed.
    """
    channel = await aconnect(address, layers=layers, timeout=timeout, **options)
    return await channel_streams(channel, limit=limit)


class LayerAcceptor:
    """Accepts the clients of a listener on a loop and handshakes their layers concurrently.

    Raw clients are accepted on the loop as the listening channels (the
    listener's ``sioc``) become readable; each one's server-side layers are
    applied and handshaken as its own task, in non-blocking mode, bounded by
    the layers' ``handshake-timeout`` (10 s for a server by default) and by
    ``handshake_timeout`` when given.  A client that stalls only holds its own
    task: completed clients are handed out at once, in the order they
    completed.  A listener without listening channels is accepted from in
    one worker thread (its handshakes still run on the loop).

    Use :meth:`accept` to take clients one by one, or pass ``on_ready`` to
    have each delivered to a callback (failures are then logged).

    Args:
        listener: a raw listener (``accept()``, ``close()``, ``address``), e.g. the
            ``inner`` of what :func:`qiochan.listen` returned with layers.
        layers: server-side layer specs (strings, LayerSpecs or callables).
        loop: the loop to run on (default: the running loop).
        handshake_timeout: seconds a client's handshakes may take in all (None:
            only the layers' own timeouts).
        on_ready: called on the loop with each channel whose handshakes completed.
    """

    def __init__(
        self,
        listener: Any,
        layers: Iterable[Any] = (),
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        handshake_timeout: float | None = None,
        on_ready: Callable[[QIOChannel], object] | None = None,
    ) -> None:
        self.listener = listener
        self.layers = layer_specs(layers)
        self.handshake_timeout = handshake_timeout
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._on_ready = on_ready
        self._ready: collections.deque[QIOChannel | BaseException] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watches: list[Watch] = []
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()  # wakes an accepting thread's back-off
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<LayerAcceptor {self.address} handshaking={len(self._tasks)}>"

    @property
    def address(self) -> Any:
        """The listener's address."""
        return self.listener.address

    @property
    def handshaking(self) -> int:
        """How many clients are handshaking now."""
        return len(self._tasks)

    @property
    def idle(self) -> bool:
        """True when no client is handshaking and none waits to be taken by :meth:`accept`."""
        return not self._tasks and not self._ready

    def start(self) -> None:
        """Start accepting (call on the loop's thread); a second call does nothing.

        Raises:
            ChannelError: the acceptor is closed (``EBADF``).
        """
        if self._closed:
            raise ChannelError("Acceptor is closed", errno.EBADF)
        if self._started:
            return
        self._started = True
        channels = getattr(self.listener, "sioc", None)
        if not channels:
            self._thread = threading.Thread(
                target=self._accept_in_thread, name=f"qiochan-accept {self.address}", daemon=True
            )
            self._thread.start()
            return
        for channel in channels:
            channel.set_blocking(False)
            self._watches.append(
                channel.add_watch_source(Condition.IN, self._on_listening, context=self._loop)
            )

    def _on_listening(self, channel: Any, _condition: Condition) -> bool:
        for _ in range(_ACCEPTS_PER_EVENT):
            if self._closed:
                return False
            try:
                client = channel.accept()
            except (ChannelError, OSError) as exc:
                if self._closed:
                    return False
                if exc.errno in RESOURCE_ERRNOS:  # the client stays queued: try again later
                    self._log_retry(exc)
                    for watch in self._watches:
                        if watch.channel is channel:
                            watch.pause_for(ACCEPT_RETRY_DELAY)
                    return True
                log.warning("%r: accept failed, no more clients: %s", self, exc)
                self._deliver(exc)
                self.close()
                return False
            if client is None:
                return True
            self._handshake(client)
        return True

    def _log_retry(self, exc: BaseException) -> None:
        log.warning("%r: accept failed: %s; accepting again in %g s", self, exc, ACCEPT_RETRY_DELAY)

    def _accept_in_thread(self) -> None:
        while not self._closed:
            try:
                client = self.listener.accept()
            except HandshakeError as exc:
                self._loop.call_soon_threadsafe(self._deliver, exc)
                continue
            except (Error, OSError, ValueError) as exc:  # a PluginError too: stop
                if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS and not self._closed:
                    self._log_retry(exc)
                    self._closing.wait(ACCEPT_RETRY_DELAY)
                    continue
                if not self._closed:
                    log.warning("%r: accept failed, no more clients: %s", self, exc)
                    self._loop.call_soon_threadsafe(self._deliver, exc)
                return
            try:
                self._loop.call_soon_threadsafe(self._handshake, client)
            except RuntimeError:  # the loop is closed
                client.close()
                return

    def _handshake(self, client: QIOChannel) -> None:
        if self._closed:
            client.close()
            return
        task = self._loop.create_task(self._setup(client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _setup(self, client: QIOChannel) -> None:
        deadline = deadline_after(self.handshake_timeout)
        try:
            channel = await aapply_layers(client, self.layers, "server", deadline=deadline)
        except HandshakeError as exc:
            log.info("%r: a client's handshake failed: %s", self, exc)
            self._deliver(exc)
        except Exception as exc:  # a bad layer option, a failed master...
            log.warning("%r: setting up a client's layers failed: %s", self, exc)
            self._deliver(exc)
        else:
            self._deliver(channel)

    def _deliver(self, item: QIOChannel | BaseException) -> None:
        if isinstance(item, QIOChannel) and self._closed:
            item.close()
            return
        if self._on_ready is not None:
            if isinstance(item, QIOChannel):
                self._on_ready(item)
            return
        self._ready.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def accept(self) -> QIOChannel:
        """Return the next client whose handshakes completed (starting to accept if needed).

        Raises:
            HandshakeError: the next client to finish failed its handshake or
                timed out (the acceptor goes on).
            ChannelError: the acceptor is closed (``EBADF``) or accepting failed.
        """
        self.start()
        while not self._ready:
            if self._closed:
                raise ChannelError("Acceptor is closed", errno.EBADF)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._ready.popleft()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop accepting and cancel the handshakes in progress (their channels close).

        The listener itself is not closed.  Idempotent; call on the loop's thread.
        """
        self._closed = True
        self._closing.set()
        for watch in self._watches:
            watch.remove()
        self._watches.clear()
        for task in self._tasks:
            task.cancel()
        while self._ready:
            item = self._ready.popleft()
            if isinstance(item, QIOChannel):
                item.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def aclose(self) -> None:
        """:meth:`close`, then wait until every cancelled handshake has closed its channel."""
        self.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def alisten(
    address: Any,
    *,
    layers: Iterable[Any] = (),
    handshake_timeout: float | None = None,
    **options: Any,
) -> LayerAcceptor:
    """Listen on ``address`` and return a started :class:`LayerAcceptor` on the running loop.

    ``await acceptor.accept()`` then returns clients whose server-side
    ``layers`` completed their handshakes, never held up by slow clients;
    ``acceptor.close()`` and ``acceptor.listener.close()`` end it.

    Raises:
        AddressError, PluginError, ChannelError: as :func:`qiochan.listen`.
    """
    listener, specs = _split_listener(_transport.listen(address, layers=layers, **options))
    acceptor = LayerAcceptor(listener, specs, handshake_timeout=handshake_timeout)
    acceptor.start()
    return acceptor


def _split_listener(listener: Any) -> tuple[Any, list[Any]]:
    """Return the raw listener under a layered one, and its layers."""
    if isinstance(listener, _transport.LayeredListener):
        return listener.inner, list(listener.layers)
    return listener, []


class ChannelServer:
    """A listening qiochan address serving each accepted channel to a protocol.

    Made by :func:`create_server` and :func:`start_server`; works like
    :class:`asyncio.Server`: :meth:`close`, :meth:`wait_closed`,
    :meth:`serve_forever`, ``async with``.  Peers are accepted on the loop
    and their layer handshakes run there concurrently (a
    :class:`LayerAcceptor`), without threads, so a slow client never holds
    up the next one; a client whose handshake fails or times out is logged
    and dropped, and the server goes on.

    Args:
        listener: what :func:`qiochan.listen` returned.
        protocol_factory: makes one protocol per accepted channel.
        loop: the loop that serves (default: the running loop).
        handshake_timeout: seconds a client's handshakes may take in all
            (None: only the layers' own ``handshake-timeout``).
    """

    def __init__(
        self,
        listener: Any,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        handshake_timeout: float | None = None,
    ) -> None:
        self._listener = listener
        self._protocol_factory = protocol_factory
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        raw, layers = _split_listener(listener)
        self._acceptor = LayerAcceptor(
            raw,
            layers,
            loop=self._loop,
            handshake_timeout=handshake_timeout,
            on_ready=self._accepted,
        )
        self._serving = False
        self._closed = False
        self._serving_forever: asyncio.Future[None] | None = None
        self._setups: set[asyncio.Task[None]] = set()
        self._closed_event = asyncio.Event()

    def __repr__(self) -> str:
        return f"<ChannelServer {self.address} serving={self._serving}>"

    @property
    def address(self) -> Any:
        """The address listened on (the real port when port 0 was asked for)."""
        return self._listener.address

    @property
    def listener(self) -> Any:
        """The underlying qiochan listener."""
        return self._listener

    @property
    def acceptor(self) -> LayerAcceptor:
        """The :class:`LayerAcceptor` accepting and handshaking clients."""
        return self._acceptor

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """Return the loop the server runs on."""
        return self._loop

    def is_serving(self) -> bool:
        """Return True while the server accepts new peers."""
        return self._serving

    async def start_serving(self) -> None:
        """Start accepting peers; a second call does nothing.

        Raises:
            ChannelError: the server is closed.
        """
        if self._closed:
            raise ChannelError("Server is closed", errno.EBADF)
        if self._serving:
            return
        self._serving = True
        self._acceptor.start()

    def _accepted(self, channel: QIOChannel) -> None:
        task = self._loop.create_task(self._serve_channel(channel))
        self._setups.add(task)
        task.add_done_callback(self._setups.discard)

    async def _serve_channel(self, channel: QIOChannel) -> None:
        try:
            await connect_channel(channel, self._protocol_factory)
        except Exception as exc:
            log.warning("%r: serving an accepted channel failed: %s", self, exc)
            channel.close()

    def close(self) -> None:
        """Stop accepting and close the listener; connected peers stay connected."""
        if self._closed:
            return
        self._closed = True
        self._serving = False
        try:
            self._acceptor.close()
            self._listener.close()
        finally:
            if self._serving_forever is not None and not self._serving_forever.done():
                self._serving_forever.set_result(None)
            self._closed_event.set()

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` was called and every handshake in progress has ended."""
        await self._closed_event.wait()
        await self._acceptor.aclose()
        thread = self._acceptor._thread
        if thread is not None and thread.is_alive():
            await self._loop.run_in_executor(None, thread.join)

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` is called (then return) or this call is cancelled.

        Cancelling it closes the server and re-raises the cancellation.

        Raises:
            RuntimeError: already serving forever.
        """
        if self._serving_forever is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        await self.start_serving()
        self._serving_forever = self._loop.create_future()
        try:
            await self._serving_forever
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise
        finally:
            self._serving_forever = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


async def create_server(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    address: Any,
    *,
    layers: Iterable[Any] = (),
    start_serving: bool = True,
    handshake_timeout: float | None = None,
    **options: Any,
) -> ChannelServer:
    """Listen on ``address`` (as :func:`qiochan.listen`); serve each peer to a new protocol.

    Args:
        handshake_timeout: seconds a client's handshakes may take in all
            (None: only the layers' own ``handshake-timeout``, 10 s by default).
    Returns:
        The :class:`ChannelServer`, accepting already unless ``start_serving`` is False.
    Raises:
        AddressError: the address or a layer spec is malformed.
        ConfigError: the transports file is invalid.
        PluginError: no available backend serves the scheme or a layer.
        ChannelError: listening failed (address in use...).
    """
    listener = _transport.listen(address, layers=layers, **options)
    server = ChannelServer(
        listener, protocol_factory, asyncio.get_running_loop(), handshake_timeout=handshake_timeout
    )
    if start_serving:
        await server.start_serving()
    return server


async def start_server(
    client_connected_cb: ClientConnectedCallback,
    address: Any,
    *,
    layers: Iterable[Any] = (),
    limit: int = DEFAULT_LIMIT,
    start_serving: bool = True,
    **options: Any,
) -> ChannelServer:
    """Listen on ``address``; call ``client_connected_cb(reader, writer)`` for each peer.

    The qiochan twin of :func:`asyncio.start_server`; the callback may be a
    coroutine function, run as a task.

    Returns:
        The :class:`ChannelServer`.
    Raises:
        AddressError: the address or a layer spec is malformed.
        ConfigError: the transports file is invalid.
        PluginError: no available backend serves the scheme or a layer.
        ChannelError: listening failed (address in use...).
    """

    def factory() -> asyncio.StreamReaderProtocol:
        return _stream_protocol(limit, client_connected_cb)[1]

    return await create_server(
        factory, address, layers=layers, start_serving=start_serving, **options
    )
