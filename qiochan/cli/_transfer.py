"""``qiochan send FILE DST`` and ``qiochan recv SRC FILE``: a file through any transport.

Exit semantics (the ones a migration needs):

* ``send`` writes the whole file, half-closes (shuts its write direction, or
  closes when the channel cannot half-close), then reads and discards until
  the peer closes; it succeeds once every byte was written, even if the peer
  then resets the connection (migration destinations do).
* ``recv`` accepts one peer and writes everything up to the peer's end of
  stream into a temporary file beside FILE, renamed to FILE only after a clean
  end (:mod:`._files`): a failed or cut transfer never touches an existing FILE
  (with ``--keep-partial`` what arrived is kept as ``FILE.partial``).
* A transfer that stops before its end -- an error, a signal (SIGINT,
  SIGTERM, SIGHUP), ``--timeout`` -- ends its connection with
  :meth:`~qiochan.QIOChannel.abort`, so the peer sees a cut stream (a TCP
  reset, TLS without close_notify, websocket close 1011), never a clean end.

Any failure is one line naming what failed and how many bytes had passed;
``--json`` also prints one :class:`~qiochan.cli._output.TransferRecord`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..channel import ERR_BLOCK, Feature, QIOChannel, Shutdown
from ..errors import ChannelError, Error
from ..watch import Condition
from ._common import (
    EXIT_OK,
    EXIT_USAGE,
    CLIError,
    Endpoint,
    Stopped,
    Watchdog,
    abort_quietly,
    format_bytes,
    format_rate,
    open_endpoint,
    say,
)
from ._files import ReceivedFile, open_input
from ._output import Progress, TransferRecord

__all__ = [
    "RateLimiter",
    "channel_reader",
    "channel_writer",
    "run_recv",
    "run_send",
]

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


def _reason(exc: OSError) -> str:
    """A channel error's own message, else the OS error text."""
    if isinstance(exc, ChannelError) or not exc.strerror:
        return str(exc)
    return exc.strerror


@dataclass
class _Pump:
    """Moves chunks from ``read`` to ``write``; the ``*_failed`` make the error."""

    read: Callable[[memoryview], int]
    write: Callable[[memoryview], object]
    read_failed: Callable[[int, OSError], CLIError]
    write_failed: Callable[[int, OSError], CLIError]


def channel_reader(channel: QIOChannel, watchdog: Watchdog) -> Callable[[memoryview], int]:
    """Return ``read(view) -> n`` on non-blocking ``channel``: a signal stops only its waits."""

    def read(view: memoryview) -> int:
        while (n := channel.read(view)) == ERR_BLOCK:
            with watchdog.interruptible():
                channel.wait(Condition.IN)
        return n

    return read


def channel_writer(channel: QIOChannel, watchdog: Watchdog) -> Callable[[memoryview], None]:
    """Return ``write(view)`` writing all of it to non-blocking ``channel``; a signal
    stops only its waits, so the channel never holds a write half-accounted."""

    def write(view: memoryview) -> None:
        while view:
            n = channel.write(view)
            if n == ERR_BLOCK:
                with watchdog.interruptible():
                    channel.wait(Condition.OUT)
            else:
                view = view[n:]

    return write


def _transfer(
    args: argparse.Namespace,
    endpoint: Endpoint,
    mode: str,
    record: TransferRecord,
    *,
    total: int | None,
    pump_for: Callable[[QIOChannel, Watchdog], _Pump],
    finish: Callable[[QIOChannel], object] = lambda _channel: None,
) -> None:
    """Open ``endpoint``, pump until the reading side ends, ``finish``, close; fill ``record``.

    Anything that stops it before that -- an error, a signal, ``--timeout`` --
    aborts the channel, so the peer cannot take it for a clean end.

    Raises:
        CLIError: what failed, with the bytes moved; its ``outcome`` says how.
    """
    channel: QIOChannel | None = None
    started = time.monotonic()
    try:
        with Watchdog(args.timeout) as watchdog, Progress(args.progress) as progress:
            with watchdog.interruptible():
                channel = open_endpoint(endpoint, mode)
            watchdog.progress()
            record.peer = endpoint.describe()
            started = time.monotonic()
            bar = progress.add(f"{args.command} {args.file}", total)
            pump = pump_for(channel, watchdog)
            limiter = RateLimiter(args.rate_limit)
            view = memoryview(bytearray(limiter.chunk_size()))
            channel.set_blocking(False)
            while True:
                try:
                    n = pump.read(view)
                except OSError as exc:
                    raise pump.read_failed(record.bytes, exc) from None
                if not n:
                    break
                try:
                    pump.write(view[:n])
                except OSError as exc:
                    raise pump.write_failed(record.bytes, exc) from None
                record.bytes += n
                watchdog.progress()
                progress.advance(bar, n)
                with watchdog.interruptible():
                    limiter.account(n)
            channel.set_blocking(True)
            with watchdog.interruptible():
                finish(channel)
            channel.close()
    except BaseException as exc:
        record.seconds = time.monotonic() - started
        aborted = channel is not None and not channel.closed
        if channel is not None:
            abort_quietly(channel)
        error = _as_cli_error(exc, record, endpoint, aborted)
        record.outcome, record.error = error.outcome, str(error)
        raise error from None
    record.seconds = time.monotonic() - started


