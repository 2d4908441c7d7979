"""``qiochan demo``: a checksummed migration-like stream through every transport and layer chain.

Each chain is opened on loopback exactly as a user would open it -- an
address, layers, :func:`qiochan.listen` / :func:`qiochan.connect` /
:func:`qiochan.open_channel` -- and carries the same :class:`PageStream`
through :class:`~qiochan.QEMUFile`: a sender thread writes it, the receiver
verifies every byte.  Chains whose backend is unavailable are listed as
skipped with the reason.  TLS credentials are created in a temporary
directory for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..channel import Feature, QIOChannel, Shutdown
from ..errors import ChannelError
from ..qemufile import QEMUFile
from ..registry import backends
from ._common import EXIT_OK, EXIT_USAGE, CLIError, format_bytes, plugin_object, say
from ._demo_stream import PageStream, StreamError
from ._output import Progress, TransferRecord, print_table

__all__ = ["CHAINS", "Chain", "ChainResult", "DemoContext", "run_chain", "run_demo"]

log = logging.getLogger("qiochan.cli.demo")

#: How long one chain may take before it is reported as failed.
CHAIN_TIMEOUT = 120.0


@dataclass
class Ends:
    """The two ends of a chain: the sender's channel and how to get the receiver's."""

    writer: QIOChannel
    reader: Callable[[], QIOChannel]


def _ends(writer: QIOChannel, reader: QIOChannel) -> Ends:
    return Ends(writer, lambda: reader)


@dataclass
class DemoContext:
    """What chains share: a scratch directory and, once made, TLS credentials."""

    workdir: Path
    _creds: Path | None = None

    @property
    def creds(self) -> Path:
        """A credentials directory for localhost/127.0.0.1, made on first use."""
        if self._creds is None:
            from ._certs import create_credentials

            creds = self.workdir / "tls"
            create_credentials(creds, ["localhost"], ["127.0.0.1"])
            self._creds = creds
        return self._creds

    def tls(self, role: str) -> str:
        """Return the TLS layer spec for ``role`` (the client checks the name localhost)."""
        if role == "client":
            return f"tls:creds={self.creds},hostname=localhost"
        return f"tls:creds={self.creds}"


def _close_all(channels: Sequence[QIOChannel]) -> None:
    """Close every channel at once, each in its own thread.

    Two ends of one connection may each wait for the other's close handshake
    (websocket, TLS), so they must not be closed one after the other.
    """
    errors: list[BaseException] = []

    def close(channel: QIOChannel) -> None:
        try:
            channel.close()
        except ChannelError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=close, args=(c,), daemon=True) for c in channels]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CHAIN_TIMEOUT)
    if errors:
        log.debug("closing a demo channel failed: %s", errors[0])


@contextlib.contextmanager
def _listened_pair(
    server: str, server_layers: Sequence[str], client: Callable[[str], QIOChannel]
) -> Iterator[Ends]:
    """Listen on ``server``, connect with ``client(address)``; yield the client as writer.

    The server's accept (and its side of the handshakes) runs in a thread while
    the client connects, as a real peer would.
    """
    from ..transport import listen

    listener = listen(server, layers=list(server_layers))
    accepted: list[QIOChannel] = []
    failures: list[BaseException] = []

    def accept() -> None:
        try:
            accepted.append(listener.accept())
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=accept, name="qiochan-demo-accept", daemon=True)
    thread.start()
    writer: QIOChannel | None = None
    try:
        writer = client(str(listener.address))
    finally:
        if writer is None:
            listener.close()  # wakes the accepting thread
        thread.join(CHAIN_TIMEOUT)
        listener.close()
    assert writer is not None
    if failures or not accepted:
        _close_all([writer, *accepted])
        raise failures[0] if failures else ChannelError("the server side never accepted")
    try:
        yield _ends(writer, accepted[0])
    finally:
        _close_all([writer, accepted[0]])


def _connector(layers: Sequence[str]) -> Callable[[str], QIOChannel]:
    from ..transport import connect

    return lambda address: connect(address, layers=list(layers))


@dataclass(frozen=True)
class Chain:
    """One transport and layer chain of the demo.

    Attributes:
        name: what the table calls it.
        needs: the transport schemes and layer names it uses.
        open: yields the chain's :class:`Ends` (closed on exit).
        sequential: the writer finishes before the reader starts (a file).
    """

    name: str
    needs: tuple[str, ...]
    open: Callable[[DemoContext], contextlib.AbstractContextManager[Ends]]
    sequential: bool = False

    def unavailable(self) -> str:
        """Return why the chain cannot run here, or "" when it can."""
        found = backends().values()
        for need in self.needs:
            serving = [b for b in found if need in b.schemes]
            if not serving:
                return f"no plugin provides {need!r}"
            if not any(b.available for b in serving):
                return f"{need}: {serving[0].missing}"
        return ""


@contextlib.contextmanager
def _memory_pair(_ctx: DemoContext) -> Iterator[Ends]:
    writer, reader = plugin_object("transport", "buffer", "memory_pipe")(1 << 20)
    try:
        yield _ends(writer, reader)
    finally:
        _close_all([writer, reader])


def _tcp(ctx: DemoContext, server_layers: Sequence[str], client_layers: Sequence[str]) -> Any:
    return _listened_pair("tcp:127.0.0.1:0", server_layers, _connector(client_layers))


@contextlib.contextmanager
def _unix_pair(ctx: DemoContext) -> Iterator[Ends]:
    with _listened_pair(f"unix:{ctx.workdir}/demo.sock", [], _connector([])) as ends:
        yield ends


@contextlib.contextmanager
def _command_pair(_ctx: DemoContext) -> Iterator[Ends]:
    from ..transport import connect

    channel = connect("exec:cat")
    try:
        yield _ends(channel, channel)
    finally:
        _close_all([channel])


@contextlib.contextmanager
def _file_pair(ctx: DemoContext) -> Iterator[Ends]:
    from ..transport import open_channel

    path = ctx.workdir / "demo.stream"
    opened = [open_channel(f"file:{path}", "w")]

    def open_reader() -> QIOChannel:
        opened.append(open_channel(f"file:{path}", "r"))
        return opened[-1]

    try:
        yield Ends(opened[0], open_reader)
    finally:
        _close_all(opened)
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _tls_over_command_pair(ctx: DemoContext) -> Iterator[Ends]:
    def client(address: str) -> QIOChannel:
        from ..address import InetAddress, parse_address
        from ..transport import connect

        inet = parse_address(address)
        assert isinstance(inet, InetAddress)
        bridge = [sys.executable, "-m", "qiochan.cli._bridge", inet.host, str(inet.port)]
        return connect(f"exec:{shlex.join(bridge)}", layers=[ctx.tls("client")])

    with _listened_pair("tcp:127.0.0.1:0", [ctx.tls("server")], client) as ends:
        yield ends


#: Every chain the demo runs, in table order.
CHAINS: tuple[Chain, ...] = (
    Chain("memory pipe", ("buffer",), _memory_pair),
    Chain("tcp", ("tcp",), lambda ctx: _tcp(ctx, [], [])),
    Chain("unix", ("unix",), _unix_pair),
    Chain("command pipe (exec:cat)", ("exec",), _command_pair),
    Chain("file", ("file",), _file_pair, sequential=True),
    Chain(
        "TLS over tcp",
        ("tcp", "tls"),
        lambda ctx: _tcp(ctx, [ctx.tls("server")], [ctx.tls("client")]),
    ),
    Chain(
        "websocket over tcp",
        ("tcp", "websocket"),
        lambda ctx: _tcp(ctx, ["websocket:path=/demo"], ["websocket:path=/demo"]),
    ),
    Chain(
        "websocket over TLS",
        ("tcp", "tls", "websocket"),
        lambda ctx: _tcp(
            ctx,
            [ctx.tls("server"), "websocket:path=/demo"],
            [ctx.tls("client"), "websocket:path=/demo"],
        ),
    ),
    Chain("TLS over command pipe", ("exec", "tcp", "tls"), _tls_over_command_pair),
)


@dataclass
class ChainResult:
    """How one chain did: ``status`` is "ok", "skipped" or "FAILED"."""

    name: str
    status: str
    seconds: float = 0.0
    wire_bytes: int = 0
    ram_bytes: int = 0
    detail: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """RAM bytes per second moved (0 when it did not run)."""
        return self.ram_bytes / self.seconds if self.seconds > 0 else 0.0

    def record(self) -> TransferRecord:
        """Return the chain's ``--json`` record (``bytes``: what crossed the chain)."""
        outcome = {"ok": "ok", "skipped": "skipped"}.get(self.status, "failed")
        return TransferRecord(
            "demo",
            self.name,
            bytes=self.wire_bytes,
            seconds=self.seconds,
            outcome=outcome,
            error=None if outcome == "ok" else self.detail,
        )


