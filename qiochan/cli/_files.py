"""The files of ``send`` and ``recv``: the input, and an output that is never destroyed.

``recv`` writes into a temporary file beside its target and puts it in place
only after a clean end of stream (:class:`ReceivedFile`), so a failed or cut
transfer never touches an existing file.
"""

from __future__ import annotations

import io
import os
import secrets
import stat
import sys
from pathlib import Path
from typing import BinaryIO, cast

from ._common import EXIT_USAGE, CLIError

__all__ = ["ReceivedFile", "open_input"]


def open_input(path: str) -> tuple[io.BufferedIOBase, int | None]:
    """Open what ``send`` reads (``-``: stdin); return it and its size (None: unknown).

    Raises:
        CLIError: (exit status 2) it cannot be opened.
    """
    if path == "-":
        return cast(io.BufferedIOBase, sys.stdin.buffer), None
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise CLIError(f"cannot open {path}: {exc.strerror}", EXIT_USAGE) from None
    size = os.fstat(file.fileno()).st_size
    return file, size if size > 0 else None


class ReceivedFile:
    """Where ``recv`` writes: a temporary file beside ``path``, put in place at a clean end.

    ``-`` is stdout, and a target that exists but is no regular file (a
    device, a FIFO) is written directly: there is nothing to replace.

    Args:
        path: the target.
        keep_partial: on failure keep what arrived as ``PATH.partial``.
    Raises:
        CLIError: (exit status 2) the temporary file cannot be created there.
    """

    def __init__(self, path: str, keep_partial: bool = False) -> None:
        self.path = path
        self.keep_partial = keep_partial
        self.temporary: Path | None = None
        self.name = ""  # the target's file name, when written through a temporary file
        self._mode: int | None = None
        if path == "-":
            self.file: BinaryIO = sys.stdout.buffer
            return
        target = Path(os.path.realpath(path))  # through a symlink: replace what it points to
        try:
            info = target.stat()
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise CLIError(f"cannot write {path}: {exc.strerror}", EXIT_USAGE) from None
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise CLIError(f"cannot write {path}: it is a directory", EXIT_USAGE)
        if info is not None and not stat.S_ISREG(info.st_mode):
            self.file = self._open(target, os.O_WRONLY)
            return
        self._mode = None if info is None else stat.S_IMODE(info.st_mode)
        self.name = target.name
        self.temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        self.file = self._open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)

    def _open(self, path: Path, flags: int) -> BinaryIO:
        try:
            fd = os.open(path, flags | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise CLIError(f"cannot write {self.path}: {exc.strerror}", EXIT_USAGE) from None
        return os.fdopen(fd, "wb")

    def commit(self) -> None:
        """Flush, and put the temporary file in place of the target (atomically).

        Raises:
            OSError: flushing or renaming failed (the target is untouched).
        """
        self.file.flush()
        if self.temporary is None:
            return
        os.fsync(self.file.fileno())
        if self._mode is not None:
            os.fchmod(self.file.fileno(), self._mode)
        self.file.close()
        os.replace(self.temporary, self.temporary.with_name(self.name))
        self.temporary = None

    def discard(self) -> str:
        """Drop (or, with ``keep_partial``, keep) what arrived; return what became of it."""
        if self.temporary is None:
            return "" if self.path == "-" else f"{self.path} is incomplete"
        temporary, self.temporary = self.temporary, None
        self.file.close()
        try:
            if self.keep_partial:
                kept = temporary.with_name(f"{self.name}.partial")
                os.replace(temporary, kept)
                return f"what arrived is in {kept}"
            temporary.unlink()
        except OSError as exc:
            return f"{temporary} could not be cleaned up: {exc.strerror}"
        return f"{self.path} {'left unchanged' if self._mode is not None else 'not created'}"

    def close(self) -> None:
        """Close the file (stdout stays open); an uncommitted temporary file is discarded."""
        if self.temporary is not None:
            self.discard()
        elif self.file is not sys.stdout.buffer:
            self.file.close()
