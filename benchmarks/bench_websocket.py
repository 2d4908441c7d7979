"""Websocket throughput over TCP loopback: qiochan vs the websockets library's own sync API.

Three servers run in child processes (a websocket client and server are
different programs in real use, and one process would make both ends share
one GIL); the clients run here, one round after the other, interleaved:

* qiochan: ``qiochan.connect("ws://...")`` and a ``qiochan.listen("ws://...")``
  server, ``write_all``/``read_all`` of 1 MiB;
* websockets: ``websockets.sync.client.connect`` and
  ``websockets.sync.server.serve``, ``send``/``recv`` of 1 MiB messages
  (compression off on both sides: qiochan does not compress);
* raw sockets: ``sendall``/``recv_into`` of 1 MiB, the ceiling.

A round is one of:

* upload: the client sends ``--mib`` MiB in 1 MiB writes (masked frames),
  the server answers one byte once it has them all;
* download: the client sends one byte, the server answers ``--mib`` MiB in
  1 MiB writes (unmasked frames).

The ratio column is the other side's time over qiochan's: the target is
qiochan at least 1.2x the websockets library.

Run: ``python benchmarks/bench_websocket.py [--rounds N] [--mib M]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from _common import MIB, Comparison, compare, print_table

WRITE = MIB
UPLOAD = b"u"
DOWNLOAD = b"d"

Serve = Callable[[Any, int], None]


# -- servers (child processes) --------------------------------------------------------


def serve_qiochan(ready: Any, round_bytes: int) -> None:
    """Accept one ws:// client and answer its rounds until it leaves."""
    import qiochan

    listener = qiochan.listen("ws://127.0.0.1:0/bench")
    ready.put(listener.address.port)
    channel = listener.accept()
    buf = bytearray(WRITE)
    chunk = os.urandom(WRITE)
    request = bytearray(1)
    while channel.read_all_eof(request):
        if request == UPLOAD:
            for _ in range(round_bytes // WRITE):
                channel.read_all(buf)
            channel.write_all(b"!")
        else:
            for _ in range(round_bytes // WRITE):
                channel.write_all(chunk)
    channel.close()
    listener.close()


def serve_websockets(ready: Any, round_bytes: int) -> None:
    """Serve websockets connections answering rounds until the parent ends this process."""
    from websockets.sync.server import ServerConnection, serve

    chunk = os.urandom(WRITE)

    def handler(connection: ServerConnection) -> None:
        for request in connection:
            if request == UPLOAD:
                got = 0
                while got < round_bytes:
                    got += len(connection.recv())
                connection.send(b"!")
            else:
                for _ in range(round_bytes // WRITE):
                    connection.send(chunk)

    with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
        ready.put(server.socket.getsockname()[1])
        server.serve_forever()


def serve_raw(ready: Any, round_bytes: int) -> None:
    """Accept one TCP client and answer its rounds until it leaves."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ready.put(listener.getsockname()[1])
        connection, _ = listener.accept()
    view = memoryview(bytearray(WRITE))
    chunk = os.urandom(WRITE)
    with connection:
        while request := connection.recv(1):
            if request == UPLOAD:
                left = round_bytes
                while left:
                    left -= connection.recv_into(view[: min(left, WRITE)])
                connection.sendall(b"!")
            else:
                for _ in range(round_bytes // WRITE):
                    connection.sendall(chunk)


# -- clients (this process) -----------------------------------------------------------


class Client:
    """One connection to a server process; ``upload()`` and ``download()`` run one round."""

    def __init__(self, round_bytes: int) -> None:
        self.round_bytes = round_bytes
        self.writes = round_bytes // WRITE
        self.chunk = os.urandom(WRITE)
        self.buf = bytearray(WRITE)

    def upload(self) -> None:
        raise NotImplementedError

    def download(self) -> None:
        raise NotImplementedError


class QiochanClient(Client):
    def __init__(self, round_bytes: int, port: int, stack: ExitStack) -> None:
        import qiochan

        super().__init__(round_bytes)
        self.channel = stack.enter_context(qiochan.connect(f"ws://127.0.0.1:{port}/bench"))

    def upload(self) -> None:
        self.channel.write_all(UPLOAD)
        for _ in range(self.writes):
            self.channel.write_all(self.chunk)
        self.channel.read_all(self.buf[:1])

    def download(self) -> None:
        self.channel.write_all(DOWNLOAD)
        for _ in range(self.writes):
            self.channel.read_all(self.buf)


class WebsocketsClient(Client):
    def __init__(self, round_bytes: int, port: int, stack: ExitStack) -> None:
        from websockets.sync.client import connect

        super().__init__(round_bytes)
        url = f"ws://127.0.0.1:{port}/bench"
        self.connection = stack.enter_context(connect(url, max_size=None, compression=None))

    def upload(self) -> None:
        self.connection.send(UPLOAD)
        for _ in range(self.writes):
            self.connection.send(self.chunk)
        self.connection.recv()

    def download(self) -> None:
        self.connection.send(DOWNLOAD)
        got = 0
        while got < self.round_bytes:
            got += len(self.connection.recv())


class RawClient(Client):
    def __init__(self, round_bytes: int, port: int, stack: ExitStack) -> None:
        super().__init__(round_bytes)
        self.sock = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
        self.view = memoryview(self.buf)

    def upload(self) -> None:
        self.sock.sendall(UPLOAD)
        for _ in range(self.writes):
            self.sock.sendall(self.chunk)
        self.sock.recv(1)

    def download(self) -> None:
        self.sock.sendall(DOWNLOAD)
        left = self.round_bytes
        while left:
            left -= self.sock.recv_into(self.view[: min(left, WRITE)])


def _start(serve: Serve, round_bytes: int, stack: ExitStack) -> int:
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    process = context.Process(target=serve, args=(ready, round_bytes), daemon=True)
    process.start()
    stack.callback(process.join, 10)
    stack.callback(process.terminate)
    port: int = ready.get(timeout=30)
    return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds per side")
    parser.add_argument("--mib", type=int, default=64, help="MiB moved per round")
    args = parser.parse_args()
    round_bytes = args.mib * MIB
    rows: list[Comparison] = []
    with ExitStack() as stack:
        ours = QiochanClient(round_bytes, _start(serve_qiochan, round_bytes, stack), stack)
        theirs = WebsocketsClient(round_bytes, _start(serve_websockets, round_bytes, stack), stack)
        raw = RawClient(round_bytes, _start(serve_raw, round_bytes, stack), stack)
        for direction in ("upload", "download"):
            mine = getattr(ours, direction)
            for other, name, target in (
                (theirs, "websockets sync", 1.2),
                (raw, "raw socket", None),
            ):
                rows.append(
                    compare(
                        f"{direction} {args.mib} MiB vs {name}",
                        mine,
                        getattr(other, direction),
                        repeat=args.rounds,
                        target=target,
                        work_bytes=round_bytes,
                    )
                )
    print_table("websocket over TCP loopback, 1 MiB writes (raw = the other side)", rows)


if __name__ == "__main__":
    main()
