"""Child processes for command channels: spawn, wait with a bound, terminate, always reap.

Waiting uses a pidfd (Linux >= 5.3) polled with a timeout, so a bounded wait
neither sleeps in a loop nor blocks forever; elsewhere it falls back to
:meth:`subprocess.Popen.wait`.
"""

from __future__ import annotations

import logging
import os
import select
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["ExitReport", "describe", "signal_group", "spawn", "stop"]

log = logging.getLogger("qiochan.command")

#: How long to wait after SIGKILL before giving up on reaping.
KILL_TIMEOUT = 5.0


def spawn(
    argv: Sequence[str],
    stdin: int,
    stdout: int,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with the given stdin/stdout (fds, or ``subprocess.DEVNULL``).

    The child leads a process group of its own, so :func:`stop` reaches every
    process it starts (a shell's children too), and a terminal's Ctrl-C goes
    to us, not to it.  stderr is inherited, other descriptors are closed in
    the child.

    Raises:
        OSError: the program could not be started (``ENOENT``, ``EACCES``...).
    """
    return subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=stdout,
        close_fds=True,
        env=env,
        cwd=cwd,
        process_group=0,
    )


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to ``proc``'s process group (every process it started that stayed in it).

    The group id stays reserved while any member lives, even after ``proc``
    itself was reaped, so this never reaches an unrelated process.
    """
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass  # the whole group is gone


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``proc`` to exit and reap it; return True if it did."""
    if proc.poll() is not None:
        return True
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        pidfd = pidfd_open(proc.pid)
    except ProcessLookupError:
        return proc.poll() is not None
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll(max(0, int(timeout * 1000)))
    finally:
        os.close(pidfd)
    return proc.poll() is not None


@dataclass(frozen=True)
class ExitReport:
    """How a child ended: its return code and the signal we had to send, if any."""

    returncode: int
    forced: signal.Signals | None = None

    @property
    def signal(self) -> signal.Signals | None:
        """The signal that killed the child, or None if it exited."""
        return signal.Signals(-self.returncode) if self.returncode < 0 else None


def stop(proc: subprocess.Popen[bytes], timeout: float, grace: float | None = None) -> ExitReport:
    """Wait ``grace`` s (default ``timeout``) for ``proc`` to exit, then SIGTERM its
    process group, wait ``timeout`` s, then SIGKILL the group; reap ``proc``.

    Once a signal had to be sent, the group is swept with SIGKILL after
    ``proc`` exits, so no process it started outlives it.

    Returns:
        The exit report (``forced`` names the signal we sent, if any).
    Raises:
        ChildProcessError: the child survived SIGKILL for :data:`KILL_TIMEOUT` s
            (stuck in the kernel); it could not be reaped.
    """
    if wait_exit(proc, timeout if grace is None else grace):
        return ExitReport(proc.returncode)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, KILL_TIMEOUT)):
        log.debug("command pid %d did not exit; sending %s to its group", proc.pid, sig.name)
        signal_group(proc, sig)
        if wait_exit(proc, wait):
            signal_group(proc, signal.SIGKILL)
            return ExitReport(proc.returncode, sig)
    raise ChildProcessError(f"process {proc.pid} refused to die after SIGKILL")


def describe(argv: Sequence[str], report: ExitReport, timeout: float) -> str:
    """Return a sentence naming ``argv`` and how it ended."""
    command = shlex.join(argv)
    if len(command) > 80:
        command = command[:77] + "..."
    if report.forced is not None:
        return (
            f"Command '{command}' did not exit within {timeout:g} s of closing its pipes; "
            f"stopped with {report.forced.name}"
        )
    sig = report.signal
    if sig is not None:
        return f"Command '{command}' was killed by signal {sig.name}"
    return f"Command '{command}' exited with status {report.returncode}"
