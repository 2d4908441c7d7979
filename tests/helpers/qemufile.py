"""Helpers shared by the QEMUFile tests (no tests here).

- :class:`ScriptedChannel`: an in-memory channel that records every vectored
  write and can fail (or end) after a given number of bytes, in either direction.
- Operation sequences: a mixed list of ``put_*`` operations, written by
  :func:`write_ops` and read back by :func:`read_ops`, with :func:`expected`
  giving what the reader must return.
- Transports: the same write/read pair run over a memory buffer, a memory
  pipe, a unix socketpair and a command pipe (``cat``).
"""

from __future__ import annotations

import errno
import mmap
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from qiochan import ERR_BLOCK, ChannelError, Condition, Feature, QEMUFile, QIOChannel
from qiochan.channel import ReadFlag, Shutdown, WriteFlag
from qiochan.watch import AlwaysReadySource, WatchSource
from qiochan_command import QIOChannelCommand
from qiochan_memory import memory_pipe
from qiochan_socket import socket_pair

T = TypeVar("T")

#: How long a helper thread may take before a test fails instead of hanging.
JOIN_TIMEOUT = 30.0


class ScriptedChannel(QIOChannel):
    """A test channel: writes are recorded, reads come from ``data``; either may fail.

    Args:
        data: what reads deliver.
        fail_after: bytes accepted (writes) or delivered (reads) before the
            channel fails; None never fails.  The write reaching the limit is
            partial; the next one raises ``ChannelError(EPIPE)``.
        eof: at the read limit give end of file instead of ``ECONNRESET``.
        chunk: most bytes one read delivers.
        shutdown: declare the ``SHUTDOWN`` feature.
        would_block: every other read returns ERR_BLOCK first (non-blocking mode only).
        max_write: most bytes one write accepts (short writes).
    """

    def __init__(
        self,
        data: bytes = b"",
        *,
        fail_after: int | None = None,
        eof: bool = False,
        chunk: int = 1 << 30,
        shutdown: bool = True,
        would_block: bool = False,
        max_write: int = 1 << 30,
    ) -> None:
        super().__init__()
        self.data = data
        self.fail_after = fail_after
        self.eof = eof
        self.chunk = chunk
        self.would_block = would_block
        self.max_write = max_write
        self.written = bytearray()
        self.writes: list[list[bytes]] = []
        self.reads = 0
        self.failures = 0  # failed writes; reads that hit the end or the failure point
        self.late_reads = 0  # reads attempted after the first end/failure
        self.blocked = 0
        self.position = 0
        self.shut: Shutdown | None = None
        self.observer: Callable[[ScriptedChannel], None] | None = None
        if shutdown:
            self.set_feature(Feature.SHUTDOWN)

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        self.writes.append([bytes(view) for view in iov])
        wanted = b"".join(self.writes[-1])
        room = min(len(wanted), self.max_write)
        if self.fail_after is not None:
            room = min(room, self.fail_after - len(self.written))
            if room <= 0:
                self.failures += 1
                raise ChannelError("Unable to write to scripted channel: Broken pipe", errno.EPIPE)
        self.written += wanted[:room]
        return room

    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        if self.would_block and not self._blocking and self.blocked <= self.reads:
            self.blocked += 1
            return ERR_BLOCK, []
        self.reads += 1
        if self.observer is not None:
            self.observer(self)
        end = len(self.data)
        if self.fail_after is not None:
            end = min(end, self.fail_after)
        if self.position >= end:  # end of stream, or the failure point
            if self.failures:
                self.late_reads += 1
            self.failures += 1
            if end < len(self.data) and not self.eof:
                raise ChannelError(
                    "Unable to read from scripted channel: Connection reset by peer",
                    errno.ECONNRESET,
                )
            return 0, []
        done = 0
        for view in iov:
            n = max(0, min(view.nbytes, end - self.position, self.chunk - done))
            view[:n] = self.data[self.position : self.position + n]
            self.position += n
            done += n
        return done, []

    def io_shutdown(self, how: Shutdown) -> None:
        self.shut = how

    def io_close(self) -> None:
        """Nothing to release."""

    def io_create_watch(self, condition: Condition) -> WatchSource:
        return AlwaysReadySource(condition)

    def io_set_blocking(self, enabled: bool) -> None:
        """Blocking mode only changes what io_readv returns."""


