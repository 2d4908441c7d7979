"""The floor for bench_relay: the least a Python tcp -> tcp relay can do, as a reference.

One thread, one ``selectors`` loop, no framework: each readable side is read
into one shared 1 MiB buffer (as qiochan's gateway does) and what the other
side does not take at once is kept until it is writable; an end of stream is
passed on as ``shutdown(SHUT_WR)``.  With ``--tap DIR`` every chunk is also
written, there and then, to ``DIR/<n>-<direction>.bin``: the least a tap can
cost.  No error handling beyond dropping a failed connection; it serves until
killed.

Run: ``python _bare_relay.py LISTEN_PORT DEST_PORT [--tap DIR]`` (127.0.0.1 both).
"""

from __future__ import annotations

import argparse
import itertools
import os
import selectors
import socket
from pathlib import Path

READ_SIZE = 1024 * 1024


class Direction:
    """Bytes from ``src`` to ``dst``: what ``dst`` did not take yet, and whether ``src`` ended."""

    def __init__(self, src: socket.socket, dst: socket.socket, tap: int | None) -> None:
        self.src, self.dst, self.tap = src, dst, tap
        self.pending = b""
        self.ended = False


class BareRelay:
    def __init__(self, listen_port: int, dest_port: int, tap: Path | None) -> None:
        self.selector = selectors.DefaultSelector()
        self.server = socket.create_server(("127.0.0.1", listen_port), backlog=128)
        self.server.setblocking(False)
        self.dest_port = dest_port
        self.tap = tap
        self.ids = itertools.count(1)
        self.buffer = memoryview(bytearray(READ_SIZE))
        # each socket: the direction it reads for, the direction it writes for
        self.roles: dict[socket.socket, tuple[Direction, Direction]] = {}
        self.events: dict[socket.socket, int] = {}  # what each socket is registered for
        self.selector.register(self.server, selectors.EVENT_READ)

    def serve(self) -> None:
        while True:
            for key, events in self.selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.server:
                    self.accept()
                elif sock in self.roles:
                    reading, writing = self.roles[sock]
                    if events & selectors.EVENT_WRITE:
                        self.send(writing, writing.pending)
                    if events & selectors.EVENT_READ and sock in self.roles:
                        self.read(reading)

    def accept(self) -> None:
        try:
            client, _ = self.server.accept()
        except BlockingIOError:
            return
        dest = socket.create_connection(("127.0.0.1", self.dest_port))
        client.setblocking(False)
        dest.setblocking(False)
        number = next(self.ids)
        forward = Direction(client, dest, self.open_tap(number, "src-to-dst"))
        backward = Direction(dest, client, self.open_tap(number, "dst-to-src"))
        self.roles[client] = (forward, backward)
        self.roles[dest] = (backward, forward)
        for sock in (client, dest):
            self.update(sock)

    def open_tap(self, number: int, name: str) -> int | None:
        if self.tap is None:
            return None
        return os.open(self.tap / f"{number}-{name}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)

    def read(self, direction: Direction) -> None:
        try:
            n = direction.src.recv_into(self.buffer)
        except BlockingIOError:
            return
        except OSError:
            self.drop(direction.src)
            return
        if n == 0:
            direction.ended = True
        elif direction.tap is not None:
            os.write(direction.tap, self.buffer[:n])
        self.send(direction, self.buffer[:n])

    def send(self, direction: Direction, data: memoryview | bytes) -> None:
        """Send ``data``, keep a copy of what ``dst`` did not take; pass an end of stream on."""
        try:
            while data:
                data = data[direction.dst.send(data) :]
        except BlockingIOError:
            pass
        except OSError:
            self.drop(direction.dst)
            return
        direction.pending = bytes(data)
        if not data and direction.ended:
            try:
                direction.dst.shutdown(socket.SHUT_WR)
            except OSError:
                self.drop(direction.dst)
                return
            if all(d.ended and not d.pending for d in self.roles[direction.src]):
                self.drop(direction.src)
                return
        self.update(direction.src)
        self.update(direction.dst)

    def update(self, sock: socket.socket) -> None:
        """Watch ``sock`` for what it waits for: readable when it may read, writable when owed."""
        reading, writing = self.roles[sock]
        events = 0
        if not reading.ended and not reading.pending:  # flow control: read once sent on
            events |= selectors.EVENT_READ
        if writing.pending:
            events |= selectors.EVENT_WRITE
        current = self.events.get(sock, 0)
        if events == current:
            return
        if not current:
            self.selector.register(sock, events)
        elif not events:
            self.selector.unregister(sock)
        else:
            self.selector.modify(sock, events)
        self.events[sock] = events

    def drop(self, sock: socket.socket) -> None:
        forward, backward = self.roles[sock]
        for one in (forward.src, forward.dst):
            self.roles.pop(one, None)
            if self.events.pop(one, 0):
                self.selector.unregister(one)
            one.close()
        for direction in (forward, backward):
            if direction.tap is not None:
                os.close(direction.tap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("listen_port", type=int)
    parser.add_argument("dest_port", type=int)
    parser.add_argument("--tap", type=Path)
    args = parser.parse_args()
    BareRelay(args.listen_port, args.dest_port, args.tap).serve()


if __name__ == "__main__":
    main()
