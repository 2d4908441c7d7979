"""Closing a listening unix socket channel removes its socket file, as QEMU does.

Also when the channel adopted the socket from a file descriptor, and only
while the path still names that socket.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

import qiochan
from qiochan.channel import Feature
from qiochan_socket import QIOChannelSocket
from qiochan_socket.unixpath import _vfs_identity, bound_file
from tests.helpers.fds import open_fds


def _listening(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    return sock


def test_adopted_listening_socket_removes_its_file_on_close(tmp_path: Path) -> None:
    path = tmp_path / "adopted.sock"
    before = open_fds()
    channel = QIOChannelSocket.new_fd(_listening(path).detach())
    assert channel.has_feature(Feature.LISTEN)
    assert path.exists()
    channel.close()
    assert not path.exists()
    assert open_fds() == before


def test_listen_on_an_inherited_fd_removes_the_file_on_close(tmp_path: Path) -> None:
    path = tmp_path / "inherited.sock"
    fd = _listening(path).detach()
    with qiochan.listen(f"fd:{fd}") as listener:
        with qiochan.connect(f"unix:{path}") as client, listener.accept() as server:
            client.write_all(b"x")
            server.read_all(bytearray(1))
        assert path.exists()
    assert not path.exists()


def test_a_path_taken_over_by_another_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "shared.sock"
    channel = QIOChannelSocket.new_fd(_listening(path).detach())
    path.unlink()
    with _listening(path) as successor:
        channel.close()
        assert path.exists(), "the successor's socket file must stay"
        assert os.stat(path).st_ino == os.stat(successor.getsockname()).st_ino


def test_a_path_replaced_before_adoption_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "replaced.sock"
    first = _listening(path)
    if _vfs_identity(first) is None:
        first.close()
        pytest.skip("the kernel has no sock_diag for unix sockets here")
    path.unlink()
    with _listening(path):
        channel = QIOChannelSocket.new_fd(first.detach())
        assert bound_file(channel.socket) is None
        channel.close()
        assert path.exists()


def test_connected_and_abstract_sockets_leave_files_alone(tmp_path: Path) -> None:
    path = tmp_path / "server.sock"
    with _listening(path) as server:
        client = QIOChannelSocket.new_fd(_connected(path).detach())
        accepted, _ = server.accept()
        accepted.close()
        client.close()
        assert path.exists(), "a connected socket never removes the server's file"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(f"\0qiochan-test-{os.getpid()}")
    abstract.listen()
    channel = QIOChannelSocket.new_fd(abstract.detach())
    assert bound_file(channel.socket) is None
    channel.close()


def _connected(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock
