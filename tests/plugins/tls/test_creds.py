"""TLSCredsX509: QEMU's directory layout, load-time checks, and the ssl contexts made from it."""

from __future__ import annotations

import errno
import os
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from qiochan.errors import TLSError
from qiochan_tls import TLSCredsX509
from qiochan_tls.certs import (
    CertifiedKey,
    create_ca,
    create_cert,
    create_creds_dir,
    create_crl,
    generate_key,
    write_crl,
)
from qiochan_tls.layout import (
    CA_CERT,
    CA_CRL,
    CLIENT_CERT,
    CLIENT_KEY,
    SERVER_CERT,
    SERVER_KEY,
)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    create_creds_dir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def ca() -> CertifiedKey:
    return create_ca()


def with_server(directory: Path, ca: CertifiedKey, server: CertifiedKey) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    ca.write(directory / CA_CERT)
    server.write(directory / SERVER_CERT, directory / SERVER_KEY)
    return directory


def test_loads_both_endpoints(good: Path) -> None:
    server = TLSCredsX509(good, "server")
    client = TLSCredsX509(good, "client")
    assert server.certificate is not None and client.certificate is not None
    assert server.certificate.subject.rfc4514_string() == "CN=localhost,O=Example,C=UK"
    assert len(server.ca_certificates) == 1 and server.crl is None
    assert "endpoint='server'" in repr(server)


def test_bad_endpoint_is_a_usage_error(good: Path) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        TLSCredsX509(good, "peer")  # type: ignore[arg-type]


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(TLSError, match="does not exist") as info:
        TLSCredsX509(tmp_path / "nope")
    assert info.value.errno == errno.ENOENT
    (tmp_path / "file").write_text("")
    with pytest.raises(TLSError, match="is not a directory"):
        TLSCredsX509(tmp_path / "file")


@pytest.mark.parametrize("name", [CA_CERT, SERVER_CERT, SERVER_KEY])
def test_missing_file_is_named(good: Path, name: str) -> None:
    (good / name).unlink()
    with pytest.raises(TLSError, match=rf"Missing .*{name}") as info:
        TLSCredsX509(good, "server")
    assert info.value.errno == errno.ENOENT


def test_client_certificate_is_optional(good: Path) -> None:
    (good / CLIENT_CERT).unlink()
    (good / CLIENT_KEY).unlink()
    assert TLSCredsX509(good, "client").certificate is None


def test_client_certificate_without_key(good: Path) -> None:
    (good / CLIENT_KEY).unlink()
    with pytest.raises(TLSError, match=r"Missing private key file .*client-key\.pem"):
        TLSCredsX509(good, "client")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(good: Path) -> None:
    (good / SERVER_KEY).chmod(0)
    with pytest.raises(TLSError, match="Unable to read private key file") as info:
        TLSCredsX509(good, "server")
    assert info.value.errno == errno.EACCES


def test_unreadable_path(good: Path) -> None:
    (good / SERVER_KEY).unlink()
    (good / SERVER_KEY).mkdir()
    with pytest.raises(
        TLSError, match=r"Unable to read private key file .*: Is a directory"
    ) as info:
        TLSCredsX509(good, "server")
    assert info.value.errno == errno.EISDIR


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (CA_CERT, r"Unable to parse CA certificate file .*ca-cert\.pem"),
        (SERVER_CERT, r"Unable to parse server certificate file .*server-cert\.pem"),
        (SERVER_KEY, r"Unable to parse private key file .*server-key\.pem"),
        (CA_CRL, r"Unable to parse CRL file .*ca-crl\.pem"),
    ],
)
def test_unparsable_pem(good: Path, name: str, message: str) -> None:
    (good / name).write_text("-----BEGIN NONSENSE-----\nAAAA\n-----END NONSENSE-----\n")
    with pytest.raises(TLSError, match=message):
        TLSCredsX509(good, "server")


def test_empty_ca_file(good: Path) -> None:
    (good / CA_CERT).write_text("")
    with pytest.raises(TLSError, match=r"ca-cert\.pem: not a PEM certificate"):
        TLSCredsX509(good, "server")


