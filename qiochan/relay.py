"""The gateway: many relayed connections on one asyncio loop.

A :class:`Gateway` listens on a source address; for every accepted peer it
runs the server side of the source layers (TLS, websocket), opens its own
connection to the destination (with client layers), and copies both
directions until each has ended::

    async def main() -> None:
        async with Gateway("tcp:0.0.0.0:4444", "wss://dst.example:8443/mig",
                           destination_layers=["tls:creds=/etc/pki/qemu"],
                           on_connection=print) as gateway:
            await gateway.serve()          # until gateway.shutdown() is awaited elsewhere

Rules, as ``qiochan relay`` has always had them: an end of stream is passed
on as a half-close where the channel can, as a close otherwise; flow control
is end to end (a full write buffer on one side stops reading on the other);
a connection succeeds when both directions ended cleanly, or when after a
first clean end of stream the rest ended by a close or reset, and every byte
read was written on.

With ``targets`` (token routing, as websockify's token plugins) the source
must be a websocket server (``ws://``, ``wss://`` or a ``websocket:`` layer);
each client's token -- the ``token`` query parameter, else the last path
segment -- picks its destination, and an unknown token is refused with HTTP
404 during the websocket handshake.

Everything runs on the running loop (uvloop works too): accepting, the
copying, and the deadlines of the handshakes; nothing blocks it, and no
thread is made per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from . import _relay_io
from ._splice import Splice
from ._tap import TapFile, TapWriter
from .address import WebsocketURL, parse_address
from .channel import QIOChannel
from .config import toml_table
from .errors import AddressError, ChannelError, ConfigError, Error
from .options import LayerSpec, parse_layer
from .registry import find_backend
from .transport import listen

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_MAX_ACTIVE",
    "ConnectionInfo",
    "Gateway",
    "Outcome",
    "Target",
    "load_targets",
    "parse_targets",
    "token_of",
]

log = logging.getLogger("qiochan.relay")

#: Seconds an accepted client's server-side handshakes may take.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Connections relayed at once; beyond it new clients wait in the listen backlog.
DEFAULT_MAX_ACTIVE = 1024
#: The listen backlog asked for (the kernel caps it at net.core.somaxconn): a
#: burst of clients waits there instead of being refused.
LISTEN_BACKLOG = 1024

#: How a connection ended: ``"ok"`` (relayed and ended cleanly), ``"failed"``
#: (an error on either side, the destination unreachable...), ``"aborted"``
#: (the gateway stopped it, e.g. at the end of a drain), ``"rejected"`` (its
#: handshake failed or timed out, or its token is unknown: never relayed).
Outcome = Literal["ok", "failed", "aborted", "rejected"]


@dataclass(frozen=True)
class Target:
    """A destination: an address (or configured transport name) and its client layers."""

    address: str
    layers: tuple[str, ...] = ()

    def __str__(self) -> str:
        return " + ".join([self.address, *self.layers])


@dataclass
class ConnectionInfo:
    """One connection through the gateway, as the ``on_connection`` hook sees it.

    The byte counters are live while the connection runs.

    Attributes:
        id: the connection number (1, 2, ...; in accept order).
        peer: the accepted peer's address (``"tcp:127.0.0.1:51234"``).
        target: the destination (``str(Target)``), ``""`` before it is known.
        token: the routing token, when the gateway routes by token.
        started: wall-clock time of the accept (``time.time()``).
        forward: bytes relayed source -> destination.
        backward: bytes relayed destination -> source.
        duration: seconds from accept to end, once ended.
        outcome: None while running, then an :data:`Outcome`.
        error: why it failed, was aborted or rejected; ``""`` when ok.
    """

    id: int
    peer: str
    target: str = ""
    token: str | None = None
    started: float = field(default_factory=time.time)
    forward: int = 0
    backward: int = 0
    duration: float | None = None
    outcome: Outcome | None = None
    error: str = ""
    _clock: float = field(default_factory=time.monotonic, repr=False, compare=False)

    @property
    def ended(self) -> bool:
        """True once the connection is over."""
        return self.outcome is not None

    def as_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict (``qiochan relay --json`` prints it).

        Keys: ``id``, ``peer``, ``target``, ``token``, ``started``,
        ``bytes_src_to_dst``, ``bytes_dst_to_src``, ``seconds`` (the
        duration), ``outcome`` and ``error`` (None when ok), as the other
        commands' ``--json`` records name them.
        """
        return {
            "id": self.id,
            "peer": self.peer,
            "target": self.target,
            "token": self.token,
            "started": self.started,
            "bytes_src_to_dst": self.forward,
            "bytes_dst_to_src": self.backward,
            "seconds": None if self.duration is None else round(self.duration, 6),
            "outcome": self.outcome,
            "error": self.error or None,
        }

    def _count_forward(self, n: int) -> None:
        self.forward += n

    def _count_backward(self, n: int) -> None:
        self.backward += n

    def _end(self, outcome: Outcome, error: str = "") -> None:
        self.outcome = outcome
        self.error = error
        self.duration = time.monotonic() - self._clock


