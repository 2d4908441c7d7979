"""QIOChannelWebsock: handshake forms, framing, control frames, limits, close and readiness.

Our channel runs against a scripted ``websockets`` protocol peer
(:class:`qiochan_websocket.testing.ProtocolPeer`) on the other end of a memory
pipe or a socket pair, so each test can check exactly what went on the wire.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Iterator
from functools import partial

import pytest
from websockets.frames import BINARY, CLOSE, CONT, PING, PONG, TEXT, Close, Frame
from websockets.protocol import Protocol

from qiochan import (
    ERR_BLOCK,
    ChannelError,
    Condition,
    Feature,
    QIOChannel,
    QIOTask,
    Shutdown,
    WebsocketError,
    WebsocketHandshakeError,
)
from qiochan_memory import memory_pipe
from qiochan_socket import socket_pair
from qiochan_websocket import DEFAULT_FRAME_SIZE, QIOChannelWebsock
from qiochan_websocket import channel as websock_module
from qiochan_websocket.testing import ProtocolPeer, handshake_pair
from tests.helpers.websocket import client_with_peer, server_with_peer


@pytest.fixture
def server_peer() -> Iterator[tuple[QIOChannelWebsock, ProtocolPeer]]:
    server, peer = server_with_peer()
    yield server, peer
    server.close()
    peer.channel.close()


def _data_frames(frames: list[Frame]) -> bytes:
    return b"".join(bytes(f.data) for f in frames if f.opcode in (BINARY, CONT))


# -- handshake -------------------------------------------------------------------------


def test_handshake_reports_path_origin_and_binary_subprotocol() -> None:
    a, b = memory_pipe()
    server = QIOChannelWebsock.new_server(a, path="/vnc", origins=["https://console.example"])
    client = QIOChannelWebsock.new_client(
        b, "console.example:5700", "/vnc?token=42", origin="https://console.example"
    )
    with server, client:
        assert not server.handshake_done
        handshake_pair(server, client)
        assert server.handshake_done and client.handshake_done
        assert server.request_path == "/vnc?token=42"
        assert server.origin == "https://console.example"
        assert server.subprotocol == client.subprotocol == "binary"
        client.write_all(b"hello")
        buf = bytearray(5)
        server.read_all(buf)
        assert buf == b"hello"


def test_client_offering_no_subprotocol_gets_none() -> None:
    a, b = memory_pipe()
    server = QIOChannelWebsock.new_server(a)
    client = QIOChannelWebsock.new_client(b, "localhost", subprotocols=())
    with server, client:
        handshake_pair(server, client)
        assert server.subprotocol is None and client.subprotocol is None


def test_handshake_with_completion_on_the_loop() -> None:
    a, b = memory_pipe()
    server = QIOChannelWebsock.new_server(a)
    client = QIOChannelWebsock.new_client(b, "localhost")
    loop = asyncio.new_event_loop()
    done: dict[str, tuple[BaseException | None, int]] = {}
    try:
        finished = loop.create_future()

        def complete(task: QIOTask, name: str) -> None:
            done[name] = (task.error, threading.get_ident())
            if len(done) == 2:
                finished.set_result(None)

        server.handshake(complete, "server", context=loop)
        client.handshake(complete, "client", context=loop)
        assert not done, "completion must not run inside handshake()"
        loop.run_until_complete(asyncio.wait_for(finished, 10))
    finally:
        loop.close()
    with server, client:
        assert done["server"] == (None, threading.get_ident())
        assert done["client"][0] is None
        client.write_all(b"x")
        assert server.read_all_eof(bytearray(1))


def test_failed_handshake_reaches_the_completion_as_task_error() -> None:
    a, b = memory_pipe()
    server = QIOChannelWebsock.new_server(a, path="/only")
    client = QIOChannelWebsock.new_client(b, "localhost", "/other")
    loop = asyncio.new_event_loop()
    errors: dict[str, BaseException | None] = {}
    try:
        finished = loop.create_future()

        def complete(task: QIOTask, name: str) -> None:
            errors[name] = task.error
            if len(errors) == 2:
                finished.set_result(None)

        server.handshake(complete, "server", context=loop)
        client.handshake(complete, "client", context=loop)
        loop.run_until_complete(asyncio.wait_for(finished, 10))
    finally:
        loop.close()
        server.close()
        client.close()
    assert isinstance(errors["server"], WebsocketHandshakeError)
    assert "404" in str(errors["server"])
    assert isinstance(errors["client"], WebsocketHandshakeError)
    assert "HTTP/1.1 404 Not Found" in str(errors["client"])


def test_io_before_the_handshake_is_refused() -> None:
    a, b = memory_pipe()
    with QIOChannelWebsock.new_server(a) as server, b:
        with pytest.raises(ChannelError, match="handshake") as info:
            server.write(b"early")
        assert info.value.errno == errno.EINVAL


def test_bad_arguments_are_refused() -> None:
    a, b = memory_pipe()
    with a, b:
        with pytest.raises(ValueError, match="path"):
            QIOChannelWebsock.new_server(a, path="nope")
        with pytest.raises(ValueError, match="host"):
            QIOChannelWebsock.new_client(a, "")
        with pytest.raises(ValueError, match="max_size"):
            QIOChannelWebsock.new_server(a, max_size=0)
        with pytest.raises(ValueError, match="frame_size"):
            QIOChannelWebsock.new_client(a, "h", frame_size=0)
        with pytest.raises(TypeError, match="QIOChannel"):
            QIOChannelWebsock.new_server(object())  # type: ignore[arg-type]


# -- framing ---------------------------------------------------------------------------


def test_large_write_becomes_bounded_binary_frames() -> None:
    client, peer = client_with_peer(frame_size=1000)
    with client, peer.channel:
        data = os.urandom(10_500)
        client.writev_all([data[:7], data[7:6000], data[6000:]])
        frames = peer.frames(lambda got: len(_data_frames(got)) >= len(data))
        assert all(f.opcode is BINARY and f.fin for f in frames)
        assert max(len(f.data) for f in frames) == 1000
        assert len(frames) == 11
        assert _data_frames(frames) == data


def test_default_frames_stay_within_the_frame_size() -> None:
    client, peer = client_with_peer()
    with client, peer.channel:
        data = os.urandom(3 * DEFAULT_FRAME_SIZE + 5)
        writer = threading.Thread(target=client.write_all, args=(data,))
        writer.start()
        frames = peer.frames(lambda got: len(_data_frames(got)) >= len(data))
        writer.join()
        assert [len(f.data) for f in frames] == [DEFAULT_FRAME_SIZE] * 3 + [5]


def test_reads_return_payload_across_frame_boundaries(
    server_peer: tuple[QIOChannelWebsock, ProtocolPeer],
) -> None:
    server, peer = server_peer
    peer.send(lambda p: p.send_binary(b"abc"))
    peer.send(lambda p: p.send_binary(b"defg", fin=False))
    peer.send(lambda p: p.send_continuation(b"hij", fin=False))
    peer.send(lambda p: p.send_continuation(b"", fin=True))
    peer.send(lambda p: p.send_binary(b"klmnop"))
    buf = bytearray(16)
    server.read_all(buf)
    assert buf == b"abcdefghijklmnop"
    peer.send(lambda p: p.send_binary(b"xyz"))
    assert [bytes(server_read(server, 1)) for _ in range(3)] == [b"x", b"y", b"z"]


def server_read(channel: QIOChannel, size: int) -> bytes:
    buf = bytearray(size)
    n = channel.read(buf)
    return bytes(buf[:n])


def test_ping_is_answered_while_reading(
    server_peer: tuple[QIOChannelWebsock, ProtocolPeer],
) -> None:
    server, peer = server_peer
    peer.send(lambda p: p.send_ping(b"are you there"))
    peer.send(lambda p: p.send_binary(b"data"))
    assert server_read(server, 4) == b"data"
    frames = peer.frames(lambda got: any(f.opcode is PONG for f in got))
    assert [f.data for f in frames if f.opcode is PONG] == [b"are you there"]


def test_pong_and_unsolicited_pong_are_ignored(
    server_peer: tuple[QIOChannelWebsock, ProtocolPeer],
) -> None:
    server, peer = server_peer
    peer.send(lambda p: p.send_pong(b"unsolicited"))
    peer.send(lambda p: p.send_binary(b"ok"))
    assert server_read(server, 8) == b"ok"


def test_text_frame_is_a_protocol_error(
    server_peer: tuple[QIOChannelWebsock, ProtocolPeer],
) -> None:
    server, peer = server_peer
    peer.send(lambda p: p.send_binary(b"bin"))
    peer.send(lambda p: p.send_text(b"text"))
    assert server_read(server, 16) == b"bin"  # what came before the text frame is delivered
    with pytest.raises(WebsocketError, match="text frame") as info:
        server.read(bytearray(16))
    assert info.value.errno == errno.EPROTO
    with pytest.raises(WebsocketError, match="text frame"):
        server.read(bytearray(16))  # and stays failed
    with pytest.raises(WebsocketError):
        server.write(b"no")
    closes = [f for f in peer.frames() if f.opcode is CLOSE]
    assert Close.parse(closes[0].data).code == 1003


def test_message_over_max_size_closes_with_1009() -> None:
    server, peer = server_with_peer(max_size=1000)
    with server, peer.channel:
        peer.send(lambda p: p.send_binary(b"x" * 1000))
        peer.send(lambda p: p.send_binary(b"y" * 1001))
        assert server_read(server, 2000) == b"x" * 1000
        with pytest.raises(WebsocketError, match="too big") as info:
            server.read(bytearray(2000))
        assert info.value.errno == errno.EMSGSIZE
        closes = [f for f in peer.frames() if f.opcode is CLOSE]
        assert Close.parse(closes[0].data).code == 1009


def test_fragmented_message_over_max_size_closes_with_1009() -> None:
    server, peer = server_with_peer(max_size=1000)
    with server, peer.channel:
        peer.send(lambda p: p.send_binary(b"a" * 600, fin=False))
        peer.send(lambda p: p.send_continuation(b"b" * 600, fin=True))
        assert server_read(server, 2000) == b"a" * 600
        with pytest.raises(WebsocketError, match="too big"):
            server.read(bytearray(2000))
        closes = [f for f in peer.frames() if f.opcode is CLOSE]
        assert Close.parse(closes[0].data).code == 1009


def test_oversized_frame_header_fails_without_waiting_for_the_payload() -> None:
    server, peer = server_with_peer(max_size=1 << 20)
    with server, peer.channel:
        # a masked binary frame announcing 2**40 bytes: refused on the header alone
        peer.send_raw(b"\x82\xff" + (1 << 40).to_bytes(8, "big") + b"mask")
        with pytest.raises(WebsocketError, match="too big"):
            server.read(bytearray(10))


# -- close -------------------------------------------------------------------------------


def test_close_sends_a_close_frame_with_the_status_code() -> None:
    for code, reason in ((1000, ""), (4000, "bye now")):
        server, peer = server_with_peer()
        with peer.channel:
            server.close(code, reason)
            assert server.closed
            closes = [f for f in peer.frames() if f.opcode is CLOSE]
            assert Close.parse(closes[0].data) == Close(code, reason)


def test_close_nowait_sends_the_close_frame_at_once() -> None:
    """On an event loop a websocket closes without a worker thread when its goodbye fits."""
    server, peer = server_with_peer()
    with peer.channel:
        server.set_blocking(False)
        assert server.close_nowait() is True
        assert server.closed
        closes = [f for f in peer.frames() if f.opcode is CLOSE]
        assert Close.parse(closes[0].data) == Close(1000, "")


def test_close_nowait_leaves_a_stalled_flush_to_close() -> None:
    """A master too full for the close frame: close_nowait() says False, close() sends it all."""
    server, peer = server_with_peer(socket_pair())
    theirs = peer.channel
    server.set_blocking(False)
    data = os.urandom(1 << 16)
    sent = 0
    with theirs:
        while (n := server.write(data)) != ERR_BLOCK:  # the peer does not read: fill it
            sent += n
        assert server.close_nowait() is False
        assert not server.closed, "the channel stays open for close() to finish"
        raw = bytearray()

        def drain() -> None:  # without answering: an echo could meet a closed socket
            buf = bytearray(1 << 16)
            while n := theirs.read(buf):
                raw.extend(buf[:n])

        reading = threading.Thread(target=drain)
        reading.start()
        server.close()
        reading.join(30)
        assert not reading.is_alive()
    peer.protocol.receive_data(bytes(raw))
    frames = [event for event in peer.protocol.events_received() if isinstance(event, Frame)]
    assert len(_data_frames(frames)) == sent + len(data)  # the blocked write was queued
    assert Close.parse(frames[-1].data) == Close(1000, "")


def test_invalid_close_code_is_refused_and_the_channel_stays_open(
    server_peer: tuple[QIOChannelWebsock, ProtocolPeer],
) -> None:
    server, _peer = server_peer
    with pytest.raises(ValueError, match="close code"):
        server.close(1005)
    with pytest.raises(ValueError, match="123 bytes"):
        server.close(1000, "x" * 124)
    assert not server.closed


def test_peer_close_is_eof_and_is_echoed(
    server_peer: tuple[QIOChannelWebsock, ProtocolPeer],
) -> None:
    server, peer = server_peer
    peer.send(lambda p: p.send_binary(b"last"))
    peer.send(lambda p: p.send_close(1000, "done"))
    buf = bytearray(4)
    assert server.read_all_eof(buf) and buf == b"last"
    assert server.read(bytearray(1)) == 0
    assert server.read(bytearray(1)) == 0
    assert server.peer_close == Close(1000, "done")
    with pytest.raises(ChannelError) as info:
        server.write(b"after")
    assert info.value.errno == errno.EPIPE
    echoes = [f for f in peer.frames() if f.opcode is CLOSE]
    assert Close.parse(echoes[0].data).code == 1000


def test_peer_close_with_an_error_code_is_an_error(
    server_peer: tuple[QIOChannelWebsock, ProtocolPeer],
) -> None:
    server, peer = server_peer
    peer.send(lambda p: p.send_close(1011, "server exploded"))
    with pytest.raises(WebsocketError, match=r"1011 \(server exploded\)"):
        server.read(bytearray(1))


def test_transport_eof_between_frames_is_eof(
    server_peer: tuple[QIOChannelWebsock, ProtocolPeer],
) -> None:
    server, peer = server_peer
    peer.send(lambda p: p.send_binary(b"xy"))
    peer.channel.shutdown(Shutdown.WRITE)
    assert server_read(server, 8) == b"xy"
    assert server.read(bytearray(1)) == 0


def test_transport_eof_in_the_middle_of_a_frame_is_an_error(
    server_peer: tuple[QIOChannelWebsock, ProtocolPeer],
) -> None:
    server, peer = server_peer
    peer.send_raw(b"\x82\x85mask")  # a masked 5-byte binary frame, payload missing
    peer.channel.shutdown(Shutdown.WRITE)
    with pytest.raises(WebsocketError, match="middle of a frame"):
        server.read(bytearray(8))


def test_garbage_after_the_handshake_is_a_protocol_error(
    server_peer: tuple[QIOChannelWebsock, ProtocolPeer],
) -> None:
    server, peer = server_peer
    peer.send_raw(b"GET / HTTP/1.1\r\n\r\n")  # not a frame: reserved bits and bad opcode
    with pytest.raises(WebsocketError, match="protocol error"):
        server.read(bytearray(8))
    closes = [f for f in peer.frames() if f.opcode is CLOSE]
    assert Close.parse(closes[0].data).code == 1002


def test_send_close_starts_the_close_handshake_and_reading_goes_on() -> None:
    client, peer = client_with_peer()
    with client, peer.channel:
        peer.send(lambda p: p.send_binary(b"queued before"))
        client.send_close()
        with pytest.raises(ChannelError) as info:
            client.write(b"late")
        assert info.value.errno == errno.EPIPE
        frames = peer.frames(lambda got: any(f.opcode is CLOSE for f in got))
        assert Close.parse(frames[-1].data).code == 1000
        assert server_read(client, 32) == b"queued before"
        assert client.read(bytearray(1)) == 0  # the peer's echo ends the stream


def test_close_closes_the_master() -> None:
    server, peer = server_with_peer()
    server.close()
    server.close()
    assert server.master.closed
    peer.channel.close()


def test_close_gives_up_on_a_peer_that_never_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(websock_module, "CLOSE_FLUSH_TIMEOUT", 0.2)
    client, peer = client_with_peer(memory_pipe(capacity=4096))
    theirs = peer.channel
    client.set_blocking(False)
    data = os.urandom(20_000)
    assert client.write(data) == ERR_BLOCK  # the frame is only partly out
    start = time.monotonic()
    client.close()
    assert time.monotonic() - start < 5
    theirs.close()


def test_a_retry_shorter_than_the_blocked_frame_never_sends_a_byte_twice() -> None:
    """A write that returned ERR_BLOCK after framing its data, retried piece by piece.

    The frame went out once; each retry is told only its own length, and the
    pieces that follow are acknowledged from the same frame instead of being
    framed again (the conformance kit's irregular chunks once duplicated 64 KiB).
    """
    ours, theirs = memory_pipe(capacity=4096)
    client = QIOChannelWebsock.new_client(ours, "localhost")
    server = QIOChannelWebsock.new_server(theirs)
    with client, server:
        handshake_pair(server, client)
        client.set_blocking(False)
        data = os.urandom(20_000)
        assert client.write(data) == ERR_BLOCK  # framed, only partly out
        received = bytearray()

        def read_all() -> None:
            buf = bytearray(len(data))
            server.read_all(buf)
            received.extend(buf)

        reader = threading.Thread(target=read_all)
        reader.start()
        sent = 0
        for size in (1, 7, 4096, 15_896):  # the first three retries are shorter than the frame
            end = sent + size
            while sent < end:
                n = client.write(memoryview(data)[sent:end])
                if n == ERR_BLOCK:
                    client.wait(Condition.OUT, timeout=10)
                    continue
                assert 0 < n <= end - sent
                sent += n
        reader.join(10)
        assert not reader.is_alive()
        assert bytes(received) == data
        # nothing more was framed: the server has no further byte to deliver
        server.set_blocking(False)
        assert server.read(bytearray(1)) == ERR_BLOCK


# -- non-blocking mode and watches --------------------------------------------------------------


def test_nonblocking_read_and_watch_on_decoded_data(
    server_peer: tuple[QIOChannelWebsock, ProtocolPeer],
) -> None:
    server, peer = server_peer
    server.set_blocking(False)
    assert server.read(bytearray(4)) == ERR_BLOCK
    with pytest.raises(TimeoutError):
        server.wait(Condition.IN, timeout=0.05)
    peer.send(lambda p: p.send_binary(b"abcdef"))
    assert server.wait(Condition.IN, timeout=5) & Condition.IN
    assert server_read(server, 2) == b"ab"
    # the rest is decoded and held by the channel, not the master: still ready
    assert not server.master.create_watch(Condition.IN).source.check() & Condition.IN
    assert server.create_watch(Condition.IN).source.check() & Condition.IN

    async def watch_fires() -> Condition:
        loop = asyncio.get_running_loop()
        fired: asyncio.Future[Condition] = loop.create_future()

        def on_ready(_channel: QIOChannel, condition: Condition) -> bool:
            fired.set_result(condition)
            return False

        server.add_watch_full(Condition.IN, on_ready, context=loop)
        return await asyncio.wait_for(fired, 5)

    assert asyncio.run(watch_fires()) & Condition.IN
    assert server_read(server, 8) == b"cdef"
    assert server.read(bytearray(4)) == ERR_BLOCK


def test_nonblocking_write_reports_a_frame_only_once_it_is_out() -> None:
    client, peer = client_with_peer(memory_pipe(capacity=4096))
    theirs = peer.channel
    with client, theirs:
        client.set_blocking(False)
        data = os.urandom(10_000)
        assert client.write(data) == ERR_BLOCK
        assert client.write(data) == ERR_BLOCK  # still queued: the peer has not read
        received = bytearray()
        written = ERR_BLOCK
        while written == ERR_BLOCK:
            theirs.wait(Condition.IN, timeout=5)
            received += _data_frames([e for e in peer.pump() if isinstance(e, Frame)])
            written = client.write(data)
        assert written == len(data)
        frames = peer.frames(lambda got: len(received) + len(_data_frames(got)) >= len(data))
        assert bytes(received) + _data_frames(frames) == data
        assert client.write(b"more") == 4


def test_nonblocking_write_frames_what_the_master_takes_and_counts_whole_frames() -> None:
    # masked frames of 100 bytes take 106 on the wire: two and part of a third fit
    client, peer = client_with_peer(memory_pipe(capacity=300), frame_size=100)
    theirs = peer.channel
    data = os.urandom(1000)
    with client, theirs:
        client.set_blocking(False)
        assert client.writev([data[:30], data[30:60], data[60:]]) == 200
        assert client.write(data[200:]) == ERR_BLOCK  # the third frame is not all out
        received = bytearray()
        done = 200
        while done < len(data):
            theirs.wait(Condition.IN, timeout=5)
            received += _data_frames([e for e in peer.pump() if isinstance(e, Frame)])
            written = client.write(data[done:])
            if written != ERR_BLOCK:
                assert written % 100 == 0 or done + written == len(data)
                done += written
        frames = peer.frames(lambda got: len(received) + len(_data_frames(got)) >= len(data))
        assert bytes(received) + _data_frames(frames) == data  # each byte framed once


# -- threads, features, passthrough ---------------------------------------------------------


def test_pings_during_a_concurrent_write_are_answered_in_order() -> None:
    """A reader thread answering pings never interleaves its pongs into a writer's frames."""
    server, peer = server_with_peer(socket_pair())
    theirs = peer.channel
    data = os.urandom(4 << 20)
    pings = 50
    with server, theirs:

        def write() -> None:
            server.write_all(data)

        def read() -> None:
            buf = bytearray(3)
            server.read_all(buf)
            assert buf == b"end"

        threads = [threading.Thread(target=write), threading.Thread(target=read)]
        for thread in threads:
            thread.start()
        for i in range(pings):
            peer.send(partial(Protocol.send_ping, data=f"ping {i}".encode()))
        peer.send(lambda p: p.send_binary(b"end"))
        frames = peer.frames(
            lambda got: (
                len(_data_frames(got)) >= len(data) and sum(f.opcode is PONG for f in got) == pings
            )
        )
        for thread in threads:
            thread.join(30)
        assert _data_frames(frames) == data
        assert [f.data for f in frames if f.opcode is PONG] == [
            f"ping {i}".encode() for i in range(pings)
        ]
        assert not [f for f in frames if f.opcode in (TEXT, PING)]


def test_features_and_hints_pass_through_to_the_master() -> None:
    ours, theirs = socket_pair()
    server = QIOChannelWebsock.new_server(ours)
    client = QIOChannelWebsock.new_client(theirs, "localhost")
    with server, client:
        handshake_pair(server, client)
        # no half-close in websocket: a close frame ends both directions
        assert not server.has_feature(Feature.SHUTDOWN)
        with pytest.raises(ChannelError) as info:
            server.shutdown(Shutdown.WRITE)
        assert info.value.errno == errno.ENOTSUP
        assert not server.has_feature(Feature.FD_PASS)
        server.set_delay(False)
        server.set_cork(True)
        server.set_cork(False)
        assert server.peerpid() == os.getpid()
        assert server.flush() == 0
        assert "QIOChannelWebsock server open" in repr(server)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_async_handshake_and_transfer(loop_kind: str) -> None:
    """ahandshake() and the async I/O twins share one loop without blocking it (uvloop too)."""
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    ours, theirs = socket_pair()
    server = QIOChannelWebsock.new_server(ours)
    client = QIOChannelWebsock.new_client(theirs, "localhost")
    data = os.urandom(3 << 20)
    received = bytearray(len(data))

    async def scenario() -> None:
        await asyncio.gather(server.ahandshake(), client.ahandshake())
        await asyncio.gather(client.awrite_all(data), server.aread_all(received))

    try:
        loop.run_until_complete(asyncio.wait_for(scenario(), 20))
    finally:
        loop.close()
        server.close()
        client.close()
    assert received == data
