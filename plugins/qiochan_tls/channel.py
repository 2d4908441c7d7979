"""QIOChannelTLS: a TLS session over any master :class:`~qiochan.QIOChannel` (QEMU's channel-tls).

The record layer is real TLS (:mod:`ssl` with memory BIOs, see
:mod:`qiochan_tls.session`), so it runs over sockets, command pipes, memory
pipes or a websocket alike.  How sessions end, and why a bare end of the
transport is an error by default, is explained in :mod:`qiochan_tls`.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from qiochan.channel import Feature, QIOChannel, ReadFlag, Shutdown, WriteFlag
from qiochan.errors import ChannelError, TLSHandshakeError
from qiochan.task import QIOTask
from qiochan.watch import ChildWatchSource, Condition, Watch, WatchSource, resolve_context

from .authz import Authz
from .creds import TLSCredsX509
from .dn import format_dn
from .session import TLSSession

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Generator

    from cryptography import x509

__all__ = ["QIOChannelTLS"]

log = logging.getLogger("qiochan.tls")


class QIOChannelTLS(QIOChannel):
    """A TLS client or server session over ``master``; make one with :meth:`new_server`
    or :meth:`new_client`, then call :meth:`handshake`.

    The channel owns ``master``: closing it closes the master.  Its blocking mode
    is the master's.  It has ``SHUTDOWN`` when the master has.
    """

    def __init__(
        self,
        master: QIOChannel,
        creds: TLSCredsX509,
        *,
        server: bool,
        hostname: str | None = None,
        authz: Authz | None = None,
        allow_unclean_eof: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(master, QIOChannel):
            raise TypeError(f"master must be a QIOChannel, not {type(master).__name__}")
        if not isinstance(creds, TLSCredsX509):
            raise TypeError(f"creds must be TLSCredsX509, not {type(creds).__name__}")
        wanted = "server" if server else "client"
        if creds.endpoint != wanted:
            raise ValueError(
                f"credentials loaded for endpoint {creds.endpoint!r} cannot make a {wanted} session"
            )
        if authz is not None and not isinstance(authz, Authz):
            raise TypeError(f"authz must have is_allowed(identity), got {type(authz).__name__}")
        if authz is not None and not creds.verify_peer:
            raise ValueError("authz needs verify_peer=True: without it clients send no certificate")
        self._master = master
        self._creds = creds
        self._server = server
        self._hostname = hostname
        self._authz = authz
        self._allow_unclean_eof = bool(allow_unclean_eof)
        self._read_shut = False
        self._peer_cert: x509.Certificate | None = None
        self._handshaking = False
        self._handshake_ok = False
        self._handshake_watch: Watch | None = None
        self._handshake_task: QIOTask | None = None
        label = "TLS server" if server else f"TLS client for {hostname!r}"
        context = creds.ssl_context(check_hostname=hostname is not None)
        self._session = TLSSession(
            master, context, server_side=server, hostname=hostname, label=label
        )
        if master.has_feature(Feature.SHUTDOWN):
            self.set_feature(Feature.SHUTDOWN)
        self.name = f"{'tls-server' if server else 'tls-client'}({master.name or ''})"

    @classmethod
    def new_server(
        cls,
        master: QIOChannel,
        creds: TLSCredsX509,
        authz: Authz | None = None,
        *,
        allow_unclean_eof: bool = False,
    ) -> QIOChannelTLS:
        """Return the server end of a session over ``master`` (handshake not started).

        Args:
            creds: server credentials; with ``verify_peer`` clients must present a
                certificate issued by the CA.
            authz: checked with the client's DN (:meth:`peer_dn`) after the handshake.
            allow_unclean_eof: a bare end of the transport reads as EOF.
        Raises:
            ValueError: client credentials, or ``authz`` without ``verify_peer``.
        """
        return cls(master, creds, server=True, authz=authz, allow_unclean_eof=allow_unclean_eof)

    @classmethod
    def new_client(
        cls,
        master: QIOChannel,
        creds: TLSCredsX509,
        hostname: str | None,
        *,
        allow_unclean_eof: bool = False,
    ) -> QIOChannelTLS:
        """Return the client end of a session over ``master`` (handshake not started).

        Args:
            creds: client credentials.
            hostname: the server's name or IP address, sent as SNI and matched
                against the certificate's subjectAltNames (its CN only when it has
                none).  None skips the name check (the chain is still verified).
            allow_unclean_eof: a bare end of the transport reads as EOF.
        Raises:
            ValueError: server credentials.
        """
        return cls(
            master, creds, server=False, hostname=hostname, allow_unclean_eof=allow_unclean_eof
        )

    # -- properties --------------------------------------------------------------

    @property
    def master(self) -> QIOChannel:
        """The channel carrying the ciphertext."""
        return self._master

    @property
    def creds(self) -> TLSCredsX509:
        """The credentials of this end."""
        return self._creds

    @property
    def hostname(self) -> str | None:
        """The server name a client verifies (None on a server)."""
        return self._hostname

    @property
    def is_server(self) -> bool:
        """True for the server end."""
        return self._server

    @property
    def handshake_complete(self) -> bool:
        """True once :meth:`handshake` succeeded."""
        return self._handshake_ok

    def version(self) -> str | None:
        """The negotiated protocol version (``"TLSv1.3"``), None before the handshake."""
        return self._session.version()

    def cipher(self) -> tuple[str, str, int] | None:
        """The negotiated cipher ``(name, protocol, secret bits)``, None before the handshake."""
        return self._session.cipher()

    # -- handshake -----------------------------------------------------------------

    def _handshake_steps(self) -> Generator[Condition, None, None]:
        if self._handshaking:
            raise ChannelError("A TLS handshake is already in progress", errno.EINVAL)
        self._check_open()
        self._handshaking = True
        log.debug("%s: handshake start", self._session.label)
        try:
            yield from self._session.handshake_steps()
            self._authorize()
            self._handshake_ok = True
        except TLSHandshakeError:
            raise
        except ChannelError as exc:
            self._session.failed = True
            raise TLSHandshakeError(
                f"{self._session.label}: handshake failed: {exc}", exc.errno
            ) from exc
        finally:
            self._handshaking = False
        log.debug(
            "%s: handshake complete (%s, %s)",
            self._session.label,
            self.version(),
            (self.cipher() or ("?",))[0],
        )

    def _authorize(self) -> None:
        if not self._server or self._authz is None:
            return
        dn = self.peer_dn()
        if dn is None:
            self._session.failed = True
            raise TLSHandshakeError(
                f"{self._session.label}: authorization needs a client certificate; none was sent"
            )
        if not self._authz.is_allowed(dn):
            self._session.failed = True
            raise TLSHandshakeError(
                f"{self._session.label}: authorization denied for client {dn!r} by {self._authz!r}",
                errno.EACCES,
            )
        log.debug("TLS client %r authorized", dn)

    def handshake(
        self,
        complete: Callable[..., object] | None = None,
        *data: Any,
        context: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """Perform the TLS handshake (and, on a server, the authorization check).

        With ``complete`` None it blocks until done (whatever the blocking mode).
        Otherwise it returns at once: the channel switches to non-blocking mode,
        the handshake advances through watches on ``context`` (see
        :func:`qiochan.watch.resolve_context`), the previous mode is restored, and
        ``complete(task, *data)`` runs there with a :class:`~qiochan.QIOTask`
        whose ``error`` is None on success.

        Raises:
            TLSHandshakeError: (blocking form) the handshake or authorization failed.
        """
        if complete is None:
            if self.handshake_complete:
                return
            steps = self._handshake_steps()
            for condition in steps:
                self._master.wait(condition)
            return
        self._handshake_async(QIOTask(self, complete, *data), context)

    def _handshake_async(self, task: QIOTask, context: asyncio.AbstractEventLoop | None) -> None:
        loop = resolve_context(context, self.aio_context)
        was_blocking = self._blocking
        steps = self._handshake_steps()

        def finish(error: BaseException | None) -> None:
            self._handshake_watch = None
            self._handshake_task = None
            if was_blocking and not self._closed:
                try:
                    self.set_blocking(True)
                except ChannelError as exc:
                    error = error or exc
            if error is not None:
                task.set_error(error)
            task.complete()

        def advance(*_args: object) -> bool:
            self._handshake_watch = None
            if self._closed:
                finish(ChannelError("TLS channel closed during the handshake", errno.EBADF))
                return False
            try:
                condition = next(steps)
            except StopIteration:
                finish(None)
            except Exception as exc:  # the task carries it to complete()
                finish(exc)
            else:
                self._handshake_watch = self._master.add_watch_source(
                    condition, advance, context=loop
                )
            return False

        if self.handshake_complete:
            loop.call_soon_threadsafe(finish, None)
            return
        if was_blocking:
            self.set_blocking(False)
        self._handshake_task = task
        loop.call_soon_threadsafe(advance)

    async def ahandshake(self) -> None:
        """Perform the handshake on the running loop, in non-blocking mode (like the async twins).

        Raises:
            TLSHandshakeError: the handshake or authorization failed.
        """
        if self.handshake_complete:
            return
        if self._blocking:
            self.set_blocking(False)
        for condition in self._handshake_steps():
            await self._master.yield_(condition)

    # -- the peer ------------------------------------------------------------------

    def _require_handshake(self) -> None:
        if not self.handshake_complete:
            raise ChannelError(
                "The TLS handshake is not complete: call handshake() first", errno.EINVAL
            )

    def peer_certificate(self) -> x509.Certificate | None:
        """Return the peer's certificate (a :mod:`cryptography` object), None if it sent none.

        Raises:
            ChannelError: the handshake is not complete (EINVAL).
        """
        if self._peer_cert is None:
            if not self._session.handshake_done:
                raise ChannelError("The TLS handshake is not complete: no peer yet", errno.EINVAL)
            der = self._session.peer_cert_der()
            if der is None:
                return None
            from cryptography import x509

            self._peer_cert = x509.load_der_x509_certificate(der)
        return self._peer_cert

    def peer_dn(self, rfc4514: bool = False) -> str | None:
        """Return the peer certificate's subject, None if it sent no certificate.

        By default in QEMU/GnuTLS order (certificate order, ``C=UK,O=Example,CN=client``),
        the identity QEMU's authz objects see; ``rfc4514=True`` gives the reversed
        RFC 4514 form (``CN=client,O=Example,C=UK``).
        """
        cert = self.peer_certificate()
        return None if cert is None else format_dn(cert.subject, rfc4514=rfc4514)

    # -- ending --------------------------------------------------------------------

    def bye(self) -> None:
        """Send close_notify and wait until it is out; later writes fail with EPIPE.

        The peer's reads then end with a clean EOF; reading from it still works.

        Raises:
            ChannelError: the handshake is not complete, or the master failed.
        """
        self._check_open()
        self._require_handshake()
        self._session.send_close_notify(wait=True)

    # -- the backend contract ----------------------------------------------------

    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        self._require_handshake()
        relaxed = (
            self._allow_unclean_eof
            or self._read_shut
            or (bool(flags) and bool(flags & ReadFlag.RELAXED_EOF))
        )
        return self._session.read_into(iov, self._blocking, relaxed), []

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        self._require_handshake()
        return self._session.write_from(iov, self._blocking)

    def _pending(self) -> Condition:
        return Condition.IN if self._session.readable_now() else Condition(0)

    def io_create_watch(self, condition: Condition) -> WatchSource:
        return ChildWatchSource(self._master, condition, pending=self._pending)

    def io_set_blocking(self, enabled: bool) -> None:
        self._master.set_blocking(enabled)

    def io_set_delay(self, enabled: bool) -> None:
        self._master.set_delay(enabled)

    def io_set_cork(self, enabled: bool) -> None:
        self._master.set_cork(enabled)

    def io_peerpid(self) -> int:
        return self._master.peerpid()

    def io_shutdown(self, how: Shutdown) -> None:
        """Shut down a direction; WRITE first sends close_notify.

        A half-close (``Shutdown.WRITE`` alone) in blocking mode waits for the
        close_notify to be written, as a write would.  Otherwise (``BOTH``, used to
        abort, or non-blocking mode) it is sent only if that needs no waiting.
        """
        if how & Shutdown.READ:
            self._read_shut = True
        if how & Shutdown.WRITE:
            self._close_notify_quietly(wait=how == Shutdown.WRITE and self._blocking)
        self._master.shutdown(how)

    def _close_notify_quietly(self, wait: bool) -> None:
        if self._master.closed:
            return
        try:
            self._session.send_close_notify(wait=wait)
        except ChannelError as exc:
            log.debug("%s: close_notify not sent: %s", self._session.label, exc)

    def _end_handshake(self) -> None:
        watch, self._handshake_watch = self._handshake_watch, None
        if watch is not None:
            watch.remove()
        task, self._handshake_task = self._handshake_task, None
        if task is not None and not task.completed:
            task.set_error(ChannelError("TLS channel closed during the handshake", errno.EBADF))
            task.complete()

    def io_close(self) -> None:
        self._end_handshake()
        if not self._session.close_notify_sent:
            self._close_notify_quietly(wait=False)
        self._master.close()

    def io_abort(self) -> None:
        """No close_notify, and the master aborts: the peer's read fails as truncated."""
        self._end_handshake()
        self._master.abort()
