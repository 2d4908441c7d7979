"""binary_frame: what it encodes, a real websockets protocol of the other side parses.

Every frame is parsed by the peer's own websockets protocol (masked from a
client, unmasked from a server), so the header layout and masking are checked
against the library, not against this module's idea of RFC 6455.
"""

from __future__ import annotations

import os

import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import BINARY, Frame
from websockets.protocol import OPEN, Protocol
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from qiochan_memory import memory_pipe
from qiochan_websocket.buffers import Outbox
from qiochan_websocket.framing import binary_frame


def _client() -> ClientProtocol:
    return ClientProtocol(parse_uri("ws://localhost/"), state=OPEN)


def _server() -> ServerProtocol:
    return ServerProtocol(state=OPEN)


def _parsed(receiver: Protocol, chunks: list[bytes]) -> Frame:
    receiver.receive_data(b"".join(bytes(chunk) for chunk in chunks))
    assert receiver.parser_exc is None
    [frame] = receiver.events_received()
    assert isinstance(frame, Frame)
    return frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70_000])
@pytest.mark.parametrize("side", ["client", "server"])
def test_the_peer_parses_every_length(size: int, side: str) -> None:
    sender, receiver = (_client(), _server()) if side == "client" else (_server(), _client())
    payload = os.urandom(size)
    chunks = binary_frame(sender, memoryview(payload), copy=False)
    assert chunks is not None
    frame = _parsed(receiver, chunks)
    assert frame.opcode is BINARY and frame.fin and bytes(frame.data) == payload
    # the same bytes as the library's own encoder, but for a client's random mask
    sender.send_binary(payload)
    [theirs] = sender.data_to_send()
    ours = b"".join(bytes(chunk) for chunk in chunks)
    assert len(ours) == len(theirs)
    if side == "server":
        assert ours == theirs


def test_an_unmasked_payload_is_copied_only_when_asked() -> None:
    buffer = bytearray(b"x" * 1000)
    chunks = binary_frame(_server(), memoryview(buffer), copy=False)
    assert chunks is not None and chunks[1].obj is buffer
    copied = binary_frame(_server(), memoryview(buffer), copy=True)
    assert copied is not None and isinstance(copied[1], bytes)
    masked = binary_frame(_client(), memoryview(buffer), copy=False)
    assert masked is not None and isinstance(masked[1], bytes)  # the mask made a new object


def test_the_protocol_decides_outside_a_plain_open_state() -> None:
    closing = _server()
    closing.send_close()
    assert binary_frame(closing, b"x", copy=False) is None
    fragmented = _server()
    fragmented.send_binary(b"part", fin=False)
    assert binary_frame(fragmented, b"x", copy=False) is None
    extended = _server()
    extended.extensions = [PerMessageDeflate(False, False, 15, 15)]
    assert binary_frame(extended, b"x", copy=False) is None


def test_outbox_own_detaches_queued_frames_from_the_callers_buffer() -> None:
    writer, reader = memory_pipe(1 << 20)
    with writer, reader:
        outbox = Outbox(writer)
        buffer = bytearray(b"a" * 100)
        outbox.push([b"head", memoryview(buffer)])
        outbox.own()
        buffer[:] = b"b" * 100  # the caller reuses its buffer
        assert outbox.flush(wait=True)
        got = bytearray(104)
        reader.read_all(got)
        assert got == b"head" + b"a" * 100