def _end_stream(channel: QIOChannel) -> None:
    """Tell the reader nothing more comes: half-close when possible (a command's stdin)."""
    if channel.has_feature(Feature.SHUTDOWN):
        channel.shutdown(Shutdown.WRITE)


def _send(stream: PageStream, writer: QIOChannel, report: Callable[[int], None]) -> None:
    stream.send(QEMUFile.new_output(writer), report)
    _end_stream(writer)


def _interrupt(channels: Sequence[QIOChannel]) -> None:
    """Wake a thread blocked on these channels after the other side failed."""
    for channel in channels:
        if channel.has_feature(Feature.SHUTDOWN) and not channel.closed:
            with contextlib.suppress(ChannelError):
                channel.shutdown(Shutdown.BOTH)


def _transfer(
    stream: PageStream, writer: QIOChannel, reader: QIOChannel, report: Callable[[int], None]
) -> None:
    """Send from a thread while this thread receives and verifies."""
    failures: list[BaseException] = []

    def sender() -> None:
        try:
            _send(stream, writer, lambda _n: None)
        except BaseException as exc:
            failures.append(exc)
            _interrupt([reader])

    thread = threading.Thread(target=sender, name="qiochan-demo-send", daemon=True)
    thread.start()
    try:
        stream.receive(QEMUFile.new_input(reader), report)
    except BaseException:
        _interrupt([writer, reader])
        thread.join(CHAIN_TIMEOUT)
        if failures:
            raise failures[0] from None
        raise
    thread.join(CHAIN_TIMEOUT)
    if thread.is_alive():
        raise ChannelError("the sender did not finish")
    if failures:
        raise failures[0]


