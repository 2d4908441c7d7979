"""QIOChannelTLS: a TLS session over any master :class:`~qiochan.QIOChannel` (QEMU's channel-tls).

The record layer is real TLS (:mod:`ssl` with memory BIOs, see
:mod:`qiochan_tls.session`), so it runs over sockets, command pipes, memory
pipes or a websocket alike.  How sessions end, and why a bare end of the
transport is an error by default, is explained in :mod:`qiochan_tls`.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from qiochan.channel import QIOChannel, ReadFlag, Shutdown, Steps, WriteFlag
from qiochan.errors import ChannelError, TLSHandshakeError
from qiochan.layer import DEFAULT_SERVER_HANDSHAKE_TIMEOUT, QIOChannelLayer
from qiochan.watch import Condition

from .authz import Authz
from .creds import TLSCredsX509
from .dn import format_dn
from .session import TLSSession

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["QIOChannelTLS"]

log = logging.getLogger("qiochan.tls")

#: Seconds close() waits for a full master to take the close_notify (blocking mode only).
CLOSE_LINGER = 5.0


class QIOChannelTLS(QIOChannelLayer):
    """A TLS client or server session over ``master``; make one with :meth:`new_server`
    or :meth:`new_client`, then call :meth:`handshake` (or ``ahandshake()``).

    The channel owns ``master``: closing it closes the master.  Its blocking mode
    is the master's.  It has ``SHUTDOWN`` when the master has.  The handshake
    is :class:`~qiochan.layer.QIOChannelLayer`'s, bounded by
    ``handshake_timeout``; it fails with :class:`~qiochan.TLSHandshakeError`.
    """

    handshake_error = TLSHandshakeError

    def __init__(
        self,
        master: QIOChannel,
        creds: TLSCredsX509,
        *,
        server: bool,
        hostname: str | None = None,
        authz: Authz | None = None,
        allow_unclean_eof: bool = False,
        handshake_timeout: float | None = None,
    ) -> None:
        super().__init__(master, handshake_timeout=handshake_timeout)
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
        self._creds = creds
        self._server = server
        self._hostname = hostname
        self._authz = authz
        self._allow_unclean_eof = bool(allow_unclean_eof)
        self._read_shut = False
        self._peer_cert: x509.Certificate | None = None
        label = "TLS server" if server else f"TLS client for {hostname!r}"
        context = creds.ssl_context(check_hostname=hostname is not None)
        self._session = TLSSession(
            master, context, server_side=server, hostname=hostname, label=label
        )
        self.name = f"{'tls-server' if server else 'tls-client'}({master.name or ''})"

    @classmethod
    def new_server(
        cls,
        master: QIOChannel,
        creds: TLSCredsX509,
        authz: Authz | None = None,
        *,
        allow_unclean_eof: bool = False,
        handshake_timeout: float | None = DEFAULT_SERVER_HANDSHAKE_TIMEOUT,
    ) -> QIOChannelTLS:
        """Return the server end of a session over ``master`` (handshake not started).

        Args:
            creds: server credentials; with ``verify_peer`` clients must present a
                certificate issued by the CA.
            authz: checked with the client's DN (:meth:`peer_dn`) after the handshake.
            allow_unclean_eof: a bare end of the transport reads as EOF.
            handshake_timeout: seconds the handshake may take (None: no limit).
        Raises:
            ValueError: client credentials, or ``authz`` without ``verify_peer``.
        """
        return cls(
            master,
            creds,
            server=True,
            authz=authz,
            allow_unclean_eof=allow_unclean_eof,
            handshake_timeout=handshake_timeout,
        )

    @classmethod
    def new_client(
        cls,
        master: QIOChannel,
        creds: TLSCredsX509,
        hostname: str | None,
        *,
        allow_unclean_eof: bool = False,
        handshake_timeout: float | None = None,
    ) -> QIOChannelTLS:
        """Return the client end of a session over ``master`` (handshake not started).

        Args:
            creds: client credentials.
            hostname: the server's name or IP address, sent as SNI and matched
                against the certificate's subjectAltNames (its CN only when it has
                none).  None skips the name check (the chain is still verified).
            allow_unclean_eof: a bare end of the transport reads as EOF.
            handshake_timeout: seconds the handshake may take (None: no limit).
        Raises:
            ValueError: server credentials.
        """
        return cls(
            master,
            creds,
            server=False,
            hostname=hostname,
            allow_unclean_eof=allow_unclean_eof,
            handshake_timeout=handshake_timeout,
        )

    # -- properties --------------------------------------------------------------

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
        """True once :meth:`handshake` succeeded (the same as ``handshake_done``)."""
        return self.handshake_done

    def version(self) -> str | None:
        """The negotiated protocol version (``"TLSv1.3"``), None before the handshake."""
        return self._session.version()

    def cipher(self) -> tuple[str, str, int] | None:
        """The negotiated cipher ``(name, protocol, secret bits)``, None before the handshake."""
        return self._session.cipher()

    # -- handshake -----------------------------------------------------------------

    def handshake_label(self) -> str:
        return self._session.label

    def handshake_steps(self) -> Steps[None]:
        """The TLS handshake and, on a server, the authorization check (see the base class)."""
        try:
            yield from self._session.handshake_steps()
            self._authorize()
        except BaseException:
            self._session.failed = True
            raise
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

    # -- the peer ------------------------------------------------------------------

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

    def io_pending(self) -> Condition:
        return Condition.IN if self._session.readable_now() else Condition(0)

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
        self.master.shutdown(how)

    def _close_notify_quietly(self, wait: bool, linger: float = 0.0) -> None:
        if self.master.closed:
            return
        try:
            self._session.send_close_notify(wait=wait, linger=linger)
        except ChannelError as exc:
            log.debug("%s: close_notify not sent: %s", self._session.label, exc)

    def io_close_layer(self) -> None:
        if self.handshake_done and not self._session.close_notify_sent:
            # a blocking channel lingers a little for a full master, as a socket does
            self._close_notify_quietly(wait=False, linger=CLOSE_LINGER if self._blocking else 0.0)