# -- operation sequences -------------------------------------------------------------

#: One operation: (kind, argument, read variant).  Kinds: byte, be16, be32, be64,
#: buffer, async, pages (that many consecutive 4 KiB pages of :data:`RAM` queued
#: with put_buffer_async, so they coalesce), counted, compress, flush.  Buffer
#: reads use the variant: "get_buffer", "get_bytes" or "in_place".
Op = tuple[str, Any, str]

PAGE_SIZE = 4096

#: The "guest RAM" the pages op sends from: distinct content in every page.
RAM = bytes(n % 251 for n in range(64 * PAGE_SIZE))

_WIDTHS = {"byte": 8, "be16": 16, "be32": 32, "be64": 64}


def write_ops(f: QEMUFile, ops: Sequence[Op]) -> None:
    """Write ``ops`` to ``f``."""
    for kind, arg, _variant in ops:
        if kind == "byte":
            f.put_byte(arg)
        elif kind in _WIDTHS:
            getattr(f, f"put_{kind}")(arg)
        elif kind == "buffer":
            f.put_buffer(arg)
        elif kind == "async":
            f.put_buffer_async(arg)
        elif kind == "pages":
            ram = memoryview(RAM)
            for n in range(arg):
                f.put_buffer_async(ram[n * PAGE_SIZE : (n + 1) * PAGE_SIZE])
        elif kind == "counted":
            f.put_counted_string(arg)
        elif kind == "compress":
            if f.put_compression_data(arg) < 0:
                f.fflush()
                assert f.put_compression_data(arg) > 0
        elif kind == "flush":
            f.fflush()
        else:
            raise AssertionError(f"unknown op {kind}")


def _size(kind: str, arg: Any) -> int:
    return arg * PAGE_SIZE if kind == "pages" else memoryview(arg).nbytes


def _data(kind: str, arg: Any) -> bytes:
    return RAM[: arg * PAGE_SIZE] if kind == "pages" else bytes(arg)


def read_ops(f: QEMUFile, ops: Sequence[Op]) -> list[Any]:
    """Read back what :func:`write_ops` wrote; return one value per non-flush op."""
    values: list[Any] = []
    for kind, arg, variant in ops:
        if kind == "byte":
            values.append(f.get_byte())
        elif kind in _WIDTHS:
            values.append(getattr(f, f"get_{kind}")())
        elif kind in ("buffer", "async", "pages"):
            size = _size(kind, arg)
            if variant == "get_bytes":
                values.append(f.get_bytes(size))
            elif variant == "in_place":
                values.append(bytes(f.get_buffer_in_place(size)))
            else:
                out = bytearray(size)
                n = f.get_buffer(out)
                values.append(bytes(out[:n]))
        elif kind == "counted":
            values.append(f.get_counted_string())
        elif kind == "compress":
            values.append(f.get_compression_data())
    return values


def expected(ops: Sequence[Op]) -> list[Any]:
    """Return what :func:`read_ops` gives for ``ops`` written without error."""
    values: list[Any] = []
    for kind, arg, _variant in ops:
        if kind in _WIDTHS:
            values.append(arg)
        elif kind in ("buffer", "async", "pages", "compress"):
            values.append(_data(kind, arg))
        elif kind == "counted":
            values.append(arg.encode() if isinstance(arg, str) else bytes(arg))
    return values


