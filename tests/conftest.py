"""Shared fixtures: fd-leak accounting, an asyncio loop per test, QEMUFile's two cores."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from qiochan.qemufile._core import ACCELERATED
from tests.helpers.fds import open_fds

#: The QEMUFile core this run tests: QEMUFile is built on one core per process.
QEMUFILE_CORE = "c" if ACCELERATED else "python"


def pytest_report_header() -> str:
    """Say which QEMUFile core this run tests."""
    if ACCELERATED:
        return (
            "qiochan QEMUFile core: C (qiochan.qemufile._speedups); "
            "QIOCHAN_NO_SPEEDUPS=1 runs the pure-Python one"
        )
    return "qiochan QEMUFile core: pure Python (QIOCHAN_NO_SPEEDUPS set, or the C one not built)"


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


@pytest.fixture
def qemufile_core() -> str:
    """Return the QEMUFile core the test runs on: ``"c"`` or ``"python"``.

    QEMUFile is built on one core per process: the C one when it was built,
    the pure-Python one with ``QIOCHAN_NO_SPEEDUPS=1`` (CI runs the QEMUFile
    suite both ways).  ``tests/qemufile/test_core.py`` compares the two cores
    side by side in one process.
    """
    return QEMUFILE_CORE


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
