"""``qiochan.relay.Gateway`` in an event loop: many clients, token routing, hostile clients.

Every test runs real listeners on loopback, real TLS and websocket layers,
and compares every byte a client gets back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import qiochan.aio
from qiochan.errors import ConfigError
from qiochan.relay import ConnectionInfo, Gateway, Target, parse_targets, token_of

pytest.importorskip("websockets")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Ended:
    """An ``on_connection`` hook that counts ended connections and lets a test wait for them."""

    def __init__(self) -> None:
        self.events: list[tuple[int, str | None]] = []
        self.ended: list[ConnectionInfo] = []
        self._changed = asyncio.Event()

    def __call__(self, info: ConnectionInfo) -> None:
        self.events.append((info.id, info.outcome))
        if info.ended:
            self.ended.append(info)
            self._changed.set()

    async def wait(self, count: int, outcome: str | None = None) -> list[ConnectionInfo]:
        """Wait until ``count`` connections (with ``outcome``, if given) have ended."""
        while True:
            matching = [i for i in self.ended if outcome is None or i.outcome == outcome]
            if len(matching) >= count:
                return matching
            self._changed.clear()
            await self._changed.wait()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Stream every chunk back as it arrives (a websocket hop cannot half-close)."""
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _echo_server() -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"tcp:127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def _echo_gateway(**options: Any) -> AsyncIterator[tuple[Gateway, Ended, str]]:
    """A tcp gateway in front of an echo server; yields it, its hook and the echo address."""
    server, echo = await _echo_server()
    hook = Ended()
    async with server, Gateway("tcp:127.0.0.1:0", echo, on_connection=hook, **options) as gateway:
        yield gateway, hook, echo


async def _round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    echoed = await reader.readexactly(len(data))
    writer.close()
    return echoed


async def _tcp_client(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return await _round_trip(reader, writer, data)


def _run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 50))


def test_hundred_concurrent_clients_through_tcp_ws_tcp() -> None:
    clients = 100

    async def main() -> None:
        server, echo = await _echo_server()
        exit_hook, entry_hook = Ended(), Ended()
        async with (
            server,
            Gateway("ws://127.0.0.1:0/gw", echo, on_connection=exit_hook) as exit_,
            Gateway(
                "tcp:127.0.0.1:0", str(exit_.source_address), on_connection=entry_hook
            ) as entry,
        ):
            port = entry.source_address.port
            payloads = [os.urandom(32 * 1024 + i) for i in range(clients)]
            echoed = await asyncio.gather(*(_tcp_client(port, p) for p in payloads))
            assert echoed == payloads
            for hook in (entry_hook, exit_hook):
                ended = await hook.wait(clients)
                assert {i.outcome for i in ended} == {"ok"}
                assert sorted(i.forward for i in ended) == sorted(len(p) for p in payloads)
            assert not entry.failures and not exit_.failures

    _run(main)


def test_hook_sees_start_and_end_and_tap_copies_both_directions(tmp_path: Path) -> None:
    async def main() -> None:
        async with _echo_gateway(tap=tmp_path) as (gateway, hook, echo):
            data = os.urandom(300_000)
            assert await _tcp_client(gateway.source_address.port, data) == data
            (info,) = await hook.wait(1)
        assert hook.events == [(1, None), (1, "ok")]
        assert (info.forward, info.backward) == (len(data), len(data))
        assert info.peer.startswith("tcp:127.0.0.1:") and info.target == echo
        assert info.duration is not None and info.duration >= 0
        assert (tmp_path / "1-src-to-dst.bin").read_bytes() == data
        assert (tmp_path / "1-dst-to-src.bin").read_bytes() == data
        assert info.as_dict()["bytes_src_to_dst"] == len(data)

    _run(main)


def test_max_active_keeps_new_clients_in_the_backlog() -> None:
    async def main() -> None:
        async with _echo_gateway(max_active=1) as (gateway, hook, _echo):
            port = gateway.source_address.port
            first = await asyncio.open_connection("127.0.0.1", port)
            second = await asyncio.open_connection("127.0.0.1", port)  # the kernel's backlog
            second[1].write(b"waiting")
            # a round trip on the first connection: the loop has run past the second's accept
            first[1].write(b"ping")
            assert await first[0].readexactly(4) == b"ping"
            assert [i.id for i in gateway.active] == [1]
            first[1].close()
            assert await second[0].readexactly(7) == b"waiting"
            second[1].close()
            ended = await hook.wait(2)
            assert [i.outcome for i in ended] == ["ok", "ok"]

    _run(main)