def encoded_sizes(ops: Sequence[Op]) -> list[int]:
    """Return the stream bytes each non-flush op takes (compressed ops excluded: -1)."""
    sizes = []
    for kind, arg, _variant in ops:
        if kind in _WIDTHS:
            sizes.append(_WIDTHS[kind] // 8)
        elif kind in ("buffer", "async", "pages"):
            sizes.append(_size(kind, arg))
        elif kind == "counted":
            sizes.append(1 + len(arg.encode() if isinstance(arg, str) else arg))
        elif kind == "compress":
            sizes.append(-1)
    return sizes


# -- transports ----------------------------------------------------------------------


@dataclass
class Outcome:
    """What a transfer produced: the reader's values and both sides' errors."""

    values: Any
    writer_error: int
    reader_error: int
    extra: dict[str, Any] = field(default_factory=dict)


class Drain:
    """A thread reading with ``read(size)`` until EOF (``b""``), keeping every byte."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self.received = bytearray()
        self._thread = threading.Thread(target=self._run, args=(read,), name="drain", daemon=True)
        self._thread.start()

    def _run(self, read: Callable[[int], bytes]) -> None:
        while chunk := read(65536):
            self.received.extend(chunk)

    def finish(self) -> bytes:
        """Wait for EOF (failing instead of hanging); return every byte read."""
        self._thread.join(JOIN_TIMEOUT)
        assert not self._thread.is_alive(), "the reader never saw EOF"
        return bytes(self.received)


def _join(thread: threading.Thread) -> None:
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive(), "writer thread hung"


def _run_concurrent(
    out: QEMUFile,
    inp: QEMUFile,
    write: Callable[[QEMUFile], None],
    read: Callable[[QEMUFile], T],
    finish: Callable[[], int],
) -> Outcome:
    result: dict[str, Any] = {}

    def writer() -> None:
        try:
            write(out)
        except BaseException as exc:  # reported by the main thread
            result["exc"] = exc
        finally:
            result["ret"] = finish()

    thread = threading.Thread(target=writer, name="qemufile-writer")
    thread.start()
    try:
        values = read(inp)
        reader_error = inp.get_error()
    finally:
        _join(thread)
        inp.fclose()
    if "exc" in result:
        raise result["exc"]
    return Outcome(values, result["ret"], reader_error)


def over_buffer(write: Callable[[QEMUFile], None], read: Callable[[QEMUFile], T]) -> Outcome:
    """Write into ``QEMUFile.open_buffer("w")``, then read the contents back."""
    out = QEMUFile.open_buffer("w")
    write(out)
    data = out.buffer_contents()
    writer_error = out.fclose()
    inp = QEMUFile.open_buffer("r", data)
    try:
        values = read(inp)
        reader_error = inp.get_error()
    finally:
        inp.fclose()
    return Outcome(values, writer_error, reader_error, {"data": data})


def over_memory_pipe(write: Callable[[QEMUFile], None], read: Callable[[QEMUFile], T]) -> Outcome:
    """A writer thread and the reader on the two ends of a memory pipe."""
    a, b = memory_pipe(capacity=16384)
    out, inp = QEMUFile.new_output(a), QEMUFile.new_input(b)
    return _run_concurrent(out, inp, write, read, out.fclose)


def over_socketpair(write: Callable[[QEMUFile], None], read: Callable[[QEMUFile], T]) -> Outcome:
    """A writer thread and the reader on the two ends of a unix socketpair."""
    a, b = socket_pair()
    out, inp = QEMUFile.new_output(a), QEMUFile.new_input(b)
    return _run_concurrent(out, inp, write, read, out.fclose)


def over_command(write: Callable[[QEMUFile], None], read: Callable[[QEMUFile], T]) -> Outcome:
    """Through ``cat``: a writer thread on its stdin, the reader (return path) on its stdout."""
    ioc = QIOChannelCommand.new_spawn(["cat"])
    out = QEMUFile.new_output(ioc)
    inp = out.get_return_path()

    def finish() -> int:
        out.fflush()
        ioc.shutdown(Shutdown.WRITE)
        return out.get_error()

    return _run_concurrent(out, inp, write, read, finish)


TRANSPORTS: dict[str, Callable[..., Outcome]] = {
    "buffer": over_buffer,
    "memory-pipe": over_memory_pipe,
    "socketpair": over_socketpair,
    "command": over_command,
}


def private_anonymous_mmap(size: int) -> mmap.mmap:
    """Return a private anonymous mapping (freed pages read back as zeros)."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)


__all__ = [
    "JOIN_TIMEOUT",
    "PAGE_SIZE",
    "RAM",
    "TRANSPORTS",
    "Op",
    "Outcome",
    "ScriptedChannel",
    "encoded_sizes",
    "expected",
    "over_buffer",
    "over_command",
    "over_memory_pipe",
    "over_socketpair",
    "private_anonymous_mmap",
    "read_ops",
    "write_ops",
]
