"""A default executor that fails the test when anything is sent to a worker thread."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any


class NoThreads(concurrent.futures.ThreadPoolExecutor):
    """Set it with ``loop.set_default_executor``; ``used`` names what was handed to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.used: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.used.append(getattr(fn, "__qualname__", repr(fn)))
        raise AssertionError(f"{fn!r} was sent to a worker thread")
