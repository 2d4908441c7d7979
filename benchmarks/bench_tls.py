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
    """Full handshakes (TLS 1.3, ECDSA P-256, client certificate) over TCP loopback."""

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

    row = compare(f"handshake x{handshakes} (TCP)", ours, raw, repeat=repeat)
    row.ours /= handshakes
    row.raw /= handshakes
    return row


def main() -> None:
    parser = volume_parser(__doc__, repeat=7)
    parser.add_argument("--handshakes", type=int, default=100, help="handshakes per timed run")
    args = parser.parse_args()
    total = args.mib * MIB
    with tempfile.TemporaryDirectory() as directory:
        create_creds_dir(directory)
        contexts = Contexts(Path(directory))
        rows = [
            bench_stream(contexts, MIB, total, args.repeat),
            bench_stream(contexts, 64 * KIB, total, args.repeat),
            bench_stream(contexts, 4 * KIB, total // 8, args.repeat),
            bench_handshakes(contexts, args.handshakes, args.repeat),
        ]
    print_table("tls (ratio = ssl.SSLSocket time / qiochan time)", rows)
    hs = rows[-1]
    print(
        f"handshakes per second: qiochan {1 / hs.ours:,.0f}/s, "
        f"ssl.SSLSocket {1 / hs.raw:,.0f}/s (ratio {hs.ratio:.2f})"
    )


if __name__ == "__main__":
    main()
