"""Shared fixtures: fd-leak accounting, an asyncio loop per test, QEMUFile's two cores."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import qiochan.qemufile._io
from qiochan import QEMUFile
from qiochan.qemufile._core import ACCELERATED, python_fast_paths
from tests.helpers.fds import open_fds

#: The QEMUFile cores the QEMUFile tests run against: the C one only when it was built.
QEMUFILE_CORES = ["c", "python"] if ACCELERATED else ["python"]


def pytest_report_header() -> str:
    """Say which QEMUFile cores this run tests."""
    if ACCELERATED:
        return "qiochan QEMUFile cores: C (qiochan.qemufile._speedups) and pure Python"
    return "qiochan QEMUFile cores: pure Python only (the C speedups are not built)"


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fail the test if it leaves file descriptors open."""
    before = open_fds()
    yield
    leaked = open_fds() - before
    # the listing itself used an fd that is closed again; anything else is a leak
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"leaked fds: {sorted(leaked)} -> " + ", ".join(
        os.readlink(f"/proc/self/fd/{fd}") for fd in sorted(leaked)
    )


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh asyncio loop, closed after the test."""
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture(params=QEMUFILE_CORES)
def qemufile_core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test on each QEMUFile core: ``"c"`` as built, and ``"python"``.

    The Python fast paths are installed over the C ones on QEMUFile itself for
    the test's duration (both cores keep their state in the same attributes).
    """
    core: str = request.param
    if core == "python":
        for name, method in python_fast_paths().items():
            monkeypatch.setattr(QEMUFile, name, method)
        monkeypatch.setattr(qiochan.qemufile._io, "write_direct", None)
    return core


@pytest.fixture(scope="session")
def tls_creds_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TLS credentials directory in QEMU's layout (CA, server, client), made once per run.

    Shared by every module: tests read it and never change it.
    """
    certs = pytest.importorskip("qiochan_tls.certs")
    directory = tmp_path_factory.mktemp("tls-creds")
    certs.create_creds_dir(directory)
    return directory


@pytest.fixture(scope="session")
def qemu() -> str:
    """The QEMU binary (installed from Debian's package when missing and possible), else skip."""
    from tests.helpers.qemu import find_qemu

    binary = find_qemu()
    if binary is None:
        pytest.skip("qemu-system-x86_64 is not installed and could not be installed")
    return binary