def _as_cli_error(
    exc: BaseException, record: TransferRecord, endpoint: Endpoint, aborted: bool
) -> CLIError:
    """Return the :class:`CLIError` that reports ``exc`` (re-raise what is not a failure)."""
    if isinstance(exc, CLIError):
        return exc
    if isinstance(exc, Stopped):
        what = f"; the connection to {endpoint.describe()} was aborted" if aborted else ""
        return CLIError(f"{exc.reason} after {record.bytes} bytes{what}", exc.code, exc.outcome)
    if isinstance(exc, (Error, OSError)):
        reason = _reason(exc) if isinstance(exc, OSError) else str(exc)
        return CLIError(f"{endpoint.describe()}: {reason} ({record.bytes} bytes passed)")
    raise exc


def _report(args: argparse.Namespace, record: TransferRecord, run: Callable[[], None]) -> None:
    """Run ``run``; with ``--json`` print ``record`` whatever happened."""
    try:
        run()
    except CLIError as exc:
        record.outcome, record.error = exc.outcome, str(exc)
        raise
    except BaseException as exc:
        record.outcome, record.error = "failed", str(exc) or type(exc).__name__
        raise
    finally:
        if args.json:
            record.emit()


def run_send(args: argparse.Namespace) -> int:
    """Send ``args.file`` to ``args.dst``; see the module docstring for the exit semantics."""
    endpoint = Endpoint(args.dst, args.layers, listen=args.listen, label="destination")
    record = TransferRecord("send", args.file, endpoint.describe())
    drained = 0

    def finish(channel: QIOChannel) -> None:
        nonlocal drained
        drained = _finish_sending(channel)

    def run() -> None:
        endpoint.check()
        source, size = open_input(args.file)

        def pump_for(channel: QIOChannel, watchdog: Watchdog) -> _Pump:
            def read_input(view: memoryview) -> int:
                with watchdog.interruptible():  # a plain read: a signal may stop it anywhere
                    return source.readinto1(view)  # what a pipe has now: never waits to fill it

            return _Pump(
                read=read_input,
                write=channel_writer(channel, watchdog),
                read_failed=lambda n, exc: CLIError(
                    f"reading {args.file} failed after {n} bytes: {_reason(exc)}"
                ),
                write_failed=lambda n, exc: CLIError(
                    f"send to {endpoint.describe()} failed after {n} bytes: {_reason(exc)}"
                ),
            )

        try:
            _transfer(args, endpoint, "w", record, total=size, pump_for=pump_for, finish=finish)
        finally:
            if source is not sys.stdin.buffer:
                source.close()

    _report(args, record, run)
    extra = f", {drained} bytes discarded from the peer" if drained else ""
    say(
        f"sent {record.bytes} bytes ({format_bytes(record.bytes)}) to {endpoint.describe()} "
        f"in {record.seconds:.2f} s, {format_rate(record.bytes, record.seconds)}{extra}"
    )
    return EXIT_OK


def run_recv(args: argparse.Namespace) -> int:
    """Receive from ``args.src`` into ``args.file`` until the peer's end of stream."""
    endpoint = Endpoint(args.src, args.layers, listen=not args.connect, label="source")
    record = TransferRecord("recv", args.file, endpoint.describe())

    def run() -> None:
        if args.json and args.file == "-":
            raise CLIError("--json prints to stdout: receive into a FILE, not '-'", EXIT_USAGE)
        endpoint.check()
        target = ReceivedFile(args.file, args.keep_partial)

        def pump_for(channel: QIOChannel, watchdog: Watchdog) -> _Pump:
            return _Pump(
                read=channel_reader(channel, watchdog),
                write=target.file.write,
                read_failed=lambda n, exc: CLIError(
                    f"the stream from {endpoint.describe()} was cut after {n} bytes: "
                    f"{_reason(exc)}",
                    outcome="cut",
                ),
                write_failed=lambda n, exc: CLIError(
                    f"writing {args.file} failed after {n} bytes: {_reason(exc)}"
                ),
            )

        try:
            _transfer(args, endpoint, "r", record, total=None, pump_for=pump_for)
            target.commit()
        except CLIError as exc:
            fate = target.discard()
            raise CLIError(f"{exc}; {fate}" if fate else str(exc), exc.code, exc.outcome) from None
        except OSError as exc:
            fate = target.discard()
            raise CLIError(f"writing {args.file} failed: {_reason(exc)}; {fate}") from None
        finally:
            target.close()

    _report(args, record, run)
    say(
        f"received {record.bytes} bytes ({format_bytes(record.bytes)}) from "
        f"{endpoint.describe()} in {record.seconds:.2f} s, "
        f"{format_rate(record.bytes, record.seconds)}"
    )
    return EXIT_OK
