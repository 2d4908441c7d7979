"""Load-time checks of x509 credentials, following current QEMU (``crypto/tlscredsx509.c``).

Each check raises :class:`~qiochan.errors.TLSError` naming the file and the
fault, so a broken credentials directory is reported when it is loaded rather
than as an obscure handshake failure on the peer.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from qiochan.errors import TLSError

from .dn import format_dn
from .layout import Endpoint

__all__ = [
    "LoadedCert",
    "check_authority_chain",
    "check_basic_constraints",
    "check_ca",
    "check_issued_by",
    "check_key_matches",
    "check_key_purpose",
    "check_key_usage",
    "check_leaf",
    "check_not_revoked",
    "check_times",
    "not_valid_after",
    "not_valid_before",
]

_PURPOSES = {
    "server": (ExtendedKeyUsageOID.SERVER_AUTH, "a TLS server"),
    "client": (ExtendedKeyUsageOID.CLIENT_AUTH, "a TLS client"),
}


@dataclass(frozen=True)
class LoadedCert:
    """A certificate and the file it came from (named in error messages)."""

    path: Path
    cert: x509.Certificate

    @property
    def label(self) -> str:
        """How messages name it: the file, plus the subject when a file holds several."""
        return f"{self.path} ({format_dn(self.cert.subject)})"


def not_valid_before(cert: x509.Certificate) -> datetime.datetime:
    """Return the start of ``cert``'s validity as an aware UTC datetime."""
    value: datetime.datetime | None = getattr(cert, "not_valid_before_utc", None)
    if value is None:  # cryptography < 42
        value = cert.not_valid_before.replace(tzinfo=datetime.UTC)
    return value


def not_valid_after(cert: x509.Certificate) -> datetime.datetime:
    """Return the end of ``cert``'s validity as an aware UTC datetime."""
    value: datetime.datetime | None = getattr(cert, "not_valid_after_utc", None)
    if value is None:  # cryptography < 42
        value = cert.not_valid_after.replace(tzinfo=datetime.UTC)
    return value


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension | None:  # type: ignore[type-arg]
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def check_times(loaded: LoadedCert, now: datetime.datetime) -> None:
    """Refuse a certificate that has expired or is not yet valid at ``now``."""
    start, end = not_valid_before(loaded.cert), not_valid_after(loaded.cert)
    if now > end:
        raise TLSError(f"The certificate {loaded.label} has expired (on {end:%Y-%m-%d %H:%M} UTC)")
    if now < start:
        raise TLSError(
            f"The certificate {loaded.label} is not yet active (from {start:%Y-%m-%d %H:%M} UTC)"
        )


def check_basic_constraints(loaded: LoadedCert, is_ca: bool, role: str) -> None:
    """A CA must say CA:TRUE; a leaf must not claim to be a CA."""
    ext = _extension(loaded.cert, x509.BasicConstraints)
    marked_ca = bool(ext is not None and ext.value.ca)
    if is_ca and ext is None:
        raise TLSError(f"The certificate {loaded.label} is missing basic constraints for a CA")
    if is_ca and not marked_ca:
        raise TLSError(f"The certificate {loaded.label} basic constraints do not show it as a CA")
    if not is_ca and marked_ca:
        raise TLSError(
            f"The certificate {loaded.label} basic constraints show it as a CA, "
            f"but it should be a {role} certificate"
        )


def check_key_usage(loaded: LoadedCert, is_ca: bool) -> None:
    """A CA's keyUsage must allow certificate signing; a critical leaf one, signatures."""
    ext = _extension(loaded.cert, x509.KeyUsage)
    if ext is None:
        return
    usage: x509.KeyUsage = ext.value
    if is_ca and not usage.key_cert_sign:
        raise TLSError(
            f"The certificate {loaded.label} key usage does not permit certificate signing"
        )
    if not is_ca and ext.critical and not usage.digital_signature:
        raise TLSError(
            f"The certificate {loaded.label} key usage does not permit digital signature"
        )


def check_key_purpose(loaded: LoadedCert, endpoint: Endpoint) -> None:
    """An extendedKeyUsage, when present, must allow the endpoint's purpose."""
    ext = _extension(loaded.cert, x509.ExtendedKeyUsage)
    if ext is None:
        return
    wanted, what = _PURPOSES[endpoint]
    purposes = set(ext.value)
    if wanted not in purposes and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in purposes:
        raise TLSError(
            f"The certificate {loaded.label} extended key usage does not allow use with {what}"
        )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_issued_by(loaded: LoadedCert, cas: Sequence[LoadedCert]) -> None:
    """The certificate must be signed by one of the CA certificates."""
    if any(_issued_by(loaded.cert, ca.cert) for ca in cas):
        return
    files = ", ".join(sorted({str(ca.path) for ca in cas}))
    raise TLSError(
        f"The certificate {loaded.label} is not issued by the CA in {files} "
        f"(its issuer is {format_dn(loaded.cert.issuer)})"
    )


def check_authority_chain(cas: Sequence[LoadedCert]) -> None:
    """Every CA certificate must be self-signed or issued by another one of the list."""
    for loaded in cas:
        if _issued_by(loaded.cert, loaded.cert):
            continue
        others = [ca for ca in cas if ca is not loaded]
        if not any(_issued_by(loaded.cert, ca.cert) for ca in others):
            raise TLSError(
                f"The CA certificate {loaded.label} has no issuer in the CA file "
                f"(its issuer {format_dn(loaded.cert.issuer)} is missing)"
            )


def check_ca(loaded: LoadedCert, now: datetime.datetime) -> None:
    """All checks for one CA certificate."""
    check_times(loaded, now)
    check_basic_constraints(loaded, is_ca=True, role="CA")
    check_key_usage(loaded, is_ca=True)


def check_not_revoked(
    loaded: LoadedCert, crl: x509.CertificateRevocationList | None, crl_path: Path
) -> None:
    """Refuse a certificate listed in the CRL."""
    if crl is None or crl.issuer != loaded.cert.issuer:
        return
    if crl.get_revoked_certificate_by_serial_number(loaded.cert.serial_number) is not None:
        raise TLSError(f"The certificate {loaded.label} has been revoked (listed in {crl_path})")


def check_leaf(
    loaded: LoadedCert,
    endpoint: Endpoint,
    cas: Sequence[LoadedCert],
    now: datetime.datetime,
) -> None:
    """All checks for the server or client certificate."""
    check_times(loaded, now)
    check_basic_constraints(loaded, is_ca=False, role=endpoint)
    check_key_usage(loaded, is_ca=False)
    check_key_purpose(loaded, endpoint)
    check_issued_by(loaded, cas)


def _public_der(key: object) -> bytes:
    public_bytes = key.public_bytes  # type: ignore[attr-defined]
    der: bytes = public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def check_key_matches(loaded: LoadedCert, key: PrivateKeyTypes, key_path: Path) -> None:
    """The private key must be the one the certificate certifies."""
    if _public_der(key.public_key()) != _public_der(loaded.cert.public_key()):
        raise TLSError(f"The private key {key_path} does not match the certificate {loaded.path}")
