"""QIOChannelSocket: connect, listen, accept, addresses, errors, options, datagrams."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import signal
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qiochan.address import InetAddress, UnixAddress, VsockAddress, as_address
from qiochan.channel import ERR_BLOCK, Feature, ReadFlag, Shutdown
from qiochan.errors import AddressError, ChannelError
from qiochan.task import QIOTask
from qiochan.watch import Condition
from qiochan_socket import QIOChannelSocket, socket_pair
from qiochan_socket.sockaddr import needs_lookup
from tests.helpers.fds import open_fds
from tests.helpers.pairs import socket_tcp_pair


@pytest.fixture
def tcp_pair() -> Iterator[tuple[QIOChannelSocket, QIOChannelSocket]]:
    """A connected (client, server) TCP pair on 127.0.0.1."""
    client, server = socket_tcp_pair()
    yield client, server
    client.close()
    server.close()


def _refused_port() -> tuple[socket.socket, int]:
    """A bound, non-listening socket: connecting to its port is refused."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    return probe, probe.getsockname()[1]


# -- connect / listen / accept ----------------------------------------------------------


def test_tcp_addresses(tcp_pair: tuple[QIOChannelSocket, QIOChannelSocket]) -> None:
    client, server = tcp_pair
    assert isinstance(client.remote_address, InetAddress)
    assert client.remote_address == server.local_address
    assert server.remote_address == client.local_address
    assert client.local_address.host == "127.0.0.1"  # type: ignore[union-attr]
    assert client.has_feature(Feature.SHUTDOWN)
    assert client.has_feature(Feature.READ_MSG_PEEK)
    assert not client.has_feature(Feature.FD_PASS)
    assert not client.has_feature(Feature.LISTEN)


def test_unix_listen_connect_and_socket_file_lifecycle(tmp_path: Path, no_fd_leak: None) -> None:
    path = tmp_path / "server.sock"
    listener = QIOChannelSocket()
    listener.listen_sync(UnixAddress(str(path)), num=4)
    assert listener.has_feature(Feature.LISTEN)
    assert listener.local_address == UnixAddress(str(path))
    with QIOChannelSocket() as client:
        client.connect_sync(f"unix:{path}")
        assert client.has_feature(Feature.FD_PASS)
        assert client.remote_address == UnixAddress(str(path))
        server = listener.accept()
        assert server is not None
        with server:
            assert server.local_address == UnixAddress(str(path))
            assert server.remote_address == UnixAddress("")  # an unbound client
    assert path.exists()
    listener.close()
    assert not path.exists(), "closing a unix listener removes its socket file"


