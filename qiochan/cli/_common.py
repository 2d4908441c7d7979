"""What every ``qiochan`` subcommand shares: errors, sizes, endpoints, plugin objects."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Literal, Self, TypeVar

from ..channel import QIOChannel

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CLIError",
    "Endpoint",
    "Stopped",
    "Watchdog",
    "abort_quietly",
    "add_layer_argument",
    "error_line",
    "format_bytes",
    "format_rate",
    "open_endpoint",
    "parse_rate",
    "parse_size",
    "plugin_object",
    "say",
]

log = logging.getLogger("qiochan.cli")

EXIT_OK = 0
#: The operation failed (refused, handshake, I/O error, incomplete transfer...).
EXIT_FAILED = 1
#: The command line is wrong (usage, a malformed address or layer, an invalid config).
EXIT_USAGE = 2


class CLIError(Exception):
    """A failure reported as one line on stderr and an exit status.

    Args:
        message: what failed, including how many bytes had passed for transfers.
        code: the exit status.
        outcome: how ``--json`` names it (``"failed"``, ``"cut"``, ``"interrupted"``...).
    """

    def __init__(self, message: str, code: int = EXIT_FAILED, outcome: str = "failed") -> None:
        super().__init__(message)
        self.code = code
        self.outcome = outcome


_say_lock = threading.Lock()


def say(message: str) -> None:
    """Print one status line to stderr at once (``qiochan: ...``)."""
    with _say_lock:
        print(f"qiochan: {message}", file=sys.stderr, flush=True)


def error_line(command: str, message: str) -> None:
    """Print the one line every failure of ``qiochan COMMAND`` is reported with.

    The form is ``qiochan COMMAND: error: MESSAGE``, on stderr.
    """
    with _say_lock:
        print(f"qiochan {command}: error: {message}", file=sys.stderr, flush=True)


class Stopped(BaseException):
    """The command was stopped in the middle: by a signal, or by ``--timeout``.

    Like :class:`KeyboardInterrupt` it is a :class:`BaseException`, so no
    ``except Exception`` on the way swallows it; whoever holds a channel
    aborts it on the way out.

    Attributes:
        reason: what stopped it (``"interrupted by SIGTERM"``).
        outcome: ``"interrupted"`` or ``"timeout"``.
        code: the exit status (128 + the signal number, or 1 for a timeout).
    """

    def __init__(self, reason: str, outcome: str, code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome
        self.code = code


#: The signals that stop a transfer (each ends it with an abort, never a clean end).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Watchdog:
    """Turns stop signals, and ``timeout`` seconds without progress, into :class:`Stopped`.

    A context manager for the main thread.  While it is active, SIGINT,
    SIGTERM and SIGHUP stop the command, and so does ``SIGALRM`` once
    ``timeout`` seconds pass without :meth:`progress`.  A signal raises
    :class:`Stopped` at once only inside :meth:`interruptible` -- the places
    where the main thread waits (for readiness, a peer, a handshake, its
    input), never in the middle of a channel's own bookkeeping, which an
    exception could leave half-done.  Elsewhere it is kept until the next
    :meth:`interruptible` or :meth:`check`, or the end of the ``with``
    block.  After the first one, further signals are only logged, so the
    abort that follows runs to its end.

    Args:
        timeout: seconds without progress before giving up; None: no limit.
    """

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        self._saved: dict[int, Any] = {}
        self._fired = False
        self._pending: Stopped | None = None
        self._depth = 0

    def __enter__(self) -> Self:
        for sig in (*STOP_SIGNALS, signal.SIGALRM):
            self._saved[sig] = signal.signal(sig, self._stop)
        self.progress()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()
        if exc_type is None:
            self.check()

    def progress(self) -> None:
        """Something moved: the ``timeout`` starts again."""
        if self.timeout is not None and not self._fired:
            signal.setitimer(signal.ITIMER_REAL, self.timeout)

    def check(self) -> None:
        """Raise the :class:`Stopped` a signal left pending, if any."""
        stop, self._pending = self._pending, None
        if stop is not None:
            raise stop

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Let a signal raise :class:`Stopped` at once inside this block (a wait)."""
        self.check()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._fired:
            log.info("%s while stopping: ignored", name)
            return
        self._fired = True
        signal.setitimer(signal.ITIMER_REAL, 0)
        if signum == signal.SIGALRM:
            stop = Stopped(f"nothing moved for {self.timeout:g} s (--timeout)", "timeout", 1)
        else:
            stop = Stopped(f"interrupted by {name}", "interrupted", 128 + signum)
        if self._depth:
            raise stop
        self._pending = stop


