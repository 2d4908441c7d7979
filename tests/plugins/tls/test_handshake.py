"""The certificate matrix: each broken set fails with a clear TLSError on the right side.

Every scenario builds its own certificate set, runs a real TLS handshake over
a unix socket pair and checks which end refuses, the message, and that no fd
is left open (``no_fd_leak`` on every test).  With TLS 1.3 a client learns that
the server refused its certificate only at its first read: that read must fail.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qiochan.errors import ChannelError, TLSError, TLSHandshakeError
from qiochan_socket import socket_pair
from qiochan_tls import AuthzList, AuthzSimple, QIOChannelTLS, TLSCredsX509
from qiochan_tls.authz import Authz
from qiochan_tls.certs import CertifiedKey, create_ca, create_cert, create_crl, write_crl
from qiochan_tls.layout import CA_CERT, CA_CRL, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY
from qiochan_tls.testing import run_handshakes

pytestmark = pytest.mark.usefixtures("no_fd_leak")

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)
TLS12 = "NORMAL:-VERS-TLS1.3"
GOOD: Any = object()  # "the valid certificate" in scenario()


def server_cert(ca: CertifiedKey, **kwargs: Any) -> CertifiedKey:
    return create_cert(ca, "localhost", hostnames=["localhost"], ips=["127.0.0.1"], **kwargs)


def client_cert(ca: CertifiedKey, **kwargs: Any) -> CertifiedKey:
    return create_cert(ca, "client", purposes=["client"], **kwargs)


@dataclass(frozen=True)
class Certs:
    """The valid set every scenario starts from."""

    ca: CertifiedKey
    server: CertifiedKey
    client: CertifiedKey


@pytest.fixture(scope="module")
def certs() -> Certs:
    ca = create_ca("qiochan matrix CA")
    return Certs(ca, server_cert(ca), client_cert(ca))


def write_dir(
    path: Path,
    cas: list[CertifiedKey],
    *,
    server: CertifiedKey | None = None,
    client: CertifiedKey | None = None,
    revoked: list[CertifiedKey] | None = None,
) -> Path:
    """Write a QEMU-layout directory; ``revoked`` adds a CRL signed by the first CA."""
    path.mkdir(parents=True, exist_ok=True)
    (path / CA_CERT).write_bytes(b"".join(item.cert_pem() for item in cas))
    if server is not None:
        server.write(path / SERVER_CERT, path / SERVER_KEY)
    if client is not None:
        client.write(path / CLIENT_CERT, path / CLIENT_KEY)
    if revoked is not None:
        write_crl(create_crl(cas[0], [item.cert for item in revoked]), path / CA_CRL)
    return path


@dataclass
class Scenario:
    """Both ends' directories and options."""

    server_dir: Path
    client_dir: Path
    hostname: str = "localhost"
    server_sanity: bool = True
    client_sanity: bool = True
    authz: Authz | None = None
    priority: str | None = None


def scenario(
    tmp_path: Path,
    certs: Certs,
    *,
    server: CertifiedKey | None = GOOD,
    client: CertifiedKey | None = GOOD,
    server_cas: list[CertifiedKey] | None = None,
    client_cas: list[CertifiedKey] | None = None,
    server_revokes: list[CertifiedKey] | None = None,
    client_revokes: list[CertifiedKey] | None = None,
    **options: Any,
) -> Scenario:
    """Write the two directories: the valid set unless told otherwise (None: no cert)."""
    server_dir = write_dir(
        tmp_path / "server",
        server_cas or [certs.ca],
        server=certs.server if server is GOOD else server,
        revoked=server_revokes,
    )
    client_dir = write_dir(
        tmp_path / "client",
        client_cas or [certs.ca],
        client=certs.client if client is GOOD else client,
        revoked=client_revokes,
    )
    return Scenario(server_dir, client_dir, **options)


@dataclass
class Outcome:
    server_error: BaseException | None
    client_error: BaseException | None
    client_read_error: BaseException | None  # after a client handshake that "succeeded"
    received: bytes


def run(setup: Scenario) -> Outcome:
    """Handshake both ends over a socket pair; then the server sends b'ping' if it can."""
    server_creds = TLSCredsX509(
        setup.server_dir, "server", sanity_check=setup.server_sanity, priority=setup.priority
    )
    client_creds = TLSCredsX509(
        setup.client_dir, "client", sanity_check=setup.client_sanity, priority=setup.priority
    )
    server_master, client_master = socket_pair()
    server = QIOChannelTLS.new_server(server_master, server_creds, setup.authz)
    client = QIOChannelTLS.new_client(client_master, client_creds, setup.hostname)
    try:
        server_error, client_error = run_handshakes(server, client)
        read_error = None
        received = b""
        if client_error is None:
            if server_error is None:
                server.write_all(b"ping")
            buf = bytearray(4)
            try:
                received = bytes(buf) if client.read_all_eof(buf) else b""
            except ChannelError as exc:
                read_error = exc
        return Outcome(server_error, client_error, read_error, received)
    finally:
        server.close()
        client.close()


