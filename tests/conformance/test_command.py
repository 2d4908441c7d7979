"""The conformance kit over command channels running ``cat``."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path

from qiochan.channel import QIOChannel
from qiochan_command import QIOChannelCommand

Runner = Callable[..., None]


def _cat() -> tuple[QIOChannel, QIOChannel]:
    """One ``cat``: what the channel writes to its stdin comes back from its stdout."""
    channel = QIOChannelCommand.new_spawn(["cat"])
    return channel, channel


def test_cat_read_write(qiochan_conformance: Runner, no_fd_leak: None) -> None:
    qiochan_conformance(_cat, two_way=False)


def test_cat_writer_to_cat_reader(
    qiochan_conformance: Runner, tmp_path: Path, no_fd_leak: None
) -> None:
    """A write-only ``cat > FIFO`` feeding a read-only ``cat FIFO``: both one-way modes."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def make() -> tuple[QIOChannel, QIOChannel]:
        reader = QIOChannelCommand.new_spawn(["cat", str(fifo)], os.O_RDONLY)
        writer = QIOChannelCommand.new_spawn(
            ["/bin/sh", "-c", f"exec cat > {shlex.quote(str(fifo))}"], os.O_WRONLY
        )
        return writer, reader

    qiochan_conformance(make, two_way=False)