def test_key_not_matching_certificate(good: Path) -> None:
    stray = generate_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (good / SERVER_KEY).write_bytes(stray)
    with pytest.raises(TLSError, match=r"server-key\.pem does not match the certificate"):
        TLSCredsX509(good, "server")
    # the mismatch is caught even without the sanity checks: OpenSSL would refuse it
    with pytest.raises(TLSError, match="does not match"):
        TLSCredsX509(good, "server", sanity_check=False)


def test_encrypted_key_needs_its_password(good: Path) -> None:
    key = serialization.load_pem_private_key((good / SERVER_KEY).read_bytes(), None)
    (good / SERVER_KEY).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TLSError, match="Unable to load private key file"):
        TLSCredsX509(good, "server")
    with pytest.raises(TLSError, match="wrong password"):
        TLSCredsX509(good, "server", password=b"wrong")
    creds = TLSCredsX509(good, "server", password=b"secret")
    assert isinstance(creds.ssl_context(), ssl.SSLContext)


def test_certificate_not_issued_by_the_ca(tmp_path: Path, ca: CertifiedKey) -> None:
    other = create_ca("other CA")
    directory = with_server(tmp_path, ca, create_cert(other, "localhost"))
    with pytest.raises(TLSError, match=r"server-cert\.pem .* is not issued by the CA"):
        TLSCredsX509(directory, "server")


def test_leaf_marked_ca_is_refused(tmp_path: Path, ca: CertifiedKey) -> None:
    directory = with_server(tmp_path, ca, create_cert(ca, "localhost", ca_flag=True))
    with pytest.raises(TLSError, match="show it as a CA, but it should be a server certificate"):
        TLSCredsX509(directory, "server")


def test_leaf_without_basic_constraints_is_fine(tmp_path: Path, ca: CertifiedKey) -> None:
    directory = with_server(tmp_path, ca, create_cert(ca, "localhost", ca_flag=None))
    TLSCredsX509(directory, "server")


def test_critical_key_usage_without_digital_signature(tmp_path: Path, ca: CertifiedKey) -> None:
    bad = create_cert(ca, "localhost", key_usage={"key_agreement"})
    directory = with_server(tmp_path, ca, bad)
    with pytest.raises(TLSError, match="key usage does not permit digital signature"):
        TLSCredsX509(directory, "server")
    # a non-critical one is only a hint, as in QEMU
    lax = create_cert(ca, "localhost", key_usage={"key_agreement"}, key_usage_critical=False)
    TLSCredsX509(with_server(tmp_path / "lax", ca, lax), "server")


def test_ca_key_usage_without_cert_sign(tmp_path: Path) -> None:
    bad_ca = create_ca(key_usage={"crl_sign"})
    directory = with_server(tmp_path, bad_ca, create_cert(bad_ca, "localhost"))
    with pytest.raises(TLSError, match=r"ca-cert\.pem .* does not permit certificate signing"):
        TLSCredsX509(directory, "server")


def test_ca_without_key_usage_is_fine(tmp_path: Path) -> None:
    plain_ca = create_ca(key_usage=None)
    TLSCredsX509(with_server(tmp_path, plain_ca, create_cert(plain_ca, "localhost")), "server")


@pytest.mark.parametrize(
    ("purposes", "endpoint", "ok"),
    [
        (["server"], "server", True),
        (["client"], "server", False),
        (["client"], "client", True),
        (["server"], "client", False),
        (["server", "client"], "client", True),
        ([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE], "server", True),
        ([ExtendedKeyUsageOID.CODE_SIGNING], "server", False),
        (None, "server", True),
    ],
)
def test_extended_key_usage(
    tmp_path: Path, ca: CertifiedKey, purposes: list[object] | None, endpoint: str, ok: bool
) -> None:
    leaf = create_cert(ca, "leaf", purposes=purposes)  # type: ignore[arg-type]
    ca.write(tmp_path / CA_CERT)
    if endpoint == "server":
        leaf.write(tmp_path / SERVER_CERT, tmp_path / SERVER_KEY)
    else:
        leaf.write(tmp_path / CLIENT_CERT, tmp_path / CLIENT_KEY)
    if ok:
        TLSCredsX509(tmp_path, endpoint)  # type: ignore[arg-type]
    else:
        with pytest.raises(TLSError, match=f"does not allow use with a TLS {endpoint}"):
            TLSCredsX509(tmp_path, endpoint)  # type: ignore[arg-type]


