"""Interoperability with TLS peers that are not this library: OpenSSL, GnuTLS, socat.

Each peer runs as a subprocess with bounded waits and is always reaped.  Our
ends use the ``tls`` layer through :func:`qiochan.connect`/:func:`qiochan.listen`
over loopback TCP.  The GnuTLS "bare close" client is libgnutls driven through
ctypes the way QEMU's migration source drives it: handshake, send, never read,
close the TCP connection without ``gnutls_bye()``.
"""

from __future__ import annotations

import ctypes.util
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

import qiochan
from qiochan.channel import ERR_BLOCK, QIOChannel
from qiochan.errors import TLSError
from qiochan.watch import Condition
from qiochan_tls import QIOChannelTLS
from qiochan_tls.layer import load_creds

TIMEOUT = 20.0
OPENSSL = shutil.which("openssl")
GNUTLS_CLI = shutil.which("gnutls-cli")
SOCAT = shutil.which("socat")
LIBGNUTLS = ctypes.util.find_library("gnutls")

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
needs_gnutls_cli = pytest.mark.skipif(GNUTLS_CLI is None, reason="gnutls-bin is not installed")
needs_socat = pytest.mark.skipif(SOCAT is None, reason="socat is not installed")
needs_libgnutls = pytest.mark.skipif(LIBGNUTLS is None, reason="libgnutls is not installed")


def files(directory: Path) -> dict[str, str]:
    return {
        name: str(directory / f"{name}.pem")
        for name in ("ca-cert", "server-cert", "server-key", "client-cert", "client-key")
    }


class Collector:
    """Reads a subprocess pipe in a thread until EOF (so the child never blocks on it)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._fd = stream.fileno()
        self._data = bytearray()
        self._changed = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            chunk = os.read(self._fd, 65536)
            with self._changed:
                if not chunk:
                    self._done = True
                else:
                    self._data += chunk
                self._changed.notify_all()
            if not chunk:
                return

    def wait_for(self, pattern: bytes, what: str) -> re.Match[bytes]:
        """Wait until ``pattern`` appears; fail after :data:`TIMEOUT`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + TIMEOUT
        with self._changed:
            while True:
                match = regex.search(self._data)
                if match:
                    return match
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    raise AssertionError(
                        f"{what}: {pattern!r} never came; got {bytes(self._data)!r}"
                    )
                self._changed.wait(left)

    def wait_size(self, size: int, what: str) -> bytes:
        """Wait until ``size`` bytes came; fail after :data:`TIMEOUT`."""
        deadline = time.monotonic() + TIMEOUT
        with self._changed:
            while len(self._data) < size:
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    raise AssertionError(f"{what}: got {len(self._data)} of {size} bytes")
                self._changed.wait(left)
            return bytes(self._data)

    def finish(self) -> bytes:
        """Wait for EOF (bounded) and return everything read."""
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the subprocess kept its output open"
        return bytes(self._data)


@dataclass
class Peer:
    """A running peer: the process and collectors of its stdout and stderr."""

    proc: subprocess.Popen[bytes]
    out: Collector
    err: Collector

    @property
    def stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None
        return self.proc.stdin


@contextmanager
def spawn(args: Sequence[str]) -> Iterator[Peer]:
    """Start ``args`` with piped stdio; always kill it, reap it and drain its pipes."""
    proc = subprocess.Popen(
        list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    peer = Peer(proc, Collector(proc.stdout), Collector(proc.stderr))
    try:
        yield peer
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)
        peer.out.finish()
        peer.err.finish()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def read_exactly(channel: QIOChannel, size: int) -> bytes:
    """Read ``size`` bytes, failing after :data:`TIMEOUT` instead of hanging."""
    channel.set_blocking(False)
    data = bytearray(size)
    view = memoryview(data)
    done = 0
    deadline = time.monotonic() + TIMEOUT
    while done < size:
        n = channel.read(view[done:])
        if n == ERR_BLOCK:
            channel.wait(Condition.IN, timeout=max(0.0, deadline - time.monotonic()))
            continue
        assert n > 0, f"EOF after {done} of {size} bytes"
        done += n
    channel.set_blocking(True)
    return bytes(data)


