"""Inbound: frames cut at their boundaries, plain binary payloads carried, the rest delegated.

Frames are serialized by the ``websockets`` library itself (masked by a
client protocol, unmasked by a server one), then fed to :class:`Inbound` and
to our channel in pieces of every size, so the header layout is checked
against the library.  The channel tests run a real scripted peer over a
memory pipe and compare every delivered byte.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import BINARY, CONT, PING, PONG, TEXT, Frame
from websockets.protocol import OPEN, Protocol
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from qiochan import QIOChannel, Shutdown, WebsocketError
from qiochan_memory import memory_pipe
from qiochan_websocket import QIOChannelWebsock
from qiochan_websocket.inbound import Inbound
from tests.helpers.websocket import client_with_peer, server_with_peer


def _wire(frames: list[Frame], *, masked: bool) -> bytes:
    """``frames`` as a client (masked) or a server (unmasked) puts them on the wire."""
    sender: Protocol = (
        ClientProtocol(parse_uri("ws://localhost/"), state=OPEN)
        if masked
        else ServerProtocol(state=OPEN)
    )
    for frame in frames:
        sender.send_frame(frame)
    return b"".join(sender.data_to_send())


def _cut(data: bytes, sizes: Callable[[], int]) -> Iterator[memoryview]:
    view = memoryview(data)
    while view.nbytes:
        size = sizes()
        yield view[:size]
        view = view[size:]


def _run(inbound: Inbound, chunks: Iterator[memoryview]) -> tuple[bytes, bytes, int]:
    """Drive ``inbound`` over ``chunks``: return (carried payload, delegated bytes, frames)."""
    carried, delegated = bytearray(), bytearray()
    frames = 0
    for piece in chunks:
        chunk = piece
        while chunk.nbytes:
            if inbound.payload_left:
                target = bytearray(chunk.nbytes)
                n = inbound.payload_into([memoryview(target)], chunk)
                carried += target[:n]
            elif inbound.delegated_left:
                n = min(chunk.nbytes, inbound.delegated_left)
                inbound.delegated_left -= n
                delegated += chunk[:n]
            else:
                n, header = inbound.begin(chunk, carry=True)
                if header is not None:
                    delegated += header
                if inbound.payload_left or header is not None:
                    frames += 1
            chunk = chunk[n:]
    return bytes(carried), bytes(delegated), frames


_SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("piece", [1, 3, 7, 4096])
def test_binary_frames_are_carried_and_unmasked_whatever_the_cuts(masked: bool, piece: int) -> None:
    payloads = [random.Random(size).randbytes(size) for size in _SIZES]
    wire = _wire([Frame(BINARY, p) for p in payloads], masked=masked)
    inbound = Inbound(masked=masked, max_size=None)
    carried, delegated, _frames = _run(inbound, _cut(wire, lambda: piece))
    assert (carried, delegated) == (b"".join(payloads), b"")
    assert inbound.at_boundary


def test_payload_read_unmasks_in_place_from_any_offset() -> None:
    payload = random.Random(1).randbytes(300_001)
    wire = _wire([Frame(BINARY, payload)], masked=True)
    inbound = Inbound(masked=True, max_size=None)
    used, header = inbound.begin(memoryview(wire), carry=True)
    assert header is None and inbound.payload_left == len(payload)
    body = bytearray(wire[used:])
    done = 0
    for size in (1, 2, 3, 65537, 5, 100_000, 134_453):  # as reads of the master would come
        views = [memoryview(body)[done : done + size // 2], memoryview(body)[done + size // 2 :]]
        inbound.payload_read(views, size)
        done += size
    assert bytes(body) == payload and inbound.at_boundary


def test_every_other_frame_is_delegated_whole() -> None:
    frames = [
        Frame(PING, b"ping"),
        Frame(BINARY, b"first", fin=False),  # a fragmented message...
        Frame(PONG, b""),
        Frame(CONT, b"second", fin=False),
        Frame(CONT, b"last"),  # ...ends here
        Frame(TEXT, b"text"),
    ]
    wire = _wire([*frames, Frame(BINARY, b"plain")], masked=True)
    inbound = Inbound(masked=True, max_size=None)
    carried, delegated, count = _run(inbound, _cut(wire, lambda: 5))
    assert carried == b"plain"
    assert delegated == wire[: -6 - 5]  # all but the carried frame (6 header bytes, 5 payload)
    assert count == len(frames) + 1


def test_a_binary_frame_inside_a_fragmented_message_is_left_to_the_protocol() -> None:
    # not valid (websockets rejects it): it must reach the protocol to be rejected
    wire = _wire([Frame(BINARY, b"a", fin=False), Frame(BINARY, b"b")], masked=True)
    inbound = Inbound(masked=True, max_size=None)
    carried, delegated, _frames = _run(inbound, _cut(wire, lambda: len(wire)))
    assert (carried, delegated) == (b"", wire)


@pytest.mark.parametrize(
    ("masked_wire", "max_size", "carry"),
    [(False, None, True), (True, 99, True), (True, None, False)],
    ids=["wrong-masking", "over-max-size", "session-not-open"],
)
def test_frames_the_protocol_must_judge_are_delegated(
    masked_wire: bool, max_size: int | None, carry: bool
) -> None:
    wire = _wire([Frame(BINARY, b"z" * 100)], masked=masked_wire)
    inbound = Inbound(masked=True, max_size=max_size)
    used, header = inbound.begin(memoryview(wire), carry=carry)
    assert header == wire[:used] and inbound.delegated_left == 100
    assert inbound.payload_left == 0


def _message(draw: st.DrawFn) -> list[Frame]:
    """One message (a final binary frame, or fragments), pings and pongs among its frames."""
    sizes = st.sampled_from([0, 1, 125, 126, 127, 1000, 65535, 65536, 70000])
    pieces = draw(st.lists(sizes, min_size=1, max_size=3))
    frames: list[Frame] = []
    for index, size in enumerate(pieces):
        opcode = BINARY if index == 0 else CONT
        frames.append(Frame(opcode, bytes([index]) * size, fin=index == len(pieces) - 1))
        if draw(st.booleans()):
            control = draw(st.sampled_from([PING, PONG]))
            frames.append(Frame(control, draw(st.binary(max_size=125))))
    return frames


def _frames_of(events: list[Any]) -> list[tuple[int, bytes]]:
    return [(event.opcode, bytes(event.data)) for event in events if isinstance(event, Frame)]


_messages = st.lists(st.composite(_message)(), min_size=1, max_size=6)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=_messages, cuts=st.lists(st.integers(1, 70_000), min_size=1, max_size=8))
def test_cutting_frames_out_changes_nothing_websockets_sees(
    messages: list[list[Frame]], cuts: list[int]
) -> None:
    """Inbound plus the protocol for what it delegates == the protocol alone, for any cuts."""
    wire = _wire([frame for message in messages for frame in message], masked=True)
    sizes = itertools.cycle(cuts)

    reference = ServerProtocol(state=OPEN)
    for chunk in _cut(wire, lambda: next(sizes)):
        reference.receive_data(bytes(chunk))
    expected = reference.events_received()

    protocol = ServerProtocol(state=OPEN)
    inbound = Inbound(masked=True, max_size=None)
    got: list[tuple[int, bytes]] = []  # (opcode, payload) in arrival order
    for piece in _cut(wire, lambda: next(sizes)):
        chunk = piece
        while chunk.nbytes:
            if inbound.payload_left:
                target = bytearray(chunk.nbytes)
                n = inbound.payload_into([memoryview(target)], chunk)
                got.append((BINARY, bytes(target[:n])))
            else:
                if inbound.delegated_left:
                    n = min(chunk.nbytes, inbound.delegated_left)
                    inbound.delegated_left -= n
                    protocol.receive_data(bytes(chunk[:n]))
                else:
                    n, header = inbound.begin(chunk, carry=True)
                    if header is not None:
                        protocol.receive_data(header)
                got += _frames_of(protocol.events_received())
            chunk = chunk[n:]
    assert protocol.parser_exc is None and inbound.at_boundary

    def stream(events: list[tuple[int, bytes]]) -> tuple[bytes, list[tuple[int, bytes]]]:
        data = b"".join(payload for opcode, payload in events if opcode in (BINARY, CONT))
        return data, [(opcode, payload) for opcode, payload in events if opcode in (PING, PONG)]

    assert stream(got) == stream(_frames_of(expected))
    assert protocol.data_to_send() == reference.data_to_send()  # the same pongs


# -- through the channel ------------------------------------------------------------


def _mixed_frames(rng: random.Random) -> tuple[list[Frame], bytes, int]:
    """Frames as a peer may send them: return (frames, the byte stream in them, pings)."""
    frames: list[Frame] = []
    stream = bytearray()
    pings = 0
    for index in range(60):
        kind = rng.choice(["binary", "binary", "binary", "ping", "fragments"])
        size = rng.choice([0, 1, 125, 126, 4000, 65536, 300_000, 1 << 20])
        payload = rng.randbytes(size)
        if kind == "binary":
            frames.append(Frame(BINARY, payload))
        elif kind == "ping":
            frames.append(Frame(PING, str(index).encode()))
            pings += 1
            continue
        else:
            cut = size // 2
            frames += [Frame(BINARY, payload[:cut], fin=False), Frame(CONT, payload[cut:])]
        stream += payload
    return frames, bytes(stream), pings


def _write_all(channel: QIOChannel, pieces: list[memoryview]) -> None:
    for piece in pieces:
        channel.write_all(piece)


@pytest.mark.parametrize("role", ["server", "client"])
@pytest.mark.parametrize("seed", [1, 2])
def test_a_mixed_stream_arrives_whole_and_in_order(role: str, seed: int) -> None:
    rng = random.Random(seed)
    frames, expected, pings = _mixed_frames(rng)
    channel, peer = server_with_peer() if role == "server" else client_with_peer()
    theirs = peer.channel
    wire = _wire(frames, masked=role == "server")
    # the peer writes in odd pieces; we read with one to three buffers of odd sizes
    pieces = list(_cut(wire, lambda: rng.randrange(1, 200_000)))
    writer = threading.Thread(target=_write_all, args=(theirs, pieces))
    received = bytearray()
    with channel, theirs:
        writer.start()
        while len(received) < len(expected):
            buffers = [bytearray(rng.randrange(1, 300_000)) for _ in range(rng.randrange(1, 4))]
            n = channel.readv(buffers)
            assert n > 0
            received += b"".join(buffers)[:n]
        writer.join()
        assert bytes(received) == expected
        assert channel._inbound.active  # the payloads were carried, not parsed
        pongs = peer.frames(lambda got: sum(f.opcode is PONG for f in got) == pings)
        assert [f.data for f in pongs if f.opcode is PONG] == [
            f.data for f in frames if f.opcode is PING
        ]


def _write_then_end(channel: QIOChannel, data: bytes) -> None:
    channel.write_all(data)
    channel.shutdown(Shutdown.WRITE)


_HEADER = 14  # of a masked frame with a 64-bit length


@pytest.mark.parametrize(
    "cut",
    [1, 12, _HEADER + 3, _HEADER + 150_000],
    ids=["in-the-header", "in-the-mask", "in-the-payload", "in-a-large-payload"],
)
def test_eof_inside_a_carried_frame_is_an_error(cut: int) -> None:
    server, peer = server_with_peer()
    theirs = peer.channel
    payload = random.Random(cut).randbytes(200_000)
    writer = threading.Thread(
        target=_write_then_end, args=(theirs, _wire([Frame(BINARY, payload)], masked=True)[:cut])
    )
    with server, theirs:
        peer.send(lambda p: p.send_binary(b"whole"))
        assert server.read(bytearray(8)) == 5
        assert server._inbound.active
        writer.start()
        received = bytearray()
        with pytest.raises(WebsocketError, match="middle of a frame"):
            while True:
                buf = bytearray(1 << 20)
                n = server.read(buf)
                assert n > 0
                received += buf[:n]
        writer.join()
        assert received == payload[: max(0, cut - _HEADER)]  # what came before the end


def test_frames_right_behind_the_upgrade_request_are_read() -> None:
    # a client that does not wait for the 101: frames come in the request's read
    ours, theirs = memory_pipe()
    server = QIOChannelWebsock.new_server(ours)
    client = ClientProtocol(parse_uri("ws://localhost/"), subprotocols=[Subprotocol("binary")])
    client.send_request(client.connect())
    client.state = OPEN  # as if the answer had come: frames go out at once
    client.send_binary(b"a" * 3000)
    client.send_binary(b"b" * 200_000)
    writer = threading.Thread(target=theirs.write_all, args=(b"".join(client.data_to_send()),))
    with server, theirs:
        writer.start()
        server.handshake()
        received = bytearray()
        while len(received) < 203_000:
            buf = bytearray(65536)
            received += buf[: server.read(buf)]
        writer.join()
        assert received == b"a" * 3000 + b"b" * 200_000
        assert server._inbound.active  # on from the end of the frame being parsed


@pytest.mark.parametrize("blocking", [False, True], ids=["non-blocking", "blocking"])
def test_a_nonblocking_read_fills_the_buffer_across_frames(blocking: bool) -> None:
    server, peer = server_with_peer(memory_pipe(capacity=1 << 20))
    theirs = peer.channel
    payloads = [random.Random(n).randbytes(100_000) for n in range(3)]
    with server, theirs:
        theirs.write_all(_wire([Frame(BINARY, p) for p in payloads], masked=True))  # buffered
        server.set_blocking(blocking)
        buf = bytearray(250_000)
        n = server.read(buf)
        if blocking:  # it returns before reading the master again: that read could wait
            assert 0 < n < len(buf)
        else:  # one read, one chunk for the caller: two frames and half of the third
            assert n == len(buf)
        assert buf[:n] == b"".join(payloads)[:n]