def test_expired_ca(tmp_path: Path) -> None:
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    old_ca = create_ca(valid_from=now - datetime.timedelta(days=20), valid_until=now)
    leaf = create_cert(old_ca, "localhost", valid_until=now + datetime.timedelta(days=1))
    directory = with_server(tmp_path, old_ca, leaf)
    with pytest.raises(TLSError, match=r"ca-cert\.pem .* has expired"):
        TLSCredsX509(directory, "server")


def test_ca_chain_with_missing_root(tmp_path: Path, ca: CertifiedKey) -> None:
    intermediate = create_ca("intermediate", issuer=ca)
    directory = with_server(tmp_path, intermediate, create_cert(intermediate, "localhost"))
    with pytest.raises(TLSError, match="has no issuer in the CA file"):
        TLSCredsX509(directory, "server")


def test_crl_must_be_signed_by_the_ca(good: Path, ca: CertifiedKey) -> None:
    write_crl(create_crl(ca), good / CA_CRL)  # another CA than the directory's
    with pytest.raises(TLSError, match=r"ca-crl\.pem is not signed by a CA"):
        TLSCredsX509(good, "server")


def test_crl_turns_on_revocation_checks(tmp_path: Path) -> None:
    creds = create_creds_dir(tmp_path)
    write_crl(create_crl(creds.ca), tmp_path / CA_CRL)
    loaded = TLSCredsX509(tmp_path, "server")
    assert loaded.crl is not None
    assert loaded.ssl_context().verify_flags & ssl.VERIFY_CRL_CHECK_LEAF


def test_sanity_check_off_skips_the_checks(tmp_path: Path, ca: CertifiedKey) -> None:
    other = create_ca("other CA")
    directory = with_server(tmp_path, ca, create_cert(other, "localhost", purposes=["client"]))
    TLSCredsX509(directory, "server", sanity_check=False)


def test_contexts(good: Path) -> None:
    server = TLSCredsX509(good, "server").ssl_context()
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert server.num_tickets == 0  # see the GnuTLS bare-close interop test
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    lax_server = TLSCredsX509(good, "server", verify_peer=False).ssl_context()
    assert lax_server.verify_mode == ssl.CERT_NONE
    client_creds = TLSCredsX509(good, "client")
    client = client_creds.ssl_context()
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED
    assert client_creds.ssl_context() is client  # cached
    no_name = client_creds.ssl_context(check_hostname=False)
    assert not no_name.check_hostname and no_name.verify_mode == ssl.CERT_REQUIRED
    blind = TLSCredsX509(good, "client", verify_peer=False).ssl_context()
    assert not blind.check_hostname and blind.verify_mode == ssl.CERT_NONE


def test_priority_reaches_the_context(good: Path) -> None:
    context = TLSCredsX509(good, "server", priority="NORMAL:-VERS-TLS1.3").ssl_context()
    assert context.maximum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(TLSError, match="unknown base keyword"):
        TLSCredsX509(good, "server", priority="BOGUS")


def test_reload_picks_up_new_files(tmp_path: Path) -> None:
    first = create_creds_dir(tmp_path)
    creds = TLSCredsX509(tmp_path, "server")
    context = creds.ssl_context()
    second = create_cert(first.ca, "localhost", hostnames=["localhost"])
    second.write(tmp_path / SERVER_CERT, tmp_path / SERVER_KEY)
    creds.reload()
    assert creds.certificate == second.cert
    assert creds.ssl_context() is not context
    (tmp_path / SERVER_KEY).unlink()
    with pytest.raises(TLSError):
        creds.reload()
    assert creds.certificate == second.cert  # a failed reload keeps the old credentials


def test_lenient_ca_bundle_without_sanity_check(good: Path) -> None:
    """Like a system CA bundle: a block cryptography cannot parse is skipped, not fatal."""
    broken = b"-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n"
    (good / CA_CERT).write_bytes(broken + (good / CA_CERT).read_bytes())
    with pytest.raises(TLSError, match=r"Unable to parse CA certificate file .*ca-cert\.pem"):
        TLSCredsX509(good, "client")
    assert len(TLSCredsX509(good, "client", sanity_check=False).ca_certificates) == 1