def abort_quietly(channel: Any) -> None:
    """Abort ``channel`` (see :meth:`qiochan.QIOChannel.abort`), logging a failure to do so."""
    try:
        channel.abort()
    except OSError as exc:
        log.debug("aborting %r: %s", channel, exc)


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# re.ASCII: \d is 0-9 only, not every script's digits
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE | re.ASCII)
_MAX_SIZE = 1 << 63


def parse_size(text: str) -> int:
    """Parse a byte count: ``4096``, ``64M``, ``1.5GiB``, ``512kb`` (K/M/G/T are powers of 1024).

    Raises:
        argparse.ArgumentTypeError: not a size.
    """
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (e.g. 4096, 512K, 64M, 1G; K/M/G are powers of 1024)"
        )
    size = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if size >= _MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is too large a size")
    return int(size)


def parse_rate(text: str) -> int:
    """Parse a rate in bytes per second (``10M``, ``10M/s``, ``100KiB/s``); must be > 0.

    Raises:
        argparse.ArgumentTypeError: not a positive rate.
    """
    size = parse_size(text[:-2] if text.lower().endswith("/s") else text)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"rate {text!r} must be more than 0 bytes per second")
    return size


def format_bytes(count: float) -> str:
    """Return ``count`` bytes in a human unit (``"64.0 MiB"``)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_rate(count: int, seconds: float) -> str:
    """Return the throughput of ``count`` bytes in ``seconds`` (``"812.4 MiB/s"``), "-" for 0 s."""
    return f"{count / seconds / (1 << 20):.1f} MiB/s" if seconds > 0 else "-"


def add_layer_argument(
    parser: argparse.ArgumentParser, flag: str = "--layer", dest: str = "layers", what: str = ""
) -> None:
    """Add a repeatable layer-spec option (``--layer tls:creds=DIR``) to ``parser``."""
    target = f" to {what}" if what else ""
    parser.add_argument(
        flag,
        dest=dest,
        action="append",
        default=[],
        metavar="SPEC",
        help=f"apply a layer{target}, innermost first (repeatable), e.g. tls:creds=DIR "
        "or websocket:path=/p",
    )


@dataclass
class Endpoint:
    """One side of a transfer: an address (or configured name), its layers, and the role.

    Attributes:
        address: address text or a configured transport name.
        layers: layer specs applied innermost first.
        listen: listen and accept one peer instead of connecting.
        label: how messages name this side (``"source"``, ``"destination"``).
    """

    address: str
    layers: list[str] = field(default_factory=list)
    listen: bool = False
    label: str = "peer"

    def describe(self) -> str:
        """Return ``address [+ layer ...]`` for messages."""
        return " + ".join([self.address, *self.layers])

    @property
    def role(self) -> Literal["client", "server"]:
        """The role the layers take: server when listening."""
        return "server" if self.listen else "client"

    def check(self) -> None:
        """Check the address and every layer before anything connects or listens.

        The address must parse and name an available transport (a configured
        name stands for its address and layers); every layer spec must parse,
        name an available layer and pass that layer's own check for this
        role (:func:`qiochan.transport.check_layers`): unknown options, an
        option for the other side, credentials that do not load.

        Raises:
            CLIError: exit status 2, naming this side and the bad part.
        """
        from ..config import lookup_transport
        from ..errors import Error
        from ..registry import resolve_address
        from ..transport import check_layers

        try:
            address, layers = self.address, list(self.layers)
            configured = lookup_transport(address) if ":" not in address else None
            if configured is not None:
                address, layers = configured.address, [*configured.layers, *layers]
            resolve_address(address)
            check_layers(layers, self.role)
        except (Error, ValueError) as exc:
            raise CLIError(f"bad {self.label} {self.describe()}: {exc}", EXIT_USAGE) from None


def _open_only(endpoint: Endpoint, mode: str) -> QIOChannel | None:
    """Open ``endpoint`` when its address can only be opened (``file:``); else return None."""
    from ..transport import open_only

    return open_only(endpoint.address, layers=endpoint.layers, role=endpoint.role, mode=mode)


def open_endpoint(endpoint: Endpoint, mode: str = "rw") -> QIOChannel:
    """Connect to ``endpoint``, or listen on it and accept exactly one peer.

    A listening endpoint announces its real address (port 0 resolved) on
    stderr before it waits, and keeps it in ``endpoint.address``.  An address
    that can only be opened (``file:``) is opened in ``mode`` whatever the
    role, and its layers applied in the role the endpoint has.

    Returns:
        The channel, blocking, with every handshake done.
    Raises:
        CLIError: the address, a layer or the peer failed (exit status 2 for a
            malformed address or configuration, 1 otherwise).
    """
    from ..errors import AddressError, ChannelError, ConfigError, PluginError

    what = f"{endpoint.label} {endpoint.describe()}"
    try:
        return _open_endpoint(endpoint, mode)
    except (AddressError, ConfigError) as exc:
        raise CLIError(f"bad {what}: {exc}", EXIT_USAGE) from None
    except (ChannelError, PluginError) as exc:
        raise CLIError(f"{what}: {exc} (0 bytes passed)") from None


def _open_endpoint(endpoint: Endpoint, mode: str) -> QIOChannel:
    from ..transport import connect, listen

    opened = _open_only(endpoint, mode)
    if opened is not None:
        return opened
    if not endpoint.listen:
        return connect(endpoint.address, layers=endpoint.layers)
    listener = listen(endpoint.address, layers=endpoint.layers)
    endpoint.address = str(listener.address)  # the real port, for every later message
    try:
        say(f"{endpoint.label}: listening on {endpoint.address}")
        return listener.accept()  # type: ignore[no-any-return]
    finally:
        listener.close()


def plugin_object(kind: Literal["transport", "layer"], scheme: str, attribute: str) -> Any:
    """Return ``attribute`` of the plugin module serving ``scheme`` (found through the registry).

    The command never imports a plugin package: it asks the registry which
    plugin serves the scheme and uses the object that plugin registered.

    Raises:
        PluginError: no available plugin serves it.
        CLIError: the plugin does not provide ``attribute``.
    """
    import importlib

    from ..registry import find_backend, plugin_manager

    backend = find_backend(scheme, kind=kind)
    value: Any = plugin_manager().get_plugin(backend.plugin)
    for part in attribute.split("."):
        found = getattr(value, part, None)
        module_name = getattr(value, "__name__", None)
        if found is None and isinstance(module_name, str):
            try:  # a submodule of the plugin package not imported yet
                found = importlib.import_module(f"{module_name}.{part}")
            except ImportError:
                found = None
        if found is None:
            raise CLIError(f"plugin {backend.plugin!r} for {scheme!r} does not provide {attribute}")
        value = found
    return value


_N = TypeVar("_N", int, float)


def _ascii_number(text: str, convert: Callable[[str], _N], noun: str) -> _N:
    """Convert ``text`` (ASCII only) with ``convert``; argparse's error names ``noun``."""
    try:
        if not text.isascii():
            raise ValueError(text)
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None


def positive_float(text: str) -> float:
    """argparse type: a number of seconds above zero (ASCII digits, finite)."""
    value = _ascii_number(text, float, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number above zero (ASCII digits)."""
    value = _ascii_number(text, int, "a whole number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def join_words(words: Sequence[str]) -> str:
    """Return ``"a, b and c"``."""
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} and {words[-1]}"
