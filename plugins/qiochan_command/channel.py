"""QIOChannelCommand: a channel over a child process's stdin and stdout (QEMU's channel-command).

Writes go to the child's stdin, reads come from its stdout.  Unlike QEMU the
channel has ``SHUTDOWN``: ``shutdown(WRITE)`` closes the child's stdin so it
sees EOF, ``shutdown(READ)`` closes its stdout pipe; either wakes a thread
blocked on that direction.  To make that possible the pipes are always
non-blocking underneath and blocking mode waits in ``poll()`` on the pipe and
an eventfd that shutdown signals.  A shut-down pipe's descriptor is replaced
by ``/dev/null`` (``dup2``) rather than closed, so a racing thread can never
touch a recycled descriptor number; it is closed with the channel.

``close()`` closes the pipes, waits ``close_timeout`` seconds for the child,
then sends SIGTERM, waits again, then SIGKILL, and always reaps it; the
signals go to the child's process group, so nothing it started survives.  A
non-zero exit or a death by signal is raised as :class:`ChannelError`, except
SIGPIPE after we stopped reading (the child was cut off on purpose), also
when a shell reports it as status 141.  ``abort()`` terminates the group at
once and reports nothing.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

from qiochan.channel import ERR_BLOCK, Feature, QIOChannel, ReadFlag, Shutdown, WriteFlag
from qiochan.errors import ChannelError, from_oserror
from qiochan.watch import Condition, FdPairWatchSource, WatchSource

from . import process

__all__ = ["DEFAULT_CLOSE_TIMEOUT", "QIOChannelCommand"]

log = logging.getLogger("qiochan.command")

#: Seconds close() waits for the child before SIGTERM (and again before SIGKILL).
DEFAULT_CLOSE_TIMEOUT = 5.0
# bigger pipes mean fewer wake-ups per megabyte (the kernel caps it at pipe-max-size)
_PIPE_SIZE = 1 << 20
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_EFD_FLAGS = os.EFD_CLOEXEC | os.EFD_NONBLOCK


class _End:
    """One direction: the parent's pipe fd, the eventfd shutdown signals, and the shut flag.

    ``short`` records that the last transfer moved less than asked: the pipe is
    then probably empty (reading) or full (writing), so a blocking call polls
    before trying again instead of paying for an EAGAIN first.
    """

    def __init__(self, fd: int, events: int) -> None:
        self.fd = fd
        self.events = events
        self.wake = os.eventfd(0, _EFD_FLAGS)
        self.shut = False
        self.short = False
        os.set_blocking(fd, False)
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except (OSError, AttributeError):
            pass  # above the system's pipe-max-size, or not Linux: keep the default
        self._poller = self._new_poller()

    def _new_poller(self) -> select.poll:
        poller = select.poll()
        poller.register(self.fd, self.events)
        poller.register(self.wake, select.POLLIN)
        return poller

    def wait(self) -> None:
        """Block until the pipe is ready or shutdown wakes us."""
        try:
            self._poller.poll()
        except RuntimeError:  # another thread is polling this end: use a poller of our own
            self._new_poller().poll()

    def shutdown(self) -> None:
        """Release the pipe (replaced by /dev/null under the same number) and wake sleepers."""
        if self.shut:
            return
        self.shut = True
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            os.dup2(null, self.fd, inheritable=False)
        finally:
            os.close(null)
        os.eventfd_write(self.wake, 1)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.wake)

    def transfer(
        self, op: Callable[[int, Any], int], arg: Any, size: int, blocking: bool, what: str
    ) -> int | None:
        """Run ``op(fd, arg)`` (os.readv/os.write/os.writev) moving up to ``size`` bytes.

        Returns:
            Bytes moved, ERR_BLOCK (only when not ``blocking``), or None once the
            end is shut down.
        Raises:
            ChannelError: the transfer failed; ``what`` is "read from" or "write to".
        """
        while not self.shut:
            if self.short and blocking:
                self.short = False
                self.wait()
                continue
            try:
                n = op(self.fd, arg)
            except BlockingIOError:
                if not blocking:
                    return ERR_BLOCK
                self.wait()
                continue
            except InterruptedError:
                continue
            except OSError as exc:
                raise from_oserror(f"Unable to {what} command", exc) from exc
            self.short = 0 < n < size
            return n
        return None


class QIOChannelCommand(QIOChannel):
    """A channel talking to a child process through pipes; make it with :meth:`new_spawn`.

    The child leads its own process group: ending the channel (``close()``
    after ``close_timeout``, or ``abort()`` at once) signals the whole group.

    Attributes:
        pid: the child's process id.
        argv: the command line.
        close_timeout: seconds :meth:`close` waits before each escalation.
        returncode: the child's exit status once reaped (negative: killed by that signal).
    """

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        argv: Sequence[str],
        read_fd: int,
        write_fd: int,
        *,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        super().__init__()
        self._proc = proc
        self.pid = proc.pid
        self.argv = list(argv)
        self.close_timeout = close_timeout
        self.returncode: int | None = None
        self._lock = threading.Lock()
        self._reader = _End(read_fd, select.POLLIN) if read_fd >= 0 else None
        self._writer = _End(write_fd, select.POLLOUT) if write_fd >= 0 else None
        self.set_feature(Feature.SHUTDOWN)
        log.debug("command new pid=%d argv=%r", self.pid, self.argv)

    def __repr__(self) -> str:
        base = super().__repr__()
        return f"{base[:-1]} pid={self.pid}>"

    @classmethod
    def new_spawn(
        cls,
        argv: Sequence[str],
        flags: int = os.O_RDWR,
        *,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> Self:
        """Start ``argv`` and return a channel on its stdin/stdout.

        ``flags`` access mode: ``O_RDONLY`` reads the child's stdout (its stdin
        is /dev/null), ``O_WRONLY`` writes its stdin (its stdout is /dev/null),
        ``O_RDWR`` both.  stderr is inherited.

        Raises:
            ChannelError: the command could not be started (``ENOENT``...).
            ValueError: an empty ``argv`` or a bad access mode.
        """
        if isinstance(argv, (str, bytes)) or not argv:
            raise ValueError("argv must be a non-empty sequence of arguments")
        access = flags & os.O_ACCMODE
        if access not in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
            raise ValueError(f"flags must be O_RDONLY, O_WRONLY or O_RDWR, got {flags:#o}")
        opened: list[int] = []
        try:
            child_in, parent_out = subprocess.DEVNULL, -1
            child_out, parent_in = subprocess.DEVNULL, -1
            if access != os.O_RDONLY:
                child_in, parent_out = os.pipe2(os.O_CLOEXEC)
                opened += (child_in, parent_out)
            if access != os.O_WRONLY:
                parent_in, child_out = os.pipe2(os.O_CLOEXEC)
                opened += (parent_in, child_out)
            proc = process.spawn(argv, child_in, child_out, env=env, cwd=cwd)
        except OSError as exc:
            for fd in opened:
                os.close(fd)
            raise from_oserror(f"Unable to start command {list(argv)!r}", exc) from exc
        for fd in (child_in, child_out):
            if fd >= 0:
                os.close(fd)
        return cls(proc, argv, parent_in, parent_out, close_timeout=close_timeout)

    # -- helpers ------------------------------------------------------------------------

    def _end(self, end: _End | None, what: str) -> _End:
        self._check_open()
        if end is None:
            raise ChannelError(f"Command channel is not open for {what}", errno.EBADF)
        return end

    @property
    def read_fd(self) -> int:
        """The parent's end of the child's stdout pipe, or -1."""
        return self._reader.fd if self._reader is not None else -1

    @property
    def write_fd(self) -> int:
        """The parent's end of the child's stdin pipe, or -1."""
        return self._writer.fd if self._writer is not None else -1

    # -- the backend contract ---------------------------------------------------------

    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        end = self._reader
        if end is None:
            end = self._end(None, "reading")
        if len(iov) > _IOV_MAX:
            iov = iov[:_IOV_MAX]
        size = len(iov[0]) if len(iov) == 1 else sum(map(len, iov))
        n = end.transfer(os.readv, iov, size, self._blocking, "read from")
        return (0, []) if n is None else (n, [])

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        end = self._writer
        if end is None:
            end = self._end(None, "writing")
        if len(iov) > _IOV_MAX:
            iov = iov[:_IOV_MAX]
        if len(iov) == 1:
            n = end.transfer(os.write, iov[0], len(iov[0]), self._blocking, "write to")
        else:
            n = end.transfer(os.writev, iov, sum(map(len, iov)), self._blocking, "write to")
        if n is not None:
            return n
        raise ChannelError("Unable to write to command: shut down for writing", errno.EPIPE)

    def io_shutdown(self, how: Shutdown) -> None:
        with self._lock:
            if how & Shutdown.READ and self._reader is not None:
                self._reader.shutdown()
            if how & Shutdown.WRITE and self._writer is not None:
                self._writer.shutdown()

    def io_create_watch(self, condition: Condition) -> WatchSource:
        self._check_open()
        return FdPairWatchSource(self.read_fd, self.write_fd, condition)

    def io_set_blocking(self, enabled: bool) -> None:
        """Blocking is emulated per call (the pipes stay non-blocking underneath)."""

    def io_peerpid(self) -> int:
        return self.pid

    def _stop(self, grace: float) -> tuple[process.ExitReport, bool]:
        """Close both pipes, stop the child (see :func:`process.stop`); return how it
        ended and whether we had stopped reading its output."""
        with self._lock:
            reader, writer = self._reader, self._writer
            stopped_reading = reader is not None
            for end in (writer, reader):
                if end is not None:
                    end.shutdown()  # wakes any thread still blocked on this end
                    end.close()
        try:
            report = process.stop(self._proc, self.close_timeout, grace)
        except ChildProcessError as exc:
            raise ChannelError(f"Unable to reap command pid {self.pid}: {exc}") from exc
        self.returncode = report.returncode
        log.debug("command end pid=%d returncode=%d", self.pid, report.returncode)
        return report, stopped_reading

    def io_close(self) -> None:
        report, stopped_reading = self._stop(self.close_timeout)
        if report.returncode == 0 and report.forced is None:
            return
        if report.forced is None and stopped_reading and _killed_by_sigpipe(report.returncode):
            return  # it was writing to the stdout pipe we closed on purpose
        raise ChannelError(process.describe(self.argv, report, self.close_timeout))

    def io_abort(self) -> None:
        """Close the pipes and terminate the child's process group at once (no grace)."""
        self._stop(0.0)


def _killed_by_sigpipe(returncode: int) -> bool:
    """True for a death by SIGPIPE, directly (-13) or as a shell reports it (128 + 13)."""
    return returncode in (-signal.SIGPIPE, 128 + signal.SIGPIPE)
