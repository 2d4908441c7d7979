"""The conformance checks, each a plain function of a pair factory.

A check opens fresh pairs from the factory, exercises one part of the
:class:`~qiochan.QIOChannel` contract, closes everything it opened, and raises
``AssertionError`` with a message saying what the channel did wrong.  Every
wait is bounded by :data:`TIMEOUT`: a channel that never becomes ready fails
the check instead of hanging it.  A check that does not apply to the channel
(shutdown without ``SHUTDOWN``...) raises :class:`CheckSkipped`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from ..channel import ERR_BLOCK, Feature, QIOChannel, ReadFlag, Shutdown
from ..errors import BrokenChannelError, ChannelClosedError, ChannelError
from ..watch import Condition, source_remove

__all__ = [
    "ONE_WAY_CHECKS",
    "TIMEOUT",
    "TWO_WAY_CHECKS",
    "CheckSkipped",
    "PairFactory",
]

#: A callable returning a fresh connected pair ``(writer, reader)`` / ``(a, b)``.
PairFactory = Callable[[], tuple[QIOChannel, QIOChannel]]

#: Seconds any single wait in a check may take before the check fails.
TIMEOUT = float(os.environ.get("QIOCHAN_TESTING_TIMEOUT", "10"))

_TRANSFER = 1 << 20  # bytes per transfer check
_CHUNKS = (1, 7, 4096, 1000, 65536, 3, 100_000, 16384)


class CheckSkipped(Exception):  # noqa: N818 - a signal, like pytest's Skipped
    """The check does not apply to this channel; the message says why."""


def _pattern(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _split(data: bytes) -> list[memoryview]:
    """Cut ``data`` into irregular chunks (views, no copies)."""
    view = memoryview(data)
    pieces = []
    position = 0
    index = 0
    while position < len(view):
        size = _CHUNKS[index % len(_CHUNKS)]
        pieces.append(view[position : position + size])
        position += size
        index += 1
    return pieces


def _close_quietly(channel: QIOChannel) -> None:
    with suppress(ChannelError):
        channel.close()


@contextmanager
def _pair(factory: PairFactory) -> Iterator[tuple[QIOChannel, QIOChannel]]:
    pair = factory()
    assert isinstance(pair, tuple) and len(pair) == 2, (
        f"the factory must return a (writer, reader) tuple, got {pair!r}"
    )
    first, second = pair
    for channel in pair:
        assert isinstance(channel, QIOChannel), f"{channel!r} is not a QIOChannel"
    try:
        yield first, second
    finally:
        _close_quietly(first)
        _close_quietly(second)


def _run_threads(*targets: Callable[[], Any], what: str) -> None:
    """Run ``targets`` in threads; fail if one raises or any outlives :data:`TIMEOUT`."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], Any]) -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=guarded, args=(target,), daemon=True, name=f"qiochan-check-{i}")
        for i, target in enumerate(targets)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 3)
    stuck = [thread.name for thread in threads if thread.is_alive()]
    if stuck:
        raise AssertionError(
            f"{what}: {', '.join(stuck)} did not finish within "
            f"{TIMEOUT * 3:.0f} s (a hang, or readiness never signalled)"
        )
    if errors:
        raise errors[0]


def _wait(channel: QIOChannel, condition: Condition, what: str) -> Condition:
    try:
        return channel.wait(condition, timeout=TIMEOUT)
    except TimeoutError:
        raise AssertionError(
            f"{what}: {condition!r} never became ready within {TIMEOUT} s on {channel!r}"
        ) from None


def _read_exactly_nonblocking(reader: QIOChannel, size: int) -> bytes:
    received = bytearray(size)
    view = memoryview(received)
    done = 0
    while done < size:
        n = reader.read(view[done:])
        if n == ERR_BLOCK:
            _wait(reader, Condition.IN, "non-blocking read")
            continue
        assert n > 0, f"non-blocking read hit EOF after {done} of {size} bytes"
        done += n
    return bytes(received)


def _write_all_nonblocking(
    writer: QIOChannel, data: bytes, on_block: Callable[[], object] | None = None
) -> int:
    """Write ``data`` without blocking, waiting for OUT on ERR_BLOCK.

    Returns how many writes hit ERR_BLOCK. ``on_block`` runs before each wait.
    """
    blocked = 0
    for chunk in _split(data):
        rest = chunk
        while rest.nbytes:
            n = writer.writev([rest])
            if n == ERR_BLOCK:
                blocked += 1
                if on_block is not None:
                    on_block()
                _wait(writer, Condition.OUT, "non-blocking write")
                continue
            assert 0 <= n <= rest.nbytes, f"writev returned {n} for {rest.nbytes} bytes"
            rest = rest[n:]
    return blocked


