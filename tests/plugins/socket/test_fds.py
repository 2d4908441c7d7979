"""File descriptor passing over unix sockets (SCM_RIGHTS), in both directions, without leaks."""

from __future__ import annotations

import array
import errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from qiochan.errors import ChannelError
from qiochan_socket import MAX_FDS, QIOChannelSocket, socket_pair
from tests.helpers.fds import open_fds as _listed_fds


@contextmanager
def _files(tmp_path: Path, count: int) -> Iterator[list[int]]:
    """Open ``count`` distinct files; close them afterwards."""
    fds = []
    try:
        for index in range(count):
            path = tmp_path / f"file{index}"
            path.write_bytes(f"content {index}".encode())
            fds.append(os.open(path, os.O_RDONLY))
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def open_fds() -> set[int]:
    """The fds open now, without the one the /proc listing itself used."""
    return {fd for fd in _listed_fds() if os.path.exists(f"/proc/self/fd/{fd}")}


def _same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize("direction", ["a->b", "b->a"])
def test_several_fds_refer_to_the_same_files(
    tmp_path: Path, direction: str, no_fd_leak: None
) -> None:
    a, b = socket_pair()
    sender, receiver = (a, b) if direction == "a->b" else (b, a)
    with a, b, _files(tmp_path, 5) as fds:
        sender.writev_full_all([b"five ", b"fds"], fds=fds)
        buf = bytearray(8)
        received = receiver.readv_full_all([buf])
        try:
            assert buf == b"five fds"
            assert len(received) == 5
            assert not set(received) & set(fds), "received fds are new descriptors"
            for sent, got in zip(fds, received, strict=True):
                assert _same_file(sent, got)
                assert not os.get_inheritable(got), "received fds are close-on-exec"
                assert os.pread(got, 20, 0) == os.pread(sent, 20, 0)
        finally:
            _close_all(received)


def test_partial_read_gets_fds_with_the_first_bytes(tmp_path: Path, no_fd_leak: None) -> None:
    a, b = socket_pair()
    with a, b, _files(tmp_path, 2) as fds:
        a.writev_full_all([b"0123456789"], fds=fds)
        head = bytearray(3)
        n, received = b.readv_full([head], want_fds=True)
        try:
            assert (n, head) == (3, bytearray(b"012"))
            assert len(received) == 2 and all(map(_same_file, fds, received))
            tail = bytearray(7)
            n, more = b.readv_full([tail], want_fds=True)
            assert (n, more, tail) == (7, [], bytearray(b"3456789"))
        finally:
            _close_all(received)


def test_fds_dropped_by_a_plain_read_do_not_leak(tmp_path: Path) -> None:
    a, b = socket_pair()
    with a, b, _files(tmp_path, 3) as fds:
        before = open_fds()
        a.writev_full_all([b"data with fds"], fds=fds)
        buf = bytearray(13)
        b.read_all(buf)  # no want_fds: the kernel discards the descriptors
        assert buf == b"data with fds"
        assert open_fds() == before


def test_second_batch_of_fds_in_one_read_all_does_not_leak(tmp_path: Path) -> None:
    """readv_full_all takes the first message's fds; later ones are never installed."""
    a, b = socket_pair()
    with a, b, _files(tmp_path, 4) as fds:
        a.writev_full_all([b"one"], fds=fds[:2])
        a.writev_full_all([b"two"], fds=fds[2:])
        before = open_fds()
        buf = bytearray(6)
        received = b.readv_full_all([buf])
        try:
            assert buf == b"onetwo"
            assert len(received) == 2 and all(map(_same_file, fds[:2], received))
            assert open_fds() - before == set(received)
        finally:
            _close_all(received)


def test_more_fds_than_a_message_carries_from_a_raw_peer(tmp_path: Path) -> None:
    """A peer sending far more fds than expected: all arrive, nothing else is opened."""
    count = 64
    a, b = socket.socketpair()
    channel = QIOChannelSocket.from_socket(b)
    with a, channel, _files(tmp_path, 1) as (one,):
        a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [one] * count))])
        before = open_fds()
        n, received = channel.readv_full([bytearray(1)], want_fds=True)
        try:
            assert n == 1 and len(received) == count
            assert open_fds() - before == set(received)
        finally:
            _close_all(received)
        assert open_fds() == before


def test_peek_with_fds_returns_duplicates_the_caller_owns(tmp_path: Path, no_fd_leak: None) -> None:
    from qiochan.channel import ReadFlag

    a, b = socket_pair()
    with a, b, _files(tmp_path, 1) as fds:
        a.writev_full_all([b"p"], fds=fds)
        n, peeked = b.readv_full([bytearray(1)], want_fds=True, flags=ReadFlag.MSG_PEEK)
        _close_all(peeked)
        n, received = b.readv_full([bytearray(1)], want_fds=True)
        assert n == 1 and len(received) == 1 and _same_file(received[0], fds[0])
        _close_all(received)


def test_fds_need_data_and_a_unix_socket(tmp_path: Path) -> None:
    a, b = socket_pair()
    with a, b, _files(tmp_path, 1) as fds, pytest.raises(ChannelError, match="at least one"):
        a.writev_full_all([], fds=fds)
    with QIOChannelSocket() as listener:
        listener.listen_sync("tcp:127.0.0.1:0")
        with QIOChannelSocket() as client, _files(tmp_path, 1) as fds:
            client.connect_sync(listener.local_address)
            with pytest.raises(ChannelError) as info:
                client.writev_full([b"x"], fds=fds)
            assert info.value.errno == errno.EINVAL
            with pytest.raises(ChannelError):
                client.readv_full([bytearray(1)], want_fds=True)
        accepted = listener.accept()
        assert accepted is not None
        accepted.close()


def test_too_many_fds_for_the_kernel_is_an_error(tmp_path: Path, no_fd_leak: None) -> None:
    a, b = socket_pair()
    with a, b, _files(tmp_path, 1) as (one,):
        with pytest.raises(ChannelError) as info:
            a.writev_full([b"x"], fds=[one] * (MAX_FDS + 1))
        assert info.value.errno == errno.EINVAL
        assert "Unable to write to socket" in str(info.value)
