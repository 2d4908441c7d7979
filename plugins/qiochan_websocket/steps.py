"""Driving a handshake written once as a step generator, three ways.

A step generator does non-blocking I/O on a channel and yields the
:class:`~qiochan.Condition` it needs before it can go on.  When the deadline
passes, :class:`TimeoutError` is thrown into it at the pending ``yield`` so it
can answer (a server sends 408) before failing; so is an error raised while
waiting (a closed channel).  The drivers:

* :func:`run_blocking` waits in this thread (``channel.wait``);
* :func:`run_on_loop` waits with watches on an asyncio loop and reports the
  outcome to a callback (used for ``handshake(complete, ...)``);
* :func:`run_async` awaits readiness (``channel.yield_``) in a coroutine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Generator

from qiochan.channel import QIOChannel
from qiochan.watch import Condition, Watch

__all__ = ["Steps", "run_async", "run_blocking", "run_on_loop"]

log = logging.getLogger("qiochan.websocket")

#: Yields the condition to wait for on the channel; returns when done.
Steps = Generator[Condition, None, None]


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def run_blocking(channel: QIOChannel, steps: Steps, timeout: float | None) -> None:
    """Run ``steps`` to the end, waiting on ``channel`` in this thread.

    Raises:
        Whatever the steps raise.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        condition = next(steps)
        while True:
            try:
                channel.wait(condition, timeout=_remaining(deadline))
            except Exception as exc:  # a timeout or a failed master: the steps decide
                condition = steps.throw(exc)
            else:
                condition = steps.send(None)
    except StopIteration:
        return


async def run_async(channel: QIOChannel, steps: Steps, timeout: float | None) -> None:
    """Run ``steps`` to the end, awaiting readiness of ``channel`` on the running loop.

    Raises:
        Whatever the steps raise.
    """
    deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
    try:
        condition = next(steps)
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    await channel.yield_(condition)
            except Exception as exc:  # a timeout or a failed master: the steps decide
                condition = steps.throw(exc)
            else:
                condition = steps.send(None)
    except StopIteration:
        return
    finally:
        steps.close()


class _LoopRun:
    """One run of a step generator on an asyncio loop, one watch at a time."""

    def __init__(
        self,
        channel: QIOChannel,
        steps: Steps,
        loop: asyncio.AbstractEventLoop,
        finish: Callable[[BaseException | None], None],
    ) -> None:
        self.channel = channel
        self.steps = steps
        self.loop = loop
        self.finish = finish
        self.watch: Watch | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.done = False

    def start(self, timeout: float | None) -> None:
        if timeout is not None:
            self.timer = self.loop.call_later(timeout, self.timed_out)
        self.advance(None)

    def advance(self, thrown: BaseException | None) -> None:
        try:
            condition = self.steps.send(None) if thrown is None else self.steps.throw(thrown)
            self.watch = self.channel.add_watch_source(condition, self.ready, context=self.loop)
        except StopIteration:
            self.end(None)
        except Exception as exc:
            self.end(exc)

    def ready(self, _channel: QIOChannel, _condition: Condition) -> bool:
        self.watch = None
        self.advance(None)
        return False

    def timed_out(self) -> None:
        self.timer = None
        if self.done:
            return
        if self.watch is not None:
            self.watch.remove()
            self.watch = None
        self.advance(TimeoutError())

    def end(self, error: BaseException | None) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.steps.close()
        self.finish(error)


def run_on_loop(
    channel: QIOChannel,
    steps: Steps,
    loop: asyncio.AbstractEventLoop,
    timeout: float | None,
    finish: Callable[[BaseException | None], None],
) -> None:
    """Run ``steps`` on ``loop`` with watches on ``channel``; then call ``finish(error)``.

    Returns at once; the first step runs on the loop (never inside this call),
    so ``finish`` always runs on the loop too.
    """
    run = _LoopRun(channel, steps, loop, finish)
    loop.call_soon_threadsafe(run.start, timeout)
