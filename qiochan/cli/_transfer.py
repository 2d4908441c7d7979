"""``qiochan send FILE DST`` and ``qiochan recv SRC FILE``: a file through any transport.

Exit semantics (the ones a migration needs):

* ``send`` writes the whole file, half-closes (shuts its write direction, or
  closes when the channel cannot half-close), then reads and discards until
  the peer closes; it succeeds once every byte was written, even if the peer
  then resets the connection (migration destinations do).
* ``recv`` accepts one peer and writes everything up to the peer's end of
  stream; it succeeds only when the stream ended cleanly, i.e. the file is
  complete.

Any failure is one line naming what failed and how many bytes had passed.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, cast

from ..channel import Feature, QIOChannel, Shutdown
from ..errors import ChannelError
from ._common import (
    EXIT_OK,
    CLIError,
    Endpoint,
    format_bytes,
    open_endpoint,
    say,
)
from ._output import Progress

__all__ = ["RateLimiter", "run_recv", "run_send"]

log = logging.getLogger("qiochan.cli")

_CHUNK = 1 << 20


class RateLimiter:
    """Keeps a byte stream under ``rate`` bytes per second (None: unlimited).

    :meth:`account` sleeps just long enough after each chunk; chunks are sized
    to a twentieth of a second so the pace stays smooth.
    """

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self._start = time.monotonic()
        self._done = 0

    def chunk_size(self, default: int = _CHUNK) -> int:
        """Return the chunk size to use."""
        if self.rate is None:
            return default
        return max(1024, min(default, self.rate // 20))

    def account(self, count: int) -> None:
        """Record ``count`` bytes moved; sleep while ahead of the allowed rate."""
        if self.rate is None:
            return
        self._done += count
        ahead = self._done / self.rate - (time.monotonic() - self._start)
        if ahead > 0:
            time.sleep(ahead)  # pacing, not synchronisation


def _open_input(path: str) -> tuple[io.BufferedIOBase, int | None]:
    if path == "-":
        return cast(io.BufferedIOBase, sys.stdin.buffer), None
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise CLIError(f"cannot open {path}: {exc.strerror}") from None
    size = os.fstat(file.fileno()).st_size
    return file, size if size > 0 else None


def _open_output(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdout.buffer
    try:
        return open(path, "wb")
    except OSError as exc:
        raise CLIError(f"cannot create {path}: {exc.strerror}") from None


def _finish_sending(channel: QIOChannel) -> int:
    """Half-close, then read and discard until the peer closes; return the bytes discarded.

    Errors at this point are the peer going away after the data passed: logged, not raised.
    """
    if not channel.has_feature(Feature.SHUTDOWN):
        return 0  # closing the channel ends the stream
    drained = 0
    try:
        channel.shutdown(Shutdown.WRITE)
        buf = bytearray(65536)
        while (n := channel.read(buf)) > 0:
            drained += n
    except ChannelError as exc:
        log.info("peer closed after the data passed: %s", exc)
    return drained


def _rate_text(count: int, seconds: float) -> str:
    return f"{format_bytes(count / seconds)}/s" if seconds > 0 else "-"


def _reason(exc: OSError) -> str:
    """A channel error's own message, else the OS error text."""
    if isinstance(exc, ChannelError) or not exc.strerror:
        return str(exc)
    return exc.strerror


@dataclass
class _Pump:
    """Moves chunks from ``read`` to ``write``; the ``*_failed`` give the error line."""

    read: Callable[[memoryview], int]
    write: Callable[[memoryview], object]
    read_failed: Callable[[int, OSError], str]
    write_failed: Callable[[int, OSError], str]


@dataclass
class _Outcome:
    count: int
    seconds: float
    extra: str = ""


def _transfer(
    args: argparse.Namespace,
    endpoint: Endpoint,
    mode: str,
    total: int | None,
    *,
    pump_for: Callable[[QIOChannel], _Pump],
    finish: Callable[[QIOChannel], str] = lambda _channel: "",
) -> _Outcome:
    """Open ``endpoint``, pump until the reading side ends, then ``finish``; time it.

    Raises:
        CLIError: the endpoint, a read or a write failed (with the bytes moved).
    """
    channel = open_endpoint(endpoint, mode)
    limiter = RateLimiter(args.rate_limit)
    started = time.monotonic()
    with channel, Progress(args.progress) as progress:
        bar = progress.add(f"{args.command} {args.file}", total)
        pump = pump_for(channel)
        view = memoryview(bytearray(limiter.chunk_size()))
        moved = 0
        while True:
            try:
                n = pump.read(view)
            except OSError as exc:
                raise CLIError(pump.read_failed(moved, exc)) from None
            if not n:
                break
            try:
                pump.write(view[:n])
            except OSError as exc:
                raise CLIError(pump.write_failed(moved, exc)) from None
            moved += n
            progress.advance(bar, n)
            limiter.account(n)
        extra = finish(channel)
    return _Outcome(moved, time.monotonic() - started, extra)


def run_send(args: argparse.Namespace) -> int:
    """Send ``args.file`` to ``args.dst``; see the module docstring for the exit semantics."""
    endpoint = Endpoint(args.dst, args.layers, listen=args.listen, label="destination")
    endpoint.check()
    source, size = _open_input(args.file)

    def pump_for(channel: QIOChannel) -> _Pump:
        return _Pump(
            read=source.readinto,
            write=channel.write_all,
            read_failed=lambda n, exc: (
                f"reading {args.file} failed after {n} bytes: " + _reason(exc)
            ),
            write_failed=lambda n, exc: (
                f"send to {endpoint.describe()} failed after {n} bytes: {_reason(exc)}"
            ),
        )

    def finish(channel: QIOChannel) -> str:
        drained = _finish_sending(channel)
        return f", {drained} bytes discarded from the peer" if drained else ""

    try:
        done = _transfer(args, endpoint, "w", size, pump_for=pump_for, finish=finish)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    say(
        f"sent {done.count} bytes ({format_bytes(done.count)}) to {endpoint.describe()} "
        f"in {done.seconds:.2f} s, {_rate_text(done.count, done.seconds)}{done.extra}"
    )
    return EXIT_OK


def run_recv(args: argparse.Namespace) -> int:
    """Receive from ``args.src`` into ``args.file`` until the peer's end of stream."""
    endpoint = Endpoint(args.src, args.layers, listen=not args.connect, label="source")
    endpoint.check()
    target = _open_output(args.file)

    def pump_for(channel: QIOChannel) -> _Pump:
        return _Pump(
            read=channel.read,
            write=target.write,
            read_failed=lambda n, exc: (
                f"recv from {endpoint.describe()} failed after {n} "
                f"bytes ({args.file} is incomplete): {_reason(exc)}"
            ),
            write_failed=lambda n, exc: (
                f"writing {args.file} failed after {n} bytes: " + _reason(exc)
            ),
        )

    try:
        done = _transfer(args, endpoint, "r", None, pump_for=pump_for)
        try:
            target.flush()
        except OSError as exc:
            raise CLIError(f"writing {args.file} failed: {_reason(exc)}") from None
    finally:
        if target is not sys.stdout.buffer:
            target.close()
    say(
        f"received {done.count} bytes ({format_bytes(done.count)}) from {endpoint.describe()} "
        f"in {done.seconds:.2f} s, {_rate_text(done.count, done.seconds)}"
    )
    return EXIT_OK
