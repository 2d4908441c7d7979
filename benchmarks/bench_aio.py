"""asyncio streams over qiochan channels, as ratios against asyncio's own socket streams.

Run: ``python benchmarks/bench_aio.py [--mib N] [--repeat N]``

The same stream code moves the same bytes over a TCP loopback connection
twice in one run: once with :func:`qiochan.aio.open_connection` /
:func:`qiochan.aio.start_server` (a ``QIOChannelSocket`` driven by its watches),
once with :func:`asyncio.open_connection` / :func:`asyncio.start_server` (the
loop's own socket transport).  Rows for the default asyncio loop and for
uvloop; the ratio is asyncio time / qiochan time (1.0 = as fast).
"""

from __future__ import annotations

import asyncio
import sys
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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = volume_parser(__doc__, repeat=7)
    args = parser.parse_args(argv)
    size = args.mib * MIB
    rows = [_bench("asyncio loop", asyncio.new_event_loop, size, args.repeat)]
    try:
        import uvloop
    except ImportError:
        print("uvloop is not installed: its row is left out", file=sys.stderr)
    else:
        rows.append(_bench("uvloop", uvloop.new_event_loop, size, args.repeat))
    print_table("qiochan.aio vs asyncio streams (ratio = asyncio time / qiochan time)", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
