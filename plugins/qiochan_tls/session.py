"""The TLS session, Sans-I/O: an :class:`ssl.SSLObject` between two MemoryBIOs.

:class:`TLSSession` does no I/O and takes no locks, like trio's ``SSLStream``
keeps its ``SSLObject``: ciphertext from the peer goes in with
:meth:`~TLSSession.receive_data`, ciphertext for the peer comes out of
:meth:`~TLSSession.data_to_send`, and every OpenSSL operation (handshake,
read, write, unwrap) goes through one place, :meth:`TLSSession._attempt`,
which says "done" or "needs more ciphertext first".  Moving ciphertext over
the master channel, waiting and locking are :class:`~qiochan_tls.QIOChannelTLS`'s.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

from qiochan.errors import TLSError, TLSHandshakeError
from qiochan.iov import ByteQueue

__all__ = ["RECV_CHUNK", "RECV_FIRST", "WRITE_CHUNK", "TLSSession", "describe_ssl_error"]

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
    """One TLS session's state; no I/O, no locks (its owner serialises the calls).

    Args:
        context: the configured context (server or client).
        server_side: True for the server end.
        hostname: the name to send (SNI) and, if the context checks names, verify.
        label: how messages name this end (``TLS client for 'localhost'``).
    """

    def __init__(
        self, context: ssl.SSLContext, *, server_side: bool, hostname: str | None, label: str
    ) -> None:
        self.label = label
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=hostname
        )
        self._stash = ByteQueue()  # plaintext drained before close_notify was queued
        self.handshake_done = False
        self.failed = False
        self.peer_closed = False  # the peer's close_notify arrived
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

    def has_input(self) -> bool:
        """True when a read can make progress without more ciphertext from the peer."""
        return (
            self.peer_closed
            or bool(self._incoming.pending)
            or bool(self._stash)
            or self._ssl.pending() > 0
        )

    # -- ciphertext in and out ------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Hand ciphertext from the peer to OpenSSL."""
        self._incoming.write(data)

    @property
    def output_pending(self) -> int:
        """Bytes of ciphertext waiting in :meth:`data_to_send`."""
        return self._outgoing.pending

    def data_to_send(self) -> bytes:
        """Take the ciphertext OpenSSL produced for the peer (may be empty)."""
        return self._outgoing.read()

    # -- the one retry point ----------------------------------------------------

    def _error(self, what: str, exc: ssl.SSLError) -> TLSError:
        self.failed = True
        return TLSError(f"{self.label}: {what} failed: {describe_ssl_error(exc)}")

    def _attempt(self, what: str, operation: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """Run one SSLObject operation: the one place OpenSSL's outcomes are sorted out.

        Serves the handshake, reads, writes and unwrap alike.

        Returns:
            ``(True, result)``, or ``(False, None)`` when OpenSSL needs more
            ciphertext from the peer first (the owner reads it and retries);
            a read that meets the peer's close_notify gives ``(True, 0)``.
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

    # -- operations ---------------------------------------------------------------

    def do_handshake(self) -> bool:
        """Advance the handshake; return True once it is done.

        Raises:
            TLSHandshakeError: it failed (an alert for the peer may be queued).
        """
        try:
            done, _ = self._attempt("handshake", self._ssl.do_handshake)
        except TLSError as exc:
            raise TLSHandshakeError(exc.message) from exc
        self.handshake_done = done
        return done

    def decrypt(self, iov: list[memoryview]) -> int:
        """Decrypt into ``iov`` what the incoming ciphertext holds; return the bytes.

        0 means nothing yet, or the peer's close_notify (:attr:`peer_closed`).

        Raises:
            TLSError: a bad record or an alert.
        """
        if self._stash:
            return self._stash.copy_into(iov)
        total = 0
        # typeshed types read() as returning bytes; with a buffer it returns a count
        read: Callable[[int, memoryview], int] = self._ssl.read  # type: ignore[assignment]
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

    def encrypt(self, iov: list[memoryview]) -> int:
        """Encrypt up to WRITE_CHUNK bytes of ``iov`` into the outgoing BIO; return how many.

        Raises:
            TLSError: OpenSSL refused.
        """
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

    def queue_close_notify(self) -> None:
        """Queue our close_notify (once); plaintext already received is kept for reads.

        Raises:
            TLSError: OpenSSL refused.
        """
        if self.close_notify_sent:
            return
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
