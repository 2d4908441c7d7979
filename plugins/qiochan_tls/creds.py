"""x509 credentials in QEMU's directory layout: :class:`TLSCredsX509`.

The directory holds ``ca-cert.pem`` (one or more CA certificates), an optional
``ca-crl.pem``, and ``server-cert.pem``/``server-key.pem`` or
``client-cert.pem``/``client-key.pem``.  A client's own certificate is optional
(needed only when the server verifies its peers).  Everything is checked on
load, as QEMU does (see :mod:`qiochan_tls.sanity`), and turned into the
:class:`ssl.SSLContext` sessions are made from.
"""

from __future__ import annotations

import datetime
import errno
import logging
import os
import re
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from qiochan.errors import TLSError

from . import sanity
from .layout import CA_CERT, CA_CRL, ENDPOINTS, Endpoint, cert_file, key_file
from .priority import Priority, parse_priority
from .sanity import LoadedCert

__all__ = ["TLSCredsX509"]

log = logging.getLogger("qiochan.tls")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSError(f"Missing {what} file {path}", errno.ENOENT) from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise TLSError(f"Unable to read {what} file {path}: {reason}", exc.errno) from exc


_SEE_URL = re.compile(r"\s*See https?://\S+[^.]*\.")


def _why(exc: Exception) -> str:
    """``exc``'s message without the "See https://... for more details." sentence
    :mod:`cryptography` appends (a FAQ link is no help to someone fixing a file)."""
    return _SEE_URL.sub("", str(exc)).strip()


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _load_certs(path: Path, what: str, strict: bool = True) -> list[LoadedCert]:
    """Parse every certificate of ``path``.

    ``strict=False`` skips the ones :mod:`cryptography` cannot parse (a system
    CA bundle may hold a legacy one OpenSSL still accepts) instead of failing.
    """
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        if strict:
            raise TLSError(
                f"Unable to parse {what} file {path}: not a PEM certificate ({_why(exc)})"
            ) from exc
        certs = []
        for block in _PEM_CERT.findall(data):
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except ValueError as error:
                log.debug("%s: skipping a certificate cryptography cannot parse: %s", path, error)
    return [LoadedCert(path, cert) for cert in certs]


def _load_key(path: Path, password: bytes | None) -> PrivateKeyTypes:
    data = _read(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=password)
    except TypeError as exc:  # encrypted without a password, or a password for a plain key
        raise TLSError(f"Unable to load private key file {path}: {_why(exc)}") from exc
    except ValueError as exc:
        raise TLSError(
            f"Unable to parse private key file {path}: not a PEM private key, "
            f"or a wrong password ({_why(exc)})"
        ) from exc


def _load_crl(path: Path, cas: list[LoadedCert]) -> x509.CertificateRevocationList:
    data = _read(path, "CRL")
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise TLSError(f"Unable to parse CRL file {path}: not a PEM CRL ({_why(exc)})") from exc
    issuers = [ca for ca in cas if ca.cert.subject == crl.issuer]
    if not any(crl.is_signature_valid(ca.cert.public_key()) for ca in issuers):  # type: ignore[arg-type]
        raise TLSError(f"The CRL {path} is not signed by a CA in {cas[0].path}")
    return crl


@dataclass(frozen=True)
class _Material:
    """What one load of the directory produced."""

    cas: tuple[LoadedCert, ...]
    crl: x509.CertificateRevocationList | None
    own: LoadedCert | None
    key_path: Path | None


