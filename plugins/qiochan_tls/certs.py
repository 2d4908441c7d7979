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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .layout import (
    CA_CERT,
    CA_CRL,
    CA_KEY,
    CLIENT_CERT,
    CLIENT_KEY,
    SERVER_CERT,
    SERVER_KEY,
    Endpoint,
    cert_file,
    key_file,
)

__all__ = [
    "CA_KEY_USAGE",
    "CertifiedKey",
    "CredsSet",
    "KeyType",
    "add_leaf",
    "create_ca",
    "create_cert",
    "create_creds_dir",
    "create_crl",
    "generate_key",
    "load_ca",
    "make_name",
    "revoke",
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
_SKEW = datetime.timedelta(hours=1)
_ISSUER_KEYS = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)  # back-date certificates against clock skew


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
                os.fchmod(fd, 0o600)  # a key file that existed keeps no wider mode
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
    revoked: Iterable[x509.Certificate | x509.RevokedCertificate] = (),
    *,
    last_update: datetime.datetime | None = None,
    next_update: datetime.datetime | None = None,
    days: int = 30,
) -> x509.CertificateRevocationList:
    """Return a CRL signed by ``ca`` revoking ``revoked`` (valid for ``days`` by default).

    ``revoked`` holds certificates, or entries of an earlier CRL (kept as they are).
    """
    now = datetime.datetime.now(datetime.UTC)
    last = last_update if last_update is not None else now - _SKEW
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(last)
        .next_update(
            next_update if next_update is not None else now + datetime.timedelta(days=days)
        )
    )
    for item in revoked:
        if isinstance(item, x509.RevokedCertificate):
            builder = builder.add_revoked_certificate(item)
            continue
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(item.serial_number)
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

    Writes ``ca-cert.pem`` and ``ca-key.pem`` (mode 0600: the CA's key, needed to
    sign more certificates and CRLs with :func:`add_leaf` and :func:`revoke`; QEMU
    does not read it, and whoever has it can mint trusted certificates),
    ``server-cert.pem``/``server-key.pem`` (CN = the first
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
    authority.write(path / CA_CERT, path / CA_KEY)
    (path / CA_CRL).unlink(missing_ok=True)  # a CRL of an earlier CA would not load
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


def load_ca(dir: str | os.PathLike[str]) -> CertifiedKey:
    """Return the CA of the credentials directory ``dir`` with its key (``ca-key.pem``).

    Raises:
        FileNotFoundError: ``ca-cert.pem`` or ``ca-key.pem`` is missing (the
            message says which).
        ValueError: a file does not hold what it should, or the key is not
            the certificate's.
    """
    path = Path(dir)
    for name in (CA_CERT, CA_KEY):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path} has no {name}")
    cert = x509.load_pem_x509_certificate((path / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((path / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, _ISSUER_KEYS):
        raise ValueError(f"{path / CA_KEY} holds a {type(key).__name__}, not a signing key")
    if key.public_key() != cert.public_key():
        raise ValueError(f"{path / CA_KEY} is not the key of {path / CA_CERT}")
    return CertifiedKey(cert, key)


def add_leaf(
    dir: str | os.PathLike[str],
    endpoint: Endpoint,
    name: str,
    *,
    hostnames: Iterable[str] = (),
    ips: Iterable[str] = (),
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    organization: str = "Example",
    country: str = "UK",
    key_type: KeyType = "ec",
) -> list[Path]:
    """Sign a new server or client certificate with the CA of ``dir``; return the files written.

    The certificate and key go to ``out`` (default ``dir``) under QEMU's names
    (``server-cert.pem``/``server-key.pem`` or ``client-*``); an ``out``
    other than ``dir`` also gets the CA certificate (and CRL), so it is a
    complete directory for the other host.  A server certificate's CN is
    ``name`` and its subjectAltNames ``hostnames`` and ``ips``; a client's
    subject is ``C=country,O=organization,CN=name``.

    Raises:
        FileExistsError: the certificate file exists and ``force`` is False.
        FileNotFoundError, ValueError: as :func:`load_ca`, or a malformed IP.
    """
    ca = load_ca(dir)
    source, target = Path(dir), Path(out) if out is not None else Path(dir)
    cert_path, key_path = target / cert_file(endpoint), target / key_file(endpoint)
    if cert_path.exists() and not force:
        raise FileExistsError(f"{cert_path} exists")
    leaf = create_cert(
        ca,
        name,
        hostnames=hostnames,
        ips=ips,
        purposes=(endpoint,),
        organization=organization,
        country=country,
        key_type=key_type,
    )
    target.mkdir(parents=True, exist_ok=True)
    written = [cert_path, key_path]
    if target.resolve() != source.resolve():
        for shared in (CA_CERT, CA_CRL):
            if (source / shared).exists():
                (target / shared).write_bytes((source / shared).read_bytes())
                written.append(target / shared)
    leaf.write(cert_path, key_path)
    return written


def revoke(
    dir: str | os.PathLike[str],
    cert: x509.Certificate | str | os.PathLike[str],
    *,
    days: int = 365,
) -> x509.CertificateRevocationList:
    """Revoke ``cert`` (a certificate or a PEM file) in ``dir``'s ``ca-crl.pem``
    (made, or extended keeping its entries).

    The CRL is valid for ``days``; revoke again (or with ``qiochan certs
    --revoke``) before then, as a peer refuses every certificate once the CRL
    it checks has expired.

    Returns:
        The CRL written.
    Raises:
        ValueError: ``cert`` is no PEM certificate, or was not issued by that CA.
        OSError: the certificate file cannot be read.
        FileNotFoundError, ValueError: as :func:`load_ca`.
    """
    if not isinstance(cert, x509.Certificate):
        try:
            cert = x509.load_pem_x509_certificate(Path(cert).read_bytes())
        except ValueError:
            raise ValueError(f"{cert} is not a PEM certificate") from None
    ca = load_ca(dir)
    if cert.issuer != ca.cert.subject:
        issuer = cert.issuer.rfc4514_string()
        raise ValueError(f"the certificate was issued by {issuer}, not by this CA")
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        raise ValueError("the certificate is not signed by this CA") from None
    path = Path(dir) / CA_CRL
    earlier: list[x509.RevokedCertificate] = []
    if path.exists():
        earlier = [
            entry
            for entry in x509.load_pem_x509_crl(path.read_bytes())
            if entry.serial_number != cert.serial_number
        ]
    crl = create_crl(ca, [*earlier, cert], days=days)
    write_crl(crl, path)
    return crl
