"""QIOChannelSocket: a channel over a TCP, unix, vsock or datagram socket (QEMU's channel-socket).

Reads and writes go straight to ``recv_into``/``recvmsg_into`` and
``send``/``sendmsg`` on the caller's buffers, never copying them.  Unix sockets
pass file descriptors (``SCM_RIGHTS``, received close-on-exec); TCP sockets on
Linux support ``MSG_ZEROCOPY`` writes completed by :meth:`QIOChannel.flush`.
"""

from __future__ import annotations

import array
import errno
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from qiochan.address import Address, FdAddress, InetAddress, as_address
from qiochan.channel import (
    ERR_BLOCK,
    Feature,
    QIOChannel,
    ReadFlag,
    Shutdown,
    WriteFlag,
    await_before,
)
from qiochan.errors import ChannelError, from_oserror, unsupported
from qiochan.task import QIOTask
from qiochan.watch import Condition, FdWatchSource, WatchSource

from . import zerocopy
from .sockaddr import Endpoint, needs_lookup, resolve, to_address
from .unixpath import BoundFile, bound_file, stat_file, unlink_if_same

if TYPE_CHECKING:
    import asyncio

__all__ = ["MAX_FDS", "PeerCred", "QIOChannelSocket", "socket_pair"]

log = logging.getLogger("qiochan.socket")

#: The most descriptors one message can carry (Linux's SCM_MAX_FD).
MAX_FDS = 253
_FD_SIZE = array.array("i").itemsize
_FD_CONTROL_SIZE = socket.CMSG_SPACE(MAX_FDS * _FD_SIZE)
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_MSG_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_UCRED = struct.Struct("3i")
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
_PEEK = int(ReadFlag.MSG_PEEK)
_ZERO_COPY = int(WriteFlag.ZERO_COPY)
_Socket = socket.socket  # the class has a ``socket`` property that hides the module there
_SHUT = {
    Shutdown.READ: socket.SHUT_RD,
    Shutdown.WRITE: socket.SHUT_WR,
    Shutdown.BOTH: socket.SHUT_RDWR,
}


def _connect_error(address: object, exc: OSError) -> ChannelError:
    if isinstance(exc, TimeoutError) and exc.errno is None:
        return ChannelError(f"Failed to connect to '{address}': timed out", errno.ETIMEDOUT)
    return from_oserror(f"Failed to connect to '{address}'", exc)


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[: len(data) - len(data) % _FD_SIZE])
            fds.extend(received)
    return fds


class PeerCred(NamedTuple):
    """A unix socket peer's credentials (``SO_PEERCRED``), as the kernel recorded them
    when the connection was made (a pid of 0: the peer is in another pid namespace)."""

    pid: int
    uid: int
    gid: int


class _Attempts:
    """The connection attempts of one connect: a socket per resolved endpoint, in order.

    Iterating gives ``(socket, endpoint, seconds left or None)`` for the
    caller to connect (blocking, or on a loop); it then reports
    :meth:`connected` (the channel adopts the socket, iteration ends) or
    :meth:`failed`.  A timeout ends the attempts; when none connected, the
    iteration raises the last error as a :class:`ChannelError`.
    """

    def __init__(
        self,
        channel: QIOChannelSocket,
        address: Address,
        endpoints: Sequence[Endpoint],
        timeout: float | None,
    ) -> None:
        self._channel = channel
        self._address = address
        self._endpoints = endpoints
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._current: tuple[_Socket, Endpoint] | None = None
        self._done = False
        self._last: OSError | None = None

    def __iter__(self) -> Iterator[tuple[_Socket, Endpoint, float | None]]:
        for endpoint in self._endpoints:
            try:
                sock = self._channel._open_endpoint(endpoint, self._address)
            except OSError as exc:
                self._last = exc
                continue
            self._current = (sock, endpoint)
            yield sock, endpoint, self._remaining()
            if self._done:
                return
            if isinstance(self._last, TimeoutError):
                break
        assert self._last is not None
        raise _connect_error(self._address, self._last) from self._last

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 1e-3)

    def connected(self) -> None:
        """The current socket connected: the channel adopts it."""
        assert self._current is not None
        sock, endpoint = self._current
        self._channel._attach(sock)
        self._done = True
        log.debug("socket connect %r to %s", self._channel, endpoint)

    def failed(self, exc: OSError) -> None:
        """The current socket did not connect: close it, remember why."""
        assert self._current is not None
        self._current[0].close()
        self._last = exc


