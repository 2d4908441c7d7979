"""QIOChannelTLS: handshakes (blocking, QIOTask, async), the peer, endings, readiness."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from qiochan import QIOTask
from qiochan.channel import ERR_BLOCK, Feature, QIOChannel, ReadFlag, Shutdown
from qiochan.errors import ChannelError, TLSError, TLSHandshakeError
from qiochan.watch import Condition
from qiochan_memory import memory_pipe
from qiochan_socket import socket_pair
from qiochan_tls import QIOChannelTLS, TLSCredsX509
from qiochan_tls.certs import create_creds_dir
from qiochan_tls.testing import handshake_pair, run_handshakes
from tests.helpers.pipechannel import pipe_pair

Creds = tuple[TLSCredsX509, TLSCredsX509]


@pytest.fixture(scope="module")
def creds(tls_creds_dir: Path) -> Creds:
    return TLSCredsX509(tls_creds_dir, "server"), TLSCredsX509(tls_creds_dir, "client")


def new_pair(
    creds: Creds,
    masters: tuple[QIOChannel, QIOChannel] | None = None,
    *,
    allow_unclean_eof: bool = False,
) -> tuple[QIOChannelTLS, QIOChannelTLS]:
    """Return ``(server, client)`` over a socket pair (or ``masters``), handshake not done."""
    server_master, client_master = masters if masters is not None else socket_pair()
    server = QIOChannelTLS.new_server(server_master, creds[0], allow_unclean_eof=allow_unclean_eof)
    client = QIOChannelTLS.new_client(
        client_master, creds[1], "localhost", allow_unclean_eof=allow_unclean_eof
    )
    return server, client


@pytest.fixture
def pair(creds: Creds) -> Iterator[tuple[QIOChannelTLS, QIOChannelTLS]]:
    server, client = new_pair(creds)
    handshake_pair(server, client)
    yield server, client
    server.close()
    client.close()


def test_peer_identity(pair: tuple[QIOChannelTLS, QIOChannelTLS]) -> None:
    server, client = pair
    assert server.peer_dn() == "C=UK,O=Example,CN=client"
    assert server.peer_dn(rfc4514=True) == "CN=client,O=Example,C=UK"
    assert client.peer_dn() == "C=UK,O=Example,CN=localhost"
    cert = client.peer_certificate()
    assert isinstance(cert, x509.Certificate)
    assert cert == server.creds.certificate
    assert server.version() == client.version() == "TLSv1.3"
    cipher = client.cipher()
    assert cipher is not None and cipher[1] == "TLSv1.3"
    assert server.handshake_complete and client.handshake_complete
    assert server.is_server and not client.is_server
    assert client.hostname == "localhost" and server.hostname is None


def test_blocking_handshake_in_threads(creds: Creds, no_fd_leak: None) -> None:
    server, client = new_pair(creds)
    with server, client:
        thread = threading.Thread(target=client.handshake)
        thread.start()
        server.handshake()
        thread.join(10)
        assert not thread.is_alive()
        assert client.handshake_complete
        client.write_all(b"over TLS")
        buf = bytearray(8)
        server.read_all(buf)
        assert buf == b"over TLS"
        server.handshake()  # already done: returns at once


def test_handshake_with_task_completion(creds: Creds, no_fd_leak: None) -> None:
    server, client = new_pair(creds)
    loop = asyncio.new_event_loop()
    outcomes: dict[str, tuple[QIOTask, str]] = {}
    done = asyncio.Event()

    def complete(task: QIOTask, who: str) -> None:
        outcomes[who] = (task, threading.current_thread().name)
        if len(outcomes) == 2:
            done.set()

    async def scenario() -> None:
        server.handshake(complete, "server")
        client.handshake(complete, "client", context=loop)
        await asyncio.wait_for(done.wait(), 10)

    try:
        with server, client:
            loop.run_until_complete(scenario())
            for task, thread_name in outcomes.values():
                assert task.error is None
                assert thread_name == threading.current_thread().name  # ran on the loop
            assert outcomes["server"][0].source is server
            # the previous (blocking) mode is back
            assert server.blocking and client.blocking
            client.write_all(b"ok")
            buf = bytearray(2)
            server.read_all(buf)
            assert buf == b"ok"
    finally:
        loop.close()


def test_task_handshake_failure_reaches_complete(
    creds: Creds, tmp_path: Path, no_fd_leak: None
) -> None:
    create_creds_dir(tmp_path)  # another CA: the client does not trust the server
    stranger = TLSCredsX509(tmp_path, "client")
    server_master, client_master = socket_pair()
    server = QIOChannelTLS.new_server(server_master, creds[0])
    client = QIOChannelTLS.new_client(client_master, stranger, "localhost")
    errors: dict[str, BaseException | None] = {}
    loop = asyncio.new_event_loop()

    async def scenario() -> None:
        finished = asyncio.Event()

        def complete(task: QIOTask, who: str) -> None:
            errors[who] = task.error
            if len(errors) == 2:
                finished.set()

        server.handshake(complete, "server")
        client.handshake(complete, "client")
        await asyncio.wait_for(finished.wait(), 10)

    try:
        with server, client:
            loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert isinstance(errors["client"], TLSHandshakeError)
    assert "certificate verify failed" in str(errors["client"])
    assert isinstance(errors["server"], TLSHandshakeError)


def test_close_during_task_handshake_completes_it(creds: Creds, no_fd_leak: None) -> None:
    server, client = new_pair(creds)
    loop = asyncio.new_event_loop()
    seen: list[BaseException | None] = []

    async def scenario() -> None:
        server.handshake(lambda task: seen.append(task.error))
        await asyncio.sleep(0)  # let the first step run: it waits for the ClientHello
        server.close()

    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
        client.close()
    assert len(seen) == 1 and isinstance(seen[0], ChannelError)
    assert "closed during the handshake" in str(seen[0])


def test_ahandshake(creds: Creds, no_fd_leak: None) -> None:
    server, client = new_pair(creds)

    async def scenario() -> bytes:
        await asyncio.gather(server.ahandshake(), client.ahandshake())
        await client.awrite_all(b"async hello")
        buf = bytearray(11)
        await server.aread_all(buf)
        return bytes(buf)

    with server, client:
        assert asyncio.run(scenario()) == b"async hello"
        assert server.blocking  # like the async twins, it restores the mode it found


def test_io_before_handshake_is_a_usage_error(creds: Creds, no_fd_leak: None) -> None:
    server, client = new_pair(creds)
    with server, client:
        with pytest.raises(ChannelError) as info:
            server.read(bytearray(1))
        assert info.value.errno == errno.EINVAL
        with pytest.raises(ChannelError) as info:
            client.write(b"x")
        assert info.value.errno == errno.EINVAL
        with pytest.raises(ChannelError, match="not complete"):
            server.peer_dn()
        with pytest.raises(ChannelError, match="not complete"):
            client.bye()


def test_construction_errors(creds: Creds, tmp_path: Path) -> None:
    server_creds, client_creds = creds
    a, b = memory_pipe()
    with a, b:
        with pytest.raises(ValueError, match="endpoint 'client'"):
            QIOChannelTLS.new_server(a, client_creds)
        with pytest.raises(ValueError, match="endpoint 'server'"):
            QIOChannelTLS.new_client(a, server_creds, "localhost")
        with pytest.raises(TypeError, match="master must be a QIOChannel"):
            QIOChannelTLS.new_server(object(), server_creds)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="authz"):
            QIOChannelTLS.new_server(a, server_creds, "CN=x")  # type: ignore[arg-type]
        lax = TLSCredsX509(server_creds.dir, "server", verify_peer=False)
        from qiochan_tls import AuthzSimple

        with pytest.raises(ValueError, match="verify_peer"):
            QIOChannelTLS.new_server(a, lax, AuthzSimple("CN=client"))


def test_features_follow_the_master(creds: Creds) -> None:
    a, b = memory_pipe()
    with QIOChannelTLS.new_server(a, creds[0]) as tls, b:
        assert tls.has_feature(Feature.SHUTDOWN)
        assert not tls.has_feature(Feature.FD_PASS)
    writer, reader = pipe_pair()
    with QIOChannelTLS.new_server(writer, creds[0]) as tls, reader:
        assert not tls.has_feature(Feature.SHUTDOWN)


def test_close_closes_the_master(pair: tuple[QIOChannelTLS, QIOChannelTLS]) -> None:
    server, _client = pair
    server.close()
    assert server.master.closed


def test_close_nowait_only_in_non_blocking_mode(pair: tuple[QIOChannelTLS, QIOChannelTLS]) -> None:
    """Blocking, close() may linger for a full master; non-blocking it never waits."""
    server, client = pair
    assert server.close_nowait() is False and not server.closed
    server.set_blocking(False)
    assert server.close_nowait() is True and server.closed and server.master.closed
    assert client.read_all_eof(bytearray(1)) is False, "close_notify: a clean end of stream"


def test_peerpid_from_the_master(pair: tuple[QIOChannelTLS, QIOChannelTLS]) -> None:
    server, _client = pair
    assert server.peerpid() == os.getpid()


def test_handshake_peer_closes_early(creds: Creds, no_fd_leak: None) -> None:
    server_master, client_master = socket_pair()
    client_master.close()
    with (
        QIOChannelTLS.new_server(server_master, creds[0]) as server,
        pytest.raises(TLSHandshakeError, match="peer closed the connection"),
    ):
        server.handshake()


def test_handshake_peer_speaks_no_tls(creds: Creds, no_fd_leak: None) -> None:
    server_master, client_master = socket_pair()
    with QIOChannelTLS.new_server(server_master, creds[0]) as server, client_master:
        client_master.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        with pytest.raises(TLSHandshakeError, match="TLS server: handshake failed"):
            server.handshake()


def test_tls_inside_tls(creds: Creds, no_fd_leak: None) -> None:
    """A layer wraps any channel, TLS included."""
    outer_server, outer_client = new_pair(creds)
    handshake_pair(outer_server, outer_client)
    inner_server, inner_client = new_pair(creds, (outer_server, outer_client))
    with inner_server, inner_client:
        handshake_pair(inner_server, inner_client)
        inner_client.write_all(b"twice encrypted")
        buf = bytearray(15)
        inner_server.read_all(buf)
        assert buf == b"twice encrypted"
    assert outer_server.closed and outer_client.closed


class TestEndings:
    def test_bare_transport_close_is_an_error_by_default(
        self, pair: tuple[QIOChannelTLS, QIOChannelTLS]
    ) -> None:
        server, client = pair
        client.write_all(b"all of it")
        client.master.close()  # like a GnuTLS peer that never sends close_notify
        buf = bytearray(9)
        server.read_all(buf)
        assert buf == b"all of it"  # every byte before the end arrives
        with pytest.raises(TLSError, match="without a TLS close_notify") as info:
            server.read(bytearray(1))
        assert info.value.errno == errno.ECONNABORTED
        with pytest.raises(TLSError):
            server.read(bytearray(1))  # and again: the end stays unclean

    def test_relaxed_eof_flag_accepts_it(self, pair: tuple[QIOChannelTLS, QIOChannelTLS]) -> None:
        server, client = pair
        client.write_all(b"abc")
        client.master.close()
        buf = bytearray(10)
        assert server.read_all_eof(buf, flags=ReadFlag.RELAXED_EOF) is True
        assert buf[:3] == b"abc"
        assert server.readv_full([bytearray(1)], flags=ReadFlag.RELAXED_EOF) == (0, [])

    def test_allow_unclean_eof(self, creds: Creds, no_fd_leak: None) -> None:
        server, client = new_pair(creds, allow_unclean_eof=True)
        with server, client:
            handshake_pair(server, client)
            client.write_all(b"migration stream")
            client.master.close()
            buf = bytearray(16)
            assert server.read_all_eof(buf) is True and buf == b"migration stream"
            assert server.read_all_eof(bytearray(1)) is False

    def test_shutdown_read_accepts_it(self, pair: tuple[QIOChannelTLS, QIOChannelTLS]) -> None:
        server, client = pair
        client.master.close()
        server.shutdown(Shutdown.READ)
        assert server.read(bytearray(1)) == 0

    def test_bye_gives_clean_eof_and_keeps_reading(
        self, pair: tuple[QIOChannelTLS, QIOChannelTLS]
    ) -> None:
        server, client = pair
        client.write_all(b"request")
        client.bye()
        client.bye()  # idempotent
        with pytest.raises(ChannelError, match="shut down for writing") as info:
            client.write(b"more")
        assert info.value.errno == errno.EPIPE
        buf = bytearray(7)
        assert server.read_all_eof(buf) is True and buf == b"request"
        assert server.read_all_eof(bytearray(1)) is False  # close_notify: clean EOF
        assert server.read(bytearray(1)) == 0
        server.write_all(b"reply after the peer's close_notify")
        reply = bytearray(35)
        client.read_all(reply)
        assert reply == b"reply after the peer's close_notify"
        server.bye()
        assert client.read(bytearray(1)) == 0

    def test_data_in_flight_survives_our_close_notify(
        self, pair: tuple[QIOChannelTLS, QIOChannelTLS]
    ) -> None:
        """Records that arrived before we send close_notify are still read afterwards."""
        server, client = pair
        client.write_all(b"x" * 100_000)
        # let the records reach the server's memory BIO before its close_notify
        server.read_all(bytearray(1))
        server.shutdown(Shutdown.WRITE)
        rest = bytearray(99_999)
        server.read_all(rest)
        assert rest == b"x" * 99_999
        assert client.read(bytearray(1)) == 0

    def test_shutdown_both_unblocks_a_reader(
        self, pair: tuple[QIOChannelTLS, QIOChannelTLS]
    ) -> None:
        server, _client = pair
        results: list[object] = []
        started = threading.Event()

        def reader() -> None:
            started.set()
            try:
                results.append(server.read(bytearray(10)))
            except ChannelError as exc:
                results.append(exc)

        thread = threading.Thread(target=reader)
        thread.start()
        assert started.wait(5)
        server.shutdown(Shutdown.BOTH)
        thread.join(5)
        assert not thread.is_alive()
        assert results == [0] or isinstance(results[0], ChannelError)

    def test_close_sends_close_notify_when_it_can(
        self, pair: tuple[QIOChannelTLS, QIOChannelTLS]
    ) -> None:
        server, client = pair
        client.write_all(b"bye")
        client.close()
        buf = bytearray(3)
        assert server.read_all_eof(buf) is True
        assert server.read_all_eof(bytearray(1)) is False


class TestReadiness:
    def test_watch_ready_with_buffered_plaintext(
        self, pair: tuple[QIOChannelTLS, QIOChannelTLS]
    ) -> None:
        server, client = pair
        client.write_all(b"0123456789")
        first = bytearray(3)
        server.read_all(first)
        # the rest is decrypted or buffered in the TLS layer; the socket is drained
        with pytest.raises(TimeoutError):
            server.master.wait(Condition.IN, timeout=0)
        assert server.wait(Condition.IN, timeout=0) & Condition.IN
        server.set_blocking(False)
        rest = bytearray(7)
        assert server.read(rest) == 7 and rest == b"3456789"
        assert server.read(bytearray(1)) == ERR_BLOCK
        with pytest.raises(TimeoutError):
            server.wait(Condition.IN, timeout=0)

    def test_async_watch_fires_for_buffered_plaintext(
        self, pair: tuple[QIOChannelTLS, QIOChannelTLS]
    ) -> None:
        server, client = pair
        client.write_all(b"abcdef")
        server.read_all(bytearray(2))
        fired: list[Condition] = []

        async def scenario() -> None:
            ready = asyncio.Event()

            def on_in(_channel: QIOChannel, condition: Condition) -> bool:
                fired.append(condition)
                ready.set()
                return False

            server.add_watch_full(Condition.IN, on_in, context=asyncio.get_running_loop())
            await asyncio.wait_for(ready.wait(), 5)

        asyncio.run(scenario())
        assert fired and fired[0] & Condition.IN

    def test_nonblocking_write_blocks_then_reports_on_retry(
        self, creds: Creds, no_fd_leak: None
    ) -> None:
        server, client = new_pair(creds, memory_pipe(capacity=4096))
        with server, client:
            handshake_pair(server, client)
            client.set_blocking(False)
            data = bytes(range(256)) * 1024  # 256 KiB: far more than the pipe holds
            assert client.write(data) == ERR_BLOCK
            received = bytearray(len(data))
            reader = threading.Thread(target=server.read_all, args=(received,))
            reader.start()
            view = memoryview(data)
            while view:
                n = client.write(view)  # the same data again, as SSL_write demands
                if n == ERR_BLOCK:
                    client.wait(Condition.OUT, timeout=5)
                    continue
                assert n > 0
                view = view[n:]
            reader.join(10)
            assert not reader.is_alive()
            assert received == data

    def test_readiness_for_out_is_the_masters(
        self, pair: tuple[QIOChannelTLS, QIOChannelTLS]
    ) -> None:
        server, _client = pair
        assert server.wait(Condition.OUT, timeout=1) & Condition.OUT


def test_run_handshakes_reports_both_ends(creds: Creds, tmp_path: Path, no_fd_leak: None) -> None:
    create_creds_dir(tmp_path)
    stranger = TLSCredsX509(tmp_path, "client")
    server_master, client_master = socket_pair()
    server = QIOChannelTLS.new_server(server_master, creds[0])
    client = QIOChannelTLS.new_client(client_master, stranger, "localhost")
    with server, client:
        server_error, client_error = run_handshakes(server, client)
        assert isinstance(client_error, TLSHandshakeError)
        assert isinstance(server_error, TLSHandshakeError)
        assert client.closed and server.closed  # a failed end is closed at once
