"""LendingReader under the real websockets parser: every payload intact, whatever the cuts.

A real websockets protocol produces the frames (masked from a client,
unmasked from a server); the receiving protocol parses them through a
:class:`LendingReader`, fed the way the channel's pump feeds it: each chunk
copied into one reused buffer, settled after each feed, the rest of a large
payload read straight into :meth:`~LendingReader.space`.  The reused buffer
is scribbled over before every read, so a payload that still pointed into it
after being handed out would come out corrupted.
"""

from __future__ import annotations

import os
import random

import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import PayloadTooBig
from websockets.frames import BINARY, Frame
from websockets.protocol import OPEN, Protocol
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from qiochan_websocket.channel import _lending_reader
from qiochan_websocket.reader import LEND_MIN, MAX_ASSEMBLED, LendingReader

SIZES = [0, 1, 125, 126, 1023, LEND_MIN, 65535, 65536, 300_000, MAX_ASSEMBLED + 1]


def _client(max_size: int | None = None) -> ClientProtocol:
    return ClientProtocol(parse_uri("ws://localhost/"), state=OPEN, max_size=max_size)


def _server(max_size: int | None = None) -> ServerProtocol:
    return ServerProtocol(state=OPEN, max_size=max_size)


def _wire(sender: Protocol, payloads: list[bytes]) -> bytes:
    for payload in payloads:
        sender.send_binary(payload)
    return b"".join(sender.data_to_send())


def _receiver(receiver: ClientProtocol | ServerProtocol) -> LendingReader:
    reader = _lending_reader(receiver)
    reader.lending = True
    return reader


def _frames(receiver: Protocol) -> list[Frame]:
    events = receiver.events_received()
    assert all(isinstance(event, Frame) for event in events)
    return events  # type: ignore[return-value]


def _pump_all(receiver: Protocol, wire: bytes, cuts: list[int], eof: bool = False) -> list[bytes]:
    """Feed ``wire`` in reads of the sizes in ``cuts`` (cycled), as the channel's pump does."""
    reader = receiver.reader
    assert isinstance(reader, LendingReader)
    scratch = bytearray(min(max(cuts), len(wire)) or 1)
    got: list[bytes] = []
    pos = 0
    step = 0
    while pos < len(wire):
        size = cuts[step % len(cuts)]
        step += 1
        space = reader.space()
        if space is not None:
            n = min(size, space.nbytes, len(wire) - pos)
            space[:n] = wire[pos : pos + n]
            reader.commit(n)
            receiver.receive_data(b"")
        else:
            n = min(size, len(wire) - pos)
            scratch[:] = os.urandom(len(scratch))  # what a reused read buffer would hold
            scratch[:n] = wire[pos : pos + n]
            receiver.receive_data(memoryview(scratch)[:n])  # type: ignore[arg-type]
            reader.settle()
        pos += n
        # consumed at once, as the channel's queue is before its next read
        got += [bytes(frame.data) for frame in _frames(receiver) if frame.opcode is BINARY]
        scratch[:] = bytes(len(scratch))
    if eof:
        receiver.receive_eof()
    return got


@pytest.mark.parametrize("masked", [False, True], ids=["from-server", "from-client"])
@pytest.mark.parametrize("cuts", [[1, 7, 3], [1000], [4096, 17], [65536], [256 << 10], [1 << 30]])
def test_every_payload_arrives_intact(masked: bool, cuts: list[int]) -> None:
    rng = random.Random(len(cuts) * 7 + masked)
    sizes = SIZES if cuts[0] > 16 else [s for s in SIZES if s < 70_000]
    payloads = [rng.randbytes(size) for size in sizes + sizes[::-1]]
    sender, receiver = (_client(), _server()) if masked else (_server(), _client())
    _receiver(receiver)
    wire = _wire(sender, payloads)
    got = _pump_all(receiver, wire, cuts)
    assert [len(p) for p in got] == [len(p) for p in payloads]
    assert got == payloads
    assert receiver.parser_exc is None


def test_a_large_payload_is_read_into_its_own_buffer() -> None:
    receiver = _client()
    reader = _receiver(receiver)
    payload = os.urandom(200_000)
    wire = _wire(_server(), [payload])
    receiver.receive_data(wire[:1000])
    reader.settle()
    space = reader.space()
    assert space is not None and space.nbytes == len(wire) - 1000
    space[:] = wire[1000:]
    reader.commit(space.nbytes)
    receiver.receive_data(b"")
    assert reader.space() is None
    [frame] = _frames(receiver)
    assert bytes(frame.data) == payload