def test_stale_unix_socket_is_replaced_but_live_one_is_not(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays behind, nobody listens
    with QIOChannelSocket() as first:
        first.listen_sync(f"unix:{path}")
        with pytest.raises(ChannelError) as info:
            QIOChannelSocket().listen_sync(f"unix:{path}")
        assert info.value.errno == errno.EADDRINUSE


def test_regular_file_is_never_removed_for_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "precious"
    path.write_text("keep me")
    with pytest.raises(ChannelError) as info:
        QIOChannelSocket().listen_sync(f"unix:{path}")
    assert info.value.errno == errno.EADDRINUSE
    assert path.read_text() == "keep me"


@pytest.mark.parametrize("tight", [True, False])
def test_abstract_unix_socket(tight: bool, no_fd_leak: None) -> None:
    name = f"qiochan-test-{os.getpid()}-{tight}"
    address = UnixAddress(name, abstract=True, tight=tight)
    with QIOChannelSocket() as listener, QIOChannelSocket() as client:
        listener.listen_sync(address)
        assert listener.local_address == address
        client.connect_sync(str(address))
        server = listener.accept()
        assert server is not None
        with server:
            client.write_all(b"abstract")
            buf = bytearray(8)
            server.read_all(buf)
            assert buf == b"abstract"


def test_nonblocking_accept_returns_none(no_fd_leak: None) -> None:
    with QIOChannelSocket() as listener:
        listener.listen_sync("tcp:127.0.0.1:0")
        listener.set_blocking(False)
        assert listener.accept() is None
        with QIOChannelSocket() as client:
            client.connect_sync(listener.local_address)
            listener.wait(Condition.IN, timeout=10)
            server = listener.accept()
            assert server is not None
            with server:
                assert server.blocking, "accepted channels start blocking"
                assert listener.accept() is None


def test_connect_to_closed_port_is_refused(no_fd_leak: None) -> None:
    probe, port = _refused_port()
    with probe, QIOChannelSocket() as channel:
        with pytest.raises(ChannelError) as info:
            channel.connect_sync(f"tcp:127.0.0.1:{port}")
        assert info.value.errno == errno.ECONNREFUSED
        assert "Failed to connect to 'tcp:127.0.0.1:" in str(info.value)
        assert "refused" in str(info.value).lower()


def test_connect_timeout(no_fd_leak: None) -> None:
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        with QIOChannelSocket() as first:
            first.connect_sync(f"tcp:127.0.0.1:{port}")  # fills the accept queue
            with QIOChannelSocket() as second, pytest.raises(ChannelError) as info:
                second.connect_sync(f"tcp:127.0.0.1:{port}", timeout=0.2)
    assert info.value.errno == errno.ETIMEDOUT
    assert "timed out" in str(info.value)


def test_connect_twice_is_refused(tcp_pair: tuple[QIOChannelSocket, QIOChannelSocket]) -> None:
    client, server = tcp_pair
    with pytest.raises(ChannelError) as info:
        client.connect_sync(server.local_address)
    assert info.value.errno == errno.EISCONN


def test_unconnected_channel_reports_enotconn(no_fd_leak: None) -> None:
    with QIOChannelSocket() as channel:
        with pytest.raises(ChannelError) as info:
            channel.write(b"x")
        assert info.value.errno == errno.ENOTCONN
        with pytest.raises(ChannelError):
            _ = channel.local_address


def test_address_must_be_a_socket_address() -> None:
    with pytest.raises(AddressError, match="not a socket address"):
        QIOChannelSocket().connect_sync("file:/tmp/x")
    with pytest.raises(AddressError, match="longer than"):
        QIOChannelSocket().connect_sync("unix:/" + "x" * 200)


def test_name_resolution_failure_is_a_channel_error() -> None:
    with pytest.raises(ChannelError, match=r"Address resolution failed for 'no-such-host\.invalid"):
        QIOChannelSocket().connect_sync("tcp:no-such-host.invalid:1")


def test_new_fd_adopts_a_socket_and_refuses_other_fds(no_fd_leak: None) -> None:
    a, b = socket.socketpair()
    with b, QIOChannelSocket.new_fd(a.detach()) as channel:
        assert channel.has_feature(Feature.FD_PASS)
        channel.write_all(b"adopted")
        assert b.recv(7) == b"adopted"
    read_fd, write_fd = os.pipe()
    try:
        with pytest.raises(ChannelError) as info:
            QIOChannelSocket.new_fd(read_fd)
        assert info.value.errno == errno.ENOTSOCK
    finally:
        os.close(read_fd)
        os.close(write_fd)


# -- async connect -------------------------------------------------------------------------


def test_connect_async_completes_on_the_loop(loop: asyncio.AbstractEventLoop) -> None:
    with QIOChannelSocket() as listener:
        listener.listen_sync("tcp:127.0.0.1:0")
        expected = listener.local_address
        outcome: dict[str, object] = {}

        async def scenario() -> None:
            done = asyncio.Event()
            channel = QIOChannelSocket()

            def complete(task: QIOTask, tag: str) -> None:
                outcome["thread"] = threading.get_ident()
                outcome["error"] = task.error
                outcome["tag"] = tag
                outcome["connected"] = task.source.remote_address
                done.set()

            channel.connect_async(listener.local_address, complete, "data")
            await asyncio.wait_for(done.wait(), 10)
            channel.close()

        loop.run_until_complete(scenario())
        server = listener.accept()
        assert server is not None
        server.close()
    assert outcome["thread"] == threading.get_ident(), "complete must run on the loop's thread"
    assert outcome["error"] is None and outcome["tag"] == "data"
    assert outcome["connected"] == expected


def test_connect_async_reports_refusal(loop: asyncio.AbstractEventLoop) -> None:
    probe, port = _refused_port()
    errors: list[BaseException | None] = []

    async def scenario() -> None:
        done = asyncio.Event()

        def complete(task: QIOTask) -> None:
            errors.append(task.error)
            with pytest.raises(ChannelError):
                task.propagate_error()
            done.set()

        channel = QIOChannelSocket()
        channel.connect_async(f"tcp:127.0.0.1:{port}", complete)
        await asyncio.wait_for(done.wait(), 10)
        channel.close()

    with probe:
        loop.run_until_complete(scenario())
    assert isinstance(errors[0], ChannelError) and errors[0].errno == errno.ECONNREFUSED


# -- I/O errors and wake-ups -------------------------------------------------------------------


def _reset(channel: QIOChannelSocket) -> None:
    """Close ``channel`` with SO_LINGER 0: the peer gets a RST."""
    channel.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    channel.close()


def test_peer_reset_while_reading_raises(
    tcp_pair: tuple[QIOChannelSocket, QIOChannelSocket],
) -> None:
    client, server = tcp_pair
    client.write_all(b"partial")
    buf = bytearray(7)
    server.read_all(buf)
    _reset(server)
    with pytest.raises(ChannelError) as info:
        client.read_all(bytearray(100))
    assert info.value.errno == errno.ECONNRESET
    assert "Unable to read from socket" in str(info.value)


def test_peer_reset_mid_transfer_fails_the_writer(
    tcp_pair: tuple[QIOChannelSocket, QIOChannelSocket],
) -> None:
    client, server = tcp_pair
    chunk = bytes(1 << 20)
    failure: list[ChannelError] = []
    started = threading.Event()

    def writer() -> None:
        try:
            started.set()
            for _ in range(1000):  # far more than the socket buffers hold
                client.write_all(chunk)
        except ChannelError as exc:
            failure.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    assert started.wait(10)
    server.read_all(bytearray(4096))  # the transfer is under way
    _reset(server)
    thread.join(20)
    assert not thread.is_alive(), "the writer hung after the peer reset"
    assert failure and failure[0].errno in (errno.ECONNRESET, errno.EPIPE)
    assert "Unable to write to socket" in str(failure[0])


def test_write_after_peer_closed_raises_epipe(no_fd_leak: None) -> None:
    a, b = socket_pair()
    with a:
        b.close()
        with pytest.raises(ChannelError) as info:
            a.write_all(b"nobody listens")
        assert info.value.errno == errno.EPIPE


def test_shutdown_read_wakes_blocked_tcp_reader(
    tcp_pair: tuple[QIOChannelSocket, QIOChannelSocket],
) -> None:
    client, _server = tcp_pair
    result: list[int] = []
    entering = threading.Event()

    def read() -> None:
        entering.set()
        result.append(client.read(bytearray(10)))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert entering.wait(10)
    client.shutdown(Shutdown.READ)
    thread.join(10)
    assert not thread.is_alive() and result == [0]


def test_eintr_is_retried(no_fd_leak: None) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    a, b = socket_pair()
    handled = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda *_: handled.set())
    main = threading.main_thread().ident
    assert main is not None

    def interrupt_then_write() -> None:
        signal.pthread_kill(main, signal.SIGUSR1)
        handled.wait(10)  # the handler ran, so the read was interrupted (or not yet entered)
        b.write_all(b"after signal")

    thread = threading.Thread(target=interrupt_then_write, daemon=True)
    try:
        with a, b:
            thread.start()
            buf = bytearray(12)
            a.read_all(buf)
            assert buf == b"after signal"
            assert handled.is_set()
    finally:
        thread.join(10)
        signal.signal(signal.SIGUSR1, previous)


