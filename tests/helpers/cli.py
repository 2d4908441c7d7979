"""Running the ``qiochan`` command as a subprocess in tests, without sleeps or leaks."""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

QIOCHAN = [sys.executable, "-m", "qiochan"]
#: Upper bound for any one command in these tests (the CLI itself never sleeps).
TIMEOUT = 50.0


def cli_env(tmp_path: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment with no user configuration and no terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QIOCHAN_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    env["COLUMNS"] = "200"
    env.update(extra or {})
    return env


def run_cli(
    *args: str,
    env: Mapping[str, str],
    stdin: bytes | None = None,
    timeout: float = TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``qiochan ARGS`` to completion; return it with text stdout/stderr."""
    result = subprocess.run(
        [*QIOCHAN, *args],
        input=stdin,
        capture_output=True,
        env=dict(env),
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode(errors="replace"),
        result.stderr.decode(errors="replace"),
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Check a failed run: exit ``code``, one stderr line containing ``words``, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


class Background:
    """A ``qiochan`` command running in the background, read line by line from stderr."""

    def __init__(self, *args: str, env: Mapping[str, str], stdout: int | None = None) -> None:
        self.proc = subprocess.Popen(
            [*QIOCHAN, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.PIPE,
            env=dict(env),
        )
        self.stderr = ""
        self._buffer = b""

    def expect(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """Block until a stderr line matches ``pattern``; return the match.

        Raises:
            AssertionError: the process ended or the time ran out first.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                while b"\n" in self._buffer:
                    raw, self._buffer = self._buffer.split(b"\n", 1)
                    line = raw.decode(errors="replace")
                    self.stderr += line + "\n"
                    match = regex.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                assert left > 0, f"no {pattern!r} on stderr in time; got:\n{self.stderr}"
                if selector.select(left):
                    chunk = os.read(fd, 65536)
                    assert chunk, f"exited before {pattern!r}; stderr:\n{self.stderr}"
                    self._buffer += chunk

    def listening(self, label: str = "") -> str:
        """Wait for ``LABEL: listening on ADDRESS``; return the address."""
        return self.expect(rf"{label}.*listening on (\S+)").group(1)

    def finish(self, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Wait for the process to exit; return it with all of its output."""
        out, err = self.proc.communicate(timeout=timeout)
        self.stderr += (self._buffer + err).decode(errors="replace")
        self._buffer = b""
        return subprocess.CompletedProcess(
            self.proc.args,
            self.proc.returncode,
            (out or b"").decode(errors="replace"),
            self.stderr,
        )

    def kill(self) -> None:
        """Kill it if it still runs, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@contextmanager
def background(*args: str, env: Mapping[str, str]) -> Iterator[Background]:
    """Run ``qiochan ARGS`` in the background; kill it at the end if it still runs."""
    process = Background(*args, env=env)
    try:
        yield process
    finally:
        process.kill()


def port_of(address: str) -> int:
    """Return the port of ``tcp:HOST:PORT`` or ``ws://HOST:PORT/...``."""
    match = re.search(r":(\d+)(?:/|$|,)", address)
    assert match, address
    return int(match.group(1))


def read_at_least(fd: int, count: int, timeout: float = TIMEOUT) -> bytes:
    """Read from ``fd`` until ``count`` bytes came (waiting in select, bounded); return them.

    Raises:
        AssertionError: end of file or the time ran out first.
    """
    got = bytearray()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while len(got) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(got)} of {count} bytes in time"
            if selector.select(left):
                chunk = os.read(fd, 1 << 20)
                assert chunk, f"end of file after {len(got)} of {count} bytes"
                got += chunk
    return bytes(got)


@contextmanager
def feeding(*args: str, env: Mapping[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``qiochan ARGS`` with a stdin pipe the test writes (stderr captured); kill at the end."""
    proc = subprocess.Popen(
        [*QIOCHAN, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def inspect_file(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Run ``qiochan inspect --json PATH``; check it exits 0 and return its report."""
    result = run_cli("inspect", "--json", str(path), env=env)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report
