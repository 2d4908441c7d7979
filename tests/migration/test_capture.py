"""A real QEMU 7.2 capture cut at every 4 KiB boundary, and with flipped bytes.

Documented outcomes: a report with ``complete`` True (the damage hit bytes the
format does not check, e.g. page contents), or ``complete`` False with an
error ``offset N: expected ...`` / ``offset N: the stream ends inside ...``
where N is the cut (for a cut) and never before the record holding a
flipped byte.  Never an exception, never a hang.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from qiochan.migration import inspect_path
from tests.helpers.migration import inspect_bytes
from tests.helpers.qemu import qemu_vm

CUT_STEP = 4096
OUTCOME = re.compile(r"^offset (\d+): (expected |the stream ends inside )")


@pytest.fixture(scope="module")
def capture(qemu: str, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The stream of a paused 16 MiB guest (about 150 KiB: mostly zero pages and devices)."""
    workdir = tmp_path_factory.mktemp("capture")
    target = workdir / "paused.mig"
    with qemu_vm(qemu, workdir, "capture", ram_mib=16) as vm:
        vm.qmp.command("migrate", uri=f"exec:cat > {target}")
        assert vm.qmp.wait_migration() == "completed", vm.log.read_text()
    return target.read_bytes()


def test_the_capture_is_complete(capture: bytes, tmp_path: Path) -> None:
    path = tmp_path / "whole.mig"
    path.write_bytes(capture)
    for report in (inspect_bytes(capture), inspect_path(path)):
        assert report.complete, report.error
        assert report.size == len(capture)
        assert report.vmdesc is not None and report.vmdesc.mismatches == []


@pytest.mark.timeout(120)
def test_cut_at_every_4k_boundary(capture: bytes, tmp_path: Path) -> None:
    eof = capture.rindex(b"\x00\x06")
    path = tmp_path / "cut.mig"
    for cut in range(0, len(capture), CUT_STEP):
        path.write_bytes(capture[:cut])
        # a cut file has no description at its end: both ways walk it the same
        for report in (inspect_bytes(capture[:cut]), inspect_path(path)):
            assert report.size == cut
            if cut > eof:
                assert report.complete
                continue
            assert not report.complete, cut
            assert report.error is not None
            assert report.error.startswith(f"offset {cut}: the stream ends inside "), report.error


@pytest.mark.timeout(120)
def test_flipped_bytes(capture: bytes) -> None:
    rng = random.Random(16)
    positions = sorted(rng.sample(range(len(capture)), 400))
    for position in positions:
        damaged = bytearray(capture)
        damaged[position] ^= 1 << rng.randrange(8)
        report = inspect_bytes(bytes(damaged))
        assert report.size <= len(damaged)
        if report.complete:
            assert report.error is None
            continue
        assert report.error is not None
        match = OUTCOME.match(report.error)
        assert match, (position, report.error)
        assert int(match.group(1)) >= position - 300, (position, report.error)


@pytest.mark.timeout(120)
def test_flipped_bytes_in_a_file_delimited_by_its_description(
    capture: bytes, tmp_path: Path
) -> None:
    """The description read first may itself be damaged: still only documented outcomes."""
    rng = random.Random(61)
    path = tmp_path / "flipped.mig"
    tail = range(capture.rindex(b"\x00\x06") - 4000, len(capture))
    for position in sorted(rng.sample(range(len(capture)), 60) + rng.sample(tail, 60)):
        damaged = bytearray(capture)
        damaged[position] ^= 1 << rng.randrange(8)
        path.write_bytes(damaged)
        report = inspect_path(path)
        assert report.size <= len(damaged)
        assert report.complete or OUTCOME.match(report.error or ""), (position, report.error)
