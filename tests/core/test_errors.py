"""The exception hierarchy: whose fault each error is, and where each is raised."""

from __future__ import annotations

import errno
import pickle
import socket
import struct

import pytest

import qiochan
from qiochan import (
    AddressError,
    BrokenChannelError,
    ChannelClosedError,
    ChannelError,
    ConfigError,
    Error,
    HandshakeError,
    PluginError,
    TLSError,
    TLSHandshakeError,
    WebsocketError,
    WebsocketHandshakeError,
)
from qiochan.address import parse_address
from qiochan.config import parse_config
from qiochan.registry import find_backend
from qiochan_socket import QIOChannelSocket
from tests.helpers.pairs import socket_tcp_pair


@pytest.mark.parametrize(
    ("error", "bases", "not_bases"),
    [
        (ChannelError, (Error, OSError), (ValueError, LookupError)),
        (ChannelClosedError, (ChannelError,), (BrokenChannelError,)),
        (BrokenChannelError, (ChannelError,), (ChannelClosedError,)),
        (HandshakeError, (ChannelError,), ()),
        (TLSHandshakeError, (TLSError, HandshakeError, ChannelError), ()),
        (WebsocketHandshakeError, (WebsocketError, HandshakeError, ChannelError), ()),
        (AddressError, (Error, ValueError), (OSError,)),
        (ConfigError, (Error, ValueError), (OSError,)),
        (PluginError, (Error, LookupError), (OSError, ValueError)),
    ],
)
def test_hierarchy(
    error: type[Exception], bases: tuple[type[Exception], ...], not_bases: tuple[type, ...]
) -> None:
    for base in bases:
        assert issubclass(error, base), base
    for base in not_bases:
        assert not issubclass(error, base), base
    assert getattr(qiochan, error.__name__) is error


@pytest.mark.parametrize(
    ("number", "kind"),
    [
        (errno.EBADF, ChannelClosedError),
        (errno.ECONNRESET, BrokenChannelError),
        (errno.EPIPE, BrokenChannelError),
        (errno.EIO, ChannelError),
        (None, ChannelError),
    ],
)
def test_a_channel_error_takes_the_class_its_errno_means(
    number: int | None, kind: type[ChannelError]
) -> None:
    exc = ChannelError("what failed", number)
    assert type(exc) is kind
    assert exc.errno == number and str(exc) == "what failed"
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is kind and copy.errno == number and str(copy) == "what failed"


def test_a_subclass_keeps_its_own_class_whatever_the_errno() -> None:
    exc = WebsocketError("the peer went away", errno.ECONNRESET)
    assert type(exc) is WebsocketError and exc.errno == errno.ECONNRESET


def test_config_error_pickles_with_its_parts() -> None:
    exc = ConfigError("/etc/x.toml", "transports.a", "bad")
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.path, copy.key, copy.reason) == (exc.path, exc.key, exc.reason)
    assert str(copy) == str(exc)


def test_using_a_closed_channel_is_a_closed_error() -> None:
    client, server = socket_tcp_pair()
    client.close()
    server.close()
    for call in (
        lambda: client.write(b"x"),
        lambda: client.read(bytearray(1)),
        lambda: client.set_blocking(False),
    ):
        with pytest.raises(ChannelClosedError) as info:
            call()
        assert info.value.errno == errno.EBADF


def test_end_of_file_in_the_middle_of_read_all_is_a_broken_channel() -> None:
    client, server = socket_tcp_pair()
    with client, server:
        client.write_all(b"half")
        client.close()
        with pytest.raises(BrokenChannelError, match="Unexpected end-of-file") as info:
            server.read_all(bytearray(8))
        assert info.value.errno == errno.EPIPE


def test_a_peer_reset_is_a_broken_channel() -> None:
    client, server = socket_tcp_pair()
    with client, server:
        # SO_LINGER 0: close() sends RST, as a crashed peer's kernel does
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        with pytest.raises(BrokenChannelError) as info:
            server.read_all(bytearray(1))
        assert info.value.errno == errno.ECONNRESET
        assert "Connection reset by peer" in str(info.value)


def test_writing_to_a_peer_that_left_is_a_broken_channel() -> None:
    left, right = socket.socketpair()
    channel = QIOChannelSocket.new_fd(left.detach())
    right.close()
    with channel, pytest.raises(BrokenChannelError) as info:
        channel.write_all(b"x" * 65536)
    assert info.value.errno == errno.EPIPE


def test_input_and_installation_errors_are_not_os_errors() -> None:
    with pytest.raises(AddressError) as address:
        parse_address("tcp:localhost")
    with pytest.raises(ConfigError) as config:
        parse_config("[transports.a]\naddress = 1")
    with pytest.raises(PluginError) as plugin:
        find_backend("no-such-scheme")
    for exc in (address.value, config.value, plugin.value):
        assert isinstance(exc, Error) and not isinstance(exc, OSError)
