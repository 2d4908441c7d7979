"""The file backend: :class:`QIOChannelFile` over files, pipes, FIFOs and devices.

Registered through the ``qiochan.plugins`` entry point like any third-party
plugin.  Scheme: ``file:PATH[,offset=N]`` (``open_channel`` with mode ``r``,
``w`` or ``rw``); the ``socket`` backend hands it ``fd:N`` descriptors that are
not sockets.
"""

from __future__ import annotations

from qiochan.channel import Feature
from qiochan.plugin import Backend, hookimpl

from .backend import open_file
from .channel import QIOChannelFile, file_pipe

__all__ = ["QIOChannelFile", "file_pipe", "open_file", "qiochan_backends"]


@hookimpl
def qiochan_backends() -> list[Backend]:
    """Declare the file backend."""
    return [
        Backend(
            name="file",
            schemes=("file",),
            kind="transport",
            features=frozenset({Feature.SEEKABLE}),
            open=open_file,
            description="files, pipes, FIFOs and devices (seek, positioned I/O)",
        )
    ]
