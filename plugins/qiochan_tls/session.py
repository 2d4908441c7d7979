"""The TLS record layer over a master channel: an :class:`ssl.SSLObject` between two MemoryBIOs.

:class:`TLSSession` moves ciphertext between the master :class:`QIOChannel`
and OpenSSL, so the session runs over any channel (socket, command pipe,
memory pipe, websocket).  It is safe for one reader thread and one writer
thread at a time (plus :meth:`TLSSession.send_close_notify` from any thread):

* ``_ssl_lock`` guards the SSLObject and the BIOs (held only for CPU work);
* ``_send_lock`` serialises sending ciphertext, so records leave in order;
* ``_recv_lock`` serialises reading the master.

Non-blocking writes follow OpenSSL's ``SSL_write`` rule: when a write returns
:data:`~qiochan.ERR_BLOCK` after its data was encrypted, the caller retries with
the same data, and the retry reports those bytes once their records are sent.
"""

from __future__ import annotations

import errno
import logging
import ssl
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from qiochan.channel import ERR_BLOCK, QIOChannel
from qiochan.errors import ChannelError, TLSError, TLSHandshakeError
from qiochan.iov import ByteQueue
from qiochan.watch import Condition

__all__ = ["RECV_CHUNK", "WRITE_CHUNK", "TLSSession", "describe_ssl_error"]

log = logging.getLogger("qiochan.tls")

#: Ciphertext bytes read from the master at a time: the buffer starts small and
#: doubles up to RECV_CHUNK while reads keep filling it (a bulk stream).
RECV_CHUNK = 1024 * 1024
RECV_FIRST = 64 * 1024
#: Plaintext bytes encrypted per write call at most.
WRITE_CHUNK = 1024 * 1024
# smaller buffers of a writev are gathered into one record-sized write
_GATHER = 16 * 1024
_MAX_RECORD = 16 * 1024


def describe_ssl_error(exc: ssl.SSLError) -> str:
    """Return a readable reason for ``exc``.

    For example ``certificate verify failed: certificate has expired`` or
    ``tlsv13 alert certificate required``.
    """
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason).replace("_", " ").lower()
    return str(exc)


