"""Inspection speed: ``qiochan.migration.inspect_path`` on a 1 GiB random-RAM migration stream.

Run: ``python benchmarks/bench_inspect.py [--gib 1] [--file PATH] [--synthetic]
[--analyze-migration SCRIPT] [--repeat 3]``

The stream is, by default, captured from a real QEMU: a paused TCG guest
whose RAM is a file of random bytes (``memory-backend-file``) migrates to
``exec:cat > FILE``, so nearly every page is a normal 4 KiB page.  With
``--synthetic`` (or without QEMU) the same shape is written with
:class:`~qiochan.migration.SavevmWriter` over QEMUFile instead: RAM setup, one
normal page record per page of random bytes, EOS, device sections, EOF and a
device description.  ``--file`` inspects an existing capture.

Rows:

- ``inspect_path`` in GB/s (target: at least 1 GB/s), with the time of
  reading the same file with ``readinto`` into one 32 KiB buffer (raw Python
  I/O, the floor of any reader) and their ratio;
- with ``--analyze-migration SCRIPT`` (QEMU's ``scripts/analyze-migration.py``),
  that script's time on the same file, run once (it reads the whole file).

The file is read from the page cache: it is read once before timing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _common import Comparison, compare, print_table

from qiochan import QEMUFile
from qiochan.migration import SavevmWriter, inspect_path
from qiochan.qemufile import ACCELERATED
from qiochan.transport import open_channel

GIB = 1 << 30
PAGE = 4096


def capture_qemu(workdir: Path, size: int) -> Path | None:
    """Capture a real migration of a paused guest with ``size`` bytes of random RAM."""
    from tests.helpers.qemu import find_qemu, qemu_vm

    qemu = find_qemu()
    if qemu is None:
        return None
    ram = workdir / "ram.bin"
    with open(ram, "wb") as out:
        for _ in range(size // (16 << 20)):
            out.write(os.urandom(16 << 20))
    target = workdir / "random.mig"
    extra = [
        "-object", f"memory-backend-file,id=ram0,size={size},mem-path={ram},share=on",
        "-machine", "memory-backend=ram0",
    ]  # fmt: skip
    with qemu_vm(qemu, workdir, "bench", extra, ram_mib=size >> 20) as vm:
        vm.qmp.command("migrate-set-parameters", **{"max-bandwidth": 8 << 30})
        vm.qmp.command("migrate", uri=f"exec:cat > {target}")
        status = vm.qmp.wait_migration()
    ram.unlink()
    return target if status == "completed" else None


def write_synthetic(path: Path, size: int) -> Path:
    """Write a stream of the same shape as the capture, with QEMUFile."""
    page = memoryview(bytearray(os.urandom(PAGE)))
    channel = open_channel(f"file:{path}", "w")
    with QEMUFile.new_output(channel) as f:
        w = SavevmWriter(f)
        w.header()
        ram = w.section_start("ram", version=4)
        w.ram_setup({"pc.ram": size})
        w.ram_eos()
        w.footer(ram)
        w.section_part(ram, end=True)
        for offset in range(0, size, PAGE):
            w.ram_page("pc.ram", offset, page)
        w.ram_eos()
        w.footer(ram)
        devices = []
        for n in range(30):
            data = os.urandom(64 + n * 16)
            w.device(f"device{n}", data)
            devices.append(
                {
                    "name": f"device{n}",
                    "instance_id": 0,
                    "fields": [{"name": "data", "type": "buffer", "size": len(data)}],
                }
            )
        w.eof({"page_size": PAGE, "devices": devices})
    return path


def read_raw(path: Path) -> None:
    buf = bytearray(32768)
    with open(path, "rb", buffering=0) as file:
        while file.readinto(buf):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="guest RAM in GiB (default 1)")
    parser.add_argument("--file", type=Path, help="inspect this capture instead")
    parser.add_argument("--synthetic", action="store_true", help="write the stream, no QEMU")
    parser.add_argument("--analyze-migration", type=Path, metavar="SCRIPT")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-inspect-") as tmp:
        workdir = Path(tmp)
        size = int(args.gib * GIB)
        path, origin = args.file, "given file"
        if path is None and not args.synthetic:
            path, origin = capture_qemu(workdir, size), "captured from QEMU"
        if path is None:
            path = write_synthetic(workdir / "synthetic.mig", size)
            origin = "synthetic (SavevmWriter over QEMUFile)"
        nbytes = path.stat().st_size
        read_raw(path)  # into the page cache
        report = inspect_path(path)
        assert report.complete, report.error
        normal = report.ram.total("normal_pages")
        rows: list[Comparison] = [
            compare(
                "inspect_path vs readinto 32 KiB",
                ours=lambda: inspect_path(path),
                raw=lambda: read_raw(path),
                repeat=args.repeat,
                work_bytes=nbytes,
            )
        ]
        core = "C" if ACCELERATED else "pure Python"
        print_table(
            f"inspect: {nbytes / GIB:.2f} GiB stream, {normal} normal pages, {origin}, "
            f"QEMUFile core {core}",
            rows,
        )
        best = rows[0].ours
        print(f"inspect_path: {nbytes / best / 1e9:.2f} GB/s (target >= 1 GB/s)")
        if args.analyze_migration is not None:
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, str(args.analyze_migration), "-f", str(path)],
                capture_output=True,
                check=False,
            )
            seconds = time.perf_counter() - start
            state = "ok" if done.returncode == 0 else f"exit {done.returncode}"
            print(
                f"analyze-migration.py: {seconds:.2f} s, {nbytes / seconds / 1e9:.3f} GB/s "
                f"({state}); inspect_path is {seconds / best:.0f}x faster"
            )


if __name__ == "__main__":
    main()