def expect_success(outcome: Outcome) -> None:
    assert outcome.server_error is None and outcome.client_error is None, outcome
    assert outcome.client_read_error is None
    assert outcome.received == b"ping"


def _expect_handshake_error(error: BaseException | None, *fragments: str) -> None:
    assert isinstance(error, TLSHandshakeError), f"expected a TLSHandshakeError, got {error!r}"
    for fragment in fragments:
        assert fragment in str(error), f"{fragment!r} not in {str(error)!r}"


def expect_client_refused(outcome: Outcome, *fragments: str) -> None:
    """The server refused the client: the client fails at its handshake or first read."""
    _expect_handshake_error(outcome.server_error, "TLS server", *fragments)
    client_error = outcome.client_error or outcome.client_read_error
    assert isinstance(client_error, TLSError), f"client saw no TLS error: {outcome!r}"
    assert outcome.received == b""


def expect_server_refused(outcome: Outcome, *fragments: str) -> None:
    """The client refused the server during its handshake; the server hears the alert."""
    _expect_handshake_error(outcome.client_error, "TLS client", *fragments)
    assert isinstance(outcome.server_error, TLSHandshakeError), (
        f"the server did not notice the client's alert: {outcome.server_error!r}"
    )


def refused_at_load(directory: Path, endpoint: str, pattern: str) -> None:
    with pytest.raises(TLSError, match=pattern):
        TLSCredsX509(directory, endpoint)  # type: ignore[arg-type]


# -- valid sets -------------------------------------------------------------------


@pytest.mark.parametrize("priority", [None, TLS12])
def test_valid_pair(tmp_path: Path, certs: Certs, priority: str | None) -> None:
    authz = AuthzList([("C=UK,O=Example,CN=client", "allow")])
    expect_success(run(scenario(tmp_path, certs, authz=authz, priority=priority)))


def test_authz_simple_allows_exact_dn(tmp_path: Path, certs: Certs) -> None:
    authz = AuthzSimple("C=UK,O=Example,CN=client")
    expect_success(run(scenario(tmp_path, certs, authz=authz)))


def test_ip_address_san(tmp_path: Path, certs: Certs) -> None:
    expect_success(run(scenario(tmp_path, certs, hostname="127.0.0.1")))


def test_intermediate_ca_chain(tmp_path: Path, certs: Certs) -> None:
    """ca-cert.pem may hold a chain: leaves issued by an intermediate verify."""
    intermediate = create_ca("intermediate", issuer=certs.ca)
    chain = [certs.ca, intermediate]
    setup = scenario(
        tmp_path,
        certs,
        server=server_cert(intermediate),
        client=client_cert(intermediate),
        server_cas=chain,
        client_cas=chain,
    )
    expect_success(run(setup))


def test_client_without_cert_when_server_does_not_verify(tmp_path: Path, certs: Certs) -> None:
    setup = scenario(tmp_path, certs, client=None)
    server_creds = TLSCredsX509(setup.server_dir, verify_peer=False)
    client_creds = TLSCredsX509(setup.client_dir, "client")
    server_master, client_master = socket_pair()
    with (
        QIOChannelTLS.new_server(server_master, server_creds) as server,
        QIOChannelTLS.new_client(client_master, client_creds, "localhost") as client,
    ):
        assert run_handshakes(server, client) == (None, None)
        assert server.peer_certificate() is None and server.peer_dn() is None


# -- the broken sets ------------------------------------------------------------------


class TestExpiredServerCert:
    @pytest.fixture
    def expired(self, certs: Certs) -> CertifiedKey:
        return server_cert(certs.ca, valid_from=NOW - 30 * DAY, valid_until=NOW - DAY)

    def test_refused_at_load(self, tmp_path: Path, certs: Certs, expired: CertifiedKey) -> None:
        setup = scenario(tmp_path, certs, server=expired)
        refused_at_load(setup.server_dir, "server", r"server-cert\.pem .* has expired")

    def test_client_refuses_it(self, tmp_path: Path, certs: Certs, expired: CertifiedKey) -> None:
        setup = scenario(tmp_path, certs, server=expired, server_sanity=False)
        expect_server_refused(run(setup), "certificate has expired")


class TestNotYetValidCert:
    @pytest.fixture
    def future(self, certs: Certs) -> CertifiedKey:
        return client_cert(certs.ca, valid_from=NOW + DAY, valid_until=NOW + 30 * DAY)

    def test_refused_at_load(self, tmp_path: Path, certs: Certs, future: CertifiedKey) -> None:
        setup = scenario(tmp_path, certs, client=future)
        refused_at_load(setup.client_dir, "client", r"client-cert\.pem .* is not yet active")

    def test_server_refuses_it(self, tmp_path: Path, certs: Certs, future: CertifiedKey) -> None:
        setup = scenario(tmp_path, certs, client=future, client_sanity=False)
        expect_client_refused(run(setup), "certificate is not yet valid")


