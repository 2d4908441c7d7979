"""The conformance kit over TLS: on a memory pipe, TCP, a unix socket pair, a command pipe
and a websocket."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qiochan_memory import memory_pipe
from qiochan_socket import socket_pair
from tests.helpers.pairs import (
    PairFactory,
    command_relay_pairs,
    connected_pair,
    tls_pairs,
    websocket_pairs,
)

Runner = Callable[..., None]


# The relay child: copies stdin to a unix socket and the socket to stdout, keeps a
# half-closed direction going, and exits as soon as the parent closes its stdout.
_RELAY = """
import os, select, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
poller = select.poll()
poller.register(0, select.POLLIN)
poller.register(sock, select.POLLIN)
poller.register(1, 0)  # POLLERR once the parent closes the read end of our stdout
ends = 2
try:
    while ends:
        for fd, _events in poller.poll():
            if fd == 1:
                sys.exit(0)
            if fd == 0:
                data = os.read(0, 65536)
                if data:
                    sock.sendall(data)
                    continue
                sock.shutdown(socket.SHUT_WR)
            else:
                data = sock.recv(65536)
                if data:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(1, view):]
                    continue
                poller.unregister(1)
                os.close(1)
            poller.unregister(fd)
            ends -= 1
except BrokenPipeError:
    pass
"""


@pytest.fixture
def relay_masters(tmp_path: Path) -> Iterator[PairFactory]:
    """A command channel whose child relays bytes to a unix socket we accept on."""
    path = tmp_path / "relay.sock"
    with command_relay_pairs(path, [sys.executable, "-c", _RELAY, str(path)]) as make:
        yield make


def test_tls_over_memory_pipe(
    qiochan_conformance: Runner, tls_creds_dir: Path, no_fd_leak: None
) -> None:
    qiochan_conformance(tls_pairs(memory_pipe, tls_creds_dir))


def test_tls_over_tcp(qiochan_conformance: Runner, tls_creds_dir: Path, no_fd_leak: None) -> None:
    qiochan_conformance(tls_pairs(connected_pair, tls_creds_dir))


def test_tls_over_unix_socketpair(
    qiochan_conformance: Runner, tls_creds_dir: Path, no_fd_leak: None
) -> None:
    qiochan_conformance(tls_pairs(socket_pair, tls_creds_dir))


def test_tls_over_websocket(
    qiochan_conformance: Runner, tls_creds_dir: Path, no_fd_leak: None
) -> None:
    qiochan_conformance(tls_pairs(websocket_pairs(socket_pair), tls_creds_dir))


def test_tls_over_command_pipe(
    qiochan_conformance: Runner,
    tls_creds_dir: Path,
    relay_masters: PairFactory,
    no_fd_leak: None,
) -> None:
    qiochan_conformance(tls_pairs(relay_masters, tls_creds_dir))
