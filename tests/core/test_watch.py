"""Watches on asyncio loops (and uvloop), sync waits, tags, notify, thread safety."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from qiochan import ChannelError, Condition, QIOChannel, source_remove
from qiochan.watch import (
    AlwaysReadySource,
    ChildWatchSource,
    FdPairWatchSource,
    FdWatchSource,
    Watch,
    _loop_watches,
    resolve_context,
)
from qiochan_memory import QIOChannelBuffer, memory_pipe
from tests.helpers.pipechannel import pipe_pair

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def _loop_factories() -> list[LoopFactory]:
    factories: list[LoopFactory] = [asyncio.new_event_loop]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dev dependency
        return factories
    factories.append(uvloop.new_event_loop)
    return factories


@pytest.fixture(params=_loop_factories(), ids=["asyncio", "uvloop"][: len(_loop_factories())])
def any_loop(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoop:
    factory: LoopFactory = request.param
    event_loop = factory()
    request.addfinalizer(event_loop.close)
    return event_loop


def _run(loop: asyncio.AbstractEventLoop, future: asyncio.Future[object]) -> object:
    return loop.run_until_complete(asyncio.wait_for(future, 5))


def test_watch_fires_and_notify_runs_once(any_loop: asyncio.AbstractEventLoop) -> None:
    left, right = memory_pipe()
    calls: list[tuple[QIOChannel, Condition, str]] = []
    notified: list[str] = []
    done: asyncio.Future[object] = any_loop.create_future()

    def on_in(channel: QIOChannel, condition: Condition, label: str) -> bool:
        calls.append((channel, condition, label))
        done.set_result(None)
        return False

    with left, right:
        watch = right.create_watch(Condition.IN)
        assert not watch.attached and watch.tag == 0
        watch.set_callback(on_in, "label", notify=notified.append)
        tag = watch.attach(any_loop)
        assert tag == watch.tag and watch.attached
        left.write_all(b"x")
        _run(any_loop, done)
        assert calls == [(right, Condition.IN, "label")]
        assert notified == ["label"] and not watch.attached
        assert source_remove(tag) is False


def test_level_triggered_watch_keeps_firing_until_removed(
    any_loop: asyncio.AbstractEventLoop,
) -> None:
    with QIOChannelBuffer() as buf:
        count = 0
        done: asyncio.Future[object] = any_loop.create_future()

        def always(_channel: QIOChannel, condition: Condition) -> bool:
            nonlocal count
            count += 1
            if count == 5:
                done.set_result(None)
                return False
            return True

        buf.add_watch_full(Condition.IN | Condition.OUT, always, context=any_loop)
        _run(any_loop, done)
        assert count == 5


def test_two_watches_on_one_fd_both_fire(any_loop: asyncio.AbstractEventLoop) -> None:
    writer, reader = pipe_pair()
    seen: list[str] = []
    both: asyncio.Future[object] = any_loop.create_future()

    def make(label: str) -> Callable[[QIOChannel, Condition], bool]:
        def callback(_channel: QIOChannel, _condition: Condition) -> bool:
            seen.append(label)
            if len(seen) == 2:
                both.set_result(None)
            return False

        return callback

    with writer, reader:
        reader.add_watch_full(Condition.IN, make("a"), context=any_loop)
        reader.add_watch_full(Condition.IN, make("b"), context=any_loop)
        writer.write(b"x")
        _run(any_loop, both)
        assert sorted(seen) == ["a", "b"]


def test_removing_one_watch_keeps_the_other(any_loop: asyncio.AbstractEventLoop) -> None:
    writer, reader = pipe_pair()
    fired: list[str] = []
    done: asyncio.Future[object] = any_loop.create_future()

    def keeper(_channel: QIOChannel, _condition: Condition) -> bool:
        fired.append("keeper")
        done.set_result(None)
        return False

    def removed(_channel: QIOChannel, _condition: Condition) -> bool:
        fired.append("removed")
        return True

    with writer, reader:
        gone = reader.add_watch_source(Condition.IN, removed, context=any_loop)
        reader.add_watch_full(Condition.IN, keeper, context=any_loop)
        gone.remove()
        gone.remove()  # idempotent
        writer.write(b"x")
        _run(any_loop, done)
        assert fired == ["keeper"]


async def _spin(rounds: int = 20) -> None:
    """Let the loop run every ready callback a number of times (no timing involved)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def test_paused_watch_keeps_its_fd_until_ready_then_parks_it(
    any_loop: asyncio.AbstractEventLoop,
) -> None:
    writer, reader = pipe_pair()
    fired: list[Condition] = []
    done: asyncio.Future[object] = any_loop.create_future()

    def on_in(_channel: QIOChannel, condition: Condition) -> bool:
        fired.append(condition)
        done.set_result(None)
        return False

    readers = _loop_watches(any_loop).readers
    with writer, reader:
        watch = reader.add_watch_source(Condition.IN, on_in, context=any_loop)
        watch.pause()
        watch.resume()  # nothing was ready: the loop watched the fd all along
        assert watch in readers[reader.fd]
        watch.pause()
        assert watch in readers[reader.fd]  # no remove_reader until the fd is ready
        writer.write(b"x")
        any_loop.run_until_complete(_spin())
        # ready while paused: not dispatched, and the loop forgot the fd (no spinning)
        assert fired == [] and reader.fd not in readers
        watch.resume()
        _run(any_loop, done)
        assert fired == [Condition.IN] and reader.fd not in readers


