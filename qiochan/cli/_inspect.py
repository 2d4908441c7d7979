"""``qiochan inspect SOURCE``: what a QEMU migration stream holds, from a file, stdin or live.

SOURCE is a file, ``-`` (stdin), an address that can only be opened
(``exec:CMD``, ``fd:N``, ``file:PATH``), or an address to listen on (``tcp:``,
``unix:``... with ``--layer``), so that QEMU can ``migrate`` straight to the
inspector, which then plays the destination's part on the return path
(PONG, SHUT) so the source completes.

Exit status: 0 when the stream was complete, 1 when it was cut off or
malformed (or the source failed), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from ..channel import QIOChannel
from ..migration import Reader, StreamReport, format_report, inspect_stream, load_vmdesc
from ..qemufile import QEMUFile
from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CLIError, Endpoint, open_endpoint, say
from ._output import Progress

__all__ = ["Source", "Watchdog", "run_inspect"]

log = logging.getLogger("qiochan.cli")


class Watchdog:
    """A thread that polls ``position()``: it feeds a progress bar and enforces an idle timeout.

    Every ``interval`` seconds (a quarter of ``timeout``, at most 0.25 s with a
    progress bar) it passes the position to ``report``; once the position has
    not moved for ``timeout`` seconds it calls ``expire()`` and stops, so
    expiry comes between 1 and 1.25 times ``timeout`` after the last byte.
    ``stop()`` ends it.

    Args:
        position: returns the current count (bytes consumed, or 0 while waiting).
        timeout: seconds without progress before ``expire``; None: never.
        expire: what to do then (shut the stream or close the listener).
        report: called with each position polled, e.g. to update a progress bar.
    """

    def __init__(
        self,
        position: Callable[[], int],
        *,
        timeout: float | None = None,
        expire: Callable[[], None] | None = None,
        report: Callable[[int], None] | None = None,
    ) -> None:
        self.position = position
        self.timeout = timeout
        self.expire = expire
        self.report = report
        self.expired = False
        self.interval = timeout / 4 if timeout else 0.25
        if report is not None:
            self.interval = min(self.interval, 0.25)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qiochan-inspect-watch")
        self._thread.daemon = True
        self._thread.start()

    def _run(self) -> None:
        last = self.position()
        idle = 0.0
        while not self._stop.wait(self.interval):
            now = self.position()
            if self.report is not None:
                self.report(now)
            idle = idle + self.interval if now == last else 0.0
            last = now
            if self.timeout and idle >= self.timeout:
                self.expired = True
                if self.expire is not None:
                    self.expire()
                return

    def stop(self) -> None:
        """Stop watching (idempotent); returns once the thread ended."""
        self._stop.set()
        self._thread.join()


def run_inspect(args: argparse.Namespace) -> int:
    """Inspect SOURCE and print the report; return the exit status."""
    source: str = args.source
    layers: list[str] = args.layers
    with Progress(args.progress) as progress:
        if source == "-" or os.path.exists(source):
            if layers:
                raise CLIError("--layer applies to an address, not to a file or stdin", EXIT_USAGE)
            report = _inspect_file(source, progress)
        else:
            report = _inspect_address(source, layers, args.timeout, progress)
    if args.json:
        print(json.dumps(report.to_json(), indent=None if args.compact else 2))
    else:
        print(format_report(report))
    if report.complete:
        return EXIT_OK
    raise CLIError(f"incomplete stream: {report.error}", EXIT_FAILED)


def _inspect_file(path: str, progress: Progress) -> StreamReport:
    """Inspect a file (its device description read first) or stdin (``-``)."""
    from ..transport import open_channel

    vmdesc = None
    try:
        if path == "-":
            fd, total = os.dup(0), None
        else:
            vmdesc = load_vmdesc(path)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            total = os.fstat(fd).st_size or None
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        channel = open_channel(f"fd:{fd}", "r")
    except BaseException:
        os.close(fd)
        raise
    source = Source(channel, progress=progress, total=total, label=path)
    return source.inspect(vmdesc=vmdesc)


def _listens(address: str) -> bool:
    """Return True when ``address`` (or the transport it names) is served by listening."""
    from ..config import lookup_transport
    from ..errors import AddressError, PluginError
    from ..registry import resolve_address

    if ":" not in address:
        configured = lookup_transport(address)
        if configured is None:
            raise CLIError(f"{address}: no such file, address or configured transport", EXIT_USAGE)
        address = configured.address
    try:
        backend, _parsed = resolve_address(address)
    except AddressError as exc:
        raise CLIError(f"bad source {address}: {exc}", EXIT_USAGE) from None
    except PluginError as exc:
        raise CLIError(f"source {address}: {exc}") from None
    return backend.listen is not None


def _inspect_address(
    address: str, layers: list[str], timeout: float | None, progress: Progress
) -> StreamReport:
    listens = _listens(address)
    endpoint = Endpoint(address, layers, listen=listens, label="source")
    endpoint.check()
    if not listens:  # exec:, file:, fd:...: opened (or spawned) and read
        channel = open_endpoint(endpoint, "r")
        return Source(channel, timeout=timeout, progress=progress, label=address).inspect()
    channel = _accept(endpoint, timeout)
    source = Source(channel, timeout=timeout, progress=progress, label=endpoint.address)
    return source.inspect(reply=True)


def _accept(endpoint: Endpoint, timeout: float | None) -> QIOChannel:
    """Listen on ``endpoint``, announce the address, accept one peer (within ``timeout``)."""
    from ..errors import AddressError, ChannelError, ConfigError
    from ..transport import listen

    what = f"source {endpoint.describe()}"
    try:
        listener = listen(endpoint.address, layers=endpoint.layers)
    except (AddressError, ConfigError) as exc:
        raise CLIError(f"bad {what}: {exc}", EXIT_USAGE) from None
    except ChannelError as exc:
        raise CLIError(f"{what}: {exc}") from None
    endpoint.address = str(listener.address)
    say(f"source: listening on {endpoint.address}")
    watchdog = Watchdog(lambda: 0, timeout=timeout, expire=listener.close) if timeout else None
    try:
        channel: QIOChannel = listener.accept()
        return channel
    except ChannelError as exc:
        if watchdog is not None and watchdog.expired:
            raise CLIError(f"{what}: no peer within {timeout:g} s") from None
        raise CLIError(f"{what}: {exc}") from None
    finally:
        if watchdog is not None:
            watchdog.stop()
        listener.close()


class Source:
    """A channel to inspect, with its idle timeout and progress bar.

    Args:
        channel: the input (owned from now on: closed by :meth:`inspect`).
        timeout: seconds without data before the stream is shut down.
        progress: where the bar goes; ``total`` its end (None: unknown).
        label: the bar's description.
    """

    def __init__(
        self,
        channel: QIOChannel,
        *,
        timeout: float | None = None,
        progress: Progress,
        total: int | None = None,
        label: str = "",
    ) -> None:
        self.f = QEMUFile.new_input(channel)
        self.reader = Reader(self.f)
        self.timeout = timeout
        self.progress = progress
        self.total = total
        self.label = label

    def _expire(self) -> None:
        self.reader.interrupted = f"no data for {self.timeout:g} s (--timeout)"
        self.f.shutdown()

    def inspect(self, *, vmdesc: dict[str, Any] | None = None, reply: bool = False) -> StreamReport:
        """Walk the stream (answering on its return path with ``reply``); close it; report."""
        f = self.f
        bar = self.progress.add(f"inspect {self.label}", self.total)
        watchdog = None
        if self.timeout or self.progress.enabled:
            watchdog = Watchdog(
                f.tell,
                timeout=self.timeout,
                expire=self._expire,
                report=lambda n: self.progress.update(bar, completed=n),
            )
        try:
            return inspect_stream(
                f, vmdesc=vmdesc, reader=self.reader, reply=f.get_return_path() if reply else None
            )
        finally:
            if watchdog is not None:
                watchdog.stop()
            self.progress.update(bar, completed=f.tell())
            f.fclose()
