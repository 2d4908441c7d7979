"""The layer base: a third-party layer with a handshake gets the driver, deadlines, forwarding."""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import Sequence

import pytest

from qiochan import ERR_BLOCK, ChannelError, Condition, Feature, QIOChannel, ReadFlag, WriteFlag
from qiochan.channel import Steps
from qiochan.errors import HandshakeError
from qiochan.layer import HandshakeState, QIOChannelLayer, apply_layers, layer_chain
from qiochan.task import QIOTask
from qiochan_memory import memory_pipe

TIMEOUT = 30.0
HELLO = b"HELO"


class HelloLayer(QIOChannelLayer):
    """Each side sends HELO and waits for the peer's before any data: a minimal handshake."""

    def __init__(self, master: QIOChannel, handshake_timeout: float | None = None) -> None:
        super().__init__(master, handshake_timeout=handshake_timeout)
        self.heard = bytearray()

    def handshake_steps(self) -> Steps[None]:
        sent = 0
        while sent < len(HELLO):
            n = self.master.write(HELLO[sent:])
            if n == ERR_BLOCK:
                yield Condition.OUT
                continue
            sent += n
        buf = bytearray(len(HELLO))
        while len(self.heard) < len(HELLO):
            n = self.master.read(memoryview(buf)[: len(HELLO) - len(self.heard)])
            if n == ERR_BLOCK:
                yield Condition.IN
                continue
            if n == 0:
                raise ChannelError("the peer left during the hello", errno.ECONNRESET)
            self.heard += buf[:n]
        if self.heard != HELLO:
            raise HandshakeError(f"the peer said {bytes(self.heard)!r}, not hello")

    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        self._require_handshake()
        return self.master.readv_full(iov)

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        self._require_handshake()
        return self.master.writev(iov)


def _pair(timeout: float | None = None) -> tuple[HelloLayer, HelloLayer]:
    left, right = memory_pipe()
    return HelloLayer(left, timeout), HelloLayer(right, timeout)


def test_blocking_handshake_then_data_and_blocking_mode_as_found() -> None:
    a, b = _pair()
    with a, b:
        thread = threading.Thread(target=b.handshake)
        thread.start()
        a.handshake()
        thread.join(TIMEOUT)
        assert a.handshake_state is HandshakeState.DONE and b.handshake_done
        assert a.blocking and a.master.blocking  # restored after the non-blocking steps
        a.write_all(b"data")
        buf = bytearray(4)
        b.read_all(buf)
        assert buf == b"data"
        a.handshake()  # done: returns at once


def test_async_handshake_and_task_form_share_one_loop(loop: asyncio.AbstractEventLoop) -> None:
    a, b = _pair()
    outcome: list[BaseException | None] = []

    async def scenario() -> None:
        done = asyncio.get_running_loop().create_future()

        def complete(task: QIOTask) -> None:
            outcome.append(task.error)
            done.set_result(None)

        b.handshake(complete)
        await a.ahandshake()
        await done

    with a, b:
        loop.run_until_complete(asyncio.wait_for(scenario(), TIMEOUT))
        assert outcome == [None] and a.handshake_done and b.handshake_done


def test_deadline_gives_etimedout_and_the_failure_stays() -> None:
    a, b = _pair(timeout=0.2)
    with a, b:
        with pytest.raises(HandshakeError) as info:
            a.handshake()  # nobody answers
        assert info.value.errno == errno.ETIMEDOUT
        assert a.handshake_state is HandshakeState.FAILED
        with pytest.raises(HandshakeError):
            a.read(bytearray(1))  # the failure again, not EINVAL


def test_misuse_has_one_errno_each(loop: asyncio.AbstractEventLoop) -> None:
    a, b = _pair()
    with a, b:
        with pytest.raises(ChannelError) as info:
            a.write(b"too early")
        assert info.value.errno == errno.EINVAL

        async def twice() -> None:
            first = asyncio.ensure_future(a.ahandshake())
            await asyncio.sleep(0)  # it runs until it waits for the peer's hello
            with pytest.raises(ChannelError) as second:
                await a.ahandshake()
            assert second.value.errno == errno.EALREADY
            first.cancel()

        loop.run_until_complete(asyncio.wait_for(twice(), TIMEOUT))


def test_forwarding_and_features_come_from_the_master() -> None:
    a, b = _pair()
    with a, b:
        assert a.master is not None and layer_chain(a) == [a]
        assert a.has_feature(Feature.SHUTDOWN) == a.master.has_feature(Feature.SHUTDOWN)
        a.set_blocking(False)
        assert not a.master.blocking
        a.set_blocking(True)
        a.set_delay(False)
        a.set_cork(True)
        assert a.io_write_fd() == -1  # a layer's bytes are not the master's


def test_closing_during_a_task_handshake_completes_it(loop: asyncio.AbstractEventLoop) -> None:
    a, b = _pair()
    seen: list[BaseException | None] = []

    async def scenario() -> None:
        a.handshake(lambda task: seen.append(task.error))
        await asyncio.sleep(0)
        a.abort()

    loop.run_until_complete(scenario())
    b.close()
    assert len(seen) == 1 and isinstance(seen[0], ChannelError)
    assert seen[0].errno == errno.EBADF


class ByeLayer(HelloLayer):
    """A layer with a goodbye (BYE before the master closes) and no nowait form of it."""

    def io_close_layer(self) -> None:
        self.master.write_all(b"BYE")


def test_close_nowait_of_a_layer_depends_on_its_goodbye_and_its_master(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # no goodbye of its own and a master that closes at once: closed at once
    a, b = _pair()
    assert a.close_nowait() is True and a.closed and a.master.closed
    assert a.close_nowait() is True, "closed stays closed"
    b.close()
    # a goodbye with no nowait form: left to close() (a worker thread, on a loop)
    left, right = memory_pipe()
    bye, peer = ByeLayer(left), HelloLayer(right)
    handshaking = threading.Thread(target=peer.handshake)
    handshaking.start()
    bye.handshake()
    handshaking.join(TIMEOUT)
    assert bye.close_nowait() is False and not bye.closed and not left.closed
    bye.close()
    buf = bytearray(3)
    peer.master.read_all(buf)
    assert buf == b"BYE"
    peer.close()

    # a running handshake is left to close() too
    async def scenario() -> None:
        c, d = _pair()
        c.handshake(lambda _task: None)
        await asyncio.sleep(0)
        assert c.close_nowait() is False and not c.closed
        c.close()
        d.close()

    loop.run_until_complete(scenario())


def test_apply_layers_runs_a_callable_layers_handshake() -> None:
    left, right = memory_pipe()
    peer = HelloLayer(right)
    thread = threading.Thread(target=peer.handshake)
    thread.start()
    with apply_layers(left, [lambda channel, _role: HelloLayer(channel)], "client") as ours:
        thread.join(TIMEOUT)
        assert isinstance(ours, HelloLayer) and ours.handshake_done
    peer.close()
