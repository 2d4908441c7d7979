"""Linux ``MSG_ZEROCOPY``: enabling it on a socket and reading its completions.

A ``sendmsg(..., MSG_ZEROCOPY)`` lends the caller's pages to the kernel; each
such call gets a sequence number, and the kernel reports ranges of completed
numbers on the socket's error queue as ``struct sock_extended_err`` with
``ee_origin == SO_EE_ORIGIN_ZEROCOPY``, ``[ee_info, ee_data]`` the range and
``SO_EE_CODE_ZEROCOPY_COPIED`` in ``ee_code`` when the kernel copied the data
after all (it always does on loopback).
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import sys
from dataclasses import dataclass

from qiochan.errors import ChannelError, from_oserror

__all__ = ["MSG_ZEROCOPY", "ZeroCopyState", "enable"]

# from <linux/socket.h>, <linux/errqueue.h>, <linux/in.h>, <linux/in6.h>
SO_ZEROCOPY = getattr(socket, "SO_ZEROCOPY", 60)
MSG_ZEROCOPY = getattr(socket, "MSG_ZEROCOPY", 0x4000000)
_SO_EE_ORIGIN_ZEROCOPY = 5
_SO_EE_CODE_ZEROCOPY_COPIED = 1
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_RECVERR = {(socket.IPPROTO_IP, _IP_RECVERR), (socket.IPPROTO_IPV6, _IPV6_RECVERR)}
# struct sock_extended_err { u32 ee_errno; u8 ee_origin, ee_type, ee_code, ee_pad;
#                            u32 ee_info; u32 ee_data; }
_EXTENDED_ERR = struct.Struct("=IBBBBII")
# room for the extended error and the offender address that follows it
_CONTROL_SIZE = socket.CMSG_SPACE(_EXTENDED_ERR.size + 28)


def enable(sock: socket.socket) -> bool:
    """Turn on ``SO_ZEROCOPY`` for a TCP socket; return True when the kernel accepted it."""
    if not sys.platform.startswith("linux"):
        return False
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    except OSError:
        return False
    return True


@dataclass
class ZeroCopyState:
    """Counts zero-copy sends queued and completed since the socket was made."""

    queued: int = 0
    completed: int = 0
    any_zero_copied: bool = False
    any_since_flush: bool = False

    def sent(self) -> None:
        """Record one successful ``MSG_ZEROCOPY`` send."""
        self.queued += 1
        self.any_since_flush = True

    @property
    def outstanding(self) -> int:
        """Sends whose completion the kernel has not reported yet."""
        return self.queued - self.completed

    def drain(self, sock: socket.socket, *, block: bool) -> None:
        """Read completions from the error queue; with ``block``, until none is outstanding.

        Raises:
            ChannelError: the error queue reported a socket error or something
                other than a zero-copy completion.
        """
        while self.outstanding > 0:
            try:
                _data, ancdata, _flags, _addr = sock.recvmsg(
                    0, _CONTROL_SIZE, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT
                )
            except (BlockingIOError, InterruptedError):
                if not block:
                    return
                _wait_for_error_queue(sock)
                continue
            except OSError as exc:
                raise from_oserror("Unable to read the socket error queue", exc) from exc
            for level, kind, payload in ancdata:
                self._completion(level, kind, payload)

    def _completion(self, level: int, kind: int, payload: bytes) -> None:
        if (level, kind) not in _RECVERR or len(payload) < _EXTENDED_ERR.size:
            raise ChannelError("Wrong control message in the socket error queue", errno.EPROTO)
        ee_errno, origin, _type, code, _pad, first, last = _EXTENDED_ERR.unpack_from(payload)
        if ee_errno != 0:
            raise ChannelError(
                f"Zero-copy send failed: {errno.errorcode.get(ee_errno, ee_errno)}", ee_errno
            )
        if origin != _SO_EE_ORIGIN_ZEROCOPY:
            raise ChannelError(
                f"Error queue message not from zero copy (origin {origin})", errno.EPROTO
            )
        if last < first:
            raise ChannelError("Wrong zero-copy notification bounds", errno.EPROTO)
        self.completed += last - first + 1
        if code != _SO_EE_CODE_ZEROCOPY_COPIED:
            self.any_zero_copied = True

    def flush(self, sock: socket.socket) -> int:
        """Wait for every queued send; return 1 when each one since the last flush was copied."""
        self.drain(sock, block=True)
        result = 1 if self.any_since_flush and not self.any_zero_copied else 0
        self.any_since_flush = False
        self.any_zero_copied = False
        return result


def _wait_for_error_queue(sock: socket.socket) -> None:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLERR)
    poller.poll()