def _end_writing(writer: QIOChannel) -> None:
    """Signal EOF to the peer: shutdown(WRITE) where supported, else close."""
    if writer.has_feature(Feature.SHUTDOWN):
        writer.shutdown(Shutdown.WRITE)
    else:
        writer.close()


# -- one-way checks -----------------------------------------------------------


def check_transfer_blocking(factory: PairFactory) -> None:
    """Irregular writev_all chunks arrive intact through readv_all, then EOF."""
    data = _pattern(_TRANSFER + 13, seed=1)
    with _pair(factory) as (writer, reader):
        received = bytearray(len(data))
        view = memoryview(received)
        cut1, cut2 = 5, len(data) // 3

        def write() -> None:
            writer.writev_all(_split(data))
            _end_writing(writer)

        def read() -> None:
            reader.readv_all([view[:cut1], view[cut1:cut2], view[cut2:]])
            assert reader.read_all_eof(bytearray(1)) is False, "no EOF after the writer ended"

        _run_threads(write, read, what="blocking transfer")
        assert received == data, _describe_mismatch(data, bytes(received))


def _describe_mismatch(sent: bytes, received: bytes) -> str:
    for index, (left, right) in enumerate(zip(sent, received, strict=False)):
        if left != right:
            return f"data corrupted: first difference at byte {index} of {len(sent)}"
    return f"data length differs: sent {len(sent)}, received {len(received)}"


def check_transfer_nonblocking(factory: PairFactory) -> None:
    """Non-blocking writer and reader threads, waiting on readiness, move data intact.

    The reader starts only once the writer has hit ERR_BLOCK (or finished), so a
    channel with bounded buffering always makes the writer wait for OUT, however
    the threads are scheduled.
    """
    data = _pattern(_TRANSFER, seed=2)
    with _pair(factory) as (writer, reader):
        writer.set_blocking(False)
        reader.set_blocking(False)
        result: dict[str, bytes] = {}
        writer_blocked = threading.Event()

        def write() -> None:
            try:
                _write_all_nonblocking(writer, data, on_block=writer_blocked.set)
            finally:
                writer_blocked.set()

        def read() -> None:
            writer_blocked.wait(TIMEOUT)
            result["data"] = _read_exactly_nonblocking(reader, len(data))

        _run_threads(write, read, what="non-blocking transfer")
        assert result["data"] == data, _describe_mismatch(data, result["data"])


def check_read_would_block(factory: PairFactory) -> None:
    """A non-blocking read with nothing to read returns ERR_BLOCK, then data once written."""
    with _pair(factory) as (writer, reader):
        reader.set_blocking(False)
        buf = bytearray(16)
        n = reader.read(buf)
        assert n == ERR_BLOCK, f"read on an idle non-blocking channel returned {n}, not ERR_BLOCK"
        writer.write_all(b"ping")
        ready = _wait(reader, Condition.IN, "read after write")
        assert ready & Condition.IN, f"wait(IN) returned {ready!r} without IN"
        assert _read_exactly_nonblocking(reader, 4) == b"ping"


def check_wait_timeout(factory: PairFactory) -> None:
    """wait(IN, timeout) on an idle channel raises TimeoutError instead of returning."""
    with _pair(factory) as (_writer, reader):
        try:
            ready = reader.wait(Condition.IN, timeout=0.05)
        except TimeoutError:
            return
        raise AssertionError(f"wait(IN) on an idle channel returned {ready!r}")


def check_eof(factory: PairFactory) -> None:
    """read_all_eof is True for complete data and False at a clean EOF."""
    with _pair(factory) as (writer, reader):
        writer.write_all(b"hello")
        _end_writing(writer)
        buf = bytearray(5)
        assert reader.read_all_eof(buf) is True and buf == b"hello"
        assert reader.read_all_eof(bytearray(1)) is False, "read_all_eof at EOF must be False"
        assert reader.read(bytearray(1)) == 0, "read at EOF must return 0"


def check_partial_eof(factory: PairFactory) -> None:
    """EOF after a partial *_all read is a BrokenChannelError, unless RELAXED_EOF is given."""
    with _pair(factory) as (writer, reader):
        writer.write_all(b"abc")
        _end_writing(writer)
        try:
            reader.read_all_eof(bytearray(10))
        except BrokenChannelError:
            pass
        else:
            raise AssertionError("read_all_eof after a partial read at EOF did not raise")
    with _pair(factory) as (writer, reader):
        writer.write_all(b"abc")
        _end_writing(writer)
        buf = bytearray(10)
        assert reader.read_all_eof(buf, flags=ReadFlag.RELAXED_EOF) is True
        assert buf[:3] == b"abc"
    with _pair(factory) as (writer, reader):
        _end_writing(writer)
        try:
            reader.read_all(bytearray(4))
        except BrokenChannelError:
            pass
        else:
            raise AssertionError("read_all at EOF did not raise")


