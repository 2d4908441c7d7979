"""The conformance kit over socket channels: TCP (IPv4, IPv6), unix sockets, socketpairs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from qiochan.channel import QIOChannel
from qiochan_socket import socket_pair
from tests.helpers.pairs import connected_pair, has_ipv6_loopback

Pair = tuple[QIOChannel, QIOChannel]
Runner = Callable[..., None]


def test_tcp_ipv4(qiochan_conformance: Runner, no_fd_leak: None) -> None:
    qiochan_conformance(lambda: connected_pair("tcp:127.0.0.1:0"))


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")
def test_tcp_ipv6(qiochan_conformance: Runner, no_fd_leak: None) -> None:
    qiochan_conformance(lambda: connected_pair("tcp:[::1]:0"))


def test_unix_socket(qiochan_conformance: Runner, tmp_path: Path, no_fd_leak: None) -> None:
    path = tmp_path / "conformance.sock"
    qiochan_conformance(lambda: connected_pair(f"unix:{path}"))


def test_socketpair(qiochan_conformance: Runner, no_fd_leak: None) -> None:
    qiochan_conformance(socket_pair)
