"""The far end of bench_tls's handshake rows: a plain ``ssl`` peer in its own process.

Run: ``python _tls_peer.py CREDS_DIR client PORT`` (connect to PORT over and
over: handshake, read one byte, close) or ``python _tls_peer.py CREDS_DIR
server`` (print the port it listens on, then accept over and over: handshake,
send one byte, close).  It runs until it is killed.  Being another process, it
never competes with the measured end for the interpreter lock, as a real peer
would not.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from qiochan_tls import TLSCredsX509


def serve(directory: Path) -> None:
    """Accept, handshake, send one byte and close, forever."""
    context = TLSCredsX509(directory, "server").ssl_context()
    with socket.create_server(("127.0.0.1", 0), backlog=128) as listener:
        print(listener.getsockname()[1], flush=True)
        while True:
            sock, _ = listener.accept()
            try:
                with context.wrap_socket(sock, server_side=True) as tls:
                    tls.sendall(b"x")
            except OSError:
                pass  # the measured client went away


def connect(directory: Path, port: int) -> None:
    """Connect, handshake, read one byte and close, forever."""
    context = TLSCredsX509(directory, "client").ssl_context()
    while True:
        sock = socket.create_connection(("127.0.0.1", port))
        try:
            with context.wrap_socket(sock, server_hostname="localhost") as tls:
                tls.recv(1)
        except OSError:
            pass  # the measured server went away


def main() -> None:
    directory = Path(sys.argv[1])
    if sys.argv[2] == "server":
        serve(directory)
    else:
        connect(directory, int(sys.argv[3]))


if __name__ == "__main__":
    main()
