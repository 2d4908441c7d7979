"""The gateway's Acceptor: a listener without a loop-side client callback gets a thread."""

from __future__ import annotations

import asyncio
import errno
import threading

import pytest

from qiochan import _relay_io
from qiochan._relay_io import Acceptor
from qiochan.channel import QIOChannel
from qiochan.errors import ChannelError
from qiochan_memory import QIOChannelBuffer


class ScriptedListener:
    """A third-party style listener (``accept``/``close``/``address`` only) failing as told.

    ``failures`` are raised by the first ``accept()`` calls, then ``channel``
    is handed out once; later calls block until :meth:`close`.
    """

    address = "test:scripted"

    def __init__(self, failures: list[ChannelError], channel: QIOChannel | None) -> None:
        self.failures = failures
        self.channel = channel
        self._closed = threading.Event()

    def accept(self) -> QIOChannel:
        if self.failures:
            raise self.failures.pop(0)
        channel, self.channel = self.channel, None
        if channel is not None:
            return channel
        self._closed.wait()
        raise ChannelError("listener closed", errno.EBADF)

    def close(self) -> None:
        self._closed.set()


async def _accept_until_thread_ends(listener: ScriptedListener, want: int) -> list[QIOChannel]:
    """Run an Acceptor until it dispatched ``want`` channels; close it, join its thread."""
    loop = asyncio.get_running_loop()
    accepted: list[QIOChannel] = []
    enough = asyncio.Event()

    def on_client(channel: QIOChannel) -> None:
        accepted.append(channel)
        if len(accepted) >= want:
            enough.set()

    acceptor = Acceptor(listener, loop)
    acceptor.start(on_client)
    thread = acceptor._thread
    assert thread is not None, "a listener without set_client_func gets an accepting thread"
    await asyncio.wait_for(enough.wait(), 10)
    acceptor.close()
    await loop.run_in_executor(None, thread.join, 10)
    assert not thread.is_alive()
    return accepted


def test_out_of_fds_waits_and_accepts_again(
    loop: asyncio.AbstractEventLoop,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(_relay_io, "ACCEPT_RETRY_DELAY", 0.01)
    channel = QIOChannelBuffer()
    exhausted = [ChannelError("Too many open files", errno.EMFILE) for _ in range(3)]
    listener = ScriptedListener(exhausted, channel)
    accepted = loop.run_until_complete(_accept_until_thread_ends(listener, want=1))
    assert accepted == [channel]
    assert caplog.text.count("accepting again in 0.01 s") == 3


def test_other_accept_errors_end_the_accepting_thread(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    channel = QIOChannelBuffer()
    listener = ScriptedListener([ChannelError("listener broken", errno.EINVAL)], channel)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        acceptor = Acceptor(listener, loop)
        acceptor.start(lambda channel: pytest.fail(f"dispatched {channel!r}"))
        assert acceptor._thread is not None
        await loop.run_in_executor(None, acceptor._thread.join, 10)
        assert not acceptor._thread.is_alive(), "the thread ends by itself"
        acceptor.close()

    loop.run_until_complete(scenario())
    assert listener.channel is channel, "nothing accepted after the failure"
    assert "no more clients: listener broken" in caplog.text
