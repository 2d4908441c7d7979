"""Shared timing helpers for the benchmarks: best-of-N / median timing and a ratio table.

The machine running the benchmarks is noisy, so absolute times mean little:
each benchmark times qiochan and the raw Python I/O doing the same work in the
same run, interleaving the two, and reports the ratio.

Typical use::

    from _common import compare, print_table

    rows = [compare("write_all 1 MiB", ours=run_qiochan, raw=run_raw, target=0.90,
                    work_bytes=64 * MIB)]
    print_table("socket", rows)

``ratio`` is ``raw time / our time``: 1.0 means as fast as raw Python I/O,
0.90 means 10 % slower.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

__all__ = [
    "KIB",
    "MIB",
    "Comparison",
    "SocketPair",
    "compare",
    "in_thread",
    "print_table",
    "recv_exactly",
    "tcp_pair",
    "time_best",
    "time_median",
    "unix_pair",
    "volume_parser",
]

KIB = 1024
MIB = 1024 * 1024


#: Two connected sockets.
SocketPair = tuple[socket.socket, socket.socket]


def unix_pair() -> SocketPair:
    """Return two connected unix stream sockets."""
    return socket.socketpair()


def tcp_pair() -> SocketPair:
    """Return ``(client, server)`` sockets connected over TCP loopback (127.0.0.1)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def volume_parser(doc: str | None, repeat: int) -> argparse.ArgumentParser:
    """Return the command line of a streaming benchmark: ``--mib`` and ``--repeat``.

    Args:
        doc: the benchmark module's docstring; its first line describes the command.
        repeat: the default number of timed runs per side.
    Returns:
        The parser, to which a benchmark may add its own options.
    """
    parser = argparse.ArgumentParser(description=(doc or "").partition("\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="MiB moved per timed run")
    parser.add_argument(
        "--repeat", type=int, default=repeat, help=f"timed runs per side (default {repeat})"
    )
    return parser


def recv_exactly(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock`` with a ``recv_into`` loop (the raw side of a read_all).

    Raises:
        EOFError: the peer closed first.
    """
    done = 0
    while done < len(view):
        n = sock.recv_into(view[done:])
        if n == 0:
            raise EOFError("peer closed early")
        done += n


def in_thread(target: Callable[[], object]) -> Callable[[], None]:
    """Run ``target`` in a daemon thread; return the function that joins it."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread.join


def _samples(func: Callable[[], object], repeat: int, number: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            func()
        samples.append((time.perf_counter() - start) / number)
    return samples


def time_best(func: Callable[[], object], *, repeat: int = 5, number: int = 1) -> float:
    """Return the best per-call time of ``func`` in seconds over ``repeat`` runs of ``number``."""
    return min(_samples(func, repeat, number))


def time_median(func: Callable[[], object], *, repeat: int = 5, number: int = 1) -> float:
    """Return the median per-call time of ``func`` in seconds over ``repeat`` runs of ``number``."""
    return statistics.median(_samples(func, repeat, number))


@dataclass
class Comparison:
    """One benchmark row: our time and the raw time for the same work, in seconds per call.

    Attributes:
        name: what was measured.
        ours: qiochan's time per call.
        raw: raw Python I/O's time per call.
        target: the minimum acceptable :attr:`ratio`, if there is one.
        work_bytes: bytes moved per call (for the throughput column), 0 if not meaningful.
        ours_median, raw_median: the median times (0.0 when not measured).
    """

    name: str
    ours: float
    raw: float
    target: float | None = None
    work_bytes: int = 0
    ours_median: float = 0.0
    raw_median: float = 0.0

    @property
    def ratio(self) -> float:
        """``raw / ours``: 1.0 is as fast as raw Python I/O."""
        return self.raw / self.ours if self.ours > 0 else float("inf")

    @property
    def median_ratio(self) -> float | None:
        """``raw_median / ours_median``, or None when medians were not measured."""
        if self.ours_median <= 0 or self.raw_median <= 0:
            return None
        return self.raw_median / self.ours_median

    def scale(self, factor: float) -> None:
        """Divide every time by ``factor`` (turn a batch time into a per-call time)."""
        self.ours /= factor
        self.raw /= factor
        self.ours_median /= factor
        self.raw_median /= factor

    @property
    def overhead(self) -> float:
        """Our extra time per call over raw, in seconds."""
        return self.ours - self.raw

    @property
    def met(self) -> bool | None:
        """True/False against :attr:`target`; None without one."""
        return None if self.target is None else self.ratio >= self.target


def compare(
    name: str,
    ours: Callable[[], object],
    raw: Callable[[], object],
    *,
    repeat: int = 7,
    number: int = 1,
    target: float | None = None,
    work_bytes: int = 0,
    use_median: bool = False,
) -> Comparison:
    """Time ``ours`` and ``raw`` alternately and return their best (or median) times.

    Interleaving the runs spreads the machine's noise evenly over both sides.
    Each side runs once untimed first, as a warm-up.  The medians are recorded
    too (:attr:`Comparison.median_ratio`).
    """
    ours()
    raw()
    ours_samples: list[float] = []
    raw_samples: list[float] = []
    for _ in range(repeat):
        ours_samples += _samples(ours, 1, number)
        raw_samples += _samples(raw, 1, number)
    pick: Callable[[list[float]], float] = statistics.median if use_median else min
    return Comparison(
        name,
        pick(ours_samples),
        pick(raw_samples),
        target,
        work_bytes,
        statistics.median(ours_samples),
        statistics.median(raw_samples),
    )


def _format_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _format_rate(work_bytes: int, seconds: float) -> str:
    if not work_bytes or seconds <= 0:
        return "-"
    return f"{work_bytes / seconds / MIB:,.0f} MiB/s"


def _format_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def print_table(title: str, rows: list[Comparison], file: TextIO | None = None) -> None:
    """Print ``rows`` as a table: times, throughput, ratio (best and median), overhead, target.

    ``target`` status is judged on the ratio of the chosen statistic (best by default).
    """
    out = file if file is not None else sys.stdout
    header = (
        f"{'benchmark':<38} {'qiochan':>10} {'raw':>10} {'qiochan rate':>14} "
        f"{'ratio':>6} {'median':>6} {'overhead':>10} {'target':>8}"
    )
    lines = [f"== {title} ==", header, "-" * len(header)]
    for row in rows:
        status = "-" if row.met is None else f"{row.target:.2f} {'ok' if row.met else 'MISS'}"
        lines.append(
            f"{row.name:<38} {_format_time(row.ours):>10} {_format_time(row.raw):>10} "
            f"{_format_rate(row.work_bytes, row.ours):>14} {row.ratio:>6.2f} "
            f"{_format_ratio(row.median_ratio):>6} "
            f"{_format_time(abs(row.overhead)) if row.overhead >= 0 else '-':>10} {status:>8}"
        )
    print("\n".join(lines), file=out)
