"""The ``file`` backend's ``open``: ``file:PATH[,offset=N]``, and ``fd:N`` for non-sockets."""

from __future__ import annotations

import errno
import fcntl
import os

from qiochan.address import FdAddress, FileAddress
from qiochan.errors import AddressError, ChannelError, from_oserror

from .channel import QIOChannelFile

__all__ = ["open_file"]

_PATH_FLAGS = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT,
    "rw": os.O_RDWR | os.O_CREAT,
}
_ACCESS = {"r": (os.O_RDONLY, os.O_RDWR), "w": (os.O_WRONLY, os.O_RDWR), "rw": (os.O_RDWR,)}


def _check_access(fd: int, mode: str) -> None:
    try:
        access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError as exc:
        raise from_oserror(f"'fd:{fd}' is not an open file descriptor", exc) from exc
    if access not in _ACCESS[mode]:
        raise ChannelError(f"'fd:{fd}' is not open for mode {mode!r}", errno.EBADF)


def _open_path(address: FileAddress, mode: str, perm: int) -> QIOChannelFile:
    channel = QIOChannelFile.new_path(address.path, _PATH_FLAGS[mode], perm)
    try:
        if mode == "w" and channel.regular:
            # keep what lies before the offset (a header), drop an older stream after it
            os.ftruncate(channel.fd, address.offset)
        if address.offset:
            channel.seek(address.offset)
    except OSError as exc:
        channel.close()
        if isinstance(exc, ChannelError):
            raise
        raise from_oserror(f"Unable to prepare '{address}'", exc) from exc
    return channel


def open_file(address: FileAddress | FdAddress, mode: str, *, perm: int = 0o600) -> QIOChannelFile:
    """Open a ``file:`` address, or take over an ``fd:`` that is not a socket.

    ``"w"`` creates the file (permissions ``perm``) and truncates it at the
    offset; ``"rw"`` creates it without truncating; both then seek to the offset.

    Raises:
        ChannelError: the open, truncate or seek failed, or an fd's access
            mode does not allow ``mode`` (``EBADF``).
        AddressError: another kind of address.
    """
    if isinstance(address, FdAddress):
        _check_access(address.fd, mode)
        return QIOChannelFile.new_fd(address.fd)
    if isinstance(address, FileAddress):
        return _open_path(address, mode, perm)
    raise AddressError(f"The file backend cannot open '{address}'")
