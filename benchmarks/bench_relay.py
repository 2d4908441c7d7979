"""The gateway against socat and websockify, in one run, with 1 and 16 concurrent streams.

Pairs compared (each relay a serving child process, the same clients and sink):

* tcp -> tcp: ``qiochan relay tcp:... tcp:SINK`` vs ``socat TCP-LISTEN:...,fork TCP:SINK``;
* ws -> tcp: ``qiochan relay ws://.../ tcp:SINK`` vs ``websockify PORT SINK``, with the
  same websocket client (the ``websockets`` library's sync client) in front of both;
* tap: ``qiochan relay ... --tap DIR`` vs the same relay without, tcp -> tcp
  (DIR on tmpfs when ``/dev/shm`` exists: on a disk, the disk's write speed
  bounds the relay);
* the floor, as a reference: ``_bare_relay.py``, the least a Python tcp -> tcp
  relay does (one ``selectors`` loop, no framework), without and with a tap
  written in the same thread.  What it loses to 16 streams, or to its tap, is
  what this machine (its cores, its memory) costs any relay.

Each stream sends an 8-byte length then that many random bytes; the sink (a
child process, one thread per connection) answers 8 bytes once it has them
all.  A round is all streams at once; the figure is the aggregate MB/s of the
best of ``--rounds`` rounds, interleaving the relays.  Targets: tcp -> tcp
>= 1.2x socat, ws -> tcp >= 1.3x websockify, 16 streams >= 0.8x one stream's
aggregate, the tap costing at most 10 %.

A round moves 1 GiB by default.  A shorter one measures more than the relay:
256 MiB go through in about a tenth of a second, and with 16 streams most of
that time the data sits in the 64 sockets' kernel buffers, filling them
(even the bare loop then gets 0.68-0.74x of its one-stream aggregate).

Run: ``python benchmarks/bench_relay.py [--mib M] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from _common import MIB

CHUNK = MIB
_DATA = os.urandom(CHUNK)
_HEADER = struct.Struct("!Q")


def _sink_connection(conn: socket.socket) -> None:
    with conn:
        header = conn.recv(_HEADER.size, socket.MSG_WAITALL)
        if len(header) < _HEADER.size:
            return  # a readiness probe
        (size,) = _HEADER.unpack(header)
        buffer = memoryview(bytearray(CHUNK))
        while size > 0:
            n = conn.recv_into(buffer, min(size, CHUNK))
            if not n:
                return
            size -= n
        conn.sendall(b"complete")


def _sink(server: socket.socket) -> None:
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_sink_connection, args=(conn,), daemon=True).start()


@contextlib.contextmanager
def sink() -> Iterator[int]:
    """A sink server in a child process; yields its port."""
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    process = multiprocessing.Process(target=_sink, args=(server,), daemon=True)
    process.start()
    port: int = server.getsockname()[1]
    server.close()
    try:
        yield port
    finally:
        process.terminate()
        process.join()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return
        except ConnectionRefusedError:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(0.05)
    raise RuntimeError(f"{process.args!r} never listened on {port}")


@contextlib.contextmanager
def relay(argv: list[str], port: int) -> Iterator[None]:
    """Run a serving relay; wait until it accepts on ``port``."""
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_port(port, process)
        yield
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tcp_stream(port: int, size: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_HEADER.pack(size))
        left = size
        while left > 0:
            sock.sendall(_DATA[: min(left, CHUNK)])
            left -= CHUNK
        assert sock.recv(8, socket.MSG_WAITALL) == b"complete"


def _ws_stream(port: int, size: int) -> None:
    from websockets.sync.client import connect
    from websockets.typing import Subprotocol

    binary = [Subprotocol("binary")]
    with connect(f"ws://127.0.0.1:{port}/", compression=None, subprotocols=binary) as ws:
        ws.send(_HEADER.pack(size))
        left = size
        while left > 0:
            ws.send(_DATA[: min(left, CHUNK)])
            left -= CHUNK
        reply = b""
        while len(reply) < 8:
            message = ws.recv()
            reply += message if isinstance(message, bytes) else message.encode()
        assert reply == b"complete"


def one_round(stream: Callable[[int, int], None], port: int, streams: int, total: int) -> float:
    """Run ``streams`` streams of ``total / streams`` bytes at once; return the seconds.

    Raises:
        RuntimeError: a stream failed (the relay dropped it).
    """
    size = total // streams
    errors: list[BaseException] = []

    def run() -> None:
        try:
            stream(port, size)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(streams)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {streams} streams failed: {errors[0]!r}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="MiB per round (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per relay (default 3)")
    args = parser.parse_args()
    total = args.mib * MIB
    qiochan = [sys.executable, "-m", "qiochan", "relay"]
    socat = shutil.which("socat")
    websockify = shutil.which("websockify") or shutil.which(
        "websockify", path=os.path.dirname(sys.executable)
    )
    results: dict[tuple[str, int], float] = {}
    # the tap writes to tmpfs where there is one: its cost, not the disk's speed, is measured
    tap_parent = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with sink() as sink_port, tempfile.TemporaryDirectory(dir=tap_parent) as tap:
        sink_addr = f"127.0.0.1:{sink_port}"
        port = _free_port()
        relays: list[tuple[str, list[str], Callable[[int, int], None]]] = [
            (
                "qiochan tcp->tcp",
                [*qiochan, f"tcp:127.0.0.1:{port}", f"tcp:{sink_addr}"],
                _tcp_stream,
            ),
            (
                "qiochan tcp->tcp --tap",
                [*qiochan, f"tcp:127.0.0.1:{port}", f"tcp:{sink_addr}", "--tap", tap],
                _tcp_stream,
            ),
            (
                "qiochan ws->tcp",
                [*qiochan, f"ws://127.0.0.1:{port}/", f"tcp:{sink_addr}"],
                _ws_stream,
            ),
        ]
        bare = [sys.executable, str(Path(__file__).with_name("_bare_relay.py")), str(port)]
        relays += [
            ("bare tcp->tcp", [*bare, str(sink_port)], _tcp_stream),
            ("bare tcp->tcp --tap", [*bare, str(sink_port), "--tap", tap], _tcp_stream),
        ]
        if socat:
            relays.append(
                (
                    "socat tcp->tcp",
                    [socat, f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", f"TCP:{sink_addr}"],
                    _tcp_stream,
                )
            )
        if websockify:
            relays.append(
                ("websockify ws->tcp", [websockify, f"127.0.0.1:{port}", sink_addr], _ws_stream)
            )
        for _round in range(args.rounds):
            for name, argv, stream in relays:
                with relay(argv, port):
                    for streams in (1, 16):
                        try:
                            seconds = one_round(stream, port, streams, total)
                        except RuntimeError as exc:
                            print(f"{name}, {streams} streams: {exc}", file=sys.stderr)
                            continue
                        rate = total / seconds / 1e6
                        key = (name, streams)
                        results[key] = max(results.get(key, 0.0), rate)
                for leftover in Path(tap).iterdir():  # the tap's copies are not kept
                    leftover.unlink()
    print(f"relay throughput, {args.mib} MiB per round, best of {args.rounds} (aggregate MB/s)")
    print(f"{'relay':26} {'1 stream':>10} {'16 streams':>11} {'16/1':>6}")
    for name, _argv, _stream in relays:
        one, many = results[(name, 1)], results[(name, 16)]
        print(f"{name:26} {one:10.1f} {many:11.1f} {many / one:6.2f}")
    print()
    for ours, theirs, target in (
        ("qiochan tcp->tcp", "socat tcp->tcp", 1.2),
        ("qiochan ws->tcp", "websockify ws->tcp", 1.3),
        ("qiochan tcp->tcp --tap", "qiochan tcp->tcp", 0.9),
        # the floor on this machine, no target: the least a Python relay and a tap cost
        ("qiochan tcp->tcp", "bare tcp->tcp", None),
        ("bare tcp->tcp --tap", "bare tcp->tcp", None),
    ):
        if (theirs, 1) not in results:
            print(f"{ours} vs {theirs}: skipped ({theirs.split()[0]} not installed)")
            continue
        for streams in (1, 16):
            ratio = results[(ours, streams)] / results[(theirs, streams)]
            what = f"{ours} / {theirs}, {streams:2} stream(s)"
            if target is None:
                print(f"{what}: {ratio:5.2f}x (reference)")
            else:
                verdict = "ok" if ratio >= target else "BELOW TARGET"
                print(f"{what}: {ratio:5.2f}x (target {target}x) {verdict}")
    for name in ("qiochan tcp->tcp", "qiochan ws->tcp"):
        scaling = results[(name, 16)] / results[(name, 1)]
        verdict = "ok" if scaling >= 0.8 else "BELOW TARGET"
        print(f"{name}, 16 streams / 1 stream: {scaling:5.2f}x (target 0.8x) {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