@pytest.mark.parametrize("kind", ["tcp", "tls"])
def test_shutdown_aborts_what_outlives_the_drain(kind: str, tls_creds_dir: Path) -> None:
    creds = tls_creds_dir
    client_tls: ssl.SSLContext | None = None
    options: dict[str, Any] = {}
    if kind == "tls":
        client_tls = ssl.create_default_context(cafile=str(creds / "ca-cert.pem"))
        client_tls.load_cert_chain(creds / "client-cert.pem", creds / "client-key.pem")
        options["source_layers"] = [f"tls:creds={creds}"]

    async def main() -> None:
        async with _echo_gateway(**options) as (gateway, hook, _echo):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                gateway.source_address.port,
                ssl=client_tls,
                server_hostname="localhost" if client_tls else None,
            )
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            assert not await gateway.shutdown(drain_timeout=0.2)
            (info,) = await hook.wait(1)
            assert info.outcome == "aborted" and "drain" in info.error
            assert gateway.failures == [info]
            # aborted: a reset (no TLS close_notify), never a clean end of stream
            with pytest.raises(ConnectionResetError):
                await reader.read()
            writer.close()

    _run(main)


@pytest.mark.parametrize(
    ("target", "token"),
    [("/vm1", "vm1"), ("/gw/vm1", "vm1"), ("/?token=vm2", "vm2"), ("/a?token=b", "b"), ("/", None)],
)
def test_token_of(target: str, token: str | None) -> None:
    assert token_of(target) == token


