"""``abort()`` against ``close()``: what the peer observes, over every transport and layer.

A clean ``close()`` gives the peer every byte and then an end of stream; an
``abort()`` gives it the bytes that arrived and then an error it cannot take
for a clean end (a TCP reset, TLS without close_notify, websocket close 1011).
"""

from __future__ import annotations

import errno
import os
import select
from pathlib import Path

import pytest

from qiochan import QIOChannel
from qiochan.errors import ChannelError, TLSError, WebsocketError
from qiochan_command import QIOChannelCommand
from qiochan_socket import socket_pair
from tests.helpers.pairs import PairFactory, connected_pair, tls_pairs, websocket_pairs

_DATA = bytes(range(256)) * 64  # 16 KiB: fits the socket buffers, so write_all never blocks


def _unix_pair() -> tuple[QIOChannel, QIOChannel]:
    return socket_pair()


def _chains(creds: Path) -> dict[str, tuple[PairFactory, type[ChannelError], str]]:
    """name -> (pair factory, the error the peer of an abort sees, a word of its message)."""
    tcp: PairFactory = connected_pair
    return {
        "tcp": (tcp, ChannelError, "reset"),
        "tls-over-tcp": (tls_pairs(tcp, creds), ChannelError, ""),
        "tls-over-unix": (tls_pairs(_unix_pair, creds), TLSError, "close_notify"),
        "websocket-over-tcp": (websocket_pairs(tcp), WebsocketError, "1011"),
        "websocket-over-unix": (websocket_pairs(_unix_pair), WebsocketError, "1011"),
        "websocket-over-tls": (websocket_pairs(tls_pairs(tcp, creds)), ChannelError, ""),
    }


CHAINS = [
    "tcp",
    "tls-over-tcp",
    "tls-over-unix",
    "websocket-over-tcp",
    "websocket-over-unix",
    "websocket-over-tls",
]


def _read_to_end(channel: QIOChannel) -> tuple[bytes, BaseException | None]:
    """Read until EOF or an error; return what arrived and the error (None: clean EOF)."""
    got = bytearray()
    buf = bytearray(65536)
    try:
        while n := channel.read(buf):
            got += buf[:n]
    except ChannelError as exc:
        return bytes(got), exc
    return bytes(got), None


@pytest.mark.parametrize("end", ["close", "abort"])
@pytest.mark.parametrize("chain", CHAINS)
def test_what_the_peer_sees_after_close_and_abort(
    chain: str, end: str, tls_creds_dir: Path
) -> None:
    make, expected, word = _chains(tls_creds_dir)[chain]
    writer, reader = make()
    with writer, reader:
        writer.write_all(_DATA)
        getattr(writer, end)()
        assert writer.closed
        got, error = _read_to_end(reader)
    if end == "close":
        assert (got, error) == (_DATA, None)
        return
    assert isinstance(error, expected), (chain, error)
    assert word.lower() in str(error).lower(), (chain, error)
    assert _DATA.startswith(got)


def test_abort_twice_and_after_close_does_nothing() -> None:
    a, b = connected_pair()
    with a, b:
        a.abort()
        a.abort()
        b.close()
        b.abort()


def test_tcp_abort_resets_the_connection() -> None:
    writer, reader = connected_pair()
    with writer, reader:
        writer.write_all(b"x" * 100)
        writer.abort()
        got, error = _read_to_end(reader)
    assert got == b"x" * 100
    assert isinstance(error, ChannelError) and error.errno == errno.ECONNRESET


def test_unix_abort_has_no_reset_unless_data_is_left_unread() -> None:
    """Linux gives a unix stream peer ECONNRESET only when the aborting end leaves data
    unread; otherwise the peer sees an end of stream (documented on ``io_abort``)."""
    writer, reader = socket_pair()
    with writer, reader:
        reader.write_all(b"unread")
        writer.write_all(b"y" * 10)
        writer.abort()
        got, error = _read_to_end(reader)
    assert got == b"y" * 10
    assert isinstance(error, ChannelError) and error.errno == errno.ECONNRESET

    writer, reader = socket_pair()
    with writer, reader:
        writer.write_all(b"z")
        writer.abort()
        assert _read_to_end(reader) == (b"z", None)


def _wait_gone(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 30)[0])


def test_command_abort_stops_the_child_at_once() -> None:
    # a child that would keep running after its stdin closes: abort does not wait for it
    command = QIOChannelCommand.new_spawn(
        ["sh", "-c", "trap '' HUP; while :; do read line || sleep 1000; done"],
        close_timeout=30.0,
    )
    pidfd = os.pidfd_open(command.pid)
    try:
        command.write_all(b"line\n")
        command.abort()
        assert _wait_gone(pidfd)
    finally:
        os.close(pidfd)
        command.close()
    assert command.returncode is not None and command.returncode != 0


def test_socket_peercred_names_this_process() -> None:
    a, b = socket_pair()
    with a, b:
        creds = a.peercred()
        assert creds == (os.getpid(), os.getuid(), os.getgid())
        assert (creds.pid, creds.uid, creds.gid) == tuple(creds)
        assert b.peerpid() == os.getpid()


def test_peercred_is_for_unix_sockets_only() -> None:
    a, b = connected_pair()
    with a, b, pytest.raises(ChannelError) as info:
        a.peercred()  # type: ignore[attr-defined]
    assert info.value.errno == errno.ENOTSUP