class QIOChannelSocket(QIOChannel):
    """A channel over a socket; starts unconnected until a ``*_sync`` call or :meth:`new_fd`.

    Features: ``SHUTDOWN`` and ``READ_MSG_PEEK`` always, ``FD_PASS`` on unix
    sockets, ``LISTEN`` on listening sockets, ``WRITE_ZERO_COPY`` on connected
    TCP sockets where the kernel supports ``MSG_ZEROCOPY``.
    """

    close_may_block = False  # closing never waits

    def __init__(self) -> None:
        super().__init__()
        self._sock: socket.socket | None = None
        self.fd = -1
        self._is_tcp = False
        self._unlink: BoundFile | None = None  # the socket file to remove on close
        self._zero_copy: zerocopy.ZeroCopyState | None = None
        self.set_feature(Feature.SHUTDOWN)
        self.set_feature(Feature.READ_MSG_PEEK)

    def __repr__(self) -> str:
        base = super().__repr__()
        return base if self.fd < 0 else f"{base[:-1]} fd={self.fd}>"

    # -- construction ---------------------------------------------------------------

    @classmethod
    def new_fd(cls, fd: int) -> Self:
        """Return a channel owning the open socket ``fd`` (closed with the channel).

        Raises:
            ChannelError: ``fd`` is not a socket (``ENOTSOCK``) or not open (``EBADF``).
        """
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise from_oserror(f"File descriptor {fd} is not a usable socket", exc) from exc
        channel = cls()
        channel._attach(sock)
        return channel

    @classmethod
    def from_socket(cls, sock: socket.socket) -> Self:
        """Return a channel owning the Python socket ``sock`` (closed with the channel)."""
        channel = cls()
        channel._attach(sock)
        return channel

    def _attach(self, sock: socket.socket) -> None:
        if self._sock is not None:
            sock.close()
            raise ChannelError("Socket channel is already connected", errno.EISCONN)
        sock.setblocking(self._blocking)
        self._sock = sock
        self.fd = sock.fileno()
        self._is_tcp = sock.family in (socket.AF_INET, socket.AF_INET6) and (
            sock.type == socket.SOCK_STREAM
        )
        if sock.family == socket.AF_UNIX:
            self.set_feature(Feature.FD_PASS)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            self.set_feature(Feature.LISTEN)
            if sock.family == socket.AF_UNIX and self._unlink is None:
                # adopted (new_fd, from_socket): its file goes on close, as QEMU does
                self._unlink = bound_file(sock)
        elif self._is_tcp and zerocopy.enable(sock):
            self._zero_copy = zerocopy.ZeroCopyState()
            self.set_feature(Feature.WRITE_ZERO_COPY)
        log.debug("socket new %r family=%s", self, getattr(sock.family, "name", sock.family))

    def _require_socket(self) -> socket.socket:
        self._check_open()
        if self._sock is None:
            raise ChannelError("Socket channel is not connected", errno.ENOTCONN)
        return self._sock

    def _check_unused(self) -> None:
        self._check_open()
        if self._sock is not None:
            raise ChannelError("Socket channel is already connected", errno.EISCONN)

    @property
    def socket(self) -> socket.socket:
        """The underlying Python socket (owned by the channel).

        Raises:
            ChannelError: the channel is closed or not connected yet.
        """
        return self._require_socket()

    def fileno(self) -> int:
        """Return the socket's file descriptor."""
        return self._require_socket().fileno()

    # -- connect / listen / dgram ------------------------------------------------------

    def connect_sync(self, addr: Address | str, *, timeout: float | None = None) -> None:
        """Connect to ``addr``, trying each address a name resolves to; blocks.

        Args:
            timeout: give up after this many seconds (``ETIMEDOUT``).
        Raises:
            ChannelError: every attempt failed (``errno`` of the last one, e.g.
                ``ECONNREFUSED``), or the channel is already connected.
            AddressError: ``addr`` is malformed or not a socket address.
        """
        address = self._target(addr)
        if address is None:
            return
        attempts = _Attempts(self, address, resolve(address), timeout)
        for sock, endpoint, remaining in attempts:
            try:
                sock.settimeout(remaining)
                sock.connect(endpoint.sockaddr)
            except OSError as exc:
                attempts.failed(exc)
            else:
                attempts.connected()

    async def aconnect(self, addr: Address | str, *, timeout: float | None = None) -> None:
        """Connect to ``addr`` on the running loop without blocking it: :meth:`connect_sync`'s twin.

        Each resolved address is tried with a non-blocking ``connect`` the
        loop waits on; no thread is used unless a host name must be looked
        up (then the lookup runs in the loop's executor, as
        :meth:`asyncio.loop.getaddrinfo` does).  Cancelling it closes the
        socket being connected; the channel stays unconnected.

        Args:
            timeout: give up after this many seconds (``ETIMEDOUT``).
        Raises:
            ChannelError: every attempt failed, or the channel is already connected.
            AddressError: ``addr`` is malformed or not a socket address.
        """
        import asyncio

        address = self._target(addr)
        if address is None:
            return
        loop = asyncio.get_running_loop()
        if needs_lookup(address):
            endpoints = await loop.run_in_executor(None, resolve, address)
        else:
            endpoints = resolve(address)
        attempts = _Attempts(self, address, endpoints, timeout)
        for sock, endpoint, remaining in attempts:
            try:
                sock.setblocking(False)
                connecting = loop.sock_connect(sock, endpoint.sockaddr)
                if remaining is None:
                    await connecting
                else:
                    await await_before(connecting, time.monotonic() + remaining)
            except OSError as exc:
                attempts.failed(exc)
            except BaseException:
                sock.close()
                raise
            else:
                attempts.connected()

    def _target(self, addr: Address | str) -> Address | None:
        """The address to connect to, or None when it was an ``fd:`` one, now adopted."""
        self._check_unused()
        address = as_address(addr)
        if isinstance(address, FdAddress):
            self._attach_fd(address.fd)
            return None
        return address

    def _attach_fd(self, fd: int) -> None:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise from_oserror(f"File descriptor {fd} is not a usable socket", exc) from exc
        self._attach(sock)

    @staticmethod
    def _open_endpoint(endpoint: Endpoint, address: Address) -> _Socket:
        sock = socket.socket(endpoint.family, endpoint.type, endpoint.proto)
        if isinstance(address, InetAddress) and address.keep_alive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return sock

    def connect_async(
        self,
        addr: Address | str,
        complete: Callable[..., object],
        *data: Any,
        notify: Callable[..., object] | None = None,
        context: asyncio.AbstractEventLoop | None = None,
        timeout: float | None = None,
    ) -> QIOTask:
        """Connect in a worker thread; ``complete(task, *data)`` then runs on ``context``.

        ``context`` defaults to the loop running now (with none, the worker thread
        completes the task).  ``task.propagate_error()`` in ``complete`` raises
        the connect error, if any.

        Returns:
            The task (its ``source`` is this channel).
        """
        task = QIOTask(self, complete, *data, notify=notify)
        task.run_in_thread(lambda _task: self.connect_sync(addr, timeout=timeout), context=context)
        return task

    def listen_sync(self, addr: Address | str, num: int = 1) -> None:
        """Bind to ``addr`` and listen with a backlog of ``num``.

        A TCP address binds the first address its name resolves to (use
        :class:`~qiochan_socket.QIONetListener` to bind them all); port 0 picks
        a free port (see :attr:`local_address`).  A stale unix socket file is
        replaced, and the file is removed again when the channel closes.  An
        ``fd:`` address adopts an inherited listening socket.

        Raises:
            ChannelError: bind or listen failed (``EADDRINUSE``...).
            AddressError: ``addr`` is malformed or not a socket address.
        """
        self._check_unused()
        address = as_address(addr)
        if isinstance(address, FdAddress):
            self._attach_fd(address.fd)
            if Feature.LISTEN not in self._features:
                raise ChannelError(f"'{address}' is not a listening socket", errno.EINVAL)
            return
        last: OSError | None = None
        for endpoint in resolve(address, passive=True):
            try:
                self.listen_endpoint(endpoint, address, num)
            except OSError as exc:
                last = exc
                continue
            return
        assert last is not None
        raise from_oserror(f"Failed to listen on '{address}'", last) from last

    def listen_endpoint(
        self, endpoint: Endpoint, address: Address, num: int = 1, *, v6only: bool | None = None
    ) -> None:
        """Bind to one resolved ``endpoint`` of ``address`` and listen (for QIONetListener).

        Args:
            v6only: set ``IPV6_V6ONLY`` on an IPv6 socket (None: True when the
                address says ``ipv4=off``, else the system default).
        Raises:
            OSError: socket, bind or listen failed.
        """
        self._check_unused()
        sock = self._open_endpoint(endpoint, address)
        try:
            if endpoint.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if endpoint.family == socket.AF_INET6:
                if v6only is None and isinstance(address, InetAddress) and address.ipv4 is False:
                    v6only = True
                if v6only is not None:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
            self._bind(sock, endpoint.sockaddr)
            sock.listen(num)
        except BaseException:
            sock.close()
            self._unlink_bound()  # bound but could not listen: remove the socket file
            raise
        self._attach(sock)
        log.debug("socket listen %r on %s backlog=%d", self, endpoint, num)

    def _bind(self, sock: _Socket, sockaddr: Any) -> None:
        if sock.family == socket.AF_UNIX and isinstance(sockaddr, str) and sockaddr:
            _remove_stale_socket(sockaddr)
            sock.bind(sockaddr)
            self._unlink = stat_file(sockaddr)
        else:
            sock.bind(sockaddr)

    def dgram_sync(self, local: Address | str | None, remote: Address | str) -> None:
        """Make a datagram socket bound to ``local`` (None: any) and connected to ``remote``.

        Raises:
            ChannelError: socket, bind or connect failed.
        """
        self._check_unused()
        remote_address = as_address(remote)
        local_address = None if local is None else as_address(local)
        last: OSError | None = None
        for endpoint in resolve(remote_address, socket.SOCK_DGRAM):
            sock = socket.socket(endpoint.family, endpoint.type, endpoint.proto)
            try:
                if local_address is not None:
                    for local_endpoint in resolve(local_address, socket.SOCK_DGRAM, passive=True):
                        if local_endpoint.family == endpoint.family:
                            self._bind(sock, local_endpoint.sockaddr)
                            break
                    else:
                        raise ChannelError(
                            f"'{local_address}' has no address of the family of '{endpoint}'",
                            errno.EAFNOSUPPORT,
                        )
                sock.connect(endpoint.sockaddr)
            except OSError as exc:
                sock.close()
                self._unlink_bound()
                last = exc
                continue
            self._attach(sock)
            return
        assert last is not None
        if isinstance(last, ChannelError):
            raise last
        what = f"Failed to set up datagram socket to '{remote_address}'"
        raise from_oserror(what, last) from last

    # -- accept and addresses ----------------------------------------------------------

    def accept(self) -> QIOChannelSocket | None:
        """Accept a connection on a listening channel.

        Returns:
            The new connected channel (blocking), or None when the channel is
            non-blocking and no connection is pending.
        Raises:
            ChannelError: accept failed, or the channel is not listening (``EINVAL``).
        """
        sock = self._require_socket()
        while True:
            try:
                conn, _peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                if not self._blocking:
                    return None
                continue  # EINTR: retry
            except ConnectionAbortedError:
                if not self._blocking:
                    return None
                continue  # the peer gave up before we took it: wait for the next
            except OSError as exc:
                raise from_oserror("Unable to accept connection", exc) from exc
            break
        conn.setblocking(True)
        child = type(self)()
        child._attach(conn)
        log.debug("socket accept %r from %r", child, self)
        return child

    def _address(self, which: str) -> Address:
        sock = self._require_socket()
        try:
            raw = sock.getsockname() if which == "local" else sock.getpeername()
        except OSError as exc:
            raise from_oserror(f"Unable to query {which} socket address", exc) from exc
        return to_address(sock.family, raw)

    @property
    def local_address(self) -> Address:
        """The address this socket is bound to (with the real port when 0 was asked).

        Raises:
            ChannelError: not connected, or the query failed.
        """
        return self._address("local")

    @property
    def remote_address(self) -> Address:
        """The peer's address.

        Raises:
            ChannelError: not connected (``ENOTCONN``), or the query failed.
        """
        return self._address("remote")

    # -- the backend contract --------------------------------------------------------------

    def io_write_fd(self) -> int:
        """Return the fd plain writes may go to directly (io_writev adds nothing), or -1."""
        return self.fd

    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        sock = self._sock
        if sock is None:
            sock = self._require_socket()  # raises the right error
        # flags may be a plain int; IntFlag arithmetic is slow on this hot path
        msg_flags = socket.MSG_PEEK if flags and flags & _PEEK else 0
        if len(iov) > _IOV_MAX:
            iov = iov[:_IOV_MAX]
        while True:
            try:
                if want_fds:
                    return self._recv_fds(sock, iov, msg_flags)
                if len(iov) == 1:
                    return sock.recv_into(iov[0], 0, msg_flags), []
                return sock.recvmsg_into(iov, 0, msg_flags)[0], []
            except BlockingIOError:
                return ERR_BLOCK, []
            except InterruptedError:
                continue
            except OSError as exc:
                raise from_oserror("Unable to read from socket", exc) from exc

    @staticmethod
    def _recv_fds(sock: _Socket, iov: list[memoryview], msg_flags: int) -> tuple[int, list[int]]:
        n, ancdata, got_flags, _addr = sock.recvmsg_into(
            iov, _FD_CONTROL_SIZE, msg_flags | _MSG_CMSG_CLOEXEC
        )
        fds = _fds_from(ancdata)
        if not _MSG_CMSG_CLOEXEC:
            for fd in fds:
                os.set_inheritable(fd, False)
        if got_flags & socket.MSG_CTRUNC:
            log.warning("socket read: control data truncated; the kernel dropped extra fds")
        return n, fds

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        sock = self._sock
        if sock is None:
            sock = self._require_socket()  # raises the right error
        if len(iov) == 1 and not fds and not flags:
            try:  # the common case, kept short: one buffer, no fds, no flags
                return sock.send(iov[0], _MSG_NOSIGNAL)
            except BlockingIOError:
                return ERR_BLOCK
            except InterruptedError:
                pass  # retried below
            except OSError as exc:
                raise from_oserror("Unable to write to socket", exc) from exc
        return self._sendmsg(sock, iov, fds, flags)

    def _sendmsg(
        self, sock: _Socket, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag
    ) -> int:
        if len(iov) > _IOV_MAX:
            iov = iov[:_IOV_MAX]
        msg_flags = _MSG_NOSIGNAL
        zero_copy = self._zero_copy if flags and flags & _ZERO_COPY else None
        if zero_copy is not None:
            msg_flags |= zerocopy.MSG_ZEROCOPY
        ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        while True:
            try:
                n = sock.sendmsg(iov, ancdata, msg_flags)
            except BlockingIOError:
                return ERR_BLOCK
            except InterruptedError:
                continue
            except OSError as exc:
                if zero_copy is not None and exc.errno == errno.ENOBUFS and zero_copy.outstanding:
                    # too much memory lent to the kernel: wait for it to give some back
                    zero_copy.drain(sock, block=True)
                    continue
                raise from_oserror("Unable to write to socket", exc) from exc
            if zero_copy is not None and n > 0:
                zero_copy.sent()
            return n

    def io_flush(self) -> int:
        if self._zero_copy is None:
            return 0
        return self._zero_copy.flush(self._require_socket())

    def io_shutdown(self, how: Shutdown) -> None:
        sock = self._require_socket()
        try:
            sock.shutdown(_SHUT[how])
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                return  # the peer is already gone: nothing left to shut down
            raise from_oserror("Unable to shutdown socket", exc) from exc

    def io_set_delay(self, enabled: bool) -> None:
        if self._is_tcp and self._sock is not None:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(not enabled))
            except OSError as exc:
                log.debug("set_delay ignored: %s", exc)

    def io_set_cork(self, enabled: bool) -> None:
        cork = getattr(socket, "TCP_CORK", None)
        if self._is_tcp and self._sock is not None and cork is not None:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, cork, int(enabled))
            except OSError as exc:
                log.debug("set_cork ignored: %s", exc)

    def peercred(self) -> PeerCred:
        """Return the peer process's ``(pid, uid, gid)`` (``SO_PEERCRED``) on a unix socket.

        The kernel records them when the connection is made (for a listening
        socket: the listener's own).  :meth:`peerpid` gives the pid alone.

        Raises:
            ChannelError: not a unix socket (``ENOTSUP``), the channel is
                closed or unconnected, or the query failed.
        """
        sock = self._require_socket()
        if sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
            raise unsupported("Peer credentials (only unix sockets tell them)")
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        except OSError as exc:
            raise from_oserror("Unable to query peer credentials", exc) from exc
        return PeerCred(*_UCRED.unpack(raw))

    def io_peerpid(self) -> int:
        pid = self.peercred().pid
        if pid <= 0:
            raise ChannelError("The peer's process id is not known", errno.ENOTCONN)
        return pid

    def io_create_watch(self, condition: Condition) -> WatchSource:
        self._require_socket()
        return FdWatchSource(self.fd, condition)

    def io_set_blocking(self, enabled: bool) -> None:
        if self._sock is not None:
            self._sock.setblocking(enabled)

    def io_abort(self) -> None:
        """Close with a reset on TCP (``SO_LINGER`` 0): the peer's next read fails.

        A unix stream socket has no reset: Linux reports ``ECONNRESET`` to the
        peer only when data the peer sent is still unread here; otherwise the
        peer sees an end of stream, as after :meth:`close`.
        """
        sock = self._sock
        if sock is not None and sock.type == socket.SOCK_STREAM:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError as exc:
                log.debug("abort: SO_LINGER refused (%s); closing normally", exc)
        self.io_close()

    def io_close(self) -> None:
        sock, self._sock = self._sock, None
        self.fd = -1
        self._unlink_bound()
        if sock is not None:
            try:
                sock.close()
            except OSError as exc:
                raise from_oserror("Unable to close socket", exc) from exc

    def _unlink_bound(self) -> None:
        bound, self._unlink = self._unlink, None
        if bound is not None:
            unlink_if_same(bound)


def _remove_stale_socket(path: str) -> None:
    """Remove a leftover socket file at ``path``: a socket nobody listens on any more.

    A regular file, or a socket a live server still accepts on, is left alone
    (the bind then fails with ``EADDRINUSE``).
    """
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)  # a live server with a full backlog must not block us
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
        except OSError:
            pass


def socket_pair(
    family: int = socket.AF_UNIX, sock_type: int = socket.SOCK_STREAM
) -> tuple[QIOChannelSocket, QIOChannelSocket]:
    """Return two connected socket channels (``socket.socketpair``).

    Raises:
        ChannelError: the pair could not be created.
    """
    try:
        a, b = socket.socketpair(family, sock_type)
    except OSError as exc:
        raise from_oserror("Unable to create socket pair", exc) from exc
    return QIOChannelSocket.from_socket(a), QIOChannelSocket.from_socket(b)
