"""QIOChannelCommand: pipe modes, shutdown, exit reporting, SIGTERM/SIGKILL escalation, reaping."""

from __future__ import annotations

import errno
import os
import select
import signal
import threading

import pytest

import qiochan
from qiochan.channel import Feature, Shutdown
from qiochan.errors import ChannelError
from qiochan_command import QIOChannelCommand
from tests.helpers.fds import open_fds


def _reaped(pid: int) -> bool:
    """True when ``pid`` is no child of ours any more (exited and reaped: no zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_cat_round_trip_and_clean_exit(no_fd_leak: None) -> None:
    channel = QIOChannelCommand.new_spawn(["cat"])
    assert channel.has_feature(Feature.SHUTDOWN)
    assert channel.peerpid() == channel.pid > 0
    channel.write_all(b"echo me")
    buf = bytearray(7)
    channel.read_all(buf)
    assert buf == b"echo me"
    channel.close()
    assert channel.returncode == 0
    assert _reaped(channel.pid)


def test_read_only_child_gets_dev_null_stdin(no_fd_leak: None) -> None:
    with QIOChannelCommand.new_spawn(["cat"], os.O_RDONLY) as channel:
        assert channel.read(bytearray(1)) == 0, "cat's stdin is /dev/null: immediate EOF"
        with pytest.raises(ChannelError, match="not open for writing") as info:
            channel.write(b"x")
        assert info.value.errno == errno.EBADF


def test_write_only_child(no_fd_leak: None) -> None:
    with QIOChannelCommand.new_spawn(["/bin/sh", "-c", "cat > /dev/null"], os.O_WRONLY) as channel:
        channel.write_all(bytes(300_000))
        with pytest.raises(ChannelError, match="not open for reading"):
            channel.read(bytearray(1))


def test_shutdown_write_gives_the_child_eof(no_fd_leak: None) -> None:
    with QIOChannelCommand.new_spawn(["wc", "-c"]) as channel:
        channel.write_all(bytes(12345))
        channel.shutdown(Shutdown.WRITE)
        with pytest.raises(ChannelError) as info:
            channel.write(b"more")
        assert info.value.errno == errno.EPIPE
        buf = bytearray(64)
        n = channel.read(buf)
        assert int(buf[:n]) == 12345


def test_shutdown_read_wakes_a_blocked_reader(no_fd_leak: None) -> None:
    with QIOChannelCommand.new_spawn(["cat"]) as channel:
        result: list[int] = []
        entering = threading.Event()

        def read() -> None:
            entering.set()
            result.append(channel.read(bytearray(16)))

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        assert entering.wait(10)
        channel.shutdown(Shutdown.READ)
        thread.join(10)
        assert not thread.is_alive() and result == [0]


def test_shutdown_write_wakes_a_blocked_writer(no_fd_leak: None) -> None:
    # the child never reads, so the writer fills the pipe and blocks
    channel = QIOChannelCommand.new_spawn(["sleep", "30"], os.O_WRONLY, close_timeout=0.1)
    failure: list[ChannelError] = []
    entering = threading.Event()

    def write() -> None:
        entering.set()
        try:
            for _ in range(1000):
                channel.write_all(bytes(1 << 20))
        except ChannelError as exc:
            failure.append(exc)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    assert entering.wait(10)
    channel.shutdown(Shutdown.WRITE)
    thread.join(10)
    assert not thread.is_alive(), "shutdown(WRITE) did not wake the blocked writer"
    assert failure and failure[0].errno == errno.EPIPE
    with pytest.raises(ChannelError, match="stopped with SIGTERM"):
        channel.close()
    assert _reaped(channel.pid)


def test_nonzero_exit_is_reported_on_close(no_fd_leak: None) -> None:
    channel = QIOChannelCommand.new_spawn(["/bin/sh", "-c", "exit 3"])
    assert channel.read(bytearray(1)) == 0
    with pytest.raises(ChannelError, match="exited with status 3"):
        channel.close()
    assert channel.returncode == 3 and channel.closed
    assert _reaped(channel.pid)
    channel.close()  # idempotent, no second report


def test_death_by_signal_is_reported(no_fd_leak: None) -> None:
    channel = QIOChannelCommand.new_spawn(["/bin/sh", "-c", "kill -KILL $$"])
    assert channel.read(bytearray(1)) == 0
    with pytest.raises(ChannelError, match="killed by signal SIGKILL"):
        channel.close()
    assert channel.returncode == -9


def test_child_ignoring_sigterm_is_killed_and_reaped(no_fd_leak: None) -> None:
    channel = QIOChannelCommand.new_spawn(
        ["/bin/sh", "-c", "trap '' TERM; exec sleep 30"], close_timeout=0.2
    )
    with pytest.raises(ChannelError, match="stopped with SIGKILL"):
        channel.close()
    assert channel.returncode == -9
    assert _reaped(channel.pid)


def test_sigpipe_after_we_stopped_reading_is_not_an_error(no_fd_leak: None) -> None:
    channel = QIOChannelCommand.new_spawn(["yes"], os.O_RDONLY)
    channel.read_all(bytearray(4))
    channel.close()
    assert channel.returncode is not None and channel.returncode < 0


def test_spawn_errors() -> None:
    with pytest.raises(ChannelError, match="Unable to start command") as info:
        QIOChannelCommand.new_spawn(["/no/such/program"])
    assert info.value.errno == errno.ENOENT
    with pytest.raises(ValueError, match="non-empty"):
        QIOChannelCommand.new_spawn([])
    with pytest.raises(ValueError, match="non-empty"):
        QIOChannelCommand.new_spawn("cat")
    with pytest.raises(ValueError, match="O_RDONLY, O_WRONLY or O_RDWR"):
        QIOChannelCommand.new_spawn(["cat"], os.O_ACCMODE)


def test_no_fd_leak_over_1000_cycles() -> None:
    before = len(open_fds())
    pids = []
    for _ in range(1000):
        with QIOChannelCommand.new_spawn(["true"]) as channel:
            pids.append(channel.pid)
    assert len(open_fds()) == before
    assert all(map(_reaped, pids[-10:]))


def test_close_wakes_a_blocked_reader(no_fd_leak: None) -> None:
    channel = QIOChannelCommand.new_spawn(["cat"])
    result: list[int | None] = []
    entering = threading.Event()

    def read() -> None:
        entering.set()
        try:
            result.append(channel.read(bytearray(16)))
        except ChannelError as exc:  # close() won the race: the channel was already closed
            result.append(exc.errno)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert entering.wait(10)
    channel.close()
    thread.join(10)
    assert not thread.is_alive(), "close() left a reader blocked forever"
    assert result in ([0], [errno.EBADF])


def _group_members(pgid: int) -> list[int]:
    """The pids whose process group is ``pgid`` (from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def _assert_group_gone(pgid: int) -> None:
    """Every process of group ``pgid`` exits (a bounded wait on each one's pidfd)."""
    for pid in _group_members(pgid):
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            assert select.select([pidfd], [], [], 30)[0], f"pid {pid} of group {pgid} survived"
        finally:
            os.close(pidfd)


@pytest.mark.parametrize(
    "command",
    [
        "sleep 1000",
        "echo ready; sleep 1000",
        "sh -c 'sleep 1000 & echo ready; wait'",
        "trap '' TERM; sleep 1000 & echo ready; wait",
    ],
)
def test_escalation_reaches_the_whole_process_group(command: str, no_fd_leak: None) -> None:
    channel = qiochan.connect(f"exec:{command}", close_timeout=0.2)
    assert isinstance(channel, QIOChannelCommand)
    assert os.getpgid(channel.pid) == channel.pid  # a group of its own
    if "ready" in command:
        assert channel.read_all_eof(bytearray(6))  # "ready\n": the grandchild exists
    with pytest.raises(ChannelError, match="stopped with SIG"):
        channel.close()
    _assert_group_gone(channel.pid)


@pytest.mark.parametrize("command", ["yes", "yes; exit $?", "sh -c yes; exit $?"])
def test_sigpipe_is_forgiven_with_or_without_a_shell(command: str, no_fd_leak: None) -> None:
    # "yes; exit $?" makes the shell report the death as status 141 (128 + SIGPIPE)
    channel = qiochan.open_channel(f"exec:{command}", "r")
    channel.read_all(bytearray(4))
    channel.close()
    assert isinstance(channel, QIOChannelCommand)
    assert channel.returncode in (-signal.SIGPIPE, 128 + signal.SIGPIPE)


def test_unread_cat_output_is_forgiven_every_time(no_fd_leak: None) -> None:
    for _ in range(20):
        channel = qiochan.connect("exec:cat")
        channel.write_all(b"x" * (2 << 20))  # more than the pipes hold: cat is mid-write
        channel.close()


def test_a_real_failure_is_still_reported_after_we_stopped_reading(no_fd_leak: None) -> None:
    channel = qiochan.open_channel("exec:echo hi; exit 7", "r")
    channel.read_all(bytearray(3))
    with pytest.raises(ChannelError, match="status 7"):
        channel.close()
