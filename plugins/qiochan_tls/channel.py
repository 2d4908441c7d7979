"""QIOChannelTLS: a TLS session over any master :class:`~qiochan.QIOChannel` (QEMU's channel-tls).

The record layer is real TLS: a Sans-I/O :class:`~qiochan_tls.session.TLSSession`
(an :mod:`ssl` ``SSLObject`` over memory BIOs, no I/O, no locks); this channel
moves its ciphertext over the master and serialises its calls, so it runs over
sockets, command pipes, memory pipes or a websocket alike.  How sessions end,
and why a bare end of the transport is an error by default, is explained in
:mod:`qiochan_tls`.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from qiochan.channel import ERR_BLOCK, QIOChannel, ReadFlag, Shutdown, Steps, WriteFlag
from qiochan.errors import ChannelError, TLSError, TLSHandshakeError
from qiochan.layer import DEFAULT_SERVER_HANDSHAKE_TIMEOUT, QIOChannelLayer
from qiochan.watch import Condition

from .authz import Authz
from .creds import TLSCredsX509
from .dn import format_dn
from .session import RECV_CHUNK, RECV_FIRST, TLSSession

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
        self._session = TLSSession(context, server_side=server, hostname=hostname, label=label)
        # the session does no I/O and takes no locks: this channel moves its
        # ciphertext and serialises its calls (one reader and one writer thread
        # at a time, plus close_notify from any thread)
        self._ssl_lock = threading.Lock()  # the session (CPU work only)
        self._send_lock = threading.Lock()  # ciphertext leaves in order
        self._recv_lock = threading.Lock()  # one reader of the master
        self._send_buf = b""
        self._send_off = 0
        self._unreported = 0
        self._rview = memoryview(bytearray(RECV_FIRST))
        self._transport_eof = False
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
            yield from self._handshake_records()
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

    def _handshake_records(self) -> Steps[None]:
        session = self._session
        while True:
            try:
                with self._ssl_lock:
                    done = session.do_handshake()
            except TLSHandshakeError:
                self._send_alert()
                raise
            while not self._send_some():
                yield Condition.OUT
            if done:
                return
            while True:
                with self._recv_lock:
                    n = self._fill(blocking=False)
                if n != ERR_BLOCK:
                    break
                yield Condition.IN
            if n == 0:
                raise TLSHandshakeError(
                    f"{session.label}: handshake failed: the peer closed the connection",
                    errno.ECONNRESET,
                )

    def _send_alert(self) -> None:
        """Best effort: deliver the alert OpenSSL queued, so the peer learns why."""
        try:
            self._send_some()
        except ChannelError as exc:
            log.debug("%s: could not send the alert: %s", self._session.label, exc)

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
        self._send_close_notify(wait=True)

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
        return self._read_into(iov, relaxed), []

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        self._require_handshake()
        return self._write_from(iov)

    def io_pending(self) -> Condition:
        if self._transport_eof:
            return Condition.IN
        with self._ssl_lock:
            return Condition.IN if self._session.has_input() else Condition(0)

    # -- moving ciphertext (the I/O the session does not do) ---------------------

    def _flush(self, blocking: bool) -> bool:
        """Send queued ciphertext (caller holds ``_send_lock``).

        Returns:
            True when everything was sent; False when the master would block
            and ``blocking`` is False.
        """
        session = self._session
        while True:
            data = self._send_buf
            if self._send_off >= len(data):
                # reading the BIO's size without the lock is safe: a stale zero
                # only leaves data for the next flush, as if it came later
                if not session.output_pending:
                    return True
                with self._ssl_lock:
                    data = session.data_to_send()
                self._send_buf, self._send_off = data, 0
            n = self.master.write(memoryview(data)[self._send_off :] if self._send_off else data)
            if n == ERR_BLOCK:
                if not blocking:
                    return False
                self.master.wait(Condition.OUT)
                continue
            self._send_off += n

    def _send_some(self) -> bool:
        with self._send_lock:
            return self._flush(blocking=False)

    def _fill(self, blocking: bool) -> int:
        """Read ciphertext from the master into the session (caller holds ``_recv_lock``).

        Returns:
            Bytes read, 0 at the master's EOF, or ERR_BLOCK (only when not ``blocking``).
        """
        while True:
            n = self.master.read(self._rview)
            if n == ERR_BLOCK:
                if not blocking:
                    return ERR_BLOCK
                self.master.wait(Condition.IN)
                continue
            if n > 0:
                with self._ssl_lock:
                    self._session.receive_data(self._rview[:n])
                if n == self._rview.nbytes and n < RECV_CHUNK:
                    self._rview = memoryview(bytearray(2 * n))
            else:
                self._transport_eof = True
            return n

    def _read_into(self, iov: list[memoryview], relaxed_eof: bool) -> int:
        """Decrypt into ``iov``: bytes read, 0 at EOF, or ERR_BLOCK (non-blocking).

        Raises:
            TLSError: a bad record or alert, or the peer ended the transport without
                close_notify while ``relaxed_eof`` is False.
        """
        session = self._session
        with self._recv_lock:
            while True:
                with self._ssl_lock:
                    got = session.decrypt(iov)
                if got or session.peer_closed:
                    return got
                if not self._transport_eof:
                    n = self._fill(self._blocking)
                    if n == ERR_BLOCK:
                        return ERR_BLOCK
                    if n > 0:
                        continue
                if relaxed_eof:
                    return 0
                raise TLSError(
                    f"{session.label}: the peer closed the connection without a TLS "
                    "close_notify (the data may be truncated; allow_unclean_eof or "
                    "RELAXED_EOF accept it)",
                    errno.ECONNABORTED,
                )

    def _write_from(self, iov: list[memoryview]) -> int:
        """Encrypt and send from ``iov``.

        Non-blocking writes follow OpenSSL's ``SSL_write`` rule: when a write
        returns ERR_BLOCK after its data was encrypted, the caller retries with
        the same data, and the retry reports those bytes once their records
        are sent.

        Returns:
            Plaintext bytes consumed, or ERR_BLOCK: then retry with the same data.
        Raises:
            ChannelError: the write side was shut down (EPIPE) or the master failed.
            TLSError: OpenSSL refused to encrypt.
        """
        session = self._session
        blocking = self._blocking
        with self._send_lock:
            if session.close_notify_sent:
                raise ChannelError(
                    f"{session.label}: Unable to write: the TLS session was shut down for writing",
                    errno.EPIPE,
                )
            # records left over by a write that blocked go first; then that write's
            # retry (with the same data) learns they are out
            if self._send_off < len(self._send_buf) and not self._flush(blocking):
                return ERR_BLOCK
            if self._unreported:
                done = min(self._unreported, sum(view.nbytes for view in iov))
                self._unreported -= done
                return done
            with self._ssl_lock:
                consumed = session.encrypt(iov)
                # everything earlier was sent above: the new records start the buffer
                self._send_buf, self._send_off = session.data_to_send(), 0
            if not self._flush(blocking):
                self._unreported = consumed
                return ERR_BLOCK
            return consumed

    def _send_close_notify(self, wait: bool, linger: float = 0.0) -> bool:
        """Queue close_notify (once) and send it with whatever ciphertext is still queued.

        Args:
            wait: block until it is sent.  When False, give up at once if another
                thread is writing, or when the master is not writable within
                ``linger`` seconds.
        Returns:
            True when close_notify was sent.
        Raises:
            ChannelError: the master failed while sending.
        """
        session = self._session
        if not session.handshake_done or session.failed:
            return False
        if not self._send_lock.acquire(blocking=wait):
            return False
        try:
            with self._ssl_lock:
                session.queue_close_notify()
            if wait:
                return self._flush(blocking=True)
            return self._flush_if_writable(time.monotonic() + linger)
        finally:
            self._send_lock.release()

    def _flush_if_writable(self, deadline: float) -> bool:
        # try first: the master is nearly always writable, and a wait costs a poll
        while not self._flush(blocking=False):
            try:
                self.master.wait(Condition.OUT, timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return False
        return True

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
            self._send_close_notify(wait=wait, linger=linger)
        except ChannelError as exc:
            log.debug("%s: close_notify not sent: %s", self._session.label, exc)

    def io_close_layer(self) -> None:
        if self.handshake_done and not self._session.close_notify_sent:
            # a blocking channel lingers a little for a full master, as a socket does
            self._close_notify_quietly(wait=False, linger=CLOSE_LINGER if self._blocking else 0.0)

    def io_close_layer_nowait(self) -> bool:
        if self._blocking:
            return False  # close() may linger for a full master
        self.io_close_layer()  # non-blocking: close_notify goes out now or not at all
        return True
