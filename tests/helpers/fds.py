"""File-descriptor accounting for leak checks, and running out of fds on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
from collections.abc import Callable, Iterator
from typing import Any

import pytest


def open_fds() -> set[int]:
    """Return the fds open in this process now."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


@contextlib.contextmanager
def no_free_fds() -> Iterator[None]:
    """Lower ``RLIMIT_NOFILE`` to the lowest free fd: meanwhile ``accept()`` gets EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def record_accepts(
    monkeypatch: pytest.MonkeyPatch, listening: Any, clock: Callable[[], float]
) -> list[float]:
    """Make ``listening.accept()`` record the ``clock()`` of each call; return the record."""
    attempts: list[float] = []
    real_accept = listening.accept

    def recording_accept() -> Any:
        attempts.append(clock())
        return real_accept()

    monkeypatch.setattr(listening, "accept", recording_accept)
    return attempts


async def assert_accept_backs_off(attempts: list[float], delay: float) -> None:
    """Wait for a first recorded ``accept()``, then 0.2 s; fail if it was retried more often
    than once per ``delay`` seconds (a listener spinning on EMFILE retries every loop turn).

    ``attempts`` is what :func:`record_accepts` returned, recording the running loop's time.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not attempts:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    spent = loop.time() - started
    assert len(attempts) <= 2 + spent / delay, attempts