def read_to_eof(channel: QIOChannel) -> bytes:
    """Read until EOF (errors propagate), bounded by :data:`TIMEOUT`."""
    channel.set_blocking(False)
    received = bytearray()
    chunk = bytearray(1 << 20)
    deadline = time.monotonic() + TIMEOUT
    while True:
        n = channel.read(chunk)
        if n == 0:
            return bytes(received)
        if n == ERR_BLOCK:
            channel.wait(Condition.IN, timeout=max(0.0, deadline - time.monotonic()))
            continue
        received += chunk[:n]


def accept_bounded(listener: qiochan.Listener) -> QIOChannelTLS:
    """accept(), once the listening socket is readable (bounded)."""
    listener.sioc[0].wait(Condition.IN, timeout=TIMEOUT)  # type: ignore[attr-defined]
    channel = listener.accept()
    assert isinstance(channel, QIOChannelTLS)
    return channel


def connect_tls(port: int, tls_creds_dir: Path) -> QIOChannelTLS:
    """Our TLS client over loopback TCP, through the layer spec."""
    address = f"tcp:127.0.0.1:{port}"
    channel = qiochan.connect(address, layers=[f"tls:creds={tls_creds_dir},hostname=localhost"])
    assert isinstance(channel, QIOChannelTLS)
    return channel


PAYLOAD = os.urandom(300_000)
REPLY = os.urandom(200_000)
# s_server takes a letter at the start of what it reads from stdin as a command
# (``P`` even writes clear text to the socket): its reply has no ASCII letters
LETTERLESS_REPLY = bytes(byte for byte in REPLY if not chr(byte).isalpha() or byte > 127)


@pytest.fixture
def server_listener(tls_creds_dir: Path) -> Iterator[qiochan.Listener]:
    listener = qiochan.listen("tcp:127.0.0.1:0", layers=[f"tls:creds={tls_creds_dir}"])
    yield listener
    listener.close()


@needs_openssl
@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_openssl_s_client_to_our_server(
    tls_creds_dir: Path, server_listener: qiochan.Listener, version: str, no_fd_leak: None
) -> None:
    paths = files(tls_creds_dir)
    port = server_listener.address.port
    args = [OPENSSL or "openssl", "s_client", "-quiet", "-nocommands", version]
    args += ["-connect", f"127.0.0.1:{port}", "-CAfile", paths["ca-cert"]]
    args += ["-cert", paths["client-cert"], "-key", paths["client-key"]]
    args += ["-verify_return_error", "-verify_hostname", "localhost"]
    with spawn(args) as peer:
        with accept_bounded(server_listener) as channel:
            assert channel.version() == ("TLSv1.3" if version == "-tls1_3" else "TLSv1.2")
            assert channel.peer_dn() == "C=UK,O=Example,CN=client"
            peer.stdin.write(PAYLOAD)
            peer.stdin.close()
            assert read_exactly(channel, len(PAYLOAD)) == PAYLOAD
            channel.write_all(REPLY)
            channel.bye()  # s_client leaves on our close_notify
            assert peer.proc.wait(TIMEOUT) == 0
        assert peer.out.finish() == REPLY


@needs_openssl
def test_our_client_to_openssl_s_server(tls_creds_dir: Path, no_fd_leak: None) -> None:
    paths = files(tls_creds_dir)
    args = [OPENSSL or "openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept", "1"]
    args += ["-cert", paths["server-cert"], "-key", paths["server-key"]]
    args += ["-CAfile", paths["ca-cert"], "-Verify", "1", "-verify_return_error"]
    with spawn(args) as peer:
        port = int(peer.out.wait_for(rb"ACCEPT 127\.0\.0\.1:(\d+)", "s_server").group(1))
        with connect_tls(port, tls_creds_dir) as tls:
            assert tls.peer_dn() == "C=UK,O=Example,CN=localhost"
            tls.write_all(PAYLOAD)
            peer.out.wait_for(re.escape(PAYLOAD), "s_server's copy of our payload")
            peer.stdin.write(LETTERLESS_REPLY)
            peer.stdin.flush()
            assert read_exactly(tls, len(LETTERLESS_REPLY)) == LETTERLESS_REPLY
            tls.bye()
        assert peer.proc.wait(TIMEOUT) == 0  # -naccept 1: it ends with our session
        assert PAYLOAD in peer.out.finish()


