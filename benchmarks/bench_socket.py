"""Socket channel throughput and per-call overhead, as ratios against raw Python socket I/O.

Run: ``python benchmarks/bench_socket.py [--mib N] [--repeat N]``

Each row moves the same bytes with :class:`QIOChannelSocket` and with the raw
``socket`` calls a careful Python programmer would write (``sendall``,
``recv_into`` loops, ``sendmsg`` loops, ``os.write``), interleaved in the same
run; the ratio is raw time / qiochan time (1.0 = as fast as raw).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import (
    KIB,
    MIB,
    Comparison,
    SocketPair,
    compare,
    in_thread,
    print_table,
    recv_exactly,
    tcp_pair,
    unix_pair,
    volume_parser,
)

from qiochan_socket import QIOChannelSocket

# 1-byte writes per batch: well below what a unix socket queues before blocking
_BATCH = 100


def bench_stream(
    name: str, make_pair: Callable[[], SocketPair], total: int, repeat: int
) -> Comparison:
    """write_all/read_all of 1 MiB chunks vs sendall/recv_into loops."""
    raw_w, raw_r = make_pair()
    ours_w_sock, ours_r_sock = make_pair()
    ours_w = QIOChannelSocket.from_socket(ours_w_sock)
    ours_r = QIOChannelSocket.from_socket(ours_r_sock)
    chunk = bytes(MIB)
    buf = bytearray(MIB)
    view = memoryview(buf)
    count = total // MIB

    def raw() -> None:
        def send() -> None:
            for _ in range(count):
                raw_w.sendall(chunk)

        join = in_thread(send)
        for _ in range(count):
            recv_exactly(raw_r, view)
        join()

    def ours() -> None:
        def send() -> None:
            for _ in range(count):
                ours_w.write_all(chunk)

        join = in_thread(send)
        for _ in range(count):
            ours_r.read_all(buf)
        join()

    try:
        return compare(
            name,
            ours,
            raw,
            repeat=repeat,
            target=0.90,
            work_bytes=count * MIB,
            use_median=True,
        )
    finally:
        for closable in (raw_w, raw_r, ours_w, ours_r):
            closable.close()


def bench_writev(total: int, repeat: int) -> Comparison:
    """writev_all of 64 x 4 KiB buffers vs a raw sendmsg loop (unix socketpair)."""
    iov = [bytes([i]) * (4 * KIB) for i in range(64)]
    batch = sum(len(b) for b in iov)
    count = max(1, total // batch)
    raw_w, raw_r = unix_pair()
    ours_w_sock, ours_r_sock = unix_pair()
    ours_w = QIOChannelSocket.from_socket(ours_w_sock)
    sink = bytearray(MIB)

    def drain(sock: socket.socket) -> Callable[[], None]:
        def run() -> None:
            left = count * batch
            view = memoryview(sink)
            while left:
                left -= sock.recv_into(view[: min(left, len(view))])

        return in_thread(run)

    def raw_sendmsg_all() -> None:
        for _ in range(count):
            views = [memoryview(b) for b in iov]
            while views:
                n = raw_w.sendmsg(views)
                while views and n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                if n:
                    views[0] = views[0][n:]

    def raw() -> None:
        join = drain(raw_r)
        raw_sendmsg_all()
        join()

    def ours() -> None:
        join = drain(ours_r_sock)
        for _ in range(count):
            ours_w.writev_all(iov)
        join()

    try:
        return compare(
            "writev_all 64 x 4 KiB (unix)",
            ours,
            raw,
            repeat=repeat,
            target=0.90,
            work_bytes=count * batch,
            use_median=True,
        )
    finally:
        for closable in (raw_w, raw_r, ours_w, ours_r_sock):
            closable.close()


def bench_small_write(repeat: int) -> Comparison:
    """A 1-byte write(): channel.write vs os.write on a unix socketpair.

    A unix socket queues each small write as its own buffer, so the writes go
    in batches of :data:`_BATCH`, each followed by draining the peer (the same
    drain on both sides, so it cancels out of the per-call overhead).
    """
    batches = 100
    calls = batches * _BATCH
    raw_w, raw_r = unix_pair()
    ours_w_sock, ours_r_sock = unix_pair()
    ours_w = QIOChannelSocket.from_socket(ours_w_sock)
    fd = raw_w.fileno()
    sink = bytearray(_BATCH)
    byte = b"x"

    def drain(sock: socket.socket) -> None:
        view = memoryview(sink)
        done = 0
        while done < _BATCH:
            done += sock.recv_into(view[done:])

    def raw() -> None:
        for _ in range(batches):
            for _ in range(_BATCH):
                os.write(fd, byte)
            drain(raw_r)

    def ours() -> None:
        write = ours_w.write
        for _ in range(batches):
            for _ in range(_BATCH):
                write(byte)
            drain(ours_r_sock)

    try:
        row = compare("1-byte write (unix), per call", ours, raw, repeat=repeat)
    finally:
        for closable in (raw_w, raw_r, ours_w, ours_r_sock):
            closable.close()
    row.scale(calls)
    return row


def main() -> None:
    parser = volume_parser(__doc__, repeat=11)
    args = parser.parse_args()
    total = args.mib * MIB
    rows = [
        bench_stream("write_all/read_all 1 MiB (unix pair)", unix_pair, total, args.repeat),
        bench_stream("write_all/read_all 1 MiB (TCP lo)", tcp_pair, total, args.repeat),
        bench_writev(total, args.repeat),
        bench_small_write(args.repeat),
    ]
    print_table(
        f"qiochan socket vs raw Python sockets (medians of {args.repeat} interleaved runs; "
        "the 1-byte row is the best run)",
        rows,
    )
    small = rows[-1]
    print(
        f"1-byte write overhead over os.write: {small.overhead * 1e9:.0f} ns per call "
        f"({small.ours * 1e9:.0f} ns vs {small.raw * 1e9:.0f} ns)"
    )


if __name__ == "__main__":
    main()
