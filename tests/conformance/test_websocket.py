"""The conformance kit over websocket channels.

Websocket over a memory pipe, TCP, a unix socket pair, a command pipe (socat
relaying to a unix socket), TLS (the ``wss://`` stack: websocket over TLS over
TCP), and TLS carried inside a websocket.
"""

from __future__ import annotations

import shlex
import shutil
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


@pytest.fixture
def relay_masters(tmp_path: Path) -> Iterator[PairFactory]:
    """A command channel whose child (socat) relays bytes to a unix socket we accept on.

    A websocket never half-closes its transport to end a direction (a close
    frame does that), so socat may end as soon as either side reaches EOF
    (``-t 0``): no close then waits for the child.  A websocket has no
    half-close either, so the checks end a transfer by closing the writer: the
    peer's answering close frame may then meet socat's closed stdout, which
    socat reports as a failure (exit 1) although every byte went through;
    the child's status is not what these checks test.
    """
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat is not installed")
    path = tmp_path / "relay.sock"
    relay = f"{shlex.quote(socat)} -t 0 - UNIX-CONNECT:{shlex.quote(str(path))} 2>/dev/null"
    with command_relay_pairs(path, ["/bin/sh", "-c", f"{relay}; exit 0"]) as make:
        yield make


def test_websocket_over_memory_pipe(qiochan_conformance: Runner, no_fd_leak: None) -> None:
    qiochan_conformance(websocket_pairs(memory_pipe))


def test_websocket_over_tcp(qiochan_conformance: Runner, no_fd_leak: None) -> None:
    qiochan_conformance(websocket_pairs(connected_pair))


def test_websocket_over_unix_socketpair(qiochan_conformance: Runner, no_fd_leak: None) -> None:
    qiochan_conformance(websocket_pairs(socket_pair))


def test_websocket_over_command_pipe(
    qiochan_conformance: Runner, relay_masters: PairFactory, no_fd_leak: None
) -> None:
    qiochan_conformance(websocket_pairs(relay_masters))


def test_websocket_over_tls(
    qiochan_conformance: Runner, tls_creds_dir: Path, no_fd_leak: None
) -> None:
    """The wss:// stack: websocket over TLS over TCP."""
    qiochan_conformance(websocket_pairs(tls_pairs(connected_pair, tls_creds_dir)))


def test_tls_inside_websocket(
    qiochan_conformance: Runner, tls_creds_dir: Path, no_fd_leak: None
) -> None:
    """TLS carried in websocket frames (as VeNCrypt over a VNC websocket)."""
    qiochan_conformance(tls_pairs(websocket_pairs(socket_pair), tls_creds_dir))