def run_chain(
    chain: Chain, stream: PageStream, ctx: DemoContext, progress: Progress
) -> ChainResult:
    """Run ``chain`` once; return its result (never raises for a channel failure)."""
    reason = chain.unavailable()
    if reason:
        return ChainResult(chain.name, "skipped", detail=reason)
    bar = progress.add(chain.name, stream.wire_size)
    started = time.monotonic()
    try:
        with chain.open(ctx) as ends:
            started = time.monotonic()
            if chain.sequential:
                _send(stream, ends.writer, lambda n: progress.advance(bar, n // 2))
                stream.receive(QEMUFile.new_input(ends.reader()), lambda n: None)
                progress.update(bar, completed=stream.wire_size)
            else:
                _transfer(
                    stream, ends.writer, ends.reader(), functools.partial(progress.advance, bar)
                )
            elapsed = time.monotonic() - started
    except (ChannelError, StreamError) as exc:
        progress.update(bar, description=f"{chain.name} FAILED")
        return ChainResult(chain.name, "FAILED", time.monotonic() - started, detail=str(exc))
    return ChainResult(
        chain.name,
        "ok",
        elapsed,
        wire_bytes=stream.wire_size,
        ram_bytes=stream.ram_size,
        detail="every byte verified (SHA-256)",
    )


def _select(names: Sequence[str]) -> list[Chain]:
    if not names:
        return list(CHAINS)
    wanted = [n.lower() for n in names]
    return [c for c in CHAINS if any(w in c.name.lower() for w in wanted)]


def run_demo(args: argparse.Namespace) -> int:
    """Run every chain (or those ``--chain`` picks); print the table, or JSON with ``--json``.

    Raises:
        CLIError: no chain matches ``--chain`` (exit status 2), or a chain failed (1).
    """
    chains = _select(args.chain)
    if not chains:
        names = ", ".join(c.name for c in CHAINS)
        raise CLIError(f"no chain matches {', '.join(args.chain)} (chains: {names})", EXIT_USAGE)
    stream = PageStream(args.size)
    say(
        f"moving {format_bytes(stream.ram_size)} of RAM pages ({stream.pages} page records, "
        f"{format_bytes(stream.wire_size)} on the wire) through {len(chains)} chains"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="qiochan-demo-") as workdir:
        ctx = DemoContext(Path(workdir))
        with Progress(args.progress) as progress:
            for chain in chains:
                result = run_chain(chain, stream, ctx, progress)
                results.append(result)
                if result.status == "FAILED":
                    log.info("%s failed: %s", chain.name, result.detail)
                if args.json:
                    result.record().emit()
    if not args.json:
        _print_results(results)
    failed = [r.name for r in results if r.status == "FAILED"]
    if failed:
        raise CLIError(f"{len(failed)} chain(s) failed: {', '.join(failed)}")
    return EXIT_OK


def _print_results(results: Sequence[ChainResult]) -> None:
    rows = []
    for r in results:
        if r.status == "ok":
            rate = f"{r.throughput / (1 << 20):.0f}"
            wire = format_bytes(r.wire_bytes)
            rows.append([r.name, r.status, rate, f"{r.seconds:.3f}", wire, r.detail])
        else:
            rows.append([r.name, r.status, "-", "-", "-", r.detail])
    print_table(
        "qiochan demo: QEMUFile page stream per transport chain",
        ["chain", "status", "MiB/s", "seconds", "on the wire", "detail"],
        rows,
    )
