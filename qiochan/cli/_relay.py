"""``qiochan relay SRC [DST]``: a front end over :class:`qiochan.relay.Gateway`.

Modes: with neither ``--connections`` nor ``--once`` it serves until SIGTERM
or SIGINT, then stops accepting and drains (``--drain-timeout``);
``--connections N`` exits once N relayed connections have ended; ``--once``
is ``--connections 1``.  Each connection's end is one status line on stderr
(and, with ``--json``, one JSON object on stdout); progress is one aggregate
bar.  Exit status 0 when every relayed connection ended cleanly (see
:mod:`qiochan.relay` for the rules), 1 when one failed or was aborted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import AddressError, ConfigError, Error
from ..relay import ConnectionInfo, Gateway, Target, load_targets
from ..transport import opens_only
from ._common import EXIT_OK, EXIT_USAGE, CLIError, Endpoint, format_bytes, say
from ._output import Progress

__all__ = ["run_relay"]

_PROGRESS_PERIOD = 0.5  # seconds between refreshes of the aggregate progress line


def _counts(forward: int, backward: int) -> str:
    if not forward and not backward:
        return "0 bytes"
    return (
        f"{forward} bytes ({format_bytes(forward)}) source -> destination, "
        f"{backward} bytes ({format_bytes(backward)}) destination -> source"
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (faster), else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class _Report:
    """Prints one line per ended connection (and its JSON object with ``--json``)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, info: ConnectionInfo) -> None:
        if not info.ended:
            return
        if self.as_json:
            print(json.dumps({"command": "relay", **info.as_dict()}), flush=True)
        what = f"#{info.id} {info.peer or '?'}"
        if info.outcome == "rejected":
            say(f"{what} rejected after {info.duration:.2f} s: {info.error}")
            return
        line = (
            f"{what} -> {info.target}: {info.outcome} in {info.duration:.2f} s, "
            f"{_counts(info.forward, info.backward)}"
        )
        say(f"{line}: {info.error}" if info.error else line)


def _endpoints(args: argparse.Namespace) -> tuple[Endpoint, Endpoint | None]:
    if (args.dst is None) == (args.targets is None):
        raise CLIError("give DST or --targets FILE (not both)", EXIT_USAGE)
    if args.targets is not None and (args.connect_src or args.listen_dst or args.dst_layers):
        raise CLIError(
            "--targets cannot go with --connect-src, --listen-dst or --dst-layer "
            "(each target names its own layers)",
            EXIT_USAGE,
        )
    connect_src = args.connect_src or opens_only(args.src)
    src = Endpoint(args.src, args.src_layers, listen=not connect_src, label="source")
    src.check()
    if args.dst is None:
        return src, None
    dst = Endpoint(args.dst, args.dst_layers, listen=args.listen_dst, label="destination")
    dst.check()
    return src, dst


def _gateway(args: argparse.Namespace, src: Endpoint, dst: Endpoint | None) -> Gateway:
    targets: dict[str, Target] | None = None
    if args.targets is not None:
        targets = load_targets(args.targets)
    tap = None
    if args.tap is not None:
        tap = Path(args.tap)
        try:
            tap.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CLIError(f"--tap {args.tap}: {exc}", EXIT_USAGE) from None
    return Gateway(
        src.address,
        None if dst is None else dst.address,
        source_layers=src.layers,
        destination_layers=[] if dst is None else dst.layers,
        connect_source=not src.listen,
        listen_destination=dst is not None and dst.listen,
        targets=targets,
        connections=1 if args.once else args.connections,
        handshake_timeout=args.handshake_timeout,
        max_active=args.max_active,
        on_connection=_Report(args.json),
        tap=tap,
    )


def _update_progress(gateway: Gateway, progress: Progress, bar: int) -> None:
    forward, backward = gateway.bytes_relayed
    description = f"relay: {len(gateway.active)} active, {len(gateway.ended)} ended"
    progress.update(bar, completed=forward + backward, description=description)


async def _show_progress(gateway: Gateway, progress: Progress, bar: int) -> None:
    while True:
        _update_progress(gateway, progress, bar)
        await asyncio.sleep(_PROGRESS_PERIOD)


async def _start(gateway: Gateway, src: Endpoint, dst: Endpoint | None) -> None:
    try:
        await gateway.start()
    except (AddressError, ConfigError) as exc:
        raise CLIError(f"bad source/destination: {exc}", EXIT_USAGE) from None
    except (Error, OSError) as exc:  # cannot listen: in use, a plugin missing...
        raise CLIError(f"{exc} (0 bytes passed)") from None
    if gateway.source_address is not None:
        src.address = str(gateway.source_address)
        say(f"source: listening on {src.address}")
    if dst is not None and gateway.destination_address is not None:
        dst.address = str(gateway.destination_address)
        say(f"destination: listening on {dst.address}")
    target = dst.describe() if dst is not None else "the targets of each token"
    say(f"relaying {src.describe()} <-> {target}")


async def _serve(
    gateway: Gateway,
    src: Endpoint,
    dst: Endpoint | None,
    args: argparse.Namespace,
    progress: Progress,
) -> None:
    await _start(gateway, src, dst)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    background = []
    bar = progress.add("relay", None)
    if progress.enabled:
        background.append(loop.create_task(_show_progress(gateway, progress, bar)))
    serving = loop.create_task(gateway.serve())
    stopping = loop.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            say(f"stopping: {len(gateway.active)} connection(s) active, draining")
            if not await gateway.shutdown(args.drain_timeout):
                say(f"drain timeout ({args.drain_timeout} s): the rest were aborted")
        await gateway.close()
    finally:
        _update_progress(gateway, progress, bar)  # the final counts
        for signum in signals:
            loop.remove_signal_handler(signum)
        for task in (serving, stopping, *background):
            task.cancel()
        await asyncio.gather(serving, stopping, *background, return_exceptions=True)


def run_relay(args: argparse.Namespace) -> int:
    """Run the gateway ``args`` describe; see the module docstring for the exit status."""
    src, dst = _endpoints(args)
    gateway = _gateway(args, src, dst)
    started = time.monotonic()
    with (
        Progress(args.progress) as progress,
        asyncio.Runner(loop_factory=_loop_factory()) as runner,
    ):
        runner.run(_serve(gateway, src, dst, args, progress))
    elapsed = time.monotonic() - started
    relayed = [info for info in gateway.ended if info.outcome != "rejected"]
    forward = sum(info.forward for info in relayed)
    backward = sum(info.backward for info in relayed)
    failures = gateway.failures
    if failures:
        first = failures[0]
        if len(relayed) == 1:
            raise CLIError(f"relay failed: {first.error}; {_counts(forward, backward)} passed")
        raise CLIError(
            f"relay failed: {len(failures)} of {len(relayed)} connections failed, first "
            f"#{first.id}: {first.error}; {_counts(forward, backward)} passed"
        )
    many = "" if len(relayed) == 1 else f"{len(relayed)} connections, "
    say(f"relay done in {elapsed:.2f} s: {many}{_counts(forward, backward)}")
    sys.stdout.flush()
    return EXIT_OK