#: Called with a connection's info when relaying starts (``outcome`` None) and
#: when it ends (``outcome`` set); a rejected client is seen only at its end.
OnConnection = Callable[[ConnectionInfo], object]


def token_of(target: str) -> str | None:
    """Return the routing token of a websocket request target, or None when it has none.

    The ``token`` query parameter wins; else the last non-empty path segment
    (``/vm1`` and ``/gw/vm1`` give ``"vm1"``).
    """
    path, _sep, query = target.partition("?")
    tokens = urllib.parse.parse_qs(query).get("token")
    if tokens and tokens[0]:
        return tokens[0]
    segments = [s for s in path.split("/") if s]
    return urllib.parse.unquote(segments[-1]) if segments else None


def _target_of(token: str, value: Any, path: Path | None) -> Target:
    key = f"targets.{token}"
    if isinstance(value, str):
        if not value:
            raise ConfigError(path, key, "an empty address")
        return Target(value)
    if not isinstance(value, dict):
        raise ConfigError(path, key, "must be an address string or a table {address, layers}")
    unknown = sorted(set(value) - {"address", "layers"})
    if unknown:
        raise ConfigError(path, f"{key}.{unknown[0]}", "unknown key (expected address, layers)")
    address, layers = value.get("address"), value.get("layers", [])
    if not isinstance(address, str) or not address:
        raise ConfigError(path, f"{key}.address", "must be a non-empty address string")
    if not isinstance(layers, list) or not all(isinstance(s, str) for s in layers):
        raise ConfigError(path, f"{key}.layers", "must be a list of layer spec strings")
    for index, spec in enumerate(layers):
        try:
            parse_layer(spec)
        except AddressError as exc:
            raise ConfigError(path, f"{key}.layers[{index}]", str(exc)) from None
    return Target(address, tuple(layers))


def parse_targets(text: str, path: Path | None = None) -> dict[str, Target]:
    """Parse a targets file: TOML with a ``[targets]`` table, token -> address or table.

    ::

        [targets]
        vm1 = "tcp:10.0.0.5:4444"
        vm2 = { address = "unix:/run/vm2.sock", layers = ["tls:creds=/etc/pki/qemu"] }

    Returns:
        The targets by token.
    Raises:
        ConfigError: invalid TOML or entry (the message names the file and key).
    """
    table = toml_table(text, path, "targets", "[targets]")
    if not isinstance(table, dict):
        raise ConfigError(path, "targets", "missing [targets] table of token = address")
    return {str(token): _target_of(str(token), value, path) for token, value in table.items()}


