"""QIOTask: the outcome of an asynchronous operation (QEMU's ``qio_task_*``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .watch import running_loop

if TYPE_CHECKING:
    import asyncio

__all__ = ["QIOTask", "TaskFunc"]

log = logging.getLogger("qiochan.task")

#: ``complete(task, *data)``: called once the task has its result or error.
TaskFunc = Callable[..., object]


class QIOTask:
    """Carries an asynchronous operation's result or error to its completion callback.

    Args:
        source: the object the operation works on (usually a channel).
        complete: called as ``complete(task, *data)`` by :meth:`complete`.
        data: extra arguments for ``complete`` and ``notify``.
        notify: called as ``notify(*data)`` after ``complete``.
    """

    def __init__(
        self,
        source: Any,
        complete: TaskFunc,
        *data: Any,
        notify: Callable[..., object] | None = None,
    ) -> None:
        if not callable(complete):
            raise TypeError(f"complete must be callable, got {type(complete).__name__}")
        self.source = source
        self.error: BaseException | None = None
        self.result: Any = None
        self._complete = complete
        self._data = data
        self._notify = notify
        self._completed = False
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "completed" if self._completed else "pending"
        return f"<QIOTask {state} source={self.source!r} error={self.error!r}>"

    def set_error(self, exc: BaseException) -> None:
        """Record ``exc`` as the task's error; the first error wins."""
        if self.error is None:
            self.error = exc

    def set_result(self, value: Any) -> None:
        """Record the task's result."""
        self.result = value

    def propagate_error(self) -> None:
        """Raise the recorded error, if any; otherwise return None."""
        if self.error is not None:
            raise self.error

    @property
    def completed(self) -> bool:
        """True once :meth:`complete` has run."""
        return self._completed

    def complete(self) -> None:
        """Run ``complete(task, *data)`` then ``notify(*data)``; a second call does nothing."""
        if self._completed:
            return
        self._completed = True
        try:
            self._complete(self, *self._data)
        finally:
            if self._notify is not None:
                self._notify(*self._data)

    def run_in_thread(
        self,
        worker: Callable[..., Any],
        *worker_data: Any,
        context: asyncio.AbstractEventLoop | None = None,
    ) -> threading.Thread:
        """Run ``worker(task, *worker_data)`` in a new thread, then complete the task.

        An exception the worker raises becomes :attr:`error`; a value it returns
        becomes :attr:`result` (unless it set one itself).  :meth:`complete` then
        runs on ``context`` (default: the loop running now; with none, in the
        worker thread).

        Returns:
            The started thread (join it to wait without a loop).
        """
        loop = context if context is not None else running_loop()

        def body() -> None:
            try:
                value = worker(self, *worker_data)
            except BaseException as exc:  # the task carries it to complete()
                self.set_error(exc)
            else:
                if value is not None and self.result is None:
                    self.result = value
            if loop is None:
                self.complete()
                return
            try:
                loop.call_soon_threadsafe(self.complete)
            except RuntimeError:
                log.warning("task %r: its loop is closed; completing in the worker thread", self)
                self.complete()

        name = f"qiochan-task-{getattr(worker, '__name__', 'worker')}"
        thread = threading.Thread(target=body, name=name, daemon=True)
        self._thread = thread
        thread.start()
        return thread
