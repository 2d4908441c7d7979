"""Shared pieces of the asyncio tests: loops of each kind, a bounded runner, probes."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
#: Runs a coroutine function on a fresh loop and returns what it returns.
Runner = Callable[[Callable[[], Awaitable[T]]], T]


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop factory of ``kind`` (``"asyncio"`` or ``"uvloop"``; skips without uvloop)."""
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


def warm_loop(kind: str) -> None:
    """Run a loop of ``kind`` once: uvloop makes its process-wide fds (signal pipe) then.

    Call it before fds are counted, so they do not look leaked.
    """
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        runner.run(asyncio.sleep(0))


def bounded_runner(kind: str, seconds: float) -> Runner[Any]:
    """A :data:`Runner` on fresh loops of ``kind``; a coroutine running over ``seconds`` fails."""
    factory = loop_factory(kind)

    def runner(main: Callable[[], Awaitable[T]]) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(main(), seconds)

        with asyncio.Runner(loop_factory=factory) as loop_runner:
            return loop_runner.run(bounded())

    return runner


class NoThreads(concurrent.futures.ThreadPoolExecutor):
    """A default executor (``loop.set_default_executor``) that fails what is sent to a thread.

    ``used`` names what was handed to it.
    """

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.used: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.used.append(getattr(fn, "__qualname__", repr(fn)))
        raise AssertionError(f"{fn!r} was sent to a worker thread")


class Ends(asyncio.Protocol):
    """A protocol recording how its connection ended: ``lost`` and the future ``ended``."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.lost: list[Exception | None] = []
        self.ended = (loop or asyncio.get_running_loop()).create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)
        if not self.ended.get_loop().is_closed():
            self.ended.set_result(None)