class TLSCredsX509:
    """x509 credentials for one endpoint, loaded and checked from a QEMU-layout directory.

    Args:
        dir: the credentials directory.
        endpoint: ``"server"`` or ``"client"``.
        verify_peer: a server demands and verifies a client certificate; a client
            verifies the server's certificate (and hostname).  Turning it off on
            a client disables all server authentication: do so only for tests.
        priority: a GnuTLS priority string (see :mod:`qiochan_tls.priority`).
        sanity_check: run QEMU's load-time checks on the certificates.
        password: the password of an encrypted private key.
    Raises:
        TLSError: the directory or a file is missing, unreadable or invalid, or a
            check failed (the message names the file and the fault).
        ValueError: ``endpoint`` is neither ``"server"`` nor ``"client"``.
    """

    def __init__(
        self,
        dir: str | os.PathLike[str],
        endpoint: Endpoint = "server",
        verify_peer: bool = True,
        priority: str | None = None,
        sanity_check: bool = True,
        *,
        password: bytes | None = None,
    ) -> None:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be 'server' or 'client', not {endpoint!r}")
        self.dir = Path(dir)
        self.endpoint: Endpoint = endpoint
        self.verify_peer = bool(verify_peer)
        self.priority: Priority = parse_priority(priority)
        self.sanity_check = bool(sanity_check)
        self._password = password
        self._lock = threading.Lock()
        self._contexts: dict[bool, ssl.SSLContext] = {}
        self._material = self._load()

    def __repr__(self) -> str:
        return (
            f"TLSCredsX509({str(self.dir)!r}, endpoint={self.endpoint!r}, "
            f"verify_peer={self.verify_peer})"
        )

    @property
    def ca_certificates(self) -> list[x509.Certificate]:
        """The CA certificates of ``ca-cert.pem``."""
        return [loaded.cert for loaded in self._material.cas]

    @property
    def certificate(self) -> x509.Certificate | None:
        """This endpoint's own certificate (None for a client without one)."""
        own = self._material.own
        return None if own is None else own.cert

    @property
    def crl(self) -> x509.CertificateRevocationList | None:
        """The CRL of ``ca-crl.pem``, if present."""
        return self._material.crl

    def reload(self) -> None:
        """Load the directory again (certificate rotation); new sessions use the new files.

        Raises:
            TLSError: as the constructor; the previous credentials stay in use.
        """
        material = self._load()
        with self._lock:
            self._material = material
            self._contexts.clear()

    def _path(self, name: str) -> Path:
        return self.dir / name

    def _load(self) -> _Material:
        if not self.dir.is_dir():
            reason = "is not a directory" if self.dir.exists() else "does not exist"
            raise TLSError(f"TLS credentials directory {self.dir} {reason}", errno.ENOENT)
        cas = _load_certs(self._path(CA_CERT), "CA certificate", strict=self.sanity_check)
        if not cas:
            raise TLSError(f"The CA certificate file {self._path(CA_CERT)} holds no certificate")
        crl_path = self._path(CA_CRL)
        crl = _load_crl(crl_path, cas) if crl_path.exists() else None
        own, key_path = self._load_own()
        if self.sanity_check:
            self._check(cas, crl, own, key_path)
        elif own is not None and key_path is not None:
            sanity.check_key_matches(own, _load_key(key_path, self._password), key_path)
        log.debug("loaded TLS %s credentials from %s", self.endpoint, self.dir)
        return _Material(tuple(cas), crl, own, key_path)

    def _load_own(self) -> tuple[LoadedCert | None, Path | None]:
        cert_path = self._path(cert_file(self.endpoint))
        key_path = self._path(key_file(self.endpoint))
        if self.endpoint == "client" and not cert_path.exists() and not key_path.exists():
            return None, None  # a client certificate is optional
        certs = _load_certs(cert_path, f"{self.endpoint} certificate")
        if not certs:
            raise TLSError(f"The certificate file {cert_path} holds no certificate")
        if not key_path.exists():
            raise TLSError(f"Missing private key file {key_path} for {cert_path}", errno.ENOENT)
        return certs[0], key_path

    def _check(
        self,
        cas: list[LoadedCert],
        crl: x509.CertificateRevocationList | None,
        own: LoadedCert | None,
        key_path: Path | None,
    ) -> None:
        now = datetime.datetime.now(datetime.UTC)
        for ca in cas:
            sanity.check_ca(ca, now)
        sanity.check_authority_chain(cas)
        if own is None or key_path is None:
            return
        sanity.check_leaf(own, self.endpoint, cas, now)
        sanity.check_not_revoked(own, crl, self._path(CA_CRL))
        sanity.check_key_matches(own, _load_key(key_path, self._password), key_path)

    def ssl_context(self, *, check_hostname: bool = True) -> ssl.SSLContext:
        """Return the (cached) :class:`ssl.SSLContext` for sessions of this endpoint.

        Args:
            check_hostname: for a verifying client, whether sessions check the
                server's name (they must then be given one).
        Raises:
            TLSError: OpenSSL refused a file.
        """
        key = check_hostname and self.endpoint == "client" and self.verify_peer
        with self._lock:
            context = self._contexts.get(key)
            if context is None:
                context = self._contexts[key] = self._make_context(key)
            return context

    def _make_context(self, check_hostname: bool) -> ssl.SSLContext:
        server = self.endpoint == "server"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        context.options |= ssl.OP_NO_RENEGOTIATION
        if server:
            # QEMU's GnuTLS migration clients never read TLS 1.3 session tickets
            # and end with a bare close: a ticket left unread in their socket turns
            # that close into a reset that can discard data we have not read yet.
            context.num_tickets = 0
        material = self._material
        self._configure(context, material)
        if server:
            context.verify_mode = ssl.CERT_REQUIRED if self.verify_peer else ssl.CERT_NONE
        else:
            context.check_hostname = check_hostname
            context.verify_mode = ssl.CERT_REQUIRED if self.verify_peer else ssl.CERT_NONE
        self.priority.apply(context)
        return context

    def _configure(self, context: ssl.SSLContext, material: _Material) -> None:
        ca_path = material.cas[0].path
        try:
            context.load_verify_locations(cafile=str(ca_path))
        except ssl.SSLError as exc:
            raise TLSError(f"OpenSSL refused the CA file {ca_path}: {exc}") from exc
        if material.crl is not None:
            crl_path = self._path(CA_CRL)
            try:
                context.load_verify_locations(cafile=str(crl_path))
            except ssl.SSLError as exc:
                raise TLSError(f"OpenSSL refused the CRL file {crl_path}: {exc}") from exc
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        if material.own is not None and material.key_path is not None:
            try:
                context.load_cert_chain(
                    str(material.own.path), str(material.key_path), password=self._password
                )
            except ssl.SSLError as exc:
                raise TLSError(
                    f"OpenSSL refused the certificate {material.own.path} "
                    f"or key {material.key_path}: {exc}"
                ) from exc