def _assemble_one(receiver: Protocol, wire: bytes) -> Frame:
    """Feed one frame as the pump does with a large payload: a first read, then space()."""
    reader = receiver.reader
    assert isinstance(reader, LendingReader)
    receiver.receive_data(wire[:1000])
    reader.settle()
    space = reader.space()
    assert space is not None
    space[:] = wire[1000:]
    reader.commit(space.nbytes)
    receiver.receive_data(b"")
    [frame] = _frames(receiver)
    return frame


def test_the_assembly_buffer_is_reused_once_nothing_refers_to_it() -> None:
    payloads = [os.urandom(200_000) for _ in range(3)]
    # masked: each payload is unmasked into new bytes, so one buffer serves every frame
    receiver = _server()
    reader = _receiver(receiver)
    buffers = set()
    for payload in payloads:
        assert bytes(_assemble_one(receiver, _wire(_client(), [payload])).data) == payload
        buffers |= {id(spare) for spare in reader._spares}
    assert len(buffers) == 1
    # unmasked: a payload is a view of the buffer (and the parser holds the last
    # frame until the next is parsed); one still held is never overwritten
    client = _client()
    _receiver(client)
    held = _assemble_one(client, _wire(_server(), [payloads[0]]))
    second = _assemble_one(client, _wire(_server(), [payloads[1]]))
    assert isinstance(held.data, memoryview) and isinstance(second.data, memoryview)
    assert held.data.obj is not second.data.obj
    assert bytes(held.data) == payloads[0] and bytes(second.data) == payloads[1]
    reused = id(second.data.obj)  # (the object itself would be a reference)
    del second  # consumed; the parser still holds it until the next frame is parsed
    third = _assemble_one(client, _wire(_server(), [payloads[2]]))
    assert isinstance(third.data, memoryview) and id(third.data.obj) != reused
    fourth = _assemble_one(client, _wire(_server(), [payloads[0]]))
    assert isinstance(fourth.data, memoryview) and id(fourth.data.obj) == reused
    assert bytes(held.data) == payloads[0], "the held payload was never written over"
    assert bytes(third.data) == payloads[2] and bytes(fourth.data) == payloads[0]


def test_a_payload_inside_one_read_is_lent_not_copied() -> None:
    receiver = _client()
    _receiver(receiver)
    buffer = bytearray(_wire(_server(), [b"x" * 5000]))
    receiver.receive_data(memoryview(buffer))  # type: ignore[arg-type]
    [frame] = _frames(receiver)
    assert isinstance(frame.data, memoryview) and frame.data.obj is buffer


def test_eof_inside_an_assembled_payload_fails_the_parser() -> None:
    receiver = _client()
    _receiver(receiver)
    wire = _wire(_server(), [os.urandom(100_000)])
    _pump_all(receiver, wire[:50_000], [8192], eof=True)
    assert isinstance(receiver.parser_exc, EOFError)
    assert "expected 100000 bytes" in str(receiver.parser_exc)


def test_max_size_is_still_websockets_check() -> None:
    receiver = _client(max_size=1000)
    _receiver(receiver)
    _pump_all(receiver, _wire(_server(), [os.urandom(2000)]), [65536])
    assert isinstance(receiver.parser_exc, PayloadTooBig)


def test_before_the_handshake_nothing_is_lent() -> None:
    reader = LendingReader()
    chunk = bytearray(b"HTTP/1.1 101 Switching Protocols\r\n")
    reader.feed_data(chunk)
    chunk[:] = bytes(len(chunk))
    line = reader.read_line(100)
    with pytest.raises(StopIteration) as done:
        next(line)
    assert done.value.value == b"HTTP/1.1 101 Switching Protocols\r\n"


def test_control_frames_and_headers_are_owned_bytes() -> None:
    receiver = _client()
    _receiver(receiver)
    sender = _server()
    sender.send_ping(b"p" * 100)
    buffer = bytearray(b"".join(sender.data_to_send()))
    receiver.receive_data(memoryview(buffer))  # type: ignore[arg-type]
    [ping] = _frames(receiver)
    assert not isinstance(ping.data, memoryview)
