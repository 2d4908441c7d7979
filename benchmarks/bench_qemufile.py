"""QEMUFile throughput against raw Python I/O over a unix socketpair, in one run.

Run: ``python benchmarks/bench_qemufile.py [--quick]``

The page stream is QEMU's RAM migration shape: an 8-byte big-endian header
before each 4 KiB page.  The peer is a forked process (no GIL sharing) that
drains or produces the bytes with plain ``recv_into``/``sendall``; every round
ends with a one-byte acknowledgement so the timings cover delivery, not just
queueing.

Rows (``ratio`` = raw time / QEMUFile time, 1.0 = as fast as raw):

- ``put_buffer`` page stream vs ``sendall`` of the same bytes in 32 KiB chunks (target 0.70)
- ``put_buffer_async`` page stream vs the same ``sendall`` (target 0.85)
- ``get_be64`` + ``get_buffer_in_place`` vs ``recv_into`` of the same bytes (target 0.60)
- ``put_be64`` / ``get_be64`` values per second vs ``struct.pack_into`` /
  ``unpack_from`` on a bytearray (target: within 2x, i.e. ratio >= 0.50)

Two more rows show where the zero-copy target sits: ``sendmsg`` of the very
iovecs ``put_buffer_async`` queues (64 per call: header, page, header, ...)
against the 32 KiB ``sendall``, i.e. the best a zero-copy writer going
through Python's ``sendmsg`` could do here, and ``put_buffer_async`` against
that ``sendmsg``.  The C core writes those iovecs itself (the socket channel
offers its fd through ``io_write_fd``), so it can beat that row;
``writev_floor.c`` measures the kernel's own floor from C.  The title says
which QEMUFile core ran (``QIOCHAN_NO_SPEEDUPS=1`` selects the Python one).
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import KIB, Comparison, compare, print_table

from qiochan import QEMUFile
from qiochan.qemufile import ACCELERATED, MAX_IOV_SIZE
from qiochan_memory import QIOChannelNull
from qiochan_socket import QIOChannelSocket

PAGE = 4 * KIB
HEADER = struct.Struct(">Q")
CHUNK = 32 * KIB
_ACK = b"!"


def page_stream(pages: int) -> bytes:
    """Return the bytes of ``pages`` header+page records (what every writer sends)."""
    out = bytearray()
    page = bytes(range(256)) * (PAGE // 256)
    for n in range(pages):
        out += HEADER.pack(n * PAGE | 0x8)
        out += page
    return bytes(out)


class Peer:
    """A forked process at the other end of a unix socketpair, driven over a control pipe.

    Commands: ``b"D" + be64(n)``: drain ``n`` bytes from the socket then ack;
    ``b"S"``: send the prepared stream with ``sendall`` then ack.
    """

    def __init__(self, stream: bytes) -> None:
        ours, theirs = socket.socketpair()
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        control_r, control_w = os.pipe()
        ack_r, ack_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - child
            ours.close()
            os.close(control_w)
            os.close(ack_r)
            try:
                self._serve(theirs, control_r, ack_w, stream)
            finally:
                os._exit(0)
        theirs.close()
        os.close(control_r)
        os.close(ack_w)
        self.sock = ours
        self.control = control_w
        self.ack = ack_r

    @staticmethod
    def _serve(sock: socket.socket, control: int, ack: int, stream: bytes) -> None:
        sink = bytearray(1 << 20)
        view = memoryview(sink)
        while True:
            command = os.read(control, 9)
            if not command:
                return
            if command[:1] == b"D":
                left = HEADER.unpack(command[1:9])[0]
                while left:
                    n = sock.recv_into(view[: min(left, len(sink))])
                    if not n:
                        return
                    left -= n
            else:
                sock.sendall(stream)
            os.write(ack, _ACK)

    def drain(self, nbytes: int) -> None:
        """Ask the peer to read ``nbytes`` (call before sending them)."""
        os.write(self.control, b"D" + HEADER.pack(nbytes))

    def send(self) -> None:
        """Ask the peer to send the stream."""
        os.write(self.control, b"S")

    def wait_ack(self) -> None:
        """Block until the peer finished the current command."""
        if os.read(self.ack, 1) != _ACK:
            raise RuntimeError("benchmark peer died")

    def close(self) -> None:
        os.close(self.control)
        os.close(self.ack)
        self.sock.close()
        os.waitpid(self.pid, 0)


@contextmanager
def peer(stream: bytes) -> Iterator[Peer]:
    p = Peer(stream)
    try:
        yield p
    finally:
        p.close()


def writer_rows(pages: int, repeat: int) -> list[Comparison]:
    """The two page-stream writers against sendall in 32 KiB chunks."""
    stream = page_stream(pages)
    total = len(stream)
    view = memoryview(stream)
    page_views = [view[n * (8 + PAGE) + 8 : (n + 1) * (8 + PAGE)] for n in range(pages)]
    # what put_buffer_async hands the kernel: header and page views, MAX_IOV_SIZE per flush
    records = [view[n * (8 + PAGE) : (n + 1) * (8 + PAGE)] for n in range(pages)]
    iovecs = [part for record in records for part in (record[:8], record[8:])]
    batches = [iovecs[k : k + MAX_IOV_SIZE] for k in range(0, len(iovecs), MAX_IOV_SIZE)]
    rows = []
    with peer(b"") as p:
        ioc = QIOChannelSocket.from_socket(p.sock.dup())
        f = QEMUFile.new_output(ioc)

        def raw() -> None:
            p.drain(total)
            send = p.sock.sendall
            for start in range(0, total, CHUNK):
                send(view[start : start + CHUNK])
            p.wait_ack()

        def raw_vectored() -> None:
            p.drain(total)
            send = p.sock.sendmsg
            for batch in batches:
                sent = send(batch)
                if sent != sum(len(part) for part in batch):
                    raise RuntimeError("short sendmsg on a blocking socket")
            p.wait_ack()

        def page_writer(put: Callable[[memoryview], None]) -> Callable[[], None]:
            def run() -> None:
                p.drain(total)
                put64 = f.put_be64
                for n, page in enumerate(page_views):
                    put64(n * PAGE | 0x8)
                    put(page)
                f.fflush()
                p.wait_ack()

            return run

        for name, put, target in (
            ("put_buffer", f.put_buffer, 0.70),
            ("put_buffer_async", f.put_buffer_async, 0.85),
        ):
            rows.append(
                compare(
                    f"page stream {name} / sendall",
                    page_writer(put),
                    raw,
                    repeat=repeat,
                    target=target,
                    work_bytes=total,
                )
            )
        rows.append(
            compare(
                "(floor) raw sendmsg 64 iovecs / sendall",
                raw_vectored,
                raw,
                repeat=repeat,
                work_bytes=total,
            )
        )
        rows.append(
            compare(
                "page stream put_buffer_async / sendmsg",
                page_writer(f.put_buffer_async),
                raw_vectored,
                repeat=repeat,
                work_bytes=total,
            )
        )
        if f.fclose():
            raise RuntimeError(f"QEMUFile writer failed: {f.get_error_obj()}")
    return rows


def reader_row(pages: int, repeat: int) -> Comparison:
    """The page-stream reader against recv_into of the same bytes."""
    stream = page_stream(pages)
    total = len(stream)
    with peer(stream) as p:
        ioc = QIOChannelSocket.from_socket(p.sock.dup())
        f = QEMUFile.new_input(ioc)
        sink = bytearray(CHUNK)
        sink_view = memoryview(sink)

        def raw() -> None:
            p.send()
            left = total
            recv = p.sock.recv_into
            while left:
                left -= recv(sink_view[: min(left, CHUNK)])
            p.wait_ack()

        def ours() -> None:
            p.send()
            get64 = f.get_be64
            get = f.get_buffer_in_place
            for _ in range(pages):
                get64()
                get(PAGE)
            p.wait_ack()

        row = compare(
            "page stream get_be64+in_place / recv_into",
            ours,
            raw,
            repeat=repeat,
            target=0.60,
            work_bytes=total,
        )
        if f.get_error():
            raise RuntimeError(f"QEMUFile reader failed: {f.get_error_obj()}")
        f.fclose()
    return row


def value_rows(count: int, repeat: int) -> list[Comparison]:
    """put_be64/get_be64 against pack_into/unpack_from on a bytearray (per value)."""
    be64 = struct.Struct(">Q")
    scratch = bytearray(CHUNK)
    writer = QEMUFile.new_output(QIOChannelNull())
    values = bytes(8 * count)

    def raw_pack() -> None:
        pack = be64.pack_into
        buf = scratch
        offset = 0
        for v in range(count):
            pack(buf, offset, v)
            offset += 8
            if offset == CHUNK:
                offset = 0

    def ours_put() -> None:
        put = writer.put_be64
        for v in range(count):
            put(v)

    def raw_unpack() -> None:
        unpack = be64.unpack_from
        buf = scratch
        offset = 0
        for _ in range(count):
            unpack(buf, offset)[0]
            offset += 8
            if offset == CHUNK:
                offset = 0

    def ours_get() -> None:
        reader = QEMUFile.open_buffer("r", values)
        get = reader.get_be64
        for _ in range(count):
            get()
        if reader.fclose():
            raise RuntimeError(f"QEMUFile value reader failed: {reader.get_error_obj()}")

    rows = [
        compare("put_be64 / struct.pack_into", ours_put, raw_pack, repeat=repeat, target=0.5),
        compare("get_be64 / struct.unpack_from", ours_get, raw_unpack, repeat=repeat, target=0.5),
    ]
    writer.fclose()
    for row in rows:
        row.name += f" ({count / row.ours / 1e6:.1f} M/s)"
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark and print the table; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer pages and repeats")
    args = parser.parse_args(argv)
    pages, repeat, count = (2048, 3, 200_000) if args.quick else (16384, 7, 1_000_000)
    rows = writer_rows(pages, repeat)
    rows.append(reader_row(pages, repeat))
    rows += value_rows(count, repeat)
    core = "C core" if ACCELERATED else "pure-Python core"
    print_table(f"QEMUFile ({core}) over a unix socketpair ({pages} pages of {PAGE} bytes)", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
