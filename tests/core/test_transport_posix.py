"""qiochan.connect / listen / open_channel over the POSIX transports, through the registry."""

from __future__ import annotations

import errno
import os
import socket
import threading
from pathlib import Path

import pytest

import qiochan
from qiochan.address import FdAddress, InetAddress, UnixAddress
from qiochan.channel import Feature, Shutdown
from qiochan.errors import AddressError, ChannelError, PluginError
from qiochan_command import QIOChannelCommand
from qiochan_file import QIOChannelFile
from qiochan_socket import QIOChannelSocket, QIONetListener


def _echo_once(listener: QIONetListener, size: int) -> threading.Thread:
    """Serve one client in a thread: read ``size`` bytes and send them back."""

    def serve() -> None:
        with listener.accept() as server:
            buf = bytearray(size)
            server.read_all(buf)
            server.write_all(buf)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("address", ["tcp:127.0.0.1:0", "tcp:localhost:0", "unix:{tmp}/s.sock"])
def test_connect_and_listen_by_string(address: str, tmp_path: Path, no_fd_leak: None) -> None:
    with qiochan.listen(address.format(tmp=tmp_path)) as listener:
        assert isinstance(listener, QIONetListener)
        server = _echo_once(listener, 5)
        with qiochan.connect(str(listener.address), timeout=10) as client:
            assert isinstance(client, QIOChannelSocket)
            client.write_all(b"hello")
            buf = bytearray(5)
            client.read_all(buf)
            assert buf == b"hello"
        server.join(10)


def test_listen_reports_the_real_port() -> None:
    with qiochan.listen("tcp:127.0.0.1:0") as listener:
        address = listener.address
        assert isinstance(address, InetAddress)
        assert address.host == "127.0.0.1" and address.port > 0


def test_connect_accepts_address_objects(tmp_path: Path) -> None:
    address = UnixAddress(str(tmp_path / "obj.sock"))
    with (
        qiochan.listen(address) as listener,
        qiochan.connect(address) as client,
        listener.accept() as server,
    ):
        client.write_all(b"x")
        assert server.read_all_eof(bytearray(1))


def test_connect_refused_keeps_errno() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(ChannelError) as info:
            qiochan.connect(f"tcp:127.0.0.1:{port}")
    assert info.value.errno == errno.ECONNREFUSED
    assert f"127.0.0.1:{port}" in str(info.value)


def test_open_file_read_write_and_offset(tmp_path: Path, no_fd_leak: None) -> None:
    path = tmp_path / "stream.bin"
    path.write_bytes(b"HEADER--old stream data")
    with qiochan.open_channel(f"file:{path},offset=8", "w") as out:
        assert isinstance(out, QIOChannelFile)
        out.write_all(b"new")
    assert path.read_bytes() == b"HEADER--new"
    with qiochan.open_channel(f"file:{path},offset=8", "r") as inp:
        buf = bytearray(3)
        inp.read_all(buf)
        assert buf == b"new"
        assert inp.read_all_eof(bytearray(1)) is False
    with qiochan.open_channel(f"file:{path}", "rw") as both:
        assert both.has_feature(Feature.SEEKABLE)
        both.seek(0, os.SEEK_END)
        both.write_all(b"!")
    assert path.read_bytes() == b"HEADER--new!"


def test_open_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ChannelError) as info:
        qiochan.open_channel(f"file:{tmp_path}/missing", "r")
    assert info.value.errno == errno.ENOENT
    assert "missing" in str(info.value)


def test_exec_open_modes(no_fd_leak: None) -> None:
    with qiochan.open_channel("exec:printf 'from child'", "r") as reader:
        assert isinstance(reader, QIOChannelCommand)
        buf = bytearray(10)
        reader.read_all(buf)
        assert buf == b"from child"
    with qiochan.open_channel("exec:cat > /dev/null", "w") as writer:
        writer.write_all(b"discarded")
    with qiochan.connect("exec:tr a-z A-Z") as both:
        both.write_all(b"shout")
        both.shutdown(Shutdown.WRITE)
        buf = bytearray(5)
        both.read_all(buf)
        assert buf == b"SHOUT"


def test_fd_socket_becomes_socket_channel(no_fd_leak: None) -> None:
    a, b = socket.socketpair()
    with b, qiochan.open_channel(FdAddress(a.detach()), "rw") as channel:
        assert isinstance(channel, QIOChannelSocket)
        assert channel.has_feature(Feature.FD_PASS)
        channel.write_all(b"via fd")
        assert b.recv(6) == b"via fd"


def test_fd_pipe_becomes_file_channel(no_fd_leak: None) -> None:
    read_fd, write_fd = os.pipe()
    try:
        with qiochan.open_channel(f"fd:{read_fd}", "r") as channel:
            assert isinstance(channel, QIOChannelFile)
            assert not channel.has_feature(Feature.SEEKABLE)
            os.write(write_fd, b"pipe")
            buf = bytearray(4)
            channel.read_all(buf)
            assert buf == b"pipe"
    finally:
        os.close(write_fd)
    with pytest.raises(OSError):
        os.fstat(read_fd)  # owned and closed by the channel


def test_fd_with_wrong_access_mode_is_refused(no_fd_leak: None) -> None:
    read_fd, write_fd = os.pipe()
    try:
        with pytest.raises(ChannelError, match="not open for mode 'w'") as info:
            qiochan.open_channel(f"fd:{read_fd}", "w")
        assert info.value.errno == errno.EBADF
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_fd_not_open(no_fd_leak: None) -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(ChannelError) as info:
        qiochan.open_channel(f"fd:{fd}", "r")
    assert info.value.errno == errno.EBADF


def test_listen_on_inherited_fd(no_fd_leak: None) -> None:
    raw = socket.socket(socket.AF_UNIX)
    raw.bind("")  # autobind an abstract name
    raw.listen()
    name = raw.getsockname()
    with qiochan.listen(f"fd:{raw.detach()}") as listener, socket.socket(socket.AF_UNIX) as peer:
        peer.connect(name)
        with listener.accept() as server:
            assert isinstance(server, QIOChannelSocket)


def test_backends_list_the_posix_transports() -> None:
    table = qiochan.backends()
    assert set(table["socket"].schemes) == {"tcp", "unix", "vsock", "fd"}
    assert Feature.FD_PASS in table["socket"].features
    assert Feature.WRITE_ZERO_COPY in table["socket"].features
    assert table["file"].schemes == ("file",)
    assert Feature.SEEKABLE in table["file"].features
    assert table["command"].schemes == ("exec",)
    assert Feature.SHUTDOWN in table["command"].features
    for name in ("socket", "file", "command"):
        assert table[name].available and table[name].kind == "transport"


def test_malformed_and_unserved_addresses() -> None:
    with pytest.raises(AddressError, match="empty port"):
        qiochan.connect("tcp:localhost:")
    with pytest.raises(PluginError, match="does not support listen"):
        qiochan.listen("exec:cat")
    with pytest.raises(PluginError, match="does not support connect"):
        qiochan.connect("file:/dev/null")