@needs_gnutls_cli
def test_gnutls_cli_to_our_server(
    tls_creds_dir: Path, server_listener: qiochan.Listener, no_fd_leak: None
) -> None:
    paths = files(tls_creds_dir)
    args = [GNUTLS_CLI or "gnutls-cli", "--logfile=/dev/null", "--x509cafile", paths["ca-cert"]]
    args += ["--x509certfile", paths["client-cert"], "--x509keyfile", paths["client-key"]]
    args += ["-p", str(server_listener.address.port), "127.0.0.1"]
    with spawn(args) as peer:
        with accept_bounded(server_listener) as channel:
            peer.stdin.write(PAYLOAD)
            peer.stdin.flush()
            assert read_exactly(channel, len(PAYLOAD)) == PAYLOAD
            channel.write_all(REPLY)
            assert peer.out.wait_size(len(REPLY), "gnutls-cli's output") == REPLY
            peer.stdin.close()  # gnutls-cli says goodbye with close_notify: a clean EOF
            assert read_to_eof(channel) == b""
        assert peer.proc.wait(TIMEOUT) == 0
        assert peer.out.finish() == REPLY


@needs_socat
def test_socat_openssl_client_to_our_server(
    tls_creds_dir: Path, server_listener: qiochan.Listener, no_fd_leak: None
) -> None:
    paths = files(tls_creds_dir)
    target = (
        f"OPENSSL:127.0.0.1:{server_listener.address.port},cafile={paths['ca-cert']},"
        f"cert={paths['client-cert']},key={paths['client-key']},commonname=localhost"
    )
    with spawn([SOCAT or "socat", "-t", str(TIMEOUT), "-", target]) as peer:
        with accept_bounded(server_listener) as channel:
            peer.stdin.write(PAYLOAD)
            peer.stdin.close()  # socat half-closes the TLS session: close_notify
            assert read_to_eof(channel) == PAYLOAD
            channel.write_all(REPLY)
            channel.bye()
            assert peer.proc.wait(TIMEOUT) == 0
        assert peer.out.finish() == REPLY


@needs_socat
def test_our_client_to_socat_openssl_listen(tls_creds_dir: Path, no_fd_leak: None) -> None:
    paths = files(tls_creds_dir)
    listen = (
        f"OPENSSL-LISTEN:0,bind=127.0.0.1,cert={paths['server-cert']},"
        f"key={paths['server-key']},cafile={paths['ca-cert']},verify=1"
    )
    with spawn([SOCAT or "socat", "-d", "-d", listen, "PIPE"]) as peer:
        port = int(peer.err.wait_for(rb"listening on AF=2 127\.0\.0\.1:(\d+)", "socat").group(1))
        with connect_tls(port, tls_creds_dir) as tls:
            writer = threading.Thread(target=tls.write_all, args=(PAYLOAD,))
            writer.start()
            echoed = read_exactly(tls, len(PAYLOAD))
            writer.join(TIMEOUT)
            assert echoed == PAYLOAD
            tls.shutdown(qiochan.Shutdown.WRITE)  # close_notify, then socat ends the echo
            assert read_to_eof(tls) == b""  # socat's close_notify: a clean EOF
        assert peer.proc.wait(TIMEOUT) == 0