# -- reads and writes ----------------------------------------------------------------------------


def test_msg_peek_does_not_consume(no_fd_leak: None) -> None:
    a, b = socket_pair()
    with a, b:
        a.write_all(b"peekaboo")
        peek = bytearray(4)
        n, fds = b.readv_full([peek], flags=ReadFlag.MSG_PEEK)
        assert (n, fds, peek) == (4, [], bytearray(b"peek"))
        buf = bytearray(8)
        b.read_all(buf)
        assert buf == b"peekaboo"


def test_vectored_io_beyond_iov_max(no_fd_leak: None) -> None:
    a, b = socket_pair()
    with a, b:
        pieces = [bytes([i % 256]) * 3 for i in range(3000)]  # more than IOV_MAX (1024)
        expected = b"".join(pieces)
        writer = threading.Thread(target=a.writev_all, args=(pieces,), daemon=True)
        writer.start()
        received = [bytearray(2) for _ in range(len(expected) // 2)]
        b.readv_all(received)
        writer.join(10)
        assert b"".join(received) == expected


def test_nonblocking_read_would_block(no_fd_leak: None) -> None:
    a, b = socket_pair()
    with a, b:
        b.set_blocking(False)
        assert b.read(bytearray(1)) == ERR_BLOCK
        a.write(b"!")
        b.wait(Condition.IN, timeout=10)
        assert b.read(bytearray(1)) == 1


def test_peerpid(tcp_pair: tuple[QIOChannelSocket, QIOChannelSocket]) -> None:
    a, b = socket_pair()
    with a, b:
        assert a.peerpid() == os.getpid()
    client, _server = tcp_pair
    with pytest.raises(ChannelError) as info:
        client.peerpid()
    assert info.value.errno == errno.ENOTSUP


def test_delay_and_cork_hints(tcp_pair: tuple[QIOChannelSocket, QIOChannelSocket]) -> None:
    client, _server = tcp_pair
    client.set_delay(False)
    assert client.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    client.set_delay(True)
    assert not client.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    client.set_cork(True)
    assert client.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)
    client.set_cork(False)
    assert not client.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)
    a, b = socket_pair()
    with a, b:
        a.set_delay(False)  # hints: ignored on unix sockets
        a.set_cork(True)


