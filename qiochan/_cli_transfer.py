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
from typing import BinaryIO, cast

from ._cli_common import (
    EXIT_OK,
    CLIError,
    Endpoint,
    format_bytes,
    open_endpoint,
    say,
)
from ._cli_output import Progress
from .channel import Feature, QIOChannel, Shutdown
from .errors import ChannelError

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


def run_send(args: argparse.Namespace) -> int:
    """Send ``args.file`` to ``args.dst``; see the module docstring for the exit semantics."""
    endpoint = Endpoint(args.dst, args.layers, listen=args.listen, label="destination")
    endpoint.check()
    source, size = _open_input(args.file)
    sent = 0
    try:
        channel = open_endpoint(endpoint, "w")
        limiter = RateLimiter(args.rate_limit)
        started = time.monotonic()
        with channel, Progress(args.progress) as progress:
            bar = progress.add(f"send {args.file}", size)
            buf = bytearray(limiter.chunk_size())
            view = memoryview(buf)
            while True:
                try:
                    n = source.readinto(view)
                except OSError as exc:
                    raise CLIError(
                        f"reading {args.file} failed after {sent} bytes: {exc.strerror}"
                    ) from None
                if not n:
                    break
                try:
                    channel.write_all(view[:n])
                except ChannelError as exc:
                    raise CLIError(
                        f"send to {endpoint.describe()} failed after {sent} bytes: {exc}"
                    ) from None
                sent += n
                progress.advance(bar, n)
                limiter.account(n)
            drained = _finish_sending(channel)
        elapsed = time.monotonic() - started
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    extra = f", {drained} bytes discarded from the peer" if drained else ""
    say(
        f"sent {sent} bytes ({format_bytes(sent)}) to {endpoint.describe()} "
        f"in {elapsed:.2f} s, {_rate_text(sent, elapsed)}{extra}"
    )
    return EXIT_OK


def run_recv(args: argparse.Namespace) -> int:
    """Receive from ``args.src`` into ``args.file`` until the peer's end of stream."""
    endpoint = Endpoint(args.src, args.layers, listen=not args.connect, label="source")
    endpoint.check()
    target = _open_output(args.file)
    received = 0
    try:
        channel = open_endpoint(endpoint, "r")
        limiter = RateLimiter(args.rate_limit)
        started = time.monotonic()
        with channel, Progress(args.progress) as progress:
            bar = progress.add(f"recv {args.file}", None)
            buf = bytearray(limiter.chunk_size())
            view = memoryview(buf)
            while True:
                try:
                    n = channel.read(view)
                except ChannelError as exc:
                    raise CLIError(
                        f"recv from {endpoint.describe()} failed after {received} bytes "
                        f"({args.file} is incomplete): {exc}"
                    ) from None
                if n == 0:
                    break
                try:
                    target.write(view[:n])
                except OSError as exc:
                    raise CLIError(
                        f"writing {args.file} failed after {received} bytes: {exc.strerror}"
                    ) from None
                received += n
                progress.advance(bar, n)
                limiter.account(n)
        elapsed = time.monotonic() - started
        try:
            target.flush()
        except OSError as exc:
            raise CLIError(f"writing {args.file} failed: {exc.strerror}") from None
    finally:
        if target is not sys.stdout.buffer:
            target.close()
    say(
        f"received {received} bytes ({format_bytes(received)}) from {endpoint.describe()} "
        f"in {elapsed:.2f} s, {_rate_text(received, elapsed)}"
    )
    return EXIT_OK
