"""QIONetListener: every resolved address, client callbacks on a loop, wait_client, disconnect."""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from pathlib import Path

import pytest

from qiochan.address import InetAddress, UnixAddress
from qiochan.errors import ChannelError
from qiochan_socket import QIOChannelSocket, QIONetListener
from tests.helpers.fds import assert_accept_backs_off, no_free_fds, record_accepts
from tests.helpers.pairs import has_ipv6_loopback

needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")


@needs_ipv6
def test_localhost_listens_on_both_families_with_one_port(no_fd_leak: None) -> None:
    with QIONetListener() as listener:
        listener.open_sync("tcp:localhost:0", num=4)
        addresses = listener.addresses
        assert {a.host for a in addresses if isinstance(a, InetAddress)} == {"127.0.0.1", "::1"}
        ports = {a.port for a in addresses if isinstance(a, InetAddress)}
        assert len(ports) == 1 and ports != {0}, "port 0 gives every socket the same port"
        (port,) = ports
        for host in ("127.0.0.1", "[::1]"):
            with QIOChannelSocket() as client:
                client.connect_sync(f"tcp:{host}:{port}")
                with listener.wait_client(timeout=10) as server:
                    client.write_all(b"hi")
                    buf = bytearray(2)
                    server.read_all(buf)
                    assert buf == b"hi"
                    remote = server.remote_address
                    assert isinstance(remote, InetAddress)
                    assert remote.host == host.strip("[]")


@needs_ipv6
def test_ipv4_off_restricts_to_ipv6(no_fd_leak: None) -> None:
    with QIONetListener() as listener:
        listener.open_sync("tcp:localhost:0,ipv4=off")
        assert [a.host for a in listener.addresses if isinstance(a, InetAddress)] == ["::1"]


def test_client_func_runs_on_the_loop(loop: asyncio.AbstractEventLoop, no_fd_leak: None) -> None:
    listener = QIONetListener()
    listener.set_name("test")
    listener.open_sync("tcp:127.0.0.1:0")
    accepted: list[QIOChannelSocket] = []
    threads: list[int] = []
    notified: list[str] = []

    async def scenario() -> None:
        got_two = asyncio.Event()

        def on_client(lst: QIONetListener, client: QIOChannelSocket, tag: str) -> None:
            assert lst is listener and tag == "data"
            threads.append(threading.get_ident())
            accepted.append(client)
            if len(accepted) == 2:
                got_two.set()

        listener.set_client_func(on_client, "data", notify=notified.append)
        clients = []
        for _ in range(2):
            client = QIOChannelSocket()
            client.connect_sync(listener.address)
            clients.append(client)
        await asyncio.wait_for(got_two.wait(), 10)
        for client in clients:
            client.close()

    loop.run_until_complete(scenario())
    assert threads == [threading.get_ident()] * 2
    assert all(client.name == "test-client" for client in accepted)
    for client in accepted:
        client.close()
    listener.set_client_func(None)
    assert notified == ["data"], "replacing the callback runs the old notify"
    listener.close()


def test_wait_client_and_timeout(no_fd_leak: None) -> None:
    with QIONetListener() as listener:
        listener.open_sync("tcp:127.0.0.1:0")
        with pytest.raises(TimeoutError):
            listener.wait_client(timeout=0.05)
        with QIOChannelSocket() as client:
            client.connect_sync(listener.address)
            with listener.accept() as server:
                assert server.remote_address == client.local_address


def test_disconnect_wakes_a_blocked_wait_client(no_fd_leak: None) -> None:
    listener = QIONetListener()
    listener.open_sync("tcp:127.0.0.1:0")
    outcome: list[ChannelError] = []
    polling = threading.Event()

    def wait() -> None:
        polling.set()
        try:
            listener.wait_client()
        except ChannelError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    assert polling.wait(10)
    listener.disconnect()
    thread.join(10)
    assert not thread.is_alive(), "disconnect did not wake wait_client"
    assert outcome and outcome[0].errno == errno.EBADF
    assert not listener.is_connected()
    assert listener.sioc == ()
    listener.disconnect()  # idempotent


