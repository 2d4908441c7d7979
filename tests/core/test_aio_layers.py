"""qiochan.aio runs layer handshakes on the loop: stalled clients, many clients, deadlines.

Real TCP sockets, real TLS and websocket layers, under asyncio and uvloop.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import qiochan.aio
from qiochan.aio import connect_channel
from qiochan.errors import HandshakeError
from tests.helpers.aio import Ends, NoThreads, Runner, bounded_runner, warm_loop

pytest.importorskip("websockets")

TLS_HELLO_START = b"\x16\x03\x01"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Runner[Any]]:
    """Run a coroutine function on a fresh loop of the parametrized kind, bounded in time."""
    warm_loop(request.param)
    yield bounded_runner(request.param, 50)


@pytest.fixture(params=["tls", "websocket", "tls+websocket"])
def chain(request: pytest.FixtureRequest, tls_creds_dir: Path) -> tuple[list[str], list[str]]:
    """(server layers, client layers)."""
    tls_server = f"tls:creds={tls_creds_dir}"
    tls_client = f"tls:creds={tls_creds_dir},hostname=localhost"
    websocket = "websocket:path=/"
    chains = {
        "tls": ([tls_server], [tls_client]),
        "websocket": ([websocket], [websocket]),
        "tls+websocket": ([tls_server, websocket], [tls_client, websocket]),
    }
    server, client = chains[request.param]
    return server, client


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def _round_trip(address: str, layers: list[str], payload: bytes) -> bytes:
    reader, writer = await qiochan.aio.open_connection(address, layers=layers)
    try:
        writer.write(payload)
        await writer.drain()
        return await reader.readexactly(len(payload))
    finally:
        writer.close()
        await writer.wait_closed()


@asynccontextmanager
async def stalled_clients(port: int, count: int) -> AsyncIterator[list[socket.socket]]:
    """Connect ``count`` raw TCP clients on the running loop; every other one sends 16 03 01."""
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        socks: list[socket.socket] = []
        for index in range(count):
            sock = stack.enter_context(socket.socket())
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            if index % 2:
                await loop.sock_sendall(sock, TLS_HELLO_START)
            socks.append(sock)
        yield socks


def test_a_thousand_stalled_clients_do_not_stop_a_layered_server(
    run: Runner[None], chain: tuple[list[str], list[str]], no_fd_leak: None
) -> None:
    server_layers, client_layers = chain

    async def main() -> None:
        server = await qiochan.aio.start_server(
            _echo, "tcp:127.0.0.1:0", layers=server_layers, backlog=1024
        )
        async with server:
            port = server.address.port
            async with stalled_clients(port, 1000):
                echoed = await _round_trip(f"tcp:127.0.0.1:{port}", client_layers, b"hello")
                assert echoed == b"hello"
                assert server.acceptor.handshaking >= 1000  # all still waiting, none served

    run(main)


def test_two_hundred_layered_clients_and_their_server_share_one_loop(
    run: Runner[None], chain: tuple[list[str], list[str]], no_fd_leak: None
) -> None:
    server_layers, client_layers = chain

    async def main() -> None:
        server = await qiochan.aio.start_server(
            _echo, "tcp:127.0.0.1:0", layers=server_layers, backlog=256
        )
        async with server:
            address = str(server.address)
            payloads = [b"client %d" % n for n in range(200)]
            echoed = await asyncio.gather(
                *(_round_trip(address, client_layers, p) for p in payloads)
            )
            assert echoed == payloads

    run(main)


def test_alisten_and_aconnect_give_layered_channels_with_deadlines(
    run: Runner[None], chain: tuple[list[str], list[str]], no_fd_leak: None
) -> None:
    server_layers, client_layers = chain

    async def main() -> None:
        acceptor = await qiochan.aio.alisten(
            "tcp:127.0.0.1:0", layers=server_layers, handshake_timeout=0.3
        )
        try:
            port = acceptor.address.port
            async with stalled_clients(port, 1):
                # the stalled client's deadline passes first, then a good client is served
                with pytest.raises(HandshakeError) as info:
                    await acceptor.accept()
                assert info.value.errno == errno.ETIMEDOUT
            connecting = asyncio.create_task(
                qiochan.aio.aconnect(f"tcp:127.0.0.1:{port}", layers=client_layers, timeout=30)
            )
            with await acceptor.accept() as served, await connecting as client:
                assert client.blocking and served.blocking
                await client.awrite_all(b"ping")
                buf = bytearray(4)
                await served.aread_all(buf)
                assert buf == b"ping"
        finally:
            await acceptor.aclose()
            acceptor.listener.close()

    run(main)


def test_aconnect_timeout_bounds_the_handshakes(
    run: Runner[None], chain: tuple[list[str], list[str]], no_fd_leak: None
) -> None:
    _server_layers, client_layers = chain

    async def main() -> None:
        with socket.create_server(("127.0.0.1", 0)) as silent:
            port = silent.getsockname()[1]
            with pytest.raises(HandshakeError) as info:
                await qiochan.aio.aconnect(
                    f"tcp:127.0.0.1:{port}", layers=client_layers, timeout=0.3
                )
            assert info.value.errno == errno.ETIMEDOUT
            silent.accept()[0].close()

    run(main)


def test_a_layered_transport_says_goodbye_and_closes_on_the_loop(
    run: Runner[None], chain: tuple[list[str], list[str]], no_fd_leak: None
) -> None:
    """close_notify and the websocket close frame go out from the loop: no worker thread."""
    server_layers, client_layers = chain

    async def main() -> None:
        loop = asyncio.get_running_loop()
        acceptor = await qiochan.aio.alisten("tcp:127.0.0.1:0", layers=server_layers)
        try:
            port = acceptor.address.port
            connecting = asyncio.create_task(
                qiochan.aio.aconnect(f"tcp:127.0.0.1:{port}", layers=client_layers, timeout=30)
            )
            with await acceptor.accept() as served:
                client = await connecting
                no_threads = NoThreads()
                loop.set_default_executor(no_threads)
                transport, protocol = await connect_channel(client, Ends)
                transport.write(b"last words")
                transport.close()
                await protocol.ended
                assert protocol.lost == [None]
                assert client.closed and no_threads.used == []
                buf = bytearray(10)
                await served.aread_all(buf)
                assert buf == b"last words"
                # the goodbye arrived: a clean end of stream, not a cut connection
                assert await served.aread_all_eof(bytearray(1)) is False
        finally:
            await acceptor.aclose()
            acceptor.listener.close()

    run(main)