def test_parse_targets_checks_entries(tmp_path: Path) -> None:
    targets = parse_targets(
        '[targets]\nvm1 = "tcp:127.0.0.1:1"\n'
        'vm2 = { address = "unix:/s", layers = ["tls:creds=/p"] }\n'
    )
    assert targets == {
        "vm1": Target("tcp:127.0.0.1:1"),
        "vm2": Target("unix:/s", ("tls:creds=/p",)),
    }
    for text, key in (
        ("[targets]\nvm1 = 3\n", "targets.vm1"),
        ("[targets]\nvm1 = { address = 'tcp:h:1', x = 1 }\n", "targets.vm1.x"),
        ("[other]\n", "other"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_targets(text, tmp_path / "t.toml")
        assert info.value.key == key


def _raw_upgrade(port: int, path: str) -> bytes:
    """Send a websocket upgrade request for ``path``; return the status line of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        return sock.makefile("rb").readline()


def test_token_routing_picks_the_target_and_refuses_unknown_tokens_with_404() -> None:
    async def tagged(tag: bytes) -> tuple[asyncio.Server, str]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(tag + await reader.readexactly(4))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return server, f"tcp:127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def main() -> None:
        (a, a_address), (b, b_address) = await tagged(b"A"), await tagged(b"B")
        targets = {"vm1": Target(a_address), "vm2": Target(b_address)}
        hook = Ended()
        async with a, b, Gateway("ws://127.0.0.1:0/", targets=targets, on_connection=hook) as gw:
            url = str(gw.source_address).rstrip("/")
            loop = asyncio.get_running_loop()
            refused = await loop.run_in_executor(None, _raw_upgrade, gw.source_address.port, "/vm9")
            assert refused.startswith(b"HTTP/1.1 404"), refused
            for path, expected in (("/vm1", b"A"), ("/?token=vm2", b"B"), ("/x/vm2", b"B")):
                reader, writer = await qiochan.aio.open_connection(url + path)
                writer.write(b"ping")
                assert await reader.readexactly(5) == expected + b"ping"
                writer.close()
            ended = await hook.wait(3, "ok")
            assert [i.token for i in ended] == ["vm1", "vm2", "vm2"]
            (rejected,) = [i for i in hook.ended if i.outcome == "rejected"]
            assert "404" in rejected.error

    _run(main)


# -- hostile clients -----------------------------------------------------------------------


async def _silent(port: int, count: int) -> list[socket.socket]:
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    return socks


def _connect_and_drop(port: int, cycles: int) -> None:
    for _ in range(cycles):
        socket.create_connection(("127.0.0.1", port)).close()


def _garbage(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(os.urandom(4096))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(20)
        while sock.recv(4096):
            pass


def _wrong_certificate(port: int, creds: Path, other: Path) -> None:
    """A client that trusts the server but presents a certificate of another CA."""
    context = ssl.create_default_context(cafile=str(creds / "ca-cert.pem"))
    context.check_hostname = False
    context.load_cert_chain(other / "client-cert.pem", other / "client-key.pem")
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.settimeout(20)
        with pytest.raises((ssl.SSLError, OSError)), context.wrap_socket(raw) as tls:
            tls.sendall(b"x")  # TLS 1.3: the server's verdict arrives with the first read
            assert tls.recv(1) != b"x"


def _slowloris(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never the rest
    return sock


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["tls", "ws"])
def test_hostile_clients_neither_stop_good_ones_nor_leak(
    kind: str, tls_creds_dir: Path, tmp_path: Path
) -> None:
    creds = tls_creds_dir
    certs = pytest.importorskip("qiochan_tls.certs")

    async def main() -> None:
        server, echo = await _echo_server()
        hook = Ended()
        # the stalled clients leave only when they close: a long handshake timeout
        if kind == "tls":
            gateway = Gateway(
                "tcp:127.0.0.1:0",
                echo,
                source_layers=[f"tls:creds={creds}"],
                handshake_timeout=30.0,
                on_connection=hook,
            )
        else:
            gateway = Gateway(
                "ws://127.0.0.1:0/",
                echo,
                source_layers=["websocket:timeout=30"],
                handshake_timeout=30.0,
                on_connection=hook,
            )
        async with server, gateway:
            port = gateway.source_address.port
            if kind == "tls":
                address, layers = f"tcp:127.0.0.1:{port}", [f"tls:creds={creds},hostname=localhost"]
            else:
                address, layers = f"ws://127.0.0.1:{port}/", []
            loop = asyncio.get_running_loop()

            async def good(n: int) -> None:
                data = os.urandom(10_000 + n)
                reader, writer = await qiochan.aio.open_connection(address, layers=layers)
                assert await _round_trip(reader, writer, data) == data

            await good(0)
            before_fds, before_tasks = _fds(), len(asyncio.all_tasks())
            silent = await _silent(port, 20)
            slow = [_slowloris(port) for _ in range(5)]
            hostile = [
                loop.run_in_executor(None, _connect_and_drop, port, 1000),
                *(loop.run_in_executor(None, _garbage, port) for _ in range(5)),
            ]
            if kind == "tls":
                other = tmp_path / "other-ca"
                certs.create_creds_dir(other)
                hostile.append(loop.run_in_executor(None, _wrong_certificate, port, creds, other))
            for n in range(1, 11):
                await good(n)
            await asyncio.gather(*hostile)
            for n in range(11, 16):
                await good(n)
            # every good client was served while the stalled ones still held their handshakes
            # (to TLS, slowloris headers are garbage: refused at once)
            stalled = 20 + (5 if kind == "ws" else 0)
            at_once = 1000 + 5 + (5 + 1 if kind == "tls" else 0)
            assert len(gateway.active) >= stalled
            await hook.wait(at_once, "rejected")
            for sock in silent + slow:
                sock.close()
            await hook.wait(at_once + stalled, "rejected")
            await hook.wait(16, "ok")
            assert gateway.active == []
            assert not gateway.failures
            assert len(asyncio.all_tasks()) <= before_tasks
            assert _fds() <= before_fds

    _run(main)


def test_tap_serves_more_connections_than_its_buffer_pool(tmp_path: Path) -> None:
    # each tapped direction borrows a pooled read buffer; one never filled must go back
    from qiochan import _tap

    connections = _tap.MAX_PENDING // _tap.BUFFER_SIZE + 20

    async def main() -> None:
        async with _echo_gateway(tap=tmp_path) as (gateway, hook, _echo):
            for n in range(connections):
                data = b"%d" % n
                assert await _tcp_client(gateway.source_address.port, data) == data
            await hook.wait(connections, "ok")
        for n in (1, connections):
            assert (tmp_path / f"{n}-src-to-dst.bin").read_bytes() == b"%d" % (n - 1)

    _run(main)


def test_a_broken_target_fails_its_connection_and_the_gateway_goes_on() -> None:
    async def main() -> None:
        server, echo = await _echo_server()
        targets = {
            "good": Target(echo),
            "nowhere": Target("tcp:127.0.0.1:1"),
            "bad": Target("zz:x"),
        }
        hook = Ended()
        async with server, Gateway("ws://127.0.0.1:0/", targets=targets, on_connection=hook) as gw:
            url = str(gw.source_address).rstrip("/")
            for token in ("nowhere", "bad", "good"):
                reader, writer = await qiochan.aio.open_connection(f"{url}/{token}")
                if token == "good":
                    assert await _round_trip(reader, writer, b"still serving") == b"still serving"
                else:
                    assert await reader.read() == b""  # dropped: the destination failed
                    writer.close()
            ended = await hook.wait(3)
        outcomes = {i.token: (i.outcome, i.error) for i in ended}
        assert outcomes["good"] == ("ok", "")
        for token, address in (("nowhere", "tcp:127.0.0.1:1"), ("bad", "zz:x")):
            outcome, error = outcomes[token]
            assert outcome == "failed" and f"destination {address}" in error, error
        assert len(gw.failures) == 2

    _run(main)


def test_both_sides_listening_pairs_peers_in_arrival_order() -> None:
    async def main() -> None:
        hook = Ended()
        async with Gateway(
            "tcp:127.0.0.1:0", "tcp:127.0.0.1:0", listen_destination=True, on_connection=hook
        ) as gateway:
            src_port = gateway.source_address.port
            dst_port = gateway.destination_address.port
            destinations = [await asyncio.open_connection("127.0.0.1", dst_port) for _ in range(2)]
            sources = [await asyncio.open_connection("127.0.0.1", src_port) for _ in range(2)]
            for n, (_reader, writer) in enumerate(sources):
                writer.write(b"from source %d" % n)
                writer.write_eof()
            for n, (reader, writer) in enumerate(destinations):
                assert await reader.read() == b"from source %d" % n
                writer.close()
            for reader, writer in sources:
                assert await reader.read() == b""
                writer.close()
            ended = await hook.wait(2)
        assert [i.outcome for i in ended] == ["ok", "ok"]

    _run(main)


def test_a_client_still_handshaking_at_shutdown_is_rejected_not_failed() -> None:
    async def main() -> None:
        server, echo = await _echo_server()
        hook = Ended()
        async with server, Gateway("ws://127.0.0.1:0/", echo, on_connection=hook) as gateway:
            silent = socket.create_connection(("127.0.0.1", gateway.source_address.port))
            while not gateway.active:  # until the loop accepted it (no timer: bounded by the test)
                await asyncio.sleep(0)
            assert await gateway.shutdown(drain_timeout=5)
            silent.close()
        (info,) = hook.ended
        assert info.outcome == "rejected" and not gateway.failures

    _run(main)


def test_a_destination_reset_is_passed_on_as_a_reset() -> None:
    async def main() -> None:
        async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(10)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

        server = await asyncio.start_server(reset, "127.0.0.1", 0)
        target = f"tcp:127.0.0.1:{server.sockets[0].getsockname()[1]}"
        hook = Ended()
        async with server, Gateway("tcp:127.0.0.1:0", target, on_connection=hook) as gateway:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.source_address.port)
            writer.write(b"0123456789")
            # a clean close would read b"": the cut must show as one
            with pytest.raises(ConnectionResetError):
                await reader.read()
            writer.close()
            (info,) = await hook.wait(1)
        assert info.outcome == "failed" and "reset" in info.error.lower(), info.error

    _run(main)


def test_a_stalled_websocket_upgrade_is_answered_408_within_the_handshake_timeout() -> None:
    async def main() -> None:
        server, echo = await _echo_server()
        hook = Ended()
        async with (
            server,
            Gateway("ws://127.0.0.1:0/", echo, handshake_timeout=1, on_connection=hook) as gw,
        ):
            loop = asyncio.get_running_loop()

            def stall() -> bytes:
                with _slowloris(gw.source_address.port) as sock:
                    sock.settimeout(20)
                    return sock.makefile("rb").readline()

            assert (await loop.run_in_executor(None, stall)).startswith(b"HTTP/1.1 408")
            (info,) = await hook.wait(1)
            assert info.outcome == "rejected" and "408" in info.error

    _run(main)
