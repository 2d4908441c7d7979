"""A child process for the demo's "TLS over a command pipe" chain.

``python -m qiochan.cli._bridge HOST PORT`` joins its stdin and stdout to a TCP
connection: what arrives on stdin goes to the socket (stdin's end of file
becomes a half-close), what arrives from the socket goes to stdout.  The demo
runs it as an ``exec:`` transport and puts a TLS client over the pipes, so
the TLS records cross a real command pipe before reaching the TLS server.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

_CHUNK = 1 << 16


def _stdin_to_socket(sock: socket.socket) -> None:
    try:
        while data := os.read(0, _CHUNK):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        sock.shutdown(socket.SHUT_RDWR)


def _socket_to_stdout(sock: socket.socket) -> None:
    try:
        while data := sock.recv(_CHUNK):
            view = memoryview(data)
            while view:
                view = view[os.write(1, view) :]
    except OSError:
        pass
    finally:
        os.close(1)


def main(argv: list[str]) -> int:
    """Bridge stdin/stdout and ``HOST PORT``; return the exit status."""
    if len(argv) != 2:
        print("usage: python -m qiochan.cli._bridge HOST PORT", file=sys.stderr)
        return 2
    with socket.create_connection((argv[0], int(argv[1]))) as sock:
        upstream = threading.Thread(target=_stdin_to_socket, args=(sock,), daemon=True)
        upstream.start()
        _socket_to_stdout(sock)
        upstream.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
