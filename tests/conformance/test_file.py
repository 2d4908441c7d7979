"""The conformance kit over file channels: an OS pipe pair and a FIFO."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from qiochan.channel import QIOChannel
from qiochan_file import QIOChannelFile, file_pipe

Runner = Callable[..., None]


def test_pipe_pair(qiochan_conformance: Runner, no_fd_leak: None) -> None:
    qiochan_conformance(file_pipe, two_way=False)


def _fifo_factory(path: Path) -> Callable[[], tuple[QIOChannel, QIOChannel]]:
    os.mkfifo(path)

    def make() -> tuple[QIOChannel, QIOChannel]:
        # open the read end non-blocking first so opening the write end does not block
        reader = QIOChannelFile.new_path(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            writer = QIOChannelFile.new_path(path, os.O_WRONLY)
        except BaseException:
            reader.close()
            raise
        reader.set_blocking(True)
        return writer, reader

    return make


def test_fifo(qiochan_conformance: Runner, tmp_path: Path, no_fd_leak: None) -> None:
    qiochan_conformance(_fifo_factory(tmp_path / "fifo"), two_way=False)
