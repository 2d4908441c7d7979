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

from ..channel import QIOChannel
from ..migration import StreamReport, format_report, inspect_fd, inspect_path, inspect_stream
from ..migration._reader import Reader
from ..qemufile import QEMUFile
from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CLIError, Endpoint, open_endpoint, say

__all__ = ["Watchdog", "run_inspect"]

log = logging.getLogger("qiochan.cli")


class Watchdog:
    """Calls ``expire()`` once ``progress()`` has not changed for ``timeout`` seconds.

    A daemon thread looks every quarter of ``timeout``, so expiry comes after
    between 1 and 1.25 times ``timeout`` without progress.  ``stop()`` ends it.
    """

    def __init__(
        self, timeout: float, progress: Callable[[], int], expire: Callable[[], None]
    ) -> None:
        self.timeout = timeout
        self.progress = progress
        self.expire = expire
        self.expired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qiochan-inspect-timeout")
        self._thread.daemon = True
        self._thread.start()

    def _run(self) -> None:
        step = self.timeout / 4
        last = self.progress()
        idle = 0.0
        while not self._stop.wait(step):
            now = self.progress()
            idle = idle + step if now == last else 0.0
            last = now
            if idle >= self.timeout:
                self.expired = True
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
    if source == "-" or os.path.exists(source):
        if layers:
            raise CLIError("--layer applies to an address, not to a file or stdin", EXIT_USAGE)
        report = _inspect_file(source)
    else:
        report = _inspect_address(source, layers, args.timeout)
    if args.json:
        print(json.dumps(report.to_json(), indent=None if args.compact else 2))
    else:
        print(format_report(report))
    if report.complete:
        return EXIT_OK
    raise CLIError(f"incomplete stream: {report.error}", EXIT_FAILED)


def _inspect_file(path: str) -> StreamReport:
    if path == "-":
        return inspect_fd(os.dup(0))
    try:
        return inspect_path(path)
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None


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


def _inspect_address(address: str, layers: list[str], timeout: float | None) -> StreamReport:
    listens = _listens(address)
    endpoint = Endpoint(address, layers, listen=listens, label="source")
    endpoint.check()
    if not listens:  # exec:, file:, fd:...: opened (or spawned) and read
        channel = open_endpoint(endpoint, "r")
        return _inspect_channel(channel, timeout, reply=False)
    channel = _accept(endpoint, timeout)
    return _inspect_channel(channel, timeout, reply=True)


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
    watchdog = Watchdog(timeout, lambda: 0, listener.close) if timeout else None
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


def _inspect_channel(channel: QIOChannel, timeout: float | None, *, reply: bool) -> StreamReport:
    f = QEMUFile.new_input(channel)
    reader = Reader(f)
    watchdog = None
    if timeout:

        def expire() -> None:
            reader.interrupted = f"no data for {timeout:g} s (--timeout)"
            f.shutdown()

        watchdog = Watchdog(timeout, f.tell, expire)
    try:
        return inspect_stream(f, reader=reader, reply=f.get_return_path() if reply else None)
    finally:
        if watchdog is not None:
            watchdog.stop()
        f.fclose()