@pytest.mark.parametrize(
    ("hostname", "message"),
    [("elsewhere.example", "Hostname mismatch"), ("127.0.0.2", "IP address mismatch")],
)
def test_wrong_hostname(tmp_path: Path, certs: Certs, hostname: str, message: str) -> None:
    outcome = run(scenario(tmp_path, certs, hostname=hostname))
    expect_server_refused(outcome, message, hostname)


class TestCommonNameFallback:
    """The CN counts only when the certificate has no DNS subjectAltName (as in GnuTLS)."""

    def test_cn_used_without_san(self, tmp_path: Path, certs: Certs) -> None:
        no_san = create_cert(certs.ca, "localhost")
        expect_success(run(scenario(tmp_path, certs, server=no_san)))

    def test_cn_ignored_with_san(self, tmp_path: Path, certs: Certs) -> None:
        other_san = create_cert(certs.ca, "localhost", hostnames=["other.example"])
        expect_server_refused(run(scenario(tmp_path, certs, server=other_san)), "mismatch")


def test_untrusted_ca(tmp_path: Path, certs: Certs) -> None:
    setup = scenario(tmp_path, certs, client_cas=[create_ca("some other CA")], client=None)
    expect_server_refused(run(setup), "certificate verify failed")


class TestCAWithoutCAFlag:
    @pytest.mark.parametrize(
        ("ca_flag", "message"),
        [
            (None, "is missing basic constraints for a CA"),
            (False, "basic constraints do not show it as a CA"),
        ],
    )
    @pytest.mark.parametrize("endpoint", ["server", "client"])
    def test_refused_at_load(
        self, tmp_path: Path, certs: Certs, ca_flag: bool | None, message: str, endpoint: str
    ) -> None:
        bad = create_ca("not a CA", ca_flag=ca_flag)
        setup = scenario(
            tmp_path,
            certs,
            server=server_cert(bad),
            client=client_cert(bad),
            server_cas=[bad],
            client_cas=[bad],
        )
        directory = setup.server_dir if endpoint == "server" else setup.client_dir
        refused_at_load(directory, endpoint, rf"ca-cert\.pem .* {message}")

    def test_client_refuses_it(self, tmp_path: Path, certs: Certs) -> None:
        bad = create_ca("not a CA", ca_flag=False)
        setup = scenario(
            tmp_path,
            certs,
            server=server_cert(bad),
            client=None,
            server_cas=[bad],
            client_cas=[bad],
            server_sanity=False,
            client_sanity=False,
        )
        expect_server_refused(run(setup), "invalid CA certificate")


class TestServerCertWithoutServerAuth:
    @pytest.fixture
    def client_only(self, certs: Certs) -> CertifiedKey:
        return server_cert(certs.ca, purposes=["client"])

    def test_refused_at_load(self, tmp_path: Path, certs: Certs, client_only: CertifiedKey) -> None:
        setup = scenario(tmp_path, certs, server=client_only)
        refused_at_load(setup.server_dir, "server", "does not allow use with a TLS server")

    def test_client_refuses_it(
        self, tmp_path: Path, certs: Certs, client_only: CertifiedKey
    ) -> None:
        setup = scenario(tmp_path, certs, server=client_only, server_sanity=False)
        expect_server_refused(run(setup), "unsuitable certificate purpose")


@pytest.mark.parametrize("priority", [None, TLS12])
def test_client_rejected_by_authz(tmp_path: Path, certs: Certs, priority: str | None) -> None:
    authz = AuthzList([("*,CN=admin", "allow"), ("*", "deny")], policy="allow")
    outcome = run(scenario(tmp_path, certs, authz=authz, priority=priority))
    expect_client_refused(outcome, "authorization denied", "C=UK,O=Example,CN=client")


@pytest.mark.parametrize("priority", [None, TLS12])
def test_client_without_cert_when_server_verifies(
    tmp_path: Path, certs: Certs, priority: str | None
) -> None:
    outcome = run(scenario(tmp_path, certs, client=None, priority=priority))
    expect_client_refused(outcome, "peer did not return a certificate")


class TestRevokedCert:
    def test_server_refuses_revoked_client(self, tmp_path: Path, certs: Certs) -> None:
        revoked = client_cert(certs.ca)
        setup = scenario(tmp_path, certs, client=revoked, server_revokes=[revoked])
        expect_client_refused(run(setup), "certificate revoked")

    def test_client_refuses_revoked_server(self, tmp_path: Path, certs: Certs) -> None:
        revoked = server_cert(certs.ca)
        setup = scenario(tmp_path, certs, server=revoked, client_revokes=[revoked])
        expect_server_refused(run(setup), "certificate revoked")

    def test_own_revoked_cert_refused_at_load(self, tmp_path: Path, certs: Certs) -> None:
        revoked = client_cert(certs.ca)
        setup = scenario(tmp_path, certs, client=revoked, client_revokes=[revoked])
        refused_at_load(setup.client_dir, "client", r"client-cert\.pem .* has been revoked")

    def test_unrevoked_peers_accepted(self, tmp_path: Path, certs: Certs) -> None:
        someone_else = [client_cert(certs.ca)]
        setup = scenario(tmp_path, certs, server_revokes=someone_else, client_revokes=someone_else)
        expect_success(run(setup))
