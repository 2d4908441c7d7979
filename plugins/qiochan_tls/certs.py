"""Certificate tooling: a CA, server and client certificates, CRLs, in QEMU's directory layout.

Certificates carry what GnuTLS (QEMU's TLS library) expects: basicConstraints
(critical), keyUsage (critical: ``keyCertSign``/``cRLSign`` for a CA,
``digitalSignature`` for a leaf, plus ``keyEncipherment`` for RSA),
extendedKeyUsage ``serverAuth``/``clientAuth``, subjectAltNames for the
hostnames and IP addresses, and key identifiers.  Every one of those can be
changed or left out, so tests can build the broken sets QEMU refuses::

    from qiochan_tls.certs import create_creds_dir

    creds = create_creds_dir(tmp_path)            # ca-cert.pem, server-*.pem, client-*.pem
    expired = create_cert(creds.ca, "localhost", hostnames=["localhost"],
                          valid_from=past, valid_until=yesterday)
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .layout import CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY

__all__ = [
    "CA_KEY_USAGE",
    "CertifiedKey",
    "CredsSet",
    "KeyType",
    "create_ca",
    "create_cert",
    "create_creds_dir",
    "create_crl",
    "generate_key",
    "make_name",
    "write_crl",
]

KeyType = Literal["ec", "rsa"]
#: A CA's key usages (QEMU needs keyCertSign).
CA_KEY_USAGE = frozenset({"key_cert_sign", "crl_sign"})
_KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)
_PURPOSES = {
    "server": ExtendedKeyUsageOID.SERVER_AUTH,
    "client": ExtendedKeyUsageOID.CLIENT_AUTH,
    "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
}
_SKEW = datetime.timedelta(hours=1)  # back-date certificates against clock skew


@dataclass(frozen=True)
class CertifiedKey:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes

    def cert_pem(self) -> bytes:
        """Return the certificate in PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """Return the private key in unencrypted PKCS#8 PEM."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(
        self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str] | None = None
    ) -> None:
        """Write the certificate, and the key (mode 0600) when ``key_path`` is given."""
        Path(cert_path).write_bytes(self.cert_pem())
        if key_path is not None:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(self.key_pem())


def generate_key(key_type: KeyType = "ec") -> CertificateIssuerPrivateKeyTypes:
    """Return a new private key: ECDSA P-256 (fast, the default) or RSA 2048.

    Raises:
        ValueError: an unknown ``key_type``.
    """
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"key_type must be 'ec' or 'rsa', not {key_type!r}")


def make_name(
    common_name: str, organization: str | None = None, country: str | None = None
) -> x509.Name:
    """Return the subject ``C=..,O=..,CN=..`` (in that certificate order; parts may be omitted)."""
    attributes = []
    if country:
        attributes.append(x509.NameAttribute(NameOID.COUNTRY_NAME, country))
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _key_usage(names: Iterable[str]) -> x509.KeyUsage:
    wanted = set(names)
    unknown = wanted - set(_KEY_USAGES)
    if unknown:
        raise ValueError(f"unknown key usage(s) {sorted(unknown)}; known: {', '.join(_KEY_USAGES)}")
    flags = {name: name in wanted for name in _KEY_USAGES}
    if not flags["key_agreement"]:
        flags["encipher_only"] = flags["decipher_only"] = False
    return x509.KeyUsage(**flags)


def _window(
    valid_from: datetime.datetime | None, valid_until: datetime.datetime | None, days: int
) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    start = valid_from if valid_from is not None else now - _SKEW
    end = (
        valid_until if valid_until is not None else max(now, start) + datetime.timedelta(days=days)
    )
    return start, end


def _build(
    subject: x509.Name,
    key: CertificateIssuerPrivateKeyTypes,
    issuer: CertifiedKey | None,
    *,
    start: datetime.datetime,
    end: datetime.datetime,
    ca_flag: bool | None,
    path_length: int | None,
    key_usage: Iterable[str] | None,
    key_usage_critical: bool,
    purposes: Iterable[str | x509.ObjectIdentifier] | None,
    sans: list[x509.GeneralName],
) -> CertifiedKey:
    signer_key = key if issuer is None else issuer.key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    )
    if ca_flag is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca_flag, path_length=path_length if ca_flag else None),
            critical=True,
        )
    if key_usage is not None:
        builder = builder.add_extension(_key_usage(key_usage), critical=key_usage_critical)
    if purposes is not None:
        oids = [_PURPOSES[p] if isinstance(p, str) else p for p in purposes]
        builder = builder.add_extension(x509.ExtendedKeyUsage(oids), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return CertifiedKey(builder.sign(signer_key, _digest(signer_key)), key)


def _digest(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # Ed25519/Ed448 sign without a separate digest
    return (
        None
        if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey))
        else hashes.SHA256()
    )


def create_ca(
    common_name: str = "qiochan test CA",
    *,
    organization: str | None = "Example",
    country: str | None = "UK",
    issuer: CertifiedKey | None = None,
    key_type: KeyType = "ec",
    valid_from: datetime.datetime | None = None,
    valid_until: datetime.datetime | None = None,
    days: int = 3650,
    ca_flag: bool | None = True,
    path_length: int | None = None,
    key_usage: Iterable[str] | None = CA_KEY_USAGE,
    key_usage_critical: bool = True,
) -> CertifiedKey:
    """Return a CA certificate and key: self-signed, or an intermediate signed by ``issuer``.

    Args:
        ca_flag: basicConstraints CA value; None leaves the extension out.
        key_usage: key usage names (``key_cert_sign``, ``crl_sign``...); None leaves it out.
        valid_from, valid_until: the validity window (default: from an hour ago, ``days`` long).
    """
    start, end = _window(valid_from, valid_until, days)
    return _build(
        make_name(common_name, organization, country),
        generate_key(key_type),
        issuer,
        start=start,
        end=end,
        ca_flag=ca_flag,
        path_length=path_length,
        key_usage=key_usage,
        key_usage_critical=key_usage_critical,
        purposes=None,
        sans=[],
    )


def _default_leaf_usage(key: CertificateIssuerPrivateKeyTypes) -> frozenset[str]:
    if isinstance(key, rsa.RSAPrivateKey):
        return frozenset({"digital_signature", "key_encipherment"})
    return frozenset({"digital_signature"})


def create_cert(
    ca: CertifiedKey,
    common_name: str,
    *,
    hostnames: Iterable[str] = (),
    ips: Iterable[str] = (),
    purposes: Iterable[str | x509.ObjectIdentifier] | None = ("server",),
    organization: str | None = "Example",
    country: str | None = "UK",
    key_type: KeyType = "ec",
    key: CertificateIssuerPrivateKeyTypes | None = None,
    valid_from: datetime.datetime | None = None,
    valid_until: datetime.datetime | None = None,
    days: int = 365,
    ca_flag: bool | None = False,
    key_usage: Iterable[str] | None = None,
    key_usage_critical: bool = True,
) -> CertifiedKey:
    """Return a leaf certificate signed by ``ca``.

    Its subject is ``C=country,O=organization,CN=common_name``.

    Args:
        hostnames, ips: subjectAltName DNS names and IP addresses (none: no SAN).
        purposes: extendedKeyUsage: ``"server"``, ``"client"``, ``"any"`` or OIDs;
            None leaves the extension out.
        key: reuse this key instead of generating one.
        ca_flag: basicConstraints CA value (True makes the broken "leaf marked CA");
            None leaves the extension out.
        key_usage: key usage names; default ``digital_signature`` (plus
            ``key_encipherment`` for RSA); an empty set still adds the extension.
    Raises:
        ValueError: a malformed IP address or unknown key usage.
    """
    leaf_key = key if key is not None else generate_key(key_type)
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in hostnames]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    start, end = _window(valid_from, valid_until, days)
    return _build(
        make_name(common_name, organization, country),
        leaf_key,
        ca,
        start=start,
        end=end,
        ca_flag=ca_flag,
        path_length=None,
        key_usage=_default_leaf_usage(leaf_key) if key_usage is None else key_usage,
        key_usage_critical=key_usage_critical,
        purposes=purposes,
        sans=sans,
    )


def create_crl(
    ca: CertifiedKey,
    revoked: Iterable[x509.Certificate] = (),
    *,
    last_update: datetime.datetime | None = None,
    next_update: datetime.datetime | None = None,
) -> x509.CertificateRevocationList:
    """Return a CRL signed by ``ca`` revoking ``revoked`` (valid for 30 days by default)."""
    now = datetime.datetime.now(datetime.UTC)
    last = last_update if last_update is not None else now - _SKEW
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(last)
        .next_update(next_update if next_update is not None else now + datetime.timedelta(days=30))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(last)
            .build()
        )
    return builder.sign(ca.key, _digest(ca.key))


def write_crl(crl: x509.CertificateRevocationList, path: str | os.PathLike[str]) -> None:
    """Write ``crl`` in PEM to ``path``."""
    Path(path).write_bytes(crl.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class CredsSet:
    """What :func:`create_creds_dir` wrote: the directory and the certificates in it."""

    dir: Path
    ca: CertifiedKey
    server: CertifiedKey | None
    client: CertifiedKey | None


def create_creds_dir(
    dir: str | os.PathLike[str],
    hostnames: Iterable[str] = ("localhost",),
    ips: Iterable[str] = ("127.0.0.1",),
    client: bool = True,
    *,
    server: bool = True,
    ca: CertifiedKey | None = None,
    client_name: str = "client",
    organization: str = "Example",
    country: str = "UK",
    key_type: KeyType = "ec",
) -> CredsSet:
    """Create a QEMU credentials directory usable by both endpoints and return what it holds.

    Writes ``ca-cert.pem``, ``server-cert.pem``/``server-key.pem`` (CN = the first
    hostname, SANs = ``hostnames`` and ``ips``, serverAuth) and, with ``client``,
    ``client-cert.pem``/``client-key.pem`` (``C=country,O=organization,CN=client_name``,
    clientAuth).  The directory is created if needed.

    Args:
        ca: sign with this CA instead of a new one.
    """
    path = Path(dir)
    path.mkdir(parents=True, exist_ok=True)
    hostnames, ips = list(hostnames), list(ips)
    authority = ca if ca is not None else create_ca(key_type=key_type)
    authority.write(path / CA_CERT)
    server_cert = client_cert = None
    if server:
        server_cert = create_cert(
            authority,
            hostnames[0] if hostnames else (ips[0] if ips else "server"),
            hostnames=hostnames,
            ips=ips,
            purposes=("server",),
            organization=organization,
            country=country,
            key_type=key_type,
        )
        server_cert.write(path / SERVER_CERT, path / SERVER_KEY)
    if client:
        client_cert = create_cert(
            authority,
            client_name,
            purposes=("client",),
            organization=organization,
            country=country,
            key_type=key_type,
        )
        client_cert.write(path / CLIENT_CERT, path / CLIENT_KEY)
    return CredsSet(path, authority, server_cert, client_cert)