def test_shutdown_write_gives_peer_eof(no_fd_leak: None) -> None:
    a, b = socket_pair()
    with a, b:
        a.write_all(b"bye")
        a.shutdown(Shutdown.WRITE)
        buf = bytearray(3)
        assert b.read_all_eof(buf) and buf == b"bye"
        assert b.read(bytearray(1)) == 0
        b.write_all(b"still open the other way")
        assert a.read_all_eof(bytearray(24))


# -- datagrams ----------------------------------------------------------------------------------


def test_udp_dgram_sync(no_fd_leak: None) -> None:
    with QIOChannelSocket() as a, QIOChannelSocket() as b:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port_b = probe.getsockname()[1]
        a.dgram_sync("tcp:127.0.0.1:0", f"tcp:127.0.0.1:{port_b}")
        b.dgram_sync(f"tcp:127.0.0.1:{port_b}", a.local_address)
        a.write_all(b"datagram one")
        buf = bytearray(64)
        n = b.read(buf)
        assert buf[:n] == b"datagram one"
        b.write_all(b"reply")
        assert a.read(buf) == 5


def test_unix_dgram_sync(tmp_path: Path, no_fd_leak: None) -> None:
    path_a, path_b = str(tmp_path / "a"), str(tmp_path / "b")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as peer, QIOChannelSocket() as a:
        peer.bind(path_b)
        a.dgram_sync(f"unix:{path_a}", f"unix:{path_b}")
        assert a.local_address == UnixAddress(path_a)
        assert a.remote_address == UnixAddress(path_b)
        a.write_all(b"to b")
        data, sender = peer.recvfrom(64)
        assert (data, sender) == (b"to b", path_a)
        peer.sendto(b"to a", path_a)
        buf = bytearray(64)
        assert buf[: a.read(buf)] == b"to a"
    assert not os.path.exists(path_a), "the bound datagram socket file is removed on close"


def test_no_fd_leak_over_1000_cycles() -> None:
    before = len(open_fds())
    with QIOChannelSocket() as listener:
        listener.listen_sync("tcp:127.0.0.1:0", num=8)
        address = listener.local_address
        for _ in range(1000):
            with QIOChannelSocket() as client:
                client.connect_sync(address)
                server = listener.accept()
                assert server is not None
                server.close()
            a, b = socket_pair()
            a.close()
            b.close()
    assert len(open_fds()) == before


def test_vsock_listen_reports_a_vsock_address(no_fd_leak: None) -> None:
    any_cid = any_port = 0xFFFFFFFF  # VMADDR_CID_ANY, VMADDR_PORT_ANY
    with QIOChannelSocket() as listener:
        try:
            listener.listen_sync(VsockAddress(any_cid, any_port))
        except ChannelError as exc:
            pytest.skip(f"no vsock here: {exc}")
        local = listener.local_address
        assert isinstance(local, VsockAddress)
        assert local.port != any_port, "the kernel picks a port"
        assert listener.has_feature(Feature.LISTEN)
        assert not listener.has_feature(Feature.FD_PASS)