def load_targets(path: str | os.PathLike[str]) -> dict[str, Target]:
    """Read a targets file (see :func:`parse_targets`).

    Raises:
        ConfigError: the file cannot be read or is invalid.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "", f"cannot read: {exc}") from None
    return parse_targets(text, file)


def _specs(layers: Iterable[Any]) -> list[Any]:
    return [parse_layer(layer) if isinstance(layer, str) else layer for layer in layers]


#: The server layers a gateway gives its handshake timeout to (their own option).
_TIMED_LAYERS = ("tls", "websocket")


def _timed_layers(address: Any, layers: Sequence[Any], timeout: float | None) -> list[Any]:
    """Return ``layers`` with ``handshake-timeout`` set on TLS and websocket server layers.

    Layers that name their own timeout keep it.  A ``ws://``/``wss://``
    address gets a websocket spec carrying it, so a stalled upgrade is
    answered 408 (and the logged reason names the right timeout).
    """
    specs = _specs(layers)
    if timeout is None:
        return specs
    value = f"{timeout:g}"
    timed: list[Any] = []
    for spec in specs:
        if (
            isinstance(spec, LayerSpec)
            and spec.name in _TIMED_LAYERS
            and not {"handshake_timeout", "timeout"} & set(spec.options)
        ):
            timed.append(LayerSpec(spec.name, {**spec.options, "handshake_timeout": value}))
        else:
            timed.append(spec)
    is_url = isinstance(address, WebsocketURL) or str(address).startswith(("ws://", "wss://"))
    if is_url and not any(isinstance(s, LayerSpec) and s.name == "websocket" for s in timed):
        timed.append(LayerSpec("websocket", {"handshake_timeout": value}))
    return timed


def _websocket_router(options: Mapping[str, Any], route: Callable[[str], bool]) -> Any:
    """A websocket server layer (a callable layer) that admits what ``route`` says."""
    # the callable goes to the websocket layer as a keyword, not as (text) spec option
    wrap: Any = find_backend("websocket", kind="layer").require("wrap")
    options = {key: value for key, value in options.items() if key != "path"}

    def layer(channel: QIOChannel, role: Any) -> QIOChannel:
        wrapped: QIOChannel = wrap(channel, role, route=route, **options)
        return wrapped

    return layer


def _routed(
    address: Any, layers: Sequence[Any], route: Callable[[str], bool]
) -> tuple[Any, list[Any], Any]:
    """Where and how to listen so that the websocket server layer routes with ``route``.

    A ``ws://``/``wss://`` source becomes its TCP address with the layers the
    URL stands for (TLS from the ``tls:`` layer given, for ``wss``), the
    websocket one routing.

    Returns:
        ``(address, layers, url)``: ``url`` the websocket URL, or None.
    Raises:
        AddressError: the source has no websocket server to route with.
    """
    specs = _specs(layers)
    websockets = [s for s in specs if isinstance(s, LayerSpec) and s.name == "websocket"]
    url = parse_address(address) if isinstance(address, str) else address
    if not isinstance(url, WebsocketURL):
        if not websockets:
            raise AddressError(
                f"token routing needs a websocket source (ws://, wss:// or a websocket: layer), "
                f"not {address}"
            )
        specs[specs.index(websockets[0])] = _websocket_router(websockets[0].options, route)
        return address, specs, None
    # the URL's own websocket layer routes (with the options of a websocket: spec given)
    options: Mapping[str, Any] = {}
    if websockets:
        options = websockets[0].options
        specs.remove(websockets[0])
    inner: list[Any] = []
    if url.secure:
        tls = [s for s in specs if isinstance(s, LayerSpec) and s.name == "tls"]
        if not tls:
            raise AddressError(
                f"{url}: a wss:// server needs its certificate: add a 'tls:creds=DIR' layer"
            )
        specs.remove(tls[0])
        inner.append(tls[0])
    return url.inet, [*inner, _websocket_router(options, route), *specs], url


def _listen(address: Any, layers: Sequence[Any]) -> Any:
    """Listen with a deep backlog where the backend takes one (socket-based ones do)."""
    try:
        return listen(address, layers=layers, backlog=LISTEN_BACKLOG)
    except TypeError:  # a plugin's listen without a backlog option
        return listen(address, layers=layers)


def _request_target(channel: QIOChannel) -> str:
    """The request target a websocket server layer in ``channel``'s chain admitted."""
    current: Any = channel
    while current is not None:
        path = getattr(current, "request_path", None)
        if isinstance(path, str) and path:
            return path
        current = getattr(current, "master", None)
    return ""


def _peer_of(channel: QIOChannel) -> str:
    try:
        address = getattr(channel, "remote_address", None)
    except (ChannelError, OSError):
        address = None
    return "" if address is None else str(address)