def check_close(factory: PairFactory) -> None:
    """close() is idempotent and a closed channel refuses I/O with ChannelClosedError (EBADF)."""
    with _pair(factory) as (writer, reader):
        for channel in (writer, reader):
            _close_quietly(channel)
            channel.close()
            for call, argument in ((channel.write, b"x"), (channel.read, bytearray(1))):
                try:
                    call(argument)
                except ChannelClosedError as exc:
                    assert exc.errno == errno.EBADF, f"closed channel raised errno {exc.errno}"
                else:
                    raise AssertionError(f"I/O on closed {channel!r} did not raise")


def check_shutdown_write(factory: PairFactory) -> None:
    """shutdown(WRITE) delivers pending data, then EOF to the reader."""
    with _pair(factory) as (writer, reader):
        if not writer.has_feature(Feature.SHUTDOWN):
            raise CheckSkipped("the writer has no SHUTDOWN feature")
        writer.write_all(b"last words")
        writer.shutdown(Shutdown.WRITE)
        buf = bytearray(10)
        reader.read_all(buf)
        assert buf == b"last words"
        assert reader.read_all_eof(bytearray(1)) is False, "no EOF after shutdown(WRITE)"


def check_shutdown_read_wakes_reader(factory: PairFactory) -> None:
    """shutdown(READ) wakes a reader blocked in another thread."""
    with _pair(factory) as (_writer, reader):
        if not reader.has_feature(Feature.SHUTDOWN):
            raise CheckSkipped("the reader has no SHUTDOWN feature")
        entering = threading.Event()
        outcome: list[object] = []

        def blocked_read() -> None:
            entering.set()
            try:
                outcome.append(reader.read(bytearray(8)))
            except ChannelError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=blocked_read, daemon=True)
        thread.start()
        assert entering.wait(TIMEOUT)
        reader.shutdown(Shutdown.READ)
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "shutdown(READ) did not wake the blocked reader"
        assert outcome and (outcome[0] == 0 or isinstance(outcome[0], ChannelError)), (
            f"blocked read after shutdown(READ) returned {outcome!r}, not EOF or an error"
        )


def _run_loop(coro_factory: Callable[[], Any]) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro_factory(), TIMEOUT))
    except TimeoutError:
        raise AssertionError(f"the asyncio part did not finish within {TIMEOUT} s") from None
    finally:
        loop.close()


def check_watch_in(factory: PairFactory) -> None:
    """An IN watch fires once data arrives; returning False removes it and runs notify."""
    with _pair(factory) as (writer, reader):
        fired: list[Condition] = []
        notified: list[str] = []

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            done = loop.create_future()

            def on_in(channel: QIOChannel, condition: Condition, tag: str) -> bool:
                assert channel is reader
                fired.append(condition)
                if not done.done():
                    done.set_result(None)
                return False

            watch = reader.add_watch_source(
                Condition.IN, on_in, "data", notify=notified.append, context=loop
            )
            assert watch.attached and watch.tag > 0
            writer.write_all(b"wake up")
            await done
            assert not watch.attached, "returning False must detach the watch"
            assert source_remove(watch.tag) is False

        _run_loop(scenario)
        assert len(fired) == 1 and fired[0] & Condition.IN, f"IN watch fired with {fired!r}"
        assert notified == ["data"], f"notify ran {notified!r}"


def check_watch_out(factory: PairFactory) -> None:
    """An OUT watch on a fresh writer fires at once."""
    with _pair(factory) as (writer, _reader):

        async def scenario() -> Condition:
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[Condition] = loop.create_future()

            def on_out(_channel: QIOChannel, condition: Condition) -> bool:
                if not ready.done():
                    ready.set_result(condition)
                return False

            writer.add_watch_full(Condition.OUT, on_out, context=loop)
            return await ready

        condition = _run_loop(scenario)
        assert condition & Condition.OUT, f"OUT watch fired with {condition!r}"


