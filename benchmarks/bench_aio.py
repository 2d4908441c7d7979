"""asyncio streams over qiochan channels, as ratios against asyncio's own socket streams.

Run: ``python benchmarks/bench_aio.py [--mib N] [--repeat N]``

The same stream code moves the same bytes over a TCP loopback connection
twice in one run: once with :func:`qiochan.aio.open_connection` /
:func:`qiochan.aio.start_server` (a ``QIOChannelSocket`` driven by its watches),
once with :func:`asyncio.open_connection` / :func:`asyncio.start_server` (the
loop's own socket transport).  Rows for the default asyncio loop and for
uvloop; the ratio is asyncio time / qiochan time (1.0 = as fast).

Then the latency a good TLS client sees from a ``start_server(...,
layers=[tls])`` on the same loop: connect, handshake and one echo, with no
other client and with ``--stalled`` (default 1000) raw TCP clients that
connected and stalled (half of them after sending ``16 03 01``).  The issue's
target: the stalled clients delay the good one by at most 50 ms.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import MIB, Comparison, compare, print_table, volume_parser

import qiochan.aio

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_CHUNK = 256 * 1024


async def _pair(
    start: Callable[..., Awaitable[Any]], connect: Callable[[Any], Awaitable[Streams]]
) -> tuple[Streams, Streams, Any]:
    """Start a server, connect one client; return (client, server side, server)."""
    accepted: asyncio.Future[Streams] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result((reader, writer))

    server = await start(on_client)
    client = await connect(server)
    return client, await accepted, server


async def _qiochan_pair() -> tuple[Streams, Streams, Any]:
    async def start(cb: Any) -> Any:
        return await qiochan.aio.start_server(cb, "tcp:127.0.0.1:0")

    async def connect(server: Any) -> Streams:
        return await qiochan.aio.open_connection(str(server.address))

    return await _pair(start, connect)


async def _asyncio_pair() -> tuple[Streams, Streams, Any]:
    async def start(cb: Any) -> Any:
        return await asyncio.start_server(cb, "127.0.0.1", 0)

    async def connect(server: Any) -> Streams:
        host, port = server.sockets[0].getsockname()[:2]
        return await asyncio.open_connection(host, port)

    return await _pair(start, connect)


async def _transfer(client: Streams, peer: Streams, size: int, payload: memoryview) -> None:
    """Write ``size`` bytes from ``client`` (draining), read them all at ``peer``."""
    _reader, writer = client
    peer_reader, _peer_writer = peer

    async def send() -> None:
        for offset in range(0, size, _CHUNK):
            writer.write(payload[offset % len(payload) :][:_CHUNK])
            await writer.drain()

    sending = asyncio.create_task(send())
    left = size
    while left:
        left -= len(await peer_reader.read(min(left, 1 << 20)))
    await sending


async def _close(client: Streams, peer: Streams, server: Any) -> None:
    for _reader, writer in (client, peer):
        writer.close()
        await writer.wait_closed()
    server.close()
    await server.wait_closed()


def _bench(loop_name: str, factory: Callable[[], asyncio.AbstractEventLoop], size: int,
           repeat: int) -> Comparison:  # fmt: skip
    payload = memoryview(bytes(range(256)) * (4 * _CHUNK // 256))
    with asyncio.Runner(loop_factory=factory) as runner:
        ours = runner.run(_qiochan_pair())
        raw = runner.run(_asyncio_pair())
        try:
            return compare(
                f"streams over tcp, {loop_name}",
                lambda: runner.run(_transfer(ours[0], ours[1], size, payload)),
                lambda: runner.run(_transfer(raw[0], raw[1], size, payload)),
                repeat=repeat,
                work_bytes=size,
            )
        finally:
            runner.run(_close(*ours))
            runner.run(_close(*raw))


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _good_client_latency(address: str, layers: list[str], rounds: int) -> float:
    """Median seconds for connect + handshakes + one echo of 5 bytes."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        reader, writer = await qiochan.aio.open_connection(address, layers=layers)
        writer.write(b"hello")
        await reader.readexactly(5)
        times.append(time.perf_counter() - start)
        writer.close()
        await writer.wait_closed()
    return statistics.median(times)


async def _stalled_latency(creds: str, stalled: int, rounds: int) -> tuple[float, float]:
    """Return the good client's median latency (idle server, then with ``stalled`` clients)."""
    server = await qiochan.aio.start_server(
        _echo, "tcp:127.0.0.1:0", layers=[f"tls:creds={creds}"], backlog=stalled + 16
    )
    loop = asyncio.get_running_loop()
    layers = [f"tls:creds={creds},hostname=localhost"]
    async with server:
        address = str(server.address)
        idle = await _good_client_latency(address, layers, rounds)
        socks = []
        try:
            for index in range(stalled):
                sock = socket.socket()
                socks.append(sock)
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", server.address.port))
                if index % 2:
                    await loop.sock_sendall(sock, b"\x16\x03\x01")
            while server.acceptor.handshaking < stalled:
                await asyncio.sleep(0.01)  # let the server accept every stalled client
            busy = await _good_client_latency(address, layers, rounds)
        finally:
            for sock in socks:
                sock.close()
    return idle, busy


def _bench_stalled(stalled: int, rounds: int) -> None:
    from qiochan_tls.certs import create_creds_dir

    with tempfile.TemporaryDirectory() as creds:
        create_creds_dir(creds)
        for name, factory in _loops():
            with asyncio.Runner(loop_factory=factory) as runner:
                idle, busy = runner.run(_stalled_latency(creds, stalled, rounds))
            print(
                f"good TLS client, {name}: {idle * 1000:.1f} ms alone, {busy * 1000:.1f} ms "
                f"beside {stalled} stalled clients (delay {(busy - idle) * 1000:+.1f} ms, "
                "target <= 50 ms)"
            )


def _loops() -> list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]]:
    loops: list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]] = [
        ("asyncio loop", asyncio.new_event_loop)
    ]
    try:
        import uvloop
    except ImportError:
        print("uvloop is not installed: its row is left out", file=sys.stderr)
    else:
        loops.append(("uvloop", uvloop.new_event_loop))
    return loops


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = volume_parser(__doc__, repeat=7)
    parser.add_argument("--stalled", type=int, default=1000, help="stalled TLS clients")
    parser.add_argument("--rounds", type=int, default=21, help="good clients timed")
    args = parser.parse_args(argv)
    size = args.mib * MIB
    rows = [_bench(name, factory, size, args.repeat) for name, factory in _loops()]
    print_table("qiochan.aio vs asyncio streams (ratio = asyncio time / qiochan time)", rows)
    _bench_stalled(args.stalled, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
