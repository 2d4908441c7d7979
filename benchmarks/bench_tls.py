"""TLS channel throughput and handshake rate, as ratios against ``ssl.SSLSocket``.

Run: ``python benchmarks/bench_tls.py [--mib N] [--repeat N] [--handshakes N]``

Each row does the same work with :class:`QIOChannelTLS` over a socket channel
(``ssl.SSLObject`` between memory BIOs) and with ``ssl.SSLSocket`` on a plain
socket, using the very same :class:`ssl.SSLContext` objects, interleaved in the
same run; the ratio is SSLSocket time / qiochan time (1.0 = as fast).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import (
    KIB,
    MIB,
    Comparison,
    compare,
    in_thread,
    print_table,
    recv_exactly,
    tcp_pair,
    volume_parser,
)

from qiochan_socket import QIOChannelSocket
from qiochan_tls import QIOChannelTLS, TLSCredsX509
from qiochan_tls.certs import create_creds_dir

Pair = tuple[socket.socket, socket.socket]


class Contexts:
    """The server and client contexts both sides use."""

    def __init__(self, directory: Path) -> None:
        self.server_creds = TLSCredsX509(directory, "server")
        self.client_creds = TLSCredsX509(directory, "client")
        self.server = self.server_creds.ssl_context()
        self.client = self.client_creds.ssl_context()


def sslsocket_pair(
    contexts: Contexts, make: Callable[[], Pair]
) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """Return ``(client, server)`` SSLSockets with their handshakes done."""
    client_sock, server_sock = make()
    server = contexts.server.wrap_socket(
        server_sock, server_side=True, do_handshake_on_connect=False
    )
    client = contexts.client.wrap_socket(
        client_sock, server_hostname="localhost", do_handshake_on_connect=False
    )
    join = in_thread(client.do_handshake)
    server.do_handshake()
    join()
    return client, server


def qiochan_pair(
    contexts: Contexts, make: Callable[[], Pair]
) -> tuple[QIOChannelTLS, QIOChannelTLS]:
    """Return ``(client, server)`` TLS channels over socket channels, handshakes done."""
    client_sock, server_sock = make()
    server = QIOChannelTLS.new_server(
        QIOChannelSocket.from_socket(server_sock), contexts.server_creds
    )
    client = QIOChannelTLS.new_client(
        QIOChannelSocket.from_socket(client_sock), contexts.client_creds, "localhost"
    )
    join = in_thread(client.handshake)
    server.handshake()
    join()
    return client, server


def bench_stream(contexts: Contexts, write_size: int, total: int, repeat: int) -> Comparison:
    """Client writes ``total`` bytes in ``write_size`` writes over TCP; server reads them."""
    raw_client, raw_server = sslsocket_pair(contexts, tcp_pair)
    ours_client, ours_server = qiochan_pair(contexts, tcp_pair)
    chunk = bytes(range(256)) * (write_size // 256)
    buf = bytearray(write_size)
    view = memoryview(buf)
    count = total // write_size

    def raw() -> None:
        def send() -> None:
            for _ in range(count):
                raw_client.sendall(chunk)

        join = in_thread(send)
        for _ in range(count):
            recv_exactly(raw_server, view)
        join()

    def ours() -> None:
        def send() -> None:
            for _ in range(count):
                ours_client.write_all(chunk)

        join = in_thread(send)
        for _ in range(count):
            ours_server.read_all(buf)
        join()

    name = f"TLS {write_size // KIB} KiB writes (TCP)"
    try:
        target = 0.85 if write_size == MIB else None
        return compare(name, ours, raw, repeat=repeat, target=target, work_bytes=count * write_size)
    finally:
        for closable in (raw_client, raw_server, ours_client, ours_server):
            closable.close()


def bench_handshakes(contexts: Contexts, handshakes: int, repeat: int) -> Comparison:
    """Both ends in this process: full handshakes (TLS 1.3, ECDSA P-256, client certificate).

    Both ends' Python shares one interpreter lock here, which taxes the end
    doing more of its work in Python (ours) twice; the rows against a peer
    process (:func:`bench_server_handshakes`, :func:`bench_client_handshakes`)
    measure one end as a real deployment runs it.
    """

    def raw() -> None:
        for _ in range(handshakes):
            client, server = sslsocket_pair(contexts, tcp_pair)
            client.close()
            server.close()

    def ours() -> None:
        for _ in range(handshakes):
            client, server = qiochan_pair(contexts, tcp_pair)
            client.close()
            server.close()

    row = compare(f"handshake x{handshakes}, both ends here", ours, raw, repeat=repeat)
    row.scale(handshakes)
    return row


def _peer(directory: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_tls_peer.py")), str(directory), *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def _stop(peer: subprocess.Popen[str]) -> None:
    peer.kill()
    peer.wait()
    if peer.stdout is not None:
        peer.stdout.close()


def bench_server_handshakes(
    contexts: Contexts, directory: Path, handshakes: int, repeat: int
) -> Comparison:
    """Server handshakes per second against an ``ssl`` client in another process.

    Each round accepts a connection, runs the server handshake (ours with its
    default 10 s deadline), sends one byte and closes (ours with close_notify).
    """
    with socket.create_server(("127.0.0.1", 0), backlog=128) as listener:
        peer = _peer(directory, "client", str(listener.getsockname()[1]))
        try:

            def raw() -> None:
                for _ in range(handshakes):
                    sock, _ = listener.accept()
                    with contexts.server.wrap_socket(sock, server_side=True) as tls:
                        tls.sendall(b"x")

            def ours() -> None:
                for _ in range(handshakes):
                    sock, _ = listener.accept()
                    master = QIOChannelSocket.from_socket(sock)
                    with QIOChannelTLS.new_server(master, contexts.server_creds) as tls:
                        tls.handshake()
                        tls.write_all(b"x")

            row = compare(
                f"server handshake x{handshakes}, peer process", ours, raw, repeat=repeat,
                target=0.9,
            )  # fmt: skip
        finally:
            _stop(peer)
    row.scale(handshakes)
    return row


def bench_client_handshakes(
    contexts: Contexts, directory: Path, handshakes: int, repeat: int
) -> Comparison:
    """Client handshakes per second against an ``ssl`` server in another process.

    Each round connects, runs the client handshake, reads the server's byte
    and closes (ours with close_notify).
    """
    peer = _peer(directory, "server")
    try:
        assert peer.stdout is not None
        address = ("127.0.0.1", int(peer.stdout.readline()))
        buf = bytearray(1)

        def raw() -> None:
            for _ in range(handshakes):
                sock = socket.create_connection(address)
                with contexts.client.wrap_socket(sock, server_hostname="localhost") as tls:
                    tls.recv_into(buf)

        def ours() -> None:
            for _ in range(handshakes):
                master = QIOChannelSocket.from_socket(socket.create_connection(address))
                with QIOChannelTLS.new_client(master, contexts.client_creds, "localhost") as tls:
                    tls.handshake()
                    tls.read_all(buf)

        row = compare(
            f"client handshake x{handshakes}, peer process", ours, raw, repeat=repeat, target=0.9
        )
    finally:
        _stop(peer)
    row.scale(handshakes)
    return row


def main() -> None:
    parser = volume_parser(__doc__, repeat=7)
    parser.add_argument("--handshakes", type=int, default=100, help="handshakes per timed run")
    args = parser.parse_args()
    total = args.mib * MIB
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        create_creds_dir(directory)
        contexts = Contexts(directory)
        rows = [
            bench_stream(contexts, MIB, total, args.repeat),
            bench_stream(contexts, 64 * KIB, total, args.repeat),
            bench_stream(contexts, 4 * KIB, total // 8, args.repeat),
            bench_handshakes(contexts, args.handshakes, args.repeat),
            bench_server_handshakes(contexts, directory, args.handshakes, args.repeat),
            bench_client_handshakes(contexts, directory, args.handshakes, args.repeat),
        ]
    print_table("tls (ratio = ssl.SSLSocket time / qiochan time)", rows)
    for row in rows[-3:]:
        print(
            f"{row.name}: qiochan {1 / row.ours:,.0f}/s, "
            f"ssl.SSLSocket {1 / row.raw:,.0f}/s (ratio {row.ratio:.2f})"
        )


if __name__ == "__main__":
    main()
