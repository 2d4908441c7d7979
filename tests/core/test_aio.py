"""qiochan.aio: channels as asyncio transports and streams, under asyncio and uvloop."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import qiochan.aio
from qiochan import ChannelError, Shutdown
from qiochan.aio import ChannelTransport, channel_streams, connect_channel
from qiochan_memory import QIOChannelNull, memory_pipe
from qiochan_socket import QIOChannelSocket
from tests.helpers.aio import Ends, NoThreads, Runner, bounded_runner, warm_loop
from tests.helpers.fds import assert_accept_backs_off, no_free_fds, record_accepts


@pytest.fixture(scope="module")
def _warm_loops() -> None:
    """Let uvloop make its process-wide fds (libuv's signal pipe) before fds are counted."""
    for kind in ("asyncio", "uvloop"):
        warm_loop(kind)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(
    request: pytest.FixtureRequest, _warm_loops: None, no_fd_leak: None
) -> Iterator[Runner[Any]]:
    """Run a coroutine function on a fresh loop of the parametrized kind."""
    yield bounded_runner(request.param, 30)


def _pattern(size: int) -> bytes:
    block = hashlib.sha256(b"qiochan aio").digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


async def _stream_pair(
    capacity: int = 65536, limit: int = 2**16
) -> tuple[
    tuple[asyncio.StreamReader, asyncio.StreamWriter],
    tuple[asyncio.StreamReader, asyncio.StreamWriter],
]:
    a, b = memory_pipe(capacity)
    return await channel_streams(a, limit=limit), await channel_streams(b, limit=limit)


async def _close(*writers: asyncio.StreamWriter) -> None:
    for writer in writers:
        writer.close()
    for writer in writers:
        await writer.wait_closed()


def test_round_trip_with_ordinary_stream_code(run: Runner[None]) -> None:
    async def main() -> None:
        (ra, wa), (rb, wb) = await _stream_pair()
        wa.write(b"ping\n")
        await wa.drain()
        assert await rb.readline() == b"ping\n"
        wb.write(b"pong\n")
        await wb.drain()
        assert await ra.readline() == b"pong\n"
        await _close(wa, wb)

    run(main)


def test_large_transfer_with_backpressure_both_ways(run: Runner[None]) -> None:
    size = 8 * 1024 * 1024
    payload = _pattern(size)

    async def pump(writer: asyncio.StreamWriter) -> None:
        view = memoryview(payload)
        for offset in range(0, size, 1024 * 1024):
            writer.write(view[offset : offset + 1024 * 1024])
            await writer.drain()
            # drain returned: the buffer went back under the high-water mark
            assert writer.transport.get_write_buffer_size() <= 64 * 1024
        writer.write_eof()

    async def main() -> None:
        (ra, wa), (rb, wb) = await _stream_pair(capacity=32 * 1024)
        sent_a = asyncio.create_task(pump(wa))
        sent_b = asyncio.create_task(pump(wb))
        got_b, got_a = await asyncio.gather(rb.read(), ra.read())
        await asyncio.gather(sent_a, sent_b)
        assert got_b == payload
        assert got_a == payload
        await _close(wa, wb)

    run(main)


def test_write_eof_half_closes_and_reading_goes_on(run: Runner[None]) -> None:
    async def main() -> None:
        (ra, wa), (rb, wb) = await _stream_pair()
        assert wa.can_write_eof()
        wa.write(b"request")
        wa.write_eof()
        assert await rb.read() == b"request"  # the peer sees end of stream
        wb.write(b"answer after half-close")
        wb.write_eof()
        assert await ra.read() == b"answer after half-close"
        with pytest.raises(RuntimeError, match="write_eof"):
            wa.write(b"more")
        await _close(wa, wb)

    run(main)


def test_close_flushes_then_closes_the_channel(run: Runner[None]) -> None:
    async def main() -> None:
        a, b = memory_pipe(4096)
        ra, wa = await channel_streams(a)
        rb, wb = await channel_streams(b)
        payload = _pattern(256 * 1024)
        wa.write(payload)  # far more than the pipe holds: most of it is buffered
        assert wa.transport.get_write_buffer_size() > 0
        wa.close()
        assert wa.is_closing()
        assert await rb.read() == payload  # close waited for the buffer to drain
        await wa.wait_closed()
        assert a.closed
        assert await ra.read() == b""
        await _close(wb)
        assert b.closed

    run(main)


def test_abort_drops_buffered_data(run: Runner[None]) -> None:
    async def main() -> None:
        a, b = memory_pipe(4096)
        _ra, wa = await channel_streams(a)
        rb, wb = await channel_streams(b)
        wa.write(_pattern(1024 * 1024))
        wa.transport.abort()
        await wa.wait_closed()
        received = await rb.read()
        assert 0 < len(received) < 1024 * 1024
        await _close(wb)

    run(main)


class _Recorder(asyncio.Protocol):
    """Records what a transport delivers, with events to wait on."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.transport: ChannelTransport | None = None
        self.arrived = asyncio.Event()
        self.eof = asyncio.Event()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.pauses = 0
        self.resumes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, ChannelTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.arrived.set()

    def eof_received(self) -> bool:
        self.eof.set()
        return True

    def pause_writing(self) -> None:
        self.pauses += 1

    def resume_writing(self) -> None:
        self.resumes += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


async def _spin(rounds: int = 20) -> None:
    """Let the loop run every ready callback a number of times (no timing involved)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def test_pause_and_resume_reading(run: Runner[None]) -> None:
    async def main() -> None:
        a, b = memory_pipe()
        transport, protocol = await connect_channel(a, _Recorder)
        transport.pause_reading()
        assert not transport.is_reading()
        b.write_all(b"held back")
        await _spin()
        assert protocol.data == b""  # paused: nothing delivered although data waits
        transport.resume_reading()
        assert transport.is_reading()
        await protocol.arrived.wait()
        assert protocol.data == b"held back"
        b.close()
        await protocol.eof.wait()  # eof_received returned True: the transport stays open
        assert not transport.is_closing()
        transport.close()
        assert await protocol.lost is None

    run(main)


def test_write_buffer_limits_pause_and_resume_the_protocol(run: Runner[None]) -> None:
    async def main() -> None:
        a, b = memory_pipe(1024)
        transport, protocol = await connect_channel(a, _Recorder)
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        with pytest.raises(ValueError, match="must be >="):
            transport.set_write_buffer_limits(high=10, low=20)
        transport.set_write_buffer_limits(high=8192, low=1024)
        transport.write(_pattern(32 * 1024))
        assert protocol.pauses == 1
        reader_r, reader_w = await channel_streams(b)
        assert await reader_r.readexactly(32 * 1024) == _pattern(32 * 1024)
        assert protocol.resumes == 1
        assert transport.get_write_buffer_size() == 0
        transport.close()
        await protocol.lost
        await _close(reader_w)

    run(main)


class _Buffered(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buffer = bytearray(1000)
        self.received = bytearray()
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received += self.buffer[:nbytes]

    def eof_received(self) -> bool:
        self.done.set_result(bytes(self.received))
        return False


def test_buffered_protocol_reads_into_its_own_buffer(run: Runner[None]) -> None:
    async def main() -> None:
        a, b = memory_pipe()
        transport, protocol = await connect_channel(a, _Buffered)
        payload = _pattern(100_000)
        _writer_r, writer_w = await channel_streams(b)
        writer_w.write(payload)
        writer_w.write_eof()
        assert await protocol.done == payload
        await _close(writer_w)
        assert transport.is_closing()  # eof_received returned False: the transport closes

    run(main)


def test_channel_error_reaches_connection_lost(run: Runner[None]) -> None:
    async def main() -> None:
        a, b = memory_pipe()
        transport, protocol = await connect_channel(a, _Recorder)
        b.shutdown(Shutdown.READ)  # the peer stops reading: our next write breaks
        transport.write(b"nobody reads this")
        exc = await protocol.lost
        assert isinstance(exc, ChannelError)
        assert exc.errno == errno.EPIPE
        assert a.closed
        b.close()

    run(main)


def test_half_close_needs_shutdown_support(run: Runner[None]) -> None:
    async def main() -> None:
        transport, protocol = await connect_channel(QIOChannelNull(), _Recorder)
        assert not transport.can_write_eof()
        with pytest.raises(ChannelError) as info:
            transport.write_eof()
        assert info.value.errno == errno.ENOTSUP
        transport.close()
        await protocol.lost

    run(main)


def test_extra_info_exposes_the_channel(run: Runner[None]) -> None:
    async def main() -> None:
        a, b = memory_pipe()
        _reader, writer = await channel_streams(a)
        assert writer.get_extra_info("qiochan_channel") is a
        assert writer.get_extra_info("peername") is None
        with pytest.raises(TypeError, match="bytes-like"):
            writer.write("text")  # type: ignore[arg-type]
        await _close(writer)
        b.close()

    run(main)


def test_the_loop_never_blocks_while_a_transfer_waits(run: Runner[None]) -> None:
    async def main() -> None:
        a, b = memory_pipe(1024)
        reader, writer = await channel_streams(a)
        writer.write(_pattern(256 * 1024))  # above the high-water mark: drain must wait
        drained = asyncio.create_task(writer.drain())
        await _spin()
        assert not drained.done()  # nobody reads b: the writer waits, the loop runs on
        peer_reader, peer_writer = await channel_streams(b)
        assert await peer_reader.readexactly(256 * 1024) == _pattern(256 * 1024)
        await drained
        await _close(writer, peer_writer)
        assert reader.at_eof() or await reader.read() == b""

    run(main)


def _require(*schemes: str) -> None:
    """Skip unless an available backend serves every scheme (transport or layer)."""
    from qiochan.registry import backends

    served = {s for b in backends().values() if b.available for s in b.schemes}
    missing = [scheme for scheme in schemes if scheme not in served]
    if missing:
        pytest.skip(f"no available backend for {', '.join(missing)}")


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def _echo_client(address: Any, payload: bytes, **kwargs: Any) -> bytes:
    reader, writer = await qiochan.aio.open_connection(address, **kwargs)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    sending = asyncio.create_task(send())  # read meanwhile, or the echo would stall
    echoed = await reader.read()
    await sending
    writer.close()
    await writer.wait_closed()
    return echoed


@pytest.mark.parametrize("address", ["tcp:127.0.0.1:0", "unix"])
def test_start_server_serves_concurrent_clients(
    run: Runner[None], address: str, tmp_path: Path
) -> None:
    _require("tcp", "unix")
    if address == "unix":
        address = f"unix:{tmp_path}/echo.sock"

    async def main() -> None:
        async with await qiochan.aio.start_server(_echo, address) as server:
            assert server.is_serving()
            payloads = [_pattern(n) for n in (1, 70_000, 3 * 1024 * 1024)]
            echoed = await asyncio.gather(*(_echo_client(str(server.address), p) for p in payloads))
            assert echoed == payloads
        assert not server.is_serving()

    run(main)


def test_extra_info_names_both_ends_of_a_tcp_connection(run: Runner[None]) -> None:
    _require("tcp")

    async def main() -> None:
        accepted: asyncio.Future[tuple[Any, Any]] = asyncio.get_running_loop().create_future()

        async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result((writer.get_extra_info("peername"), writer))

        async with await qiochan.aio.start_server(record, "tcp:127.0.0.1:0") as server:
            reader, writer = await qiochan.aio.open_connection(str(server.address))
            peer, server_writer = await accepted
            assert writer.get_extra_info("peername") == ("127.0.0.1", server.address.port)
            assert writer.get_extra_info("sockname") == peer
            server_writer.close()
            assert await reader.read() == b""
            await _close(writer, server_writer)

    run(main)


def test_serve_forever_returns_on_close_and_cancel_closes(run: Runner[None]) -> None:
    _require("tcp")

    async def main() -> None:
        server = await qiochan.aio.start_server(_echo, "tcp:127.0.0.1:0", start_serving=False)
        assert not server.is_serving()
        serving = asyncio.create_task(server.serve_forever())
        assert await _echo_client(str(server.address), b"x") == b"x"
        server.close()
        await serving  # close() ends serve_forever normally
        await server.wait_closed()

        server = await qiochan.aio.start_server(_echo, "tcp:127.0.0.1:0")
        serving = asyncio.create_task(server.serve_forever())
        await _spin()
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not server.is_serving()
        with pytest.raises(ChannelError):
            await server.start_serving()

    run(main)


def test_open_connection_errors(run: Runner[None]) -> None:
    _require("tcp")

    async def main() -> None:
        with pytest.raises(ChannelError) as info:
            await qiochan.aio.open_connection("tcp:127.0.0.1:1")
        assert info.value.errno == errno.ECONNREFUSED
        with pytest.raises(qiochan.AddressError):
            await qiochan.aio.open_connection("tcp:127.0.0.1")

    run(main)


@pytest.fixture
def creds(tls_creds_dir: Path) -> Path:
    _require("tls")
    return tls_creds_dir


def _chain(name: str, creds: Path) -> tuple[str, list[str], list[str]]:
    """Return (listen address, server layers, client layers) for a chain."""
    tls_server, tls_client = f"tls:creds={creds}", f"tls:creds={creds},hostname=localhost"
    websocket = "websocket:path=/stream"
    return {
        "tls": ("tcp:127.0.0.1:0", [tls_server], [tls_client]),
        "websocket": ("tcp:127.0.0.1:0", [websocket], [websocket]),
        "websocket-over-tls": (
            "tcp:127.0.0.1:0",
            [tls_server, websocket],
            [tls_client, websocket],
        ),
        "wss-url": ("wss://127.0.0.1:0/stream", [tls_server], [tls_client]),
    }[name]


@pytest.mark.parametrize("chain", ["tls", "websocket", "websocket-over-tls", "wss-url"])
def test_stream_code_over_tls_and_websocket_chains(
    run: Runner[None], creds: Path, chain: str
) -> None:
    _require("tcp", "tls", "websocket")
    listen_address, server_layers, client_layers = _chain(chain, creds)

    async def line_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        name = (await reader.readline()).strip()
        writer.write(b"hello " + name + b"\n")
        size = int(await reader.readline())
        blob = await reader.readexactly(size)
        writer.write(hashlib.sha256(blob).hexdigest().encode() + b"\n")
        await writer.drain()
        assert await reader.read() == b""  # the client's end of stream
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        server = await qiochan.aio.start_server(line_server, listen_address, layers=server_layers)
        async with server:
            address = str(server.address)
            reader, writer = await qiochan.aio.open_connection(address, layers=client_layers)
            writer.write(b"qiochan\n")
            assert await reader.readline() == b"hello qiochan\n"
            blob = _pattern(3 * 1024 * 1024 + 17)
            writer.write(b"%d\n" % len(blob))
            writer.write(blob)
            await writer.drain()
            digest = await reader.readline()
            assert digest.strip().decode() == hashlib.sha256(blob).hexdigest()
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()

    run(main)


def test_a_failed_handshake_does_not_stop_the_server(run: Runner[None], creds: Path) -> None:
    _require("tcp", "tls")

    async def main() -> None:
        server = await qiochan.aio.start_server(
            _echo, "tcp:127.0.0.1:0", layers=[f"tls:creds={creds}"]
        )
        async with server:
            address = str(server.address)
            with pytest.raises(qiochan.HandshakeError):
                # the client refuses the server certificate: both ends fail the handshake
                await qiochan.aio.open_connection(
                    address, layers=[f"tls:creds={creds},hostname=not-the-server"]
                )
            layers = [f"tls:creds={creds},hostname=localhost"]
            echoed = await _echo_client(address, b"still serving", layers=layers)
            assert echoed == b"still serving"

    run(main)


def _watched_by_loop(loop: asyncio.AbstractEventLoop, channel: Any) -> bool:
    """True when any watch the loop polls for belongs to ``channel``."""
    from qiochan import watch as watch_module

    table = watch_module._loops.get(loop)
    if table is None:
        return False
    sets = [*list(table.readers.values()), *list(table.writers.values())]
    return any(w.channel is channel for watches in sets for w in list(watches))


@pytest.mark.parametrize("how", ["peer-eof", "close-with-buffered-data", "write-error"])
def test_the_loop_forgets_the_channel_before_it_is_closed(run: Runner[None], how: str) -> None:
    # closing happens in a worker thread: an fd still polled by the loop when it is
    # closed (and maybe reused) corrupts the loop -- uvloop aborts the process
    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = memory_pipe(1024)
        watched_at_close: list[bool] = []
        io_close = a.io_close

        def checked_close() -> None:
            watched_at_close.append(_watched_by_loop(loop, a))
            io_close()

        a.io_close = checked_close  # type: ignore[method-assign]
        transport, protocol = await connect_channel(a, _Recorder)
        if how == "peer-eof":
            b.write_all(b"last words")
            b.close()
            await protocol.eof.wait()
            transport.close()
        elif how == "close-with-buffered-data":
            transport.write(_pattern(64 * 1024))
            transport.close()
            peer_reader, peer_writer = await channel_streams(b)
            assert len(await peer_reader.read()) == 64 * 1024
            await _close(peer_writer)
        else:
            b.shutdown(Shutdown.READ)
            transport.write(b"x")
        await protocol.lost
        assert watched_at_close == [False]
        if how != "close-with-buffered-data":
            b.close()

    run(main)


def test_tcp_connect_and_socket_close_need_no_thread(run: Runner[None]) -> None:
    """A socket connects on the loop and closes on it, its end reported on a later turn."""
    _require("tcp")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        no_threads = NoThreads()
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            loop.set_default_executor(no_threads)
            channel = await qiochan.aio.aconnect(f"tcp:127.0.0.1:{port}")
            assert channel.blocking  # as connect() returns it
            peer, _ = server.accept()
            with peer:
                transport, protocol = await connect_channel(channel, Ends)
                transport.close()
                assert not protocol.lost  # never from inside close()
                await protocol.ended
                assert channel.closed and protocol.lost == [None]
                assert peer.recv(1) == b""
        assert no_threads.used == []

    run(main)


def test_a_socket_transport_aborted_after_its_loop_closed_still_ends(no_fd_leak: None) -> None:
    _require("tcp")
    mine, theirs = socket.socketpair()
    with theirs:
        channel = QIOChannelSocket.from_socket(mine)
        loop = asyncio.new_event_loop()
        transport, protocol = loop.run_until_complete(connect_channel(channel, lambda: Ends(loop)))
        loop.close()
        transport.abort()  # nothing runs on a closed loop: the protocol is told at once
        assert channel.closed and protocol.lost == [None]


def test_an_acceptor_out_of_fds_backs_off_and_goes_on(
    run: Runner[None], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """EMFILE from accept() pauses a LayerAcceptor's listening channel; the client comes later."""
    monkeypatch.setattr(qiochan.aio, "ACCEPT_RETRY_DELAY", 0.5)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        acceptor = await qiochan.aio.alisten("tcp:127.0.0.1:0")
        try:
            (listening,) = acceptor.listener.sioc
            attempts = record_accepts(monkeypatch, listening, loop.time)
            with socket.create_connection(("127.0.0.1", acceptor.address.port)):
                with no_free_fds():  # giving up would close the acceptor: accept() fails
                    await assert_accept_backs_off(attempts, 0.5)
                with await asyncio.wait_for(acceptor.accept(), 10) as served:
                    assert isinstance(served, QIOChannelSocket)
            assert attempts[-1] - attempts[0] >= 0.4, "accepting resumed after the delay"
        finally:
            acceptor.close()
            acceptor.listener.close()

    run(main)
    assert "accepting again in 0.5 s" in caplog.text
