"""Certificate tooling: what the generated certificates carry, and the QEMU layout on disk."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from qiochan_tls.certs import (
    create_ca,
    create_cert,
    create_creds_dir,
    create_crl,
    generate_key,
    make_name,
    write_crl,
)
from qiochan_tls.layout import CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY
from qiochan_tls.sanity import not_valid_after, not_valid_before


def ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(kind)


def test_ca_extensions() -> None:
    ca = create_ca("Test CA")
    constraints = ext(ca.cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ext(ca.cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert ca.cert.issuer == ca.cert.subject
    ca.cert.verify_directly_issued_by(ca.cert)


def test_server_cert_as_gnutls_expects() -> None:
    ca = create_ca()
    server = create_cert(
        ca, "localhost", hostnames=["localhost", "h.example"], ips=["127.0.0.1", "::1"]
    )
    server.cert.verify_directly_issued_by(ca.cert)
    assert not ext(server.cert, x509.BasicConstraints).value.ca
    usage = ext(server.cert, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_encipherment
    assert list(ext(server.cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = ext(server.cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "h.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    aki = ext(server.cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca.cert, x509.SubjectKeyIdentifier).value.digest


def test_rsa_leaf_gets_key_encipherment() -> None:
    ca = create_ca(key_type="rsa")
    leaf = create_cert(ca, "client", purposes=["client"], key_type="rsa")
    assert isinstance(leaf.key, rsa.RSAPrivateKey)
    assert ext(leaf.cert, x509.KeyUsage).value.key_encipherment
    assert isinstance(generate_key(), ec.EllipticCurvePrivateKey)
    with pytest.raises(ValueError, match="key_type"):
        generate_key("dsa")  # type: ignore[arg-type]


def test_broken_variants() -> None:
    ca = create_ca(ca_flag=None, key_usage=None)
    with pytest.raises(x509.ExtensionNotFound):
        ext(ca.cert, x509.BasicConstraints)
    leaf = create_cert(ca, "x", purposes=None, ca_flag=True, key_usage=set())
    assert ext(leaf.cert, x509.BasicConstraints).value.ca
    with pytest.raises(x509.ExtensionNotFound):
        ext(leaf.cert, x509.ExtendedKeyUsage)
    assert not ext(leaf.cert, x509.KeyUsage).value.digital_signature
    with pytest.raises(ValueError, match="unknown key usage"):
        create_cert(ca, "x", key_usage={"flying"})


def test_validity_window() -> None:
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=3), now - datetime.timedelta(days=1)
    leaf = create_cert(create_ca(), "old", valid_from=start, valid_until=end)
    assert not_valid_before(leaf.cert) == start.replace(microsecond=0)
    assert not_valid_after(leaf.cert) == end.replace(microsecond=0)
    fresh = create_cert(create_ca(), "new", days=10)
    assert not_valid_before(fresh.cert) < now < not_valid_after(fresh.cert)


def test_subject_order() -> None:
    name = make_name("client", "Example", "UK")
    assert [attribute.value for attribute in name] == ["UK", "Example", "client"]
    assert make_name("only").rfc4514_string() == "CN=only"


def test_crl(tmp_path: Path) -> None:
    ca = create_ca()
    revoked = create_cert(ca, "gone")
    crl = create_crl(ca, [revoked.cert])
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(revoked.cert.serial_number) is not None
    write_crl(crl, tmp_path / "crl.pem")
    assert x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes()) == crl


def test_create_creds_dir(tmp_path: Path) -> None:
    target = tmp_path / "new" / "creds"
    creds = create_creds_dir(target)
    assert creds.dir == target and creds.server is not None and creds.client is not None
    for name in (CA_CERT, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY):
        assert (target / name).is_file()
    for key in (SERVER_KEY, CLIENT_KEY):
        assert stat.S_IMODE((target / key).stat().st_mode) == 0o600
    assert creds.client.cert.subject.rfc4514_string() == "CN=client,O=Example,C=UK"
    only_server = create_creds_dir(tmp_path / "s", hostnames=(), ips=("10.0.0.1",), client=False)
    assert only_server.client is None and not (tmp_path / "s" / CLIENT_CERT).exists()
    assert only_server.server is not None
    assert only_server.server.cert.subject.rfc4514_string().startswith("CN=10.0.0.1")
    shared = create_creds_dir(tmp_path / "shared", ca=creds.ca, server=False)
    assert shared.ca is creds.ca and shared.server is None