def check_removed_watch_never_fires(factory: PairFactory) -> None:
    """A watch removed with source_remove() never fires, even when data arrives."""
    with _pair(factory) as (writer, reader):
        fired: list[Condition] = []

        async def scenario() -> None:
            loop = asyncio.get_running_loop()

            def first(_channel: QIOChannel, condition: Condition) -> bool:
                fired.append(condition)
                return True

            tag = reader.add_watch_full(Condition.IN, first, context=loop)
            assert source_remove(tag) is True
            writer.write_all(b"too late")
            # a second watch proves the data arrived while the first stayed silent
            seen = loop.create_future()

            def second(_channel: QIOChannel, _cond: Condition) -> bool:
                if not seen.done():
                    seen.set_result(None)
                return False

            reader.add_watch_full(Condition.IN, second, context=loop)
            await seen
            for _ in range(3):
                await asyncio.sleep(0)  # yield to the loop (no delay) so a stale dispatch would run

        _run_loop(scenario)
        assert not fired, f"a removed watch fired {len(fired)} time(s)"


def check_async_transfer(factory: PairFactory) -> None:
    """awrite_all and aread_all on one loop move data intact without blocking it."""
    data = _pattern(_TRANSFER // 2, seed=3)
    with _pair(factory) as (writer, reader):
        received = bytearray(len(data))

        async def scenario() -> None:
            async def send() -> None:
                await writer.awritev_all(_split(data))

            await asyncio.gather(send(), reader.aread_all(received))

        _run_loop(scenario)
        assert received == data, _describe_mismatch(data, bytes(received))


def check_write_fd(factory: PairFactory) -> None:
    """io_write_fd is -1, or an fd whose plain writes the peer reads; -1 once closed."""
    with _pair(factory) as (writer, reader):
        fd = writer.io_write_fd()
        if fd < 0:
            assert fd == -1, f"io_write_fd returned {fd}: an fd or -1"
            return
        assert os.write(fd, b"direct, ") == 8
        writer.write_all(b"then io_writev")
        buf = bytearray(22)
        reader.read_all(buf)
        assert buf == b"direct, then io_writev", f"the peer read {bytes(buf)!r}"
        writer.close()
        assert writer.io_write_fd() == -1, "io_write_fd must return -1 once the channel is closed"


def check_fd_passing(factory: PairFactory) -> None:
    """fds written with data arrive as new fds referring to the same files."""
    with _pair(factory) as (writer, reader):
        if not (writer.has_feature(Feature.FD_PASS) and reader.has_feature(Feature.FD_PASS)):
            raise CheckSkipped("the channel has no FD_PASS feature")
        read_end, write_end = os.pipe()
        try:
            writer.writev_full_all([b"fds!"], fds=[read_end, write_end])
            buf = bytearray(4)
            fds = reader.readv_full_all([buf])
            try:
                assert buf == b"fds!"
                assert len(fds) == 2, f"expected 2 fds, received {fds!r}"
                for sent, got in zip((read_end, write_end), fds, strict=True):
                    assert os.fstat(sent).st_ino == os.fstat(got).st_ino
                    assert not os.get_inheritable(got), "received fds must be close-on-exec"
            finally:
                for fd in fds:
                    os.close(fd)
        finally:
            os.close(read_end)
            os.close(write_end)


# -- two-way checks -----------------------------------------------------------


def check_full_duplex(factory: PairFactory) -> None:
    """Both ends write and read at the same time without deadlock or corruption."""
    forward, backward = _pattern(_TRANSFER, seed=4), _pattern(_TRANSFER, seed=5)
    with _pair(factory) as (left, right):
        got_forward, got_backward = bytearray(len(forward)), bytearray(len(backward))
        _run_threads(
            lambda: left.writev_all(_split(forward)),
            lambda: right.writev_all(_split(backward)),
            lambda: right.read_all(got_forward),
            lambda: left.read_all(got_backward),
            what="full-duplex transfer",
        )
        assert got_forward == forward, _describe_mismatch(forward, bytes(got_forward))
        assert got_backward == backward, _describe_mismatch(backward, bytes(got_backward))


def _reversed(factory: PairFactory) -> PairFactory:
    def make() -> tuple[QIOChannel, QIOChannel]:
        first, second = factory()
        return second, first

    return make


def check_reverse_direction(factory: PairFactory) -> None:
    """The second channel of a two-way pair writes to the first, intact, then EOF."""
    check_transfer_blocking(_reversed(factory))


_CLOG_LIMIT = 64 << 20  # a writer that never blocks within this much buffers without bound


_CLOG_CHUNK = bytes(range(256)) * 256  # 64 KiB; a pattern shows duplicated or lost bytes
_CLOG_ROUNDS = 40


def _clog(writer: QIOChannel) -> bytearray:
    """Write in non-blocking mode until the writer returns ERR_BLOCK; return the bytes it took.

    The chunk that met ERR_BLOCK is still due (a layer may have taken it in
    already and must be retried with the same data).

    Raises:
        CheckSkipped: the channel took :data:`_CLOG_LIMIT` bytes without blocking.
    """
    taken = bytearray()
    while len(taken) < _CLOG_LIMIT:
        n = writer.write(_CLOG_CHUNK)
        if n == ERR_BLOCK:
            return taken
        assert 0 < n <= len(_CLOG_CHUNK), f"write returned {n} for {len(_CLOG_CHUNK)} bytes"
        taken += _CLOG_CHUNK[:n]
    raise CheckSkipped(f"the writer buffers without bound (took {_CLOG_LIMIT} bytes)")


def check_clogged(factory: PairFactory) -> None:
    """A clogged writer returns ERR_BLOCK and is not ready for OUT until the reader drains it.

    Nobody reads while the writer fills up; ``wait(OUT)`` must then time out
    (no false readiness).  Then the writer retries the chunk that blocked
    while the reader drains everything: all of it arrives intact, each byte
    once (the chunk is a pattern, so a byte sent twice or lost shows).
    """
    with _pair(factory) as (writer, reader):
        writer.set_blocking(False)
        reader.set_blocking(False)
        taken = bytearray()
        refused = 0
        for _ in range(_CLOG_ROUNDS):
            taken += _clog(writer)
            try:
                writer.wait(Condition.OUT, timeout=0.05)
            except TimeoutError:
                break  # clogged, and it says so
            # readiness is fine when something between the ends (a relay process)
            # drained some; a framing layer may still need more room for its frame,
            # but a writer that reports OUT and never takes anything is lying
            n = writer.write(_CLOG_CHUNK)
            refused = refused + 1 if n == ERR_BLOCK else 0
            assert refused < _CLOG_ROUNDS // 2, "the writer keeps reporting OUT, refusing writes"
            taken += _CLOG_CHUNK[: max(n, 0)]
        else:
            raise CheckSkipped("the pair keeps draining the writer (a relay in between)")
        expected = bytes(taken + _CLOG_CHUNK)
        result: dict[str, bytes] = {}

        def read() -> None:
            result["data"] = _read_exactly_nonblocking(reader, len(expected))

        _run_threads(lambda: _write_all_nonblocking(writer, _CLOG_CHUNK), read, what="unclogging")
        assert result["data"] == expected, "clogged bytes were damaged (lost, reordered or doubled)"


def check_concurrent_readers(factory: PairFactory) -> None:
    """A second concurrent reader gets ChannelError(EBUSY) at once instead of tearing records."""
    with _pair(factory) as (writer, reader):

        async def scenario() -> None:
            first = asyncio.ensure_future(reader.aread_all(bytearray(4)))
            await asyncio.sleep(0)  # the first read starts and waits for data
            assert not first.done(), "aread_all returned before any data was written"
            try:
                await reader.aread_all(bytearray(1))
            except ChannelError as exc:
                assert exc.errno == errno.EBUSY, f"a second reader raised errno {exc.errno}"
            else:
                raise AssertionError("a second concurrent reader was not refused (EBUSY)")
            try:
                reader.read(bytearray(1))
            except ChannelError as exc:
                assert exc.errno == errno.EBUSY, f"a concurrent sync read raised {exc.errno}"
            else:
                raise AssertionError("a sync read during an async read was not refused (EBUSY)")
            writer.write_all(b"data")
            await asyncio.wait_for(first, TIMEOUT)

        _run_loop(scenario)


Check = Callable[[PairFactory], None]

#: Checks for a pair ``(writer, reader)``, by name.
ONE_WAY_CHECKS: dict[str, Check] = {
    "transfer_blocking": check_transfer_blocking,
    "transfer_nonblocking": check_transfer_nonblocking,
    "read_would_block": check_read_would_block,
    "wait_timeout": check_wait_timeout,
    "eof": check_eof,
    "partial_eof": check_partial_eof,
    "close": check_close,
    "shutdown_write": check_shutdown_write,
    "shutdown_read_wakes_reader": check_shutdown_read_wakes_reader,
    "watch_in": check_watch_in,
    "watch_out": check_watch_out,
    "removed_watch_never_fires": check_removed_watch_never_fires,
    "async_transfer": check_async_transfer,
    "write_fd": check_write_fd,
    "fd_passing": check_fd_passing,
    "clogged": check_clogged,
    "concurrent_readers": check_concurrent_readers,
}

#: Checks for a two-way pair ``(a, b)``: the one-way ones plus these.
TWO_WAY_CHECKS: dict[str, Check] = {
    **ONE_WAY_CHECKS,
    "reverse_direction": check_reverse_direction,
    "full_duplex": check_full_duplex,
}
