"""QEMUFile's cost per migrated page, in nanoseconds, for each core.

Run: ``python benchmarks/bench_page_cost.py [--pages N] [--repeat R] [--baseline REF]``

One page is QEMU's RAM record: ``put_be64(header)`` then the 4 KiB page,
written to ``/dev/null`` through a file channel (it has an fd, so the C core
writes its flushes directly; the kernel's cost is next to nothing), ending
with ``fflush``.  The table gives nanoseconds per page with ``put_buffer_async``
(zero copy) and with ``put_buffer`` (copied), best and median of ``R`` runs,
for the C core and the pure-Python core (``QIOCHAN_NO_SPEEDUPS=1``) of this
checkout.

``--baseline REF`` adds the cores of another commit (for example ``main``):
its ``qiochan`` package is exported with ``git archive``, its C core compiled
with this checkout's build hook, and measured the same way in the same run.
Every measurement runs in its own interpreter.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PAGE = 4096


def measure(pages: int, repeat: int) -> dict[str, list[float]]:
    """Time ``pages`` records per run with the QEMUFile this interpreter imports.

    Returns:
        ``{"put_buffer_async": [ns per page, ...], "put_buffer": [...]}``, one value per run.
    """
    from qiochan import QEMUFile
    from qiochan_file import QIOChannelFile

    memory = memoryview(bytes(range(256)) * (PAGE // 256) * 64)
    views = [memory[k * PAGE : (k + 1) * PAGE] for k in range(64)]
    results: dict[str, list[float]] = {"put_buffer_async": [], "put_buffer": []}
    f = QEMUFile.new_output(QIOChannelFile.new_path("/dev/null", os.O_WRONLY))
    for _ in range(repeat):
        for name, times in results.items():
            put = getattr(f, name)
            put64 = f.put_be64
            start = time.perf_counter_ns()
            for n in range(pages):
                put64(n << 12 | 0x8)
                put(views[n & 63])
            f.fflush()
            times.append((time.perf_counter_ns() - start) / pages)
    if f.fclose():
        raise RuntimeError(f"writing /dev/null failed: {f.get_error_obj()}")
    return results


def run_worker(
    pythonpath: str | None, no_speedups: bool, pages: int, repeat: int
) -> dict[str, Any]:
    """Measure in a fresh interpreter; return its results and the core it ran on."""
    env = dict(os.environ)
    env.pop("QIOCHAN_NO_SPEEDUPS", None)
    if no_speedups:
        env["QIOCHAN_NO_SPEEDUPS"] = "1"
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, __file__, "--worker", "--pages", str(pages)]
    command += ["--repeat", str(repeat)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def export_baseline(ref: str, directory: Path) -> str:
    """Export ``ref``'s qiochan package into ``directory`` and build its C core there.

    Returns:
        The directory to put first on ``PYTHONPATH``.
    Raises:
        subprocess.CalledProcessError: ``git archive`` failed (unknown ref).
    """
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "qiochan"], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(directory, filter="data")
    spec = importlib.util.spec_from_file_location("qiochan_hatch_build", ROOT / "hatch_build.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    hook.compile_extension(directory, directory / "build", inplace=True)
    return str(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--baseline", metavar="REF", help="also measure this commit's cores")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        from qiochan.qemufile import ACCELERATED

        print(json.dumps({"accelerated": ACCELERATED, **measure(args.pages, args.repeat)}))
        return 0

    with tempfile.TemporaryDirectory(prefix="qiochan-baseline-") as tmp:
        sources: list[tuple[str, str | None]] = [("this checkout", None)]
        if args.baseline:
            sources.append((args.baseline, export_baseline(args.baseline, Path(tmp))))
        print(f"== ns per page: be64 header + {PAGE}-byte page to /dev/null ({args.pages} pages)")
        print(f"{'core':<32} {'async best':>11} {'median':>8} {'copy best':>10} {'median':>8}")
        for label, path in sources:
            for no_speedups in (False, True):
                result = run_worker(path, no_speedups, args.pages, args.repeat)
                core = "C" if result["accelerated"] else "pure Python"
                row = f"{label + ', ' + core:<32}"
                for name in ("put_buffer_async", "put_buffer"):
                    values: list[float] = result[name]
                    row += f" {min(values):>10.0f} {statistics.median(values):>8.0f}"
                print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