def test_watch_added_from_another_thread(any_loop: asyncio.AbstractEventLoop) -> None:
    """Attaching to a loop running in another thread goes through call_soon_threadsafe."""
    left, right = memory_pipe()
    fired = threading.Event()
    started = threading.Event()

    def on_in(_channel: QIOChannel, _condition: Condition) -> bool:
        fired.set()
        any_loop.stop()
        return False

    runner = threading.Thread(
        target=lambda: (any_loop.call_soon(started.set), any_loop.run_forever())
    )
    with left, right:
        runner.start()
        assert started.wait(5)
        right.add_watch_full(Condition.IN, on_in, context=any_loop)
        left.write_all(b"x")
        runner.join(5)
        assert fired.is_set() and not runner.is_alive()


def test_close_removes_the_channels_watches(any_loop: asyncio.AbstractEventLoop) -> None:
    left, right = memory_pipe()
    notified: list[int] = []
    watch = right.add_watch_source(
        Condition.IN, lambda *_: True, 7, notify=notified.append, context=any_loop
    )
    right.close()
    left.close()
    assert notified == [7] and not watch.attached


def test_failing_callback_is_logged_and_removed(
    any_loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    with QIOChannelBuffer() as buf:
        done: asyncio.Future[object] = any_loop.create_future()

        def broken(_channel: QIOChannel, _condition: Condition) -> bool:
            any_loop.call_soon(done.set_result, None)
            raise RuntimeError("callback bug")

        watch = buf.add_watch_source(Condition.IN, broken, context=any_loop)
        _run(any_loop, done)
        assert not watch.attached
        assert "callback bug" in caplog.text


def test_watch_context_defaults_to_the_attached_loop(loop: asyncio.AbstractEventLoop) -> None:
    with QIOChannelBuffer() as buf:
        buf.attach_aio_context(loop)
        assert buf.aio_context is loop
        watch = buf.add_watch_source(Condition.OUT, lambda *_: False)
        assert watch.loop is loop
        loop.run_until_complete(asyncio.sleep(0))
        buf.detach_aio_context()
        assert buf.aio_context is None


def test_watch_uses_the_running_loop() -> None:
    async def scenario() -> asyncio.AbstractEventLoop | None:
        with QIOChannelBuffer() as buf:
            watch = buf.add_watch_source(Condition.OUT, lambda *_: False)
            return watch.loop

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(scenario()) is loop
    finally:
        loop.close()


def test_resolve_context_without_loop_in_a_thread() -> None:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            resolve_context(None)
        except ChannelError as exc:
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(5)
    assert errors and "No event loop" in str(errors[0])


def test_watch_misuse() -> None:
    with QIOChannelBuffer() as buf:
        watch = buf.create_watch(Condition.IN)
        with pytest.raises(ChannelError, match="no callback"):
            watch.attach()
        with pytest.raises(TypeError, match="callable"):
            watch.set_callback(42)  # type: ignore[arg-type]


def test_sources_report_what_they_poll() -> None:
    assert FdWatchSource(5, Condition.IN).poll_fds() == ((5, Condition.IN),)
    pair = FdPairWatchSource(3, 4, Condition.IN | Condition.OUT)
    assert list(pair.poll_fds()) == [(3, Condition.IN), (4, Condition.OUT)]
    assert list(FdPairWatchSource(-1, 4, Condition.IN).poll_fds()) == []
    assert AlwaysReadySource(Condition.OUT).check() == Condition.OUT


def test_child_source_is_ready_when_the_layer_holds_data() -> None:
    writer, reader = pipe_pair()
    holding = False
    with writer, reader:
        child = ChildWatchSource(reader, Condition.IN, pending=lambda: holding)
        assert child.check() == Condition(0)
        holding = True
        assert child.check() == Condition.IN
        assert child.wait(timeout=0) == Condition.IN
        holding = False
        writer.write(b"x")
        assert child.check() & Condition.IN


def test_wait_with_nothing_to_poll_fails_fast() -> None:
    from qiochan.watch import WatchSource

    with pytest.raises(ChannelError, match="nothing to poll"):
        WatchSource(Condition.IN).wait(timeout=1)


def test_watch_repr_mentions_state() -> None:
    with QIOChannelBuffer() as buf:
        watch = Watch(buf, AlwaysReadySource(Condition.IN))
        assert "new" in repr(watch)


@pytest.mark.parametrize("condition", [Condition.IN, Condition.OUT])
def test_a_watch_on_an_fd_already_ready_fires(
    any_loop: asyncio.AbstractEventLoop, condition: Condition
) -> None:
    """Readiness present before the watch exists comes from the loop's fd polling."""
    writer, reader = pipe_pair()
    with writer, reader:
        writer.write_all(b"x")  # the reader is readable, the writer writable, before any watch
        channel = reader if condition == Condition.IN else writer
        fired: asyncio.Future[object] = any_loop.create_future()

        def on_ready(_channel: QIOChannel, ready: Condition) -> bool:
            fired.set_result(ready)
            return False

        channel.add_watch_source(condition, on_ready, context=any_loop)
        ready = _run(any_loop, fired)
        assert isinstance(ready, Condition) and ready & condition