# -- connecting on the loop (aconnect) ------------------------------------------------------


class _RecordingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, noting what is sent to its threads."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.used: list[str] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.used.append(getattr(fn, "__name__", repr(fn)))
        return super().submit(fn, *args, **kwargs)


def _on_loop(main: Callable[[_RecordingExecutor], Awaitable[None]]) -> list[str]:
    """Run ``main`` on a fresh loop (bounded); return what went to worker threads."""
    executor = _RecordingExecutor()

    async def bounded() -> None:
        asyncio.get_running_loop().set_default_executor(executor)
        await asyncio.wait_for(main(executor), 30)

    asyncio.run(bounded())
    return executor.used


def test_aconnect_tcp_and_unix_without_a_thread(tmp_path: Path, no_fd_leak: None) -> None:
    async def main(_executor: _RecordingExecutor) -> None:
        with socket.create_server(("127.0.0.1", 0)) as tcp_server:
            port = tcp_server.getsockname()[1]
            for address in (f"tcp:127.0.0.1:{port}", f"tcp:localhost:{port}"):
                with QIOChannelSocket() as channel:
                    await channel.aconnect(address)
                    assert channel.blocking
                    peer, _ = tcp_server.accept()
                    with peer:
                        channel.write_all(b"ping")
                        assert peer.recv(4) == b"ping"
        path = str(tmp_path / "s")
        with socket.socket(socket.AF_UNIX) as unix_server:
            unix_server.bind(path)
            unix_server.listen()
            with QIOChannelSocket() as channel:
                await channel.aconnect(f"unix:{path}")
                assert channel.has_feature(Feature.FD_PASS)
                unix_server.accept()[0].close()

    assert _on_loop(main) == []


def test_aconnect_fails_as_connect_sync_does(no_fd_leak: None) -> None:
    probe, port = _refused_port()

    async def main(executor: _RecordingExecutor) -> None:
        with probe, QIOChannelSocket() as channel:
            with pytest.raises(ChannelError) as refused:
                await channel.aconnect(f"tcp:127.0.0.1:{port}")
            assert refused.value.errno == errno.ECONNREFUSED
            assert "Failed to connect to 'tcp:127.0.0.1:" in str(refused.value)
        with QIOChannelSocket() as channel, pytest.raises(ChannelError, match="resolution failed"):
            await channel.aconnect("tcp:no-such-host.invalid:1")
        assert executor.used == ["resolve"]  # a name is looked up in a worker thread

    _on_loop(main)


def test_aconnect_timeout_and_cancel_close_the_socket(no_fd_leak: None) -> None:
    async def main(_executor: _RecordingExecutor) -> None:
        with socket.socket() as full:
            full.bind(("127.0.0.1", 0))
            full.listen(0)
            port = full.getsockname()[1]
            with QIOChannelSocket() as first:
                await first.aconnect(f"tcp:127.0.0.1:{port}")  # fills the accept queue
                with QIOChannelSocket() as second:
                    with pytest.raises(ChannelError) as info:
                        await second.aconnect(f"tcp:127.0.0.1:{port}", timeout=0.2)
                    assert info.value.errno == errno.ETIMEDOUT
                    assert "timed out" in str(info.value)
                    connecting = asyncio.ensure_future(second.aconnect(f"tcp:127.0.0.1:{port}"))
                    await asyncio.sleep(0)  # it runs up to the connect that cannot complete
                    assert not connecting.done()
                    connecting.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await connecting
                    assert second.fd == -1  # nothing adopted: the socket was closed

    _on_loop(main)


def test_aconnect_twice_is_refused(tcp_pair: tuple[QIOChannelSocket, QIOChannelSocket]) -> None:
    client, server = tcp_pair

    async def main(_executor: _RecordingExecutor) -> None:
        with pytest.raises(ChannelError) as info:
            await client.aconnect(server.local_address)
        assert info.value.errno == errno.EISCONN

    _on_loop(main)


@pytest.mark.parametrize(
    ("address", "lookup"),
    [
        ("tcp:127.0.0.1:1", False),
        ("tcp:[::1]:1", False),
        ("tcp:localhost:1", False),
        ("tcp:db.example:1", True),
        ("unix:/run/x.sock", False),
    ],
)
def test_needs_lookup_only_for_host_names(address: str, lookup: bool) -> None:
    assert needs_lookup(as_address(address)) is lookup
