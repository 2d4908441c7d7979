"""Run every benchmark in this folder, one after the other, and print their tables.

Run: ``python benchmarks/run_all.py [name ...]`` (names like ``socket``, ``tls``).
Each benchmark runs in its own interpreter so one's threads and sockets
cannot disturb the next; a failing one is reported and the rest still run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main(argv: list[str]) -> int:
    """Run the selected (default: all) ``bench_*.py`` scripts; return 1 if any failed."""
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in argv]
    failed = []
    for script in scripts:
        print(f"\n### {script.name}", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=HERE, check=False).returncode:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
