"""WRITE_ZERO_COPY over TCP (Linux MSG_ZEROCOPY) and flush() draining the error queue."""

from __future__ import annotations

import errno
import random
import threading
from collections.abc import Iterator

import pytest

from qiochan.channel import Feature, WriteFlag
from qiochan.errors import ChannelError
from qiochan_socket import QIOChannelSocket, socket_pair
from tests.helpers.pairs import socket_tcp_pair


@pytest.fixture
def tcp_pair() -> Iterator[tuple[QIOChannelSocket, QIOChannelSocket]]:
    client, server = socket_tcp_pair()
    if not client.has_feature(Feature.WRITE_ZERO_COPY):
        client.close()
        server.close()
        pytest.skip("the kernel refused SO_ZEROCOPY")
    yield client, server
    client.close()
    server.close()


def test_zero_copy_transfer_and_flush(tcp_pair: tuple[QIOChannelSocket, QIOChannelSocket]) -> None:
    client, server = tcp_pair
    data = random.Random(7).randbytes(4 << 20)
    received = bytearray(len(data))
    reader = threading.Thread(target=server.read_all, args=(received,), daemon=True)
    reader.start()
    pieces = [memoryview(data)[i : i + 65536] for i in range(0, len(data), 65536)]
    client.writev_full_all(pieces, flags=WriteFlag.ZERO_COPY)
    # loopback always copies in the end: every send fell back, so flush reports 1
    assert client.flush() == 1
    reader.join(20)
    assert received == data
    assert client.flush() == 0, "nothing queued since the last flush"


def test_flush_without_zero_copy_writes_is_zero(
    tcp_pair: tuple[QIOChannelSocket, QIOChannelSocket],
) -> None:
    client, server = tcp_pair
    client.write_all(b"plain")
    assert client.flush() == 0
    server.read_all(bytearray(5))


def test_many_zero_copy_sends_are_all_accounted(
    tcp_pair: tuple[QIOChannelSocket, QIOChannelSocket],
) -> None:
    client, server = tcp_pair
    message = b"z" * 100
    for _ in range(500):
        client.writev_full_all([message], flags=WriteFlag.ZERO_COPY)
    assert client.flush() == 1
    received = bytearray(len(message) * 500)
    server.read_all(received)
    assert received == message * 500


def test_zero_copy_needs_the_feature() -> None:
    a, b = socket_pair()
    with a, b:
        assert not a.has_feature(Feature.WRITE_ZERO_COPY)
        with pytest.raises(ChannelError, match="Zero Copy") as info:
            a.writev_full([b"x"], flags=WriteFlag.ZERO_COPY)
        assert info.value.errno == errno.EINVAL
        assert a.flush() == 0
