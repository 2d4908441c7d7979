"""Which file a listening unix socket is bound to, so closing it can remove that file.

QEMU unlinks a listening unix socket's path when the channel closes
(``socket_listen_cleanup``), including a socket it inherited as a file
descriptor.  Removing a path is only right while the path still names *that*
socket: another process may have replaced it since.  The socket's own inode
(``fstat``) is a sockfs inode, not the file's, so the file's device and inode
are asked from the kernel through ``sock_diag`` (``UNIX_DIAG_VFS``, what
``ss -x`` shows).  Where sock_diag is unavailable, an absolute path that is a
socket file at adoption time is trusted as it was then.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct

__all__ = ["BoundFile", "bound_file", "stat_file", "unlink_if_same"]

log = logging.getLogger("qiochan.socket")

#: ``(path, st_dev, st_ino)`` of a socket file.
BoundFile = tuple[str, int, int]

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_UDIAG_SHOW_VFS = 0x2
_UNIX_DIAG_VFS = 1
_NO_COOKIE = 0xFFFFFFFF
_NLMSG_HEADER = struct.Struct("=IHHII")
_UNIX_DIAG_REQ = struct.Struct("=BBHIIIII")
_UNIX_DIAG_MSG_SIZE = 16
_RTATTR = struct.Struct("=HH")
_VFS = struct.Struct("=II")


def stat_file(path: str) -> BoundFile:
    """Return ``(path, st_dev, st_ino)`` of ``path`` (raises ``OSError``)."""
    info = os.stat(path)
    return path, info.st_dev, info.st_ino


def _vfs_identity(sock: socket.socket) -> tuple[int, int] | None:
    """Return ``(st_dev, st_ino)`` of the file the unix socket ``sock`` is bound to.

    None when the kernel cannot tell (no sock_diag for unix sockets here).
    """
    inode = os.fstat(sock.fileno()).st_ino
    request = _UNIX_DIAG_REQ.pack(
        socket.AF_UNIX, 0, 0, 0xFFFFFFFF, inode, _UDIAG_SHOW_VFS, _NO_COOKIE, _NO_COOKIE
    )
    header = _NLMSG_HEADER.pack(
        _NLMSG_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0
    )
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as netlink:
            netlink.settimeout(1.0)
            netlink.sendto(header + request, (0, 0))
            reply = netlink.recv(65536)
    except OSError as exc:
        log.debug("sock_diag unavailable: %s", exc)
        return None
    length, kind, _flags, _seq, _pid = _NLMSG_HEADER.unpack_from(reply)
    if kind == _NLMSG_ERROR or length > len(reply):
        return None
    offset = _NLMSG_HEADER.size + _UNIX_DIAG_MSG_SIZE
    while offset + _RTATTR.size <= length:
        size, attribute = _RTATTR.unpack_from(reply, offset)
        if size < _RTATTR.size:
            return None
        if attribute == _UNIX_DIAG_VFS and size >= _RTATTR.size + _VFS.size:
            vfs_inode, kernel_dev = _VFS.unpack_from(reply, offset + _RTATTR.size)
            # the kernel's dev_t is MAJOR << 20 | MINOR; st_dev uses makedev's encoding
            return os.makedev(kernel_dev >> 20, kernel_dev & 0xFFFFF), vfs_inode
        offset += (size + 3) & ~3
    return None


def bound_file(sock: socket.socket) -> BoundFile | None:
    """Return the socket file a listening unix socket ``sock`` is bound to, or None.

    None for an abstract or unnamed socket, a path that no longer names this
    socket, or (without sock_diag) a relative path.
    """
    try:
        path = sock.getsockname()
    except OSError:
        return None
    if not isinstance(path, str) or not path or path.startswith("\0"):
        return None  # unnamed, or abstract (Python gives abstract names as bytes)
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(info.st_mode):
        return None
    identity = _vfs_identity(sock)
    if identity is None:
        return (path, info.st_dev, info.st_ino) if os.path.isabs(path) else None
    return (path, info.st_dev, info.st_ino) if (info.st_dev, info.st_ino) == identity else None


def unlink_if_same(bound: BoundFile) -> None:
    """Remove ``bound``'s path if it still names the same file; never raises."""
    path, device, inode = bound
    try:
        info = os.stat(path)
        if (info.st_dev, info.st_ino) == (device, inode):
            os.unlink(path)
    except OSError:
        pass  # already gone, or replaced by someone else's socket