# libgnutls through ctypes, as QEMU's migration source uses it
_GNUTLS_BARE_CLIENT = r"""
import ctypes, socket, sys

host, port, hostname, ca, cert, key, payload_path, library = sys.argv[1:9]
lib = ctypes.CDLL(library)
lib.gnutls_strerror.restype = ctypes.c_char_p
lib.gnutls_record_send.restype = ctypes.c_ssize_t
lib.gnutls_record_send.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
PEM, CLIENT, CRD_CERTIFICATE, NAME_DNS = 1, 2, 1, 1

def check(ret, what):
    if ret < 0:
        sys.exit(f"gnutls {what}: {lib.gnutls_strerror(ret).decode()}")

check(lib.gnutls_global_init(), "global_init")
cred = ctypes.c_void_p()
check(lib.gnutls_certificate_allocate_credentials(ctypes.byref(cred)), "credentials")
check(lib.gnutls_certificate_set_x509_trust_file(cred, ca.encode(), PEM), "trust file")
check(lib.gnutls_certificate_set_x509_key_file(cred, cert.encode(), key.encode(), PEM), "key")
session = ctypes.c_void_p()
check(lib.gnutls_init(ctypes.byref(session), CLIENT), "init")
check(lib.gnutls_priority_set_direct(session, b"NORMAL", None), "priority")
check(lib.gnutls_credentials_set(session, CRD_CERTIFICATE, cred), "credentials_set")
name = ctypes.create_string_buffer(hostname.encode())  # must outlive the session
check(lib.gnutls_server_name_set(session, NAME_DNS, name, len(hostname)), "server name")
lib.gnutls_session_set_verify_cert(session, name, 0)
sock = socket.create_connection((host, int(port)))
lib.gnutls_transport_set_int2(session, sock.fileno(), sock.fileno())
while True:
    ret = lib.gnutls_handshake(session)
    if ret >= 0:
        break
    if lib.gnutls_error_is_fatal(ret):
        check(ret, "handshake")
with open(payload_path, "rb") as source:
    data = source.read()
sent = 0
while sent < len(data):
    chunk = data[sent:sent + 65536]
    n = lib.gnutls_record_send(session, chunk, len(chunk))
    if n < 0:
        if lib.gnutls_error_is_fatal(int(n)):
            check(int(n), "record_send")
        continue
    sent += n
sock.close()  # never gnutls_bye(), never read: the session tickets stay unread
print(sent)
"""


@needs_libgnutls
@pytest.mark.parametrize("allow_unclean_eof", [True, False])
def test_gnutls_bare_close_client_delivers_every_byte(
    tls_creds_dir: Path, tmp_path: Path, allow_unclean_eof: bool, no_fd_leak: None
) -> None:
    """QEMU's migration source ends with a bare TCP close: no byte may be lost.

    The server sends no TLS 1.3 session ticket by default: an unread ticket in
    the client's socket would turn its close into a reset that discards the
    tail of the stream still queued on its side.
    """
    assert load_creds(tls_creds_dir, "server").ssl_context().num_tickets == 0
    payload = os.urandom(8 << 20)
    payload_path = tmp_path / "stream.bin"
    payload_path.write_bytes(payload)
    paths = files(tls_creds_dir)
    option = "on" if allow_unclean_eof else "off"
    layer = f"tls:creds={tls_creds_dir},allow-unclean-eof={option}"
    with qiochan.listen("tcp:127.0.0.1:0", layers=[layer]) as listener:
        args = [sys.executable, "-c", _GNUTLS_BARE_CLIENT, "127.0.0.1"]
        args += [str(listener.address.port), "localhost", paths["ca-cert"]]
        args += [paths["client-cert"], paths["client-key"], str(payload_path), LIBGNUTLS or ""]
        with spawn(args) as peer, accept_bounded(listener) as channel:
            if allow_unclean_eof:
                received = read_to_eof(channel)
            else:
                received = read_exactly(channel, len(payload))
                with pytest.raises(TLSError, match="without a TLS close_notify"):
                    read_to_eof(channel)
            assert peer.proc.wait(TIMEOUT) == 0, peer.err.finish().decode()
            assert int(peer.out.finish()) == len(payload)
    assert len(received) == len(payload)
    assert received == payload
