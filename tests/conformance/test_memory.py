"""The conformance kit over the memory backends and the in-test pipe channel."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from qiochan.testing import ONE_WAY_CHECKS, TWO_WAY_CHECKS, run_check
from qiochan_memory import memory_pipe
from tests.helpers.pipechannel import pipe_pair


@pytest.mark.parametrize("name", list(TWO_WAY_CHECKS))
def test_memory_pipe_conforms(name: str, no_fd_leak: None) -> None:
    run_check(name, memory_pipe)


def test_small_memory_pipe_conforms() -> None:
    """A tiny capacity forces most writes through ERR_BLOCK and wait()."""
    factory: Callable[[], tuple[object, object]] = lambda: memory_pipe(capacity=997)  # noqa: E731
    for name in ("transfer_blocking", "transfer_nonblocking", "async_transfer", "full_duplex"):
        assert run_check(name, factory) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(ONE_WAY_CHECKS))
def test_pipe_channel_conforms(name: str, no_fd_leak: None) -> None:
    reason = run_check(name, pipe_pair, two_way=False)
    if name in ("shutdown_write", "shutdown_read_wakes_reader", "fd_passing"):
        assert reason is not None, f"{name} should not apply to a plain pipe"
    else:
        assert reason is None


def test_pytest_plugin_fixture(qiochan_conformance: Callable[..., None]) -> None:
    """The pytest11 fixture runs each check as its own item."""
    qiochan_conformance(memory_pipe)