class TLSSession:
    """One TLS session's state over ``master``.

    Args:
        master: the channel carrying the ciphertext (not owned: the caller closes it).
        context: the configured context (server or client).
        server_side: True for the server end.
        hostname: the name to send (SNI) and, if the context checks names, verify.
        label: how messages name this end (``TLS client for 'localhost'``).
    """

    def __init__(
        self,
        master: QIOChannel,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        hostname: str | None,
        label: str,
    ) -> None:
        self.master = master
        self.label = label
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=hostname
        )
        self._ssl_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._send_buf = b""
        self._send_off = 0
        self._unreported = 0
        self._stash = ByteQueue()  # plaintext drained before close_notify was queued
        self._rview = memoryview(bytearray(RECV_FIRST))
        self.handshake_done = False
        self.failed = False
        self.peer_closed = False  # the peer's close_notify arrived
        self.transport_eof = False  # the master reached EOF
        self.close_notify_sent = False

    # -- facts about the session ------------------------------------------------

    def version(self) -> str | None:
        """The negotiated protocol (``TLSv1.3``), None before the handshake."""
        return self._ssl.version()

    def cipher(self) -> tuple[str, str, int] | None:
        """The negotiated cipher ``(name, protocol, secret bits)``, None before the handshake."""
        return self._ssl.cipher()

    def peer_cert_der(self) -> bytes | None:
        """The peer's certificate in DER, None when it sent none."""
        return self._ssl.getpeercert(binary_form=True)

    def readable_now(self) -> bool:
        """True when a read would not wait for the master: data or an end is already here."""
        if self.peer_closed or self.transport_eof or self._incoming.pending:
            return True
        with self._ssl_lock:
            return bool(self._stash) or self._ssl.pending() > 0

    def _error(self, what: str, exc: ssl.SSLError) -> TLSError:
        self.failed = True
        return TLSError(f"{self.label}: {what} failed: {describe_ssl_error(exc)}")

    # -- moving ciphertext ----------------------------------------------------

    def _flush(self, blocking: bool) -> bool:
        """Send queued ciphertext (caller holds ``_send_lock``).

        Returns:
            True when everything was sent; False when the master would block
            and ``blocking`` is False.
        """
        while True:
            data = self._send_buf
            if self._send_off >= len(data):
                # reading the BIO's size without the lock is safe: a stale zero
                # only leaves data for the next flush, as if it came later
                if not self._outgoing.pending:
                    return True
                with self._ssl_lock:
                    data = self._outgoing.read()
                self._send_buf, self._send_off = data, 0
            n = self.master.write(memoryview(data)[self._send_off :] if self._send_off else data)
            if n == ERR_BLOCK:
                if not blocking:
                    return False
                self.master.wait(Condition.OUT)
                continue
            self._send_off += n

    def _fill(self, blocking: bool) -> int:
        """Read ciphertext from the master into the incoming BIO (caller holds ``_recv_lock``).

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
                    self._incoming.write(self._rview[:n])
                if n == self._rview.nbytes and n < RECV_CHUNK:
                    self._rview = memoryview(bytearray(2 * n))
            else:
                self.transport_eof = True
            return n

    # -- handshake ----------------------------------------------------------------

    def handshake_steps(self) -> Generator[Condition, None, None]:
        """Run the handshake; yield the master condition to wait for whenever it would block.

        Raises:
            TLSHandshakeError: the handshake failed (bad certificate, alert, early close).
            ChannelError: the master failed.
        """
        while True:
            done = self._handshake_once()
            while not self._send_some():
                yield Condition.OUT
            if done:
                self.handshake_done = True
                return
            while True:
                with self._recv_lock:
                    n = self._fill(blocking=False)
                if n != ERR_BLOCK:
                    break
                yield Condition.IN
            if n == 0:
                self.failed = True
                raise TLSHandshakeError(
                    f"{self.label}: handshake failed: the peer closed the connection",
                    errno.ECONNRESET,
                )

    def _send_some(self) -> bool:
        with self._send_lock:
            return self._flush(blocking=False)

    def _attempt(self, what: str, operation: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """Run one SSLObject operation: the one place OpenSSL's outcomes are sorted out.

        Serves the handshake, reads, writes and unwrap alike (the caller holds
        ``_ssl_lock``).

        Returns:
            ``(True, result)``, or ``(False, None)`` when OpenSSL needs more
            ciphertext from the peer first (the caller reads the master and
            retries); a read that meets the peer's close_notify gives
            ``(True, 0)``.
        Raises:
            TLSError: OpenSSL failed (``what`` names the operation); the
                session is failed from then on.
        """
        try:
            return True, operation(*args)
        except ssl.SSLWantReadError:
            return False, None
        except ssl.SSLZeroReturnError:
            return True, 0
        except ssl.SSLError as exc:
            raise self._error(what, exc) from exc

    def _handshake_once(self) -> bool:
        try:
            with self._ssl_lock:
                done, _ = self._attempt("handshake", self._ssl.do_handshake)
        except TLSError as exc:
            self._send_alert()
            raise TLSHandshakeError(exc.message) from exc
        return done

    def _send_alert(self) -> None:
        """Best effort: deliver the alert OpenSSL queued, so the peer learns why."""
        try:
            self._send_some()
        except ChannelError as exc:
            log.debug("%s: could not send the alert: %s", self.label, exc)

    # -- application data ----------------------------------------------------

    def read_into(self, iov: list[memoryview], blocking: bool, relaxed_eof: bool) -> int:
        """Decrypt into ``iov``.

        Returns:
            Bytes read, 0 at EOF, or ERR_BLOCK (non-blocking, nothing decrypted yet).
        Raises:
            TLSError: a bad record or alert, or the peer ended the transport without
                close_notify while ``relaxed_eof`` is False.
        """
        with self._recv_lock:
            while True:
                got = self._decrypt(iov)
                if got or self.peer_closed:
                    return got
                if not self.transport_eof:
                    n = self._fill(blocking)
                    if n == ERR_BLOCK:
                        return ERR_BLOCK
                    if n > 0:
                        continue
                if relaxed_eof:
                    return 0
                raise TLSError(
                    f"{self.label}: the peer closed the connection without a TLS close_notify "
                    "(the data may be truncated; allow_unclean_eof or RELAXED_EOF accept it)",
                    errno.ECONNABORTED,
                )

    def _decrypt(self, iov: list[memoryview]) -> int:
        total = 0
        # typeshed types read() as returning bytes; with a buffer it returns a count
        read: Callable[[int, memoryview], int] = self._ssl.read  # type: ignore[assignment]
        with self._ssl_lock:
            if self._stash:
                return self._stash.copy_into(iov)
            for view in iov:
                size = view.nbytes
                filled = 0
                while filled < size:
                    done, n = self._attempt(
                        "read", read, size - filled, view[filled:] if filled else view
                    )
                    if not done:
                        return total + filled
                    if n == 0:
                        self.peer_closed = True
                        return total + filled
                    filled += n
                total += filled
        return total

    def write_from(self, iov: list[memoryview], blocking: bool) -> int:
        """Encrypt and send from ``iov``.

        Returns:
            Plaintext bytes consumed, or ERR_BLOCK: then retry with the same data.
        Raises:
            ChannelError: the write side was shut down (EPIPE) or the master failed.
            TLSError: OpenSSL refused to encrypt.
        """
        with self._send_lock:
            if self.close_notify_sent:
                raise ChannelError(
                    f"{self.label}: Unable to write: the TLS session was shut down for writing",
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
                consumed = self._encrypt(iov)
                # everything earlier was sent above: the new records start the buffer
                self._send_buf, self._send_off = self._outgoing.read(), 0
            if not self._flush(blocking):
                self._unreported = consumed
                return ERR_BLOCK
            return consumed

    def _encrypt(self, iov: list[memoryview]) -> int:
        """Encrypt up to WRITE_CHUNK bytes of ``iov`` (caller holds ``_ssl_lock``)."""
        if len(iov) == 1 and iov[0].nbytes <= WRITE_CHUNK:
            view = iov[0]  # the common case: one buffer, no gathering
            if view.nbytes:
                self._encrypt_one(view)
            return view.nbytes
        budget = WRITE_CHUNK
        consumed = 0
        gathered = bytearray()
        for view in iov:
            if budget <= 0:
                break
            piece = view if view.nbytes <= budget else view[:budget]
            if piece.nbytes < _GATHER:
                gathered += piece
                if len(gathered) >= _GATHER:
                    self._encrypt_one(gathered)
                    gathered = bytearray()
            elif piece.nbytes:
                if gathered:
                    self._encrypt_one(gathered)
                    gathered = bytearray()
                self._encrypt_one(piece)
            consumed += piece.nbytes
            budget -= piece.nbytes
        if gathered:
            self._encrypt_one(gathered)
        return consumed

    def _encrypt_one(self, data: bytes | bytearray | memoryview) -> None:
        done, _ = self._attempt("write", self._ssl.write, data)
        if not done:  # renegotiation is off: OpenSSL never needs to read to write
            self.failed = True
            raise TLSError(f"{self.label}: write failed: the session wants to read first")

    # -- ending -------------------------------------------------------------------

    def send_close_notify(self, wait: bool, linger: float = 0.0) -> bool:
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
        if not self.handshake_done or self.failed:
            return False
        if not self._send_lock.acquire(blocking=wait):
            return False
        try:
            if not self.close_notify_sent:
                self._queue_close_notify()
            if wait:
                return self._flush(blocking=True)
            return self._flush_if_writable(time.monotonic() + linger)
        finally:
            self._send_lock.release()

    def _queue_close_notify(self) -> None:
        with self._ssl_lock:
            # OpenSSL discards (and complains about) application data it meets while
            # waiting for the peer's close_notify: keep what already arrived
            self._drain_to_stash()
            # not done: our close_notify is queued, the peer's has not come yet
            self._attempt("shutdown", self._ssl.unwrap)
            self.close_notify_sent = True

    def _drain_to_stash(self) -> None:
        while not self.peer_closed:
            try:
                done, data = self._attempt("read", self._ssl.read, _MAX_RECORD)
            except TLSError:
                return  # the reader meets the failure on its next read
            if not done:
                return
            if not data:
                self.peer_closed = True
                return
            self._stash.append(data)

    def _queued(self) -> bool:
        with self._ssl_lock:
            return self._send_off < len(self._send_buf) or self._outgoing.pending > 0

    def _flush_if_writable(self, deadline: float) -> bool:
        while self._queued():
            try:
                self.master.wait(Condition.OUT, timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return False
            if self._flush(blocking=False):
                return True
        return True
