"""QIOTask: results, first error wins, completion on the right loop or thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from qiochan import QIOTask


def test_complete_then_notify_with_data() -> None:
    order: list[str] = []
    task = QIOTask(
        "src",
        lambda t, a, b: order.append(f"complete {a}{b}"),
        1,
        2,
        notify=lambda a, b: order.append(f"notify {a}{b}"),
    )
    task.set_result("value")
    task.complete()
    task.complete()
    assert order == ["complete 12", "notify 12"]
    assert task.result == "value" and task.completed and task.source == "src"
    task.propagate_error()


def test_first_error_wins() -> None:
    task = QIOTask(None, lambda t: None)
    first, second = ValueError("first"), KeyError("second")
    task.set_error(first)
    task.set_error(second)
    assert task.error is first
    with pytest.raises(ValueError, match="first"):
        task.propagate_error()


def test_complete_must_be_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        QIOTask(None, "nope")  # type: ignore[arg-type]


def test_run_in_thread_completes_on_the_calling_loop() -> None:
    loop = asyncio.new_event_loop()

    async def scenario() -> tuple[object, threading.Thread, threading.Thread]:
        done: asyncio.Future[tuple[object, threading.Thread]] = loop.create_future()

        def complete(task: QIOTask) -> None:
            done.set_result((task.result, threading.current_thread()))

        task = QIOTask(None, complete)
        worker_thread: list[threading.Thread] = []

        def worker(task: QIOTask, factor: int) -> int:
            worker_thread.append(threading.current_thread())
            return 21 * factor

        task.run_in_thread(worker, 2)
        result, thread = await asyncio.wait_for(done, 5)
        return result, thread, worker_thread[0]

    try:
        result, completed_in, worker_in = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert result == 42
    assert completed_in is threading.main_thread() and worker_in is not completed_in


def test_run_in_thread_without_loop_completes_in_worker_and_keeps_error() -> None:
    seen: list[BaseException | None] = []
    task = QIOTask(None, lambda t: seen.append(t.error))

    def worker(task: QIOTask) -> None:
        raise ConnectionRefusedError("refused")

    task.run_in_thread(worker).join(5)
    assert len(seen) == 1 and isinstance(seen[0], ConnectionRefusedError)
