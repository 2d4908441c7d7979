"""Command channel throughput through ``cat``, as a ratio against a raw ``subprocess`` pipe.

Run: ``python benchmarks/bench_command.py [--mib N] [--repeat N]``

Both sides start a fresh ``cat``, push the same megabytes through it in 1 MiB
writes from a thread while the main thread reads them back, then close their
end and reap the child; the ratio is raw time / qiochan time (1.0 = as fast
as the raw pipe).  The raw side is what a careful Python programmer writes:
``subprocess.Popen(stdin=PIPE, stdout=PIPE, bufsize=0)``, ``os.write`` loops
and ``readinto`` loops.
"""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).parent))

from _common import MIB, Comparison, compare, print_table, volume_parser

from qiochan.channel import Shutdown
from qiochan_command import QIOChannelCommand


def _raw_write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _grow_pipe(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, MIB)


def bench_cat(total: int, repeat: int, *, big_raw_pipes: bool) -> Comparison:
    """1 MiB chunks through ``cat``: QIOChannelCommand vs subprocess pipes.

    QIOChannelCommand asks for 1 MiB pipes; with ``big_raw_pipes`` the raw side
    does the same, so the row compares the code and not the pipe size.
    """
    chunk = memoryview(bytes(MIB))
    buf = bytearray(MIB)
    view = memoryview(buf)
    count = total // MIB

    def raw() -> None:
        proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        assert proc.stdin is not None and proc.stdout is not None
        stdin_fd = proc.stdin.fileno()
        stdout = cast(io.RawIOBase, proc.stdout)
        if big_raw_pipes:
            _grow_pipe(stdin_fd)
            _grow_pipe(stdout.fileno())

        def send() -> None:
            for _ in range(count):
                _raw_write_all(stdin_fd, chunk)
            assert proc.stdin is not None
            proc.stdin.close()

        writer = threading.Thread(target=send)
        writer.start()
        readinto = stdout.readinto
        for _ in range(count):
            done = 0
            while done < MIB:
                n = readinto(view[done:])
                if not n:
                    raise EOFError("cat stopped early")
                done += n
        writer.join()
        proc.stdout.close()
        proc.wait()

    def ours() -> None:
        channel = QIOChannelCommand.new_spawn(["cat"])

        def send() -> None:
            for _ in range(count):
                channel.write_all(chunk)
            channel.shutdown(Shutdown.WRITE)

        writer = threading.Thread(target=send)
        writer.start()
        for _ in range(count):
            channel.read_all(buf)
        writer.join()
        channel.close()

    pipes = "1 MiB pipes both" if big_raw_pipes else "raw default pipes"
    return compare(
        f"cat, 1 MiB chunks ({pipes})",
        ours,
        raw,
        repeat=repeat,
        target=0.90,
        work_bytes=count * MIB,
        use_median=True,
    )


def main() -> None:
    parser = volume_parser(__doc__, repeat=11)
    args = parser.parse_args()
    total = args.mib * MIB
    rows = [
        bench_cat(total, args.repeat, big_raw_pipes=False),
        bench_cat(total, args.repeat, big_raw_pipes=True),
    ]
    print_table("qiochan command vs raw subprocess pipes (target on the median)", rows)


if __name__ == "__main__":
    main()
