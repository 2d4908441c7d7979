"""The conformance kit must catch broken backends, not only pass good ones."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence

import pytest

from qiochan import ERR_BLOCK, Condition, QIOChannel, ReadFlag, WriteFlag
from qiochan.testing import (
    ONE_WAY_CHECKS,
    TWO_WAY_CHECKS,
    _checks,
    check_layer,
    check_one_way_channel,
    check_two_way_channel,
    layered_pairs,
    loopback_pair,
    run_check,
)
from qiochan.watch import FdWatchSource, WatchSource
from qiochan_memory import memory_pipe
from tests.helpers.pipechannel import PipeChannel, pipe_pair


@pytest.fixture
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_checks, "TIMEOUT", 0.3)
    yield


class DroppingPipe(PipeChannel):
    """Claims to write everything but drops one byte in every write of more than 8."""

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        total = sum(view.nbytes for view in iov)
        if total <= 8:
            return super().io_writev(iov, fds, flags)
        dropped = memoryview(b"".join(iov)[:-1])
        written = super().io_writev([dropped], fds, flags)
        return total if written == dropped.nbytes else written


class DeafPipe(PipeChannel):
    """Never signals readiness: its watches poll an fd on which nothing ever happens."""

    def __init__(self, fd: int, writable: bool) -> None:
        super().__init__(fd, writable)
        self.silent_read, self.silent_write = os.pipe()

    def io_create_watch(self, condition: Condition) -> WatchSource:
        return FdWatchSource(self.silent_read, Condition.IN)

    def io_close(self) -> None:
        super().io_close()
        os.close(self.silent_read)
        os.close(self.silent_write)


class EagerEofPipe(PipeChannel):
    """Reports EOF where a non-blocking read should have said ERR_BLOCK."""

    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        n, fds = super().io_readv(iov, want_fds, flags)
        return (0, fds) if n < 0 else (n, fds)


def broken_pair(cls: type[PipeChannel], *, broken_writer: bool) -> tuple[QIOChannel, QIOChannel]:
    read_fd, write_fd = os.pipe()
    writer_cls = cls if broken_writer else PipeChannel
    reader_cls = PipeChannel if broken_writer else cls
    return writer_cls(write_fd, writable=True), reader_cls(read_fd, writable=False)


def test_good_backends_pass() -> None:
    results = check_two_way_channel(memory_pipe)
    assert set(results) == set(TWO_WAY_CHECKS)
    assert results["fd_passing"] is not None  # skipped, with a reason
    one_way = check_one_way_channel(pipe_pair)
    assert set(one_way) == set(ONE_WAY_CHECKS)


def test_kit_catches_dropped_bytes(short_timeout: None, no_fd_leak: None) -> None:
    with pytest.raises(AssertionError, match="transfer_blocking"):
        check_one_way_channel(lambda: broken_pair(DroppingPipe, broken_writer=True))


def test_kit_catches_missing_readiness(short_timeout: None, no_fd_leak: None) -> None:
    with pytest.raises(AssertionError, match=r"never became ready|did not finish"):
        # a deaf writer must block once the 64 KiB pipe is full, and then never wakes
        run_check(
            "transfer_nonblocking",
            lambda: broken_pair(DeafPipe, broken_writer=True),
            two_way=False,
        )
    with pytest.raises(AssertionError, match=r"watch|finish"):
        run_check("watch_in", lambda: broken_pair(DeafPipe, broken_writer=False), two_way=False)


class StaleFdPipe(PipeChannel):
    """Offers its fd for direct writes, and keeps offering it after close."""

    def io_write_fd(self) -> int:
        return self.fd


class ForwardingLayer(PipeChannel):
    """A 'layer' that frames its writes yet offers the raw fd: direct writes skip the framing."""

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        data = b"".join(iov)
        framed = memoryview(b"<" + data + b">")
        n = super().io_writev([framed], fds, flags)
        return len(data) if n == framed.nbytes else ERR_BLOCK

    def io_write_fd(self) -> int:
        return self.fd


def test_kit_catches_a_bad_write_fd(short_timeout: None, no_fd_leak: None) -> None:
    with pytest.raises(AssertionError, match="-1 once the channel is closed"):
        run_check("write_fd", lambda: broken_pair(StaleFdPipe, broken_writer=True), two_way=False)
    with pytest.raises(AssertionError, match="the peer read"):
        run_check(
            "write_fd", lambda: broken_pair(ForwardingLayer, broken_writer=True), two_way=False
        )


def test_kit_catches_false_eof(short_timeout: None, no_fd_leak: None) -> None:
    with pytest.raises(AssertionError, match="ERR_BLOCK"):
        run_check(
            "read_would_block",
            lambda: broken_pair(EagerEofPipe, broken_writer=False),
            two_way=False,
        )


class BlockingPipe(PipeChannel):
    """Ignores set_blocking(False): its reads and writes always block."""

    def io_set_blocking(self, enabled: bool) -> None:
        pass


class GreedyPipe(PipeChannel):
    """Overrides a public read method and so loses the one-reader guard (no EBUSY)."""

    def read(self, buf: object) -> int:
        return self._io_read([memoryview(buf)], False, ReadFlag(0))[0]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "broken_writer"), [("read_would_block", False), ("clogged", True)]
)
def test_kit_fails_a_backend_that_ignores_non_blocking_mode_without_hanging(
    name: str, broken_writer: bool, short_timeout: None, no_fd_leak: None
) -> None:
    """The kit's own deadline: no pytest-timeout is needed to end a hung call."""
    with pytest.raises(AssertionError, match="did not finish within"):
        run_check(
            name, lambda: broken_pair(BlockingPipe, broken_writer=broken_writer), two_way=False
        )


def test_kit_catches_a_missing_ebusy_guard(short_timeout: None, no_fd_leak: None) -> None:
    with pytest.raises(AssertionError, match="EBUSY"):
        run_check(
            "concurrent_readers",
            lambda: broken_pair(GreedyPipe, broken_writer=False),
            two_way=False,
        )


def test_check_layer_and_layered_pairs_for_layer_authors(no_fd_leak: None) -> None:
    pytest.importorskip("websockets")
    results = check_layer(["websocket:path=/"])
    assert results["transfer_blocking"] is None and results["clogged"] is None
    make = layered_pairs(loopback_pair, ["websocket:path=/"])
    client, server = make()
    with client, server:
        client.write_all(b"ping")
        buf = bytearray(4)
        server.read_all(buf)
        assert buf == b"ping"


def test_kit_rejects_a_bad_factory() -> None:
    with pytest.raises(AssertionError, match="tuple"):
        run_check("eof", lambda: memory_pipe()[0], two_way=False)  # type: ignore[arg-type,return-value]


def test_unknown_check_name() -> None:
    with pytest.raises(KeyError, match="no conformance check"):
        run_check("nope", memory_pipe)


def test_pytest_plugin_runs_in_a_third_party_suite(pytester: pytest.Pytester) -> None:
    """A plugin author's suite gets one item per check from one fixture."""
    pytester.makepyfile(
        """
        from qiochan_memory import memory_pipe

        def test_conformance(qiochan_conformance):
            qiochan_conformance(memory_pipe)
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(TWO_WAY_CHECKS) - 1, skipped=1)


pytest_plugins = ["pytester"] if "pytester" not in sys.modules else []