class _Connection:
    """A connection's task and, once relaying, its splice."""

    def __init__(self, info: ConnectionInfo) -> None:
        self.info = info
        self.task: asyncio.Task[None] | None = None
        self.splice: Splice | None = None


class Gateway:
    """Relays every peer accepted on ``source`` to its own connection to ``destination``.

    Use it as ``async with Gateway(...) as gateway`` (listens on entry,
    closes on exit) and ``await gateway.serve()``.  All of it runs on the
    loop it is started on.

    Args:
        source: the address (or configured transport name) to listen on.
        destination: where each connection goes; None with ``targets``.
        source_layers, destination_layers: layer specs, innermost first; the
            source's run server side when it listens, client side when it connects.
        connect_source: connect to ``source`` instead of listening on it.
        listen_destination: listen on ``destination`` and take its peers in
            arrival order instead of connecting.  With both sides listening the
            gateway pairs the n-th source peer with the n-th destination peer;
            with neither, it makes ``connections`` (default 1) pairs one after
            the other.
        targets: token -> :class:`Target` for token routing (no ``destination``).
        connections: end after this many relayed connections have ended
            (stop accepting once that many are taken); None serves until
            :meth:`shutdown`.
        handshake_timeout: seconds each accepted client's server-side
            handshakes may take (None: no limit); also bounds each connect.
        max_active: connections handled at once; beyond it, new clients wait
            in the listen backlog.
        on_connection: called on the loop with the :class:`ConnectionInfo` of
            each connection when relaying starts and when it ends.
        tap: a directory that gets a copy of each direction of every relayed
            connection: ``<id>-src-to-dst.bin`` and ``<id>-dst-to-src.bin``.

    Raises:
        ValueError: a bad combination or limit.
    """

    def __init__(
        self,
        source: Any,
        destination: Any = None,
        *,
        source_layers: Sequence[Any] = (),
        destination_layers: Sequence[Any] = (),
        connect_source: bool = False,
        listen_destination: bool = False,
        targets: Mapping[str, Target] | None = None,
        connections: int | None = None,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        max_active: int = DEFAULT_MAX_ACTIVE,
        on_connection: OnConnection | None = None,
        tap: str | os.PathLike[str] | None = None,
    ) -> None:
        if (destination is None) == (targets is None):
            raise ValueError("give either a destination or targets, not both or neither")
        if targets is not None and (connect_source or listen_destination):
            raise ValueError("token routing needs a listening source and connecting destinations")
        if connections is not None and connections < 1:
            raise ValueError(f"connections must be at least 1, got {connections}")
        if max_active < 1:
            raise ValueError(f"max_active must be at least 1, got {max_active}")
        self.source = source
        self.destination = destination
        self._source_layers = list(source_layers)
        self._destination = (
            None
            if destination is None
            else Target(str(destination), tuple(str(layer) for layer in destination_layers))
        )
        self._destination_layers = list(destination_layers)
        self._connect_source = connect_source
        self._listen_destination = listen_destination
        self._targets = dict(targets) if targets is not None else None
        self._limit = connections
        self._handshake_timeout = handshake_timeout
        self._max_active = max_active
        self._on_connection = on_connection
        self._tap = None if tap is None else TapWriter(Path(tap))
        self._source_url: Any = None
        self._ids = itertools.count(1)
        self._driver: _relay_io.Acceptor | None = None
        self._partner: _relay_io.Acceptor | None = None
        self._partners: asyncio.Queue[QIOChannel] | None = None
        self._pending: set[asyncio.Task[Any]] = set()  # partner handshakes
        self._open_locks: dict[Target, asyncio.Lock] = {}
        self._live: dict[int, _Connection] = {}
        self._claimed = 0
        self._relayed_ended = 0
        self._paused = False
        self._closing = False
        self._started = False
        self._finished: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Every connection that ended, in the order they ended.
        self.ended: list[ConnectionInfo] = []

    # -- public state ---------------------------------------------------------------------

    @property
    def source_address(self) -> Any:
        """The address listened on for sources (the real port for port 0), else None."""
        driver = self._driver if not self._connect_source else None
        if driver is None:
            return None
        if self._source_url is not None:  # routing listens on the URL's TCP address
            return dataclasses.replace(self._source_url, port=driver.address.port)
        return driver.address

    @property
    def destination_address(self) -> Any:
        """The address listened on for destinations (``listen_destination``), else None."""
        acceptor = self._partner if not self._connect_source else self._driver
        return acceptor.address if acceptor is not None and self._listen_destination else None

    @property
    def active(self) -> list[ConnectionInfo]:
        """The connections being handled now (handshaking or relaying)."""
        return [connection.info for connection in self._live.values()]

    @property
    def failures(self) -> list[ConnectionInfo]:
        """Relayed connections that failed or were aborted."""
        return [info for info in self.ended if info.outcome in ("failed", "aborted")]

    @property
    def bytes_relayed(self) -> tuple[int, int]:
        """Bytes relayed so far (source -> destination, destination -> source), live ones too."""
        infos = [*self.ended, *self.active]
        return sum(i.forward for i in infos), sum(i.backward for i in infos)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (on the source, and on the destination with ``listen_destination``).

        Raises:
            AddressError, PluginError, ChannelError: as :func:`qiochan.listen`.
        """
        if self._started:
            return
        self._started = True
        loop = self._loop = asyncio.get_running_loop()
        self._finished = asyncio.Event()
        source = self.source
        source_layers = _timed_layers(source, self._source_layers, self._handshake_timeout)
        if self._targets is not None:
            source, source_layers, self._source_url = _routed(source, source_layers, self._admits)
        try:
            if not self._connect_source:
                self._driver = _relay_io.Acceptor(_listen(source, source_layers), loop)
                if self._listen_destination:
                    listener = _listen(self.destination, self._destination_layers)
                    self._partner = _relay_io.Acceptor(listener, loop)
            elif self._listen_destination:
                listener = _listen(self.destination, self._destination_layers)
                self._driver = _relay_io.Acceptor(listener, loop)
        except BaseException:
            self._close_acceptors()
            raise
        if self._partner is not None:
            self._partners = asyncio.Queue()
            self._partner.start(self._partner_accepted)
        if self._driver is not None:
            self._driver.start(self._accepted)

    async def serve(self) -> None:
        """Serve until ``connections`` connections have ended, or :meth:`shutdown` is done.

        Starts the gateway first if needed.  A gateway that listens on
        neither side makes its ``connections`` (default 1) pairs one after
        the other here.
        """
        await self.start()
        assert self._finished is not None
        if self._driver is None:
            for _ in range(self._limit or 1):
                if self._closing:
                    break
                await self._serve_pair()
            self._finished.set()
        await self._finished.wait()

    async def shutdown(self, drain_timeout: float | None = None) -> bool:
        """Stop accepting, let active connections finish, then close.

        Connections still handshaking are dropped at once; relayed ones get
        ``drain_timeout`` seconds (None: no limit) to end, then are aborted.

        Returns:
            True when every connection still running ended by itself in time.
        """
        self._closing = True
        self._close_acceptors()
        for connection in list(self._live.values()):
            if connection.splice is None and connection.task is not None:
                connection.task.cancel()
        tasks = [c.task for c in self._live.values() if c.task is not None]
        drained = True
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=drain_timeout)
            if late:
                drained = False
                for connection in list(self._live.values()):
                    if connection.splice is not None:
                        connection.splice.abort(
                            f"aborted: still running after the {drain_timeout} s drain"
                        )
                await asyncio.wait(late)
        if self._finished is not None:
            self._finished.set()
        return drained

    async def close(self) -> None:
        """Stop at once: stop accepting and abort every connection (a drain of 0 s)."""
        await self.shutdown(0)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- accepting --------------------------------------------------------------------------

    def _admits(self, request_target: str) -> bool:
        token = token_of(request_target)
        return token is not None and self._targets is not None and token in self._targets

    def _close_acceptors(self) -> None:
        for acceptor in (self._driver, self._partner):
            if acceptor is not None:
                with contextlib.suppress(ChannelError, OSError):
                    acceptor.close()
        queue, self._partners = self._partners, None
        while queue is not None and not queue.empty():
            queue.get_nowait().close()
        for task in list(self._pending):
            task.cancel()

    def _accepted(self, raw: QIOChannel) -> None:
        """A new client on the driving listener (on the loop)."""
        if self._closing:
            raw.close()
            return
        info = ConnectionInfo(next(self._ids), _peer_of(raw))
        connection = _Connection(info)
        self._live[info.id] = connection
        task = connection.task = asyncio.get_running_loop().create_task(
            self._serve(connection, raw)
        )
        task.add_done_callback(lambda _task: self._cancelled_early(connection, raw))
        self._update_accepting()

    def _cancelled_early(self, connection: _Connection, raw: QIOChannel) -> None:
        """End a connection whose task was cancelled before it ever ran."""
        if connection.info.ended:
            return
        raw.close()
        self._end(connection, "rejected", "the gateway stopped during the handshake")

    def _update_accepting(self) -> None:
        if self._driver is None or self._closing:
            return
        full = len(self._live) >= self._max_active
        if full and not self._paused:
            self._paused = True
            self._driver.pause()
            log.info("%d connections active: new clients wait in the backlog", len(self._live))
        elif not full and self._paused:
            self._paused = False
            self._driver.resume()

    def _partner_accepted(self, raw: QIOChannel) -> None:
        task = asyncio.get_running_loop().create_task(self._partner_ready(raw))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _partner_ready(self, raw: QIOChannel) -> None:
        assert self._partner is not None
        try:
            channel = await _relay_io.accept_layers(
                raw, self._partner.layers, self._handshake_timeout
            )
        except (Error, OSError) as exc:
            log.info("destination peer %s rejected: %s", _peer_of(raw) or "?", exc)
            return
        if self._partners is None:
            channel.close()
        else:
            self._partners.put_nowait(channel)

    # -- one connection ---------------------------------------------------------------------

    async def _serve(self, connection: _Connection, raw: QIOChannel) -> None:
        info = connection.info
        outcome: Outcome = "rejected"  # until its handshakes passed and it is counted
        error = ""
        assert self._driver is not None
        try:
            try:
                accepted = await _relay_io.accept_layers(
                    raw, self._driver.layers, self._handshake_timeout
                )
            except (Error, OSError) as exc:  # whatever the client did, only it is dropped
                error = f"handshake failed: {exc}"
                return
            try:
                target = self._claim(info, accepted)
            except ChannelError as exc:
                accepted.close()
                error = str(exc)
                return
            outcome = "failed"
            outcome, error = await self._relay(connection, accepted, target)
        except asyncio.CancelledError:
            if outcome == "rejected":
                error = "the gateway stopped during the handshake"
            else:
                outcome, error = "aborted", "the gateway stopped before the connection was relayed"
        except Exception as exc:  # a plugin broke its contract: this connection fails, not all
            log.exception("connection #%d failed unexpectedly", info.id)
            outcome, error = "failed", f"internal error: {type(exc).__name__}: {exc}"
        finally:
            self._end(connection, outcome, error)

    def _claim(self, info: ConnectionInfo, accepted: QIOChannel) -> Target:
        """Count a connection whose handshakes passed; return its target.

        Raises:
            ChannelError: the connection limit is already reached.
        """
        if self._limit is not None and self._claimed >= self._limit:
            raise ChannelError(f"all {self._limit} connections are already taken")
        self._claimed += 1
        if self._limit is not None and self._claimed >= self._limit and self._driver is not None:
            self._driver.close()  # later clients are refused, not left waiting
        if self._targets is None:
            assert self._destination is not None
            return self._destination
        info.token = token_of(_request_target(accepted))
        if info.token is None or info.token not in self._targets:  # the route let it in
            raise ChannelError(f"no target for token {info.token!r}")
        return self._targets[info.token]

    async def _open_partner(self, target: Target) -> QIOChannel:
        """Open the destination of a connection whose handshakes are done.

        Connections to one target are opened one at a time, in the order
        their handshakes completed (``asyncio.Lock`` is first come, first
        served): a peer whose connections must arrive in order -- QEMU 7.2
        takes the first multifd connection to arrive for the main channel --
        sees them arrive at the destination in the order it made them.
        """
        if self._partners is not None:
            return await self._partners.get()
        lock = self._open_locks.setdefault(target, asyncio.Lock())
        async with lock:
            return await _relay_io.open_destination(
                target.address, target.layers, self._handshake_timeout
            )

    async def _relay(
        self, connection: _Connection, accepted: QIOChannel, target: Target
    ) -> tuple[Outcome, str]:
        info = connection.info
        if not self._connect_source:
            info.target = str(target)
            names = (f"source {info.peer}", f"destination {target}")
        else:  # the destination peer was accepted: the source is what we open
            target = Target(str(self.source), tuple(str(layer) for layer in self._source_layers))
            info.target = str(target)
            names = (f"source {target}", f"destination {info.peer}")
        self._notify(info)
        try:
            partner = await self._open_partner(target)
        except (Error, OSError) as exc:
            accepted.close()
            return "failed", f"{names[1] if not self._connect_source else names[0]}: {exc}"
        if self._connect_source:
            return await self._splice(connection, partner, accepted, names)
        return await self._splice(connection, accepted, partner, names)

    async def _serve_pair(self) -> None:
        """One pair when neither side listens: connect the source, then the destination."""
        assert self._destination is not None
        info = ConnectionInfo(next(self._ids), str(self.source), target=str(self._destination))
        connection = _Connection(info)
        self._live[info.id] = connection
        outcome: Outcome = "failed"
        error = ""
        try:
            self._notify(info)
            try:
                source = await _relay_io.open_destination(
                    self.source, self._source_layers, self._handshake_timeout
                )
            except (Error, OSError) as exc:
                error = f"source {self.source}: {exc}"
                return
            try:
                destination = await self._open_partner(self._destination)
            except (Error, OSError) as exc:
                source.close()
                error = f"destination {self._destination}: {exc}"
                return
            names = (f"source {self.source}", f"destination {self._destination}")
            outcome, error = await self._splice(connection, source, destination, names)
        finally:
            self._end(connection, outcome, error)

    async def _splice(
        self,
        connection: _Connection,
        source: QIOChannel,
        destination: QIOChannel,
        names: tuple[str, str],
    ) -> tuple[Outcome, str]:
        info = connection.info
        taps: tuple[TapFile, TapFile] | tuple[None, None] = (None, None)
        if self._tap is not None:
            try:
                taps = (
                    self._tap.open(f"{info.id}-src-to-dst.bin"),
                    self._tap.open(f"{info.id}-dst-to-src.bin"),
                )
            except OSError as exc:
                log.warning("connection #%d is not tapped: %s", info.id, exc)
        splice = connection.splice = Splice(names, info._count_forward, info._count_backward, taps)
        try:
            failure = await splice.run(source, destination)
        except asyncio.CancelledError:
            splice.abort("aborted: the gateway was cancelled")
            raise
        finally:
            if self._tap is not None and taps[0] is not None and taps[1] is not None:
                await self._tap.close(taps[0], taps[1])
        if not failure:
            return "ok", ""
        return ("aborted" if failure.startswith("aborted") else "failed"), failure

    def _end(self, connection: _Connection, outcome: Outcome, error: str) -> None:
        info = connection.info
        info._end(outcome, error)
        self._live.pop(info.id, None)
        self.ended.append(info)
        if outcome != "rejected":
            self._relayed_ended += 1
        log.info(
            "#%d %s -> %s %s in %.2f s: %d bytes forward, %d bytes back%s",
            info.id,
            info.peer or "?",
            info.target or "?",
            outcome,
            info.duration or 0.0,
            info.forward,
            info.backward,
            f": {error}" if error else "",
        )
        self._notify(info)
        self._update_accepting()
        assert self._finished is not None
        if self._limit is not None and self._relayed_ended >= self._limit:
            self._finished.set()
        if self._closing and not self._live:
            self._finished.set()

    def _notify(self, info: ConnectionInfo) -> None:
        if self._on_connection is None:
            return
        try:
            self._on_connection(info)
        except Exception:
            log.exception("the on_connection hook failed for connection #%d", info.id)
