"""Core overheads: import time, plugin discovery, and the cost of one channel call.

Run: ``python benchmarks/bench_core.py``.  Import times are medians of fresh
interpreters (``python -X importtime`` is not used: it adds its own cost);
the per-call overhead is measured against a bare Python method call and a
raw ``os.write`` in the same run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

from _common import compare, print_table

from qiochan_memory import QIOChannelNull

RUNS = 15


def _interpreter_seconds(code: str) -> float:
    """Median wall time of ``python -c code`` measured inside the child."""
    probe = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    samples = [
        float(
            subprocess.run(
                [sys.executable, "-c", probe], check=True, capture_output=True, text=True
            ).stdout
        )
        for _ in range(RUNS)
    ]
    return statistics.median(samples)


class Bare:
    """The baseline: a plain method doing the least a write could."""

    def write(self, data: bytes) -> int:
        return len(data)


def main() -> None:
    import_s = _interpreter_seconds("import qiochan")
    backends_s = _interpreter_seconds("import qiochan; qiochan.backends()")
    print(f"import qiochan:                 {import_s * 1e3:.1f} ms (median of {RUNS})")
    print(f"import qiochan + backends():    {backends_s * 1e3:.1f} ms (median of {RUNS})")

    null = QIOChannelNull()
    bare = Bare()
    payload = b"x"
    loops = 200_000

    def ours() -> None:
        write = null.write
        for _ in range(loops):
            write(payload)

    def baseline() -> None:
        write = bare.write
        for _ in range(loops):
            write(payload)

    read_fd, write_fd = os.open("/dev/null", os.O_RDONLY), os.open("/dev/null", os.O_WRONLY)

    def raw_os_write() -> None:
        for _ in range(loops):
            os.write(write_fd, payload)

    rows = [
        compare("QIOChannelNull.write(b'x') vs method", ours, baseline, repeat=7),
        compare("QIOChannelNull.write(b'x') vs os.write", ours, raw_os_write, repeat=7),
    ]
    print_table("core per-call overhead (per 200k calls)", rows)
    per_call = (rows[0].ours - rows[0].raw) / loops
    print(f"overhead of one write(b'x') over a bare method call: {per_call * 1e9:.0f} ns")
    os.close(read_fd)
    os.close(write_fd)
    null.close()


if __name__ == "__main__":
    main()
