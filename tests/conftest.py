"""Shared fixtures: fd-leak accounting and an asyncio loop per test."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def open_fds() -> set[int]:
    """Return the fds open in this process now."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


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