def test_state_and_unix_listener(tmp_path: Path, no_fd_leak: None) -> None:
    listener = QIONetListener()
    assert not listener.is_connected()
    with pytest.raises(ChannelError):
        listener.wait_client()
    path = str(tmp_path / "l.sock")
    listener.open_sync(f"unix:{path}")
    assert listener.is_connected()
    assert listener.address == UnixAddress(path)
    assert len(listener.sioc) == 1
    listener.close()
    assert not listener.is_connected()


def test_add_refuses_a_non_listening_channel(no_fd_leak: None) -> None:
    a, b = socket.socketpair()
    with (
        QIOChannelSocket.from_socket(a) as channel,
        b,
        pytest.raises(ChannelError, match="not a listening socket"),
    ):
        QIONetListener().add(channel)


def test_add_an_existing_listening_channel(no_fd_leak: None) -> None:
    channel = QIOChannelSocket()
    channel.listen_sync("tcp:127.0.0.1:0")
    with QIONetListener() as listener:
        listener.add(channel)
        assert listener.sioc == (channel,)
        assert not channel.blocking, "a listener's channels are non-blocking"
        assert channel.accept() is None
    assert channel.closed


def test_open_sync_fails_when_nothing_binds() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ChannelError) as info:
            QIONetListener().open_sync(f"tcp:127.0.0.1:{port}")
    assert info.value.errno == errno.EADDRINUSE


def test_failing_client_func_keeps_the_listener_accepting(
    loop: asyncio.AbstractEventLoop, no_fd_leak: None, caplog: pytest.LogCaptureFixture
) -> None:
    listener = QIONetListener()
    listener.open_sync("tcp:127.0.0.1:0")
    seen: list[QIOChannelSocket] = []

    async def scenario() -> None:
        second = asyncio.Event()

        def on_client(_listener: QIONetListener, client: QIOChannelSocket) -> None:
            seen.append(client)
            if len(seen) == 1:
                raise RuntimeError("first client rejected by a buggy callback")
            second.set()

        listener.set_client_func(on_client)
        clients = [QIOChannelSocket(), QIOChannelSocket()]
        clients[0].connect_sync(listener.address)
        clients[1].connect_sync(listener.address)
        await asyncio.wait_for(second.wait(), 10)
        for client in clients:
            client.close()

    loop.run_until_complete(scenario())
    for client in seen:
        client.close()
    listener.close()
    assert len(seen) == 2
    assert "buggy callback" in caplog.text


def test_out_of_fds_pauses_accepting_instead_of_spinning(
    loop: asyncio.AbstractEventLoop,
    no_fd_leak: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """accept() failing with EMFILE leaves the client queued: back off, then take it."""
    from qiochan_socket import listener as listener_module

    monkeypatch.setattr(listener_module, "ACCEPT_RETRY_DELAY", 0.5)
    listener = QIONetListener()
    listener.open_sync("tcp:127.0.0.1:0")
    (sioc,) = listener.sioc
    attempts = record_accepts(monkeypatch, sioc, loop.time)
    accepted: list[QIOChannelSocket] = []
    address = listener.address
    assert isinstance(address, InetAddress)
    client = socket.create_connection((address.host, address.port))

    async def scenario() -> None:
        got = asyncio.Event()

        def on_client(_listener: QIONetListener, channel: QIOChannelSocket) -> None:
            accepted.append(channel)
            got.set()

        with no_free_fds():  # accept: EMFILE
            listener.set_client_func(on_client)
            await assert_accept_backs_off(attempts, 0.5)
        await asyncio.wait_for(got.wait(), 10)

    try:
        loop.run_until_complete(scenario())
    finally:
        client.close()
        for channel in accepted:
            channel.close()
        listener.close()
    assert len(accepted) == 1
    assert attempts[-1] - attempts[0] >= 0.4, "accepting resumed only after the delay (0.5 s)"
    assert "accepting again in 0.5 s" in caplog.text
