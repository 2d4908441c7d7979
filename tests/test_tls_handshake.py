"""The certificate matrix: each broken set fails with a clear TLSError on the right side.

Every scenario builds its own certificate set, runs a real TLS handshake over
a unix socket pair and checks which end refuses, the message, and that no fd
is left open.  With TLS 1.3 a client learns that the server refused its
certificate only at its first read: that read must fail too.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from qiochan.errors import ChannelError, TLSError, TLSHandshakeError
from qiochan_socket import socket_pair
from qiochan_tls import AuthzList, AuthzSimple, QIOChannelTLS, TLSCredsX509
from qiochan_tls.authz import Authz
from qiochan_tls.certs import CertifiedKey, create_ca, create_cert, create_crl, write_crl
from qiochan_tls.layout import CA_CERT, CA_CRL, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY
from qiochan_tls.testing import run_handshakes

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


def write_dir(
    path: Path,
    ca: CertifiedKey | list[CertifiedKey],
    *,
    server: CertifiedKey | None = None,
    client: CertifiedKey | None = None,
    revoked: list[CertifiedKey] | None = None,
) -> Path:
    """Write a QEMU-layout directory; ``revoked`` adds a CRL signed by the (first) CA."""
    path.mkdir(parents=True, exist_ok=True)
    cas = ca if isinstance(ca, list) else [ca]
    (path / CA_CERT).write_bytes(b"".join(item.cert_pem() for item in cas))
    if server is not None:
        server.write(path / SERVER_CERT, path / SERVER_KEY)
    if client is not None:
        client.write(path / CLIENT_CERT, path / CLIENT_KEY)
    if revoked is not None:
        write_crl(create_crl(cas[0], [item.cert for item in revoked]), path / CA_CRL)
    return path


def server_cert(ca: CertifiedKey, **kwargs: object) -> CertifiedKey:
    return create_cert(ca, "localhost", hostnames=["localhost"], ips=["127.0.0.1"], **kwargs)  # type: ignore[arg-type]


def client_cert(ca: CertifiedKey, **kwargs: object) -> CertifiedKey:
    return create_cert(ca, "client", purposes=["client"], **kwargs)  # type: ignore[arg-type]


@dataclass
class Setup:
    """Both ends' directories and options for one scenario."""

    server_dir: Path
    client_dir: Path
    hostname: str = "localhost"
    server_sanity: bool = True
    client_sanity: bool = True
    authz: Authz | None = None
    priority: str | None = None
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    server_error: BaseException | None
    client_error: BaseException | None
    client_read_error: BaseException | None  # after a client handshake that "succeeded"
    received: bytes


def run(setup: Setup) -> Outcome:
    """Handshake both ends over a socket pair; then server sends b'ping' if it can."""
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
                ok = client.read_all_eof(buf)
                received = bytes(buf) if ok else b""
            except ChannelError as exc:
                read_error = exc
        return Outcome(server_error, client_error, read_error, received)
    finally:
        server.close()
        client.close()


@pytest.fixture(scope="module")
def ca() -> CertifiedKey:
    return create_ca("qiochan matrix CA")


@pytest.fixture(scope="module")
def good_server(ca: CertifiedKey) -> CertifiedKey:
    return server_cert(ca)


@pytest.fixture(scope="module")
def good_client(ca: CertifiedKey) -> CertifiedKey:
    return client_cert(ca)


def test_valid_pair(
    tmp_path: Path,
    ca: CertifiedKey,
    good_server: CertifiedKey,
    good_client: CertifiedKey,
    no_fd_leak: None,
) -> None:
    setup = Setup(
        write_dir(tmp_path / "s", ca, server=good_server),
        write_dir(tmp_path / "c", ca, client=good_client),
        authz=AuthzList([("C=UK,O=Example,CN=client", "allow")]),
    )
    outcome = run(setup)
    assert outcome.server_error is None and outcome.client_error is None
    assert outcome.client_read_error is None
    assert outcome.received == b"ping"


def test_valid_pair_tls12(
    tmp_path: Path,
    ca: CertifiedKey,
    good_server: CertifiedKey,
    good_client: CertifiedKey,
    no_fd_leak: None,
) -> None:
    setup = Setup(
        write_dir(tmp_path / "s", ca, server=good_server),
        write_dir(tmp_path / "c", ca, client=good_client),
        priority="NORMAL:-VERS-TLS1.3",
    )
    assert run(setup).received == b"ping"


def _expect_handshake_error(error: BaseException | None, *fragments: str) -> None:
    assert isinstance(error, TLSHandshakeError), f"expected a TLSHandshakeError, got {error!r}"
    for fragment in fragments:
        assert fragment in str(error), f"{fragment!r} not in {str(error)!r}"


def _expect_client_refused(outcome: Outcome, *fragments: str) -> None:
    """The server refused the client: the client fails at its handshake or first read."""
    _expect_handshake_error(outcome.server_error, "TLS server", *fragments)
    client_error = outcome.client_error or outcome.client_read_error
    assert isinstance(client_error, TLSError), f"client saw no TLS error: {outcome!r}"
    assert outcome.received == b""


def _expect_server_refused(outcome: Outcome, *fragments: str) -> None:
    """The client refused the server during its handshake."""
    _expect_handshake_error(outcome.client_error, "TLS client", *fragments)
    assert isinstance(outcome.server_error, TLSHandshakeError), (
        f"the server did not notice the client's alert: {outcome.server_error!r}"
    )


class TestExpiredServerCert:
    @pytest.fixture
    def expired(self, ca: CertifiedKey) -> CertifiedKey:
        return server_cert(ca, valid_from=NOW - 30 * DAY, valid_until=NOW - DAY)

    def test_refused_at_load(self, tmp_path: Path, ca: CertifiedKey, expired: CertifiedKey) -> None:
        directory = write_dir(tmp_path, ca, server=expired)
        with pytest.raises(TLSError, match=r"server-cert\.pem .* has expired"):
            TLSCredsX509(directory, "server")

    def test_client_refuses_it(
        self, tmp_path: Path, ca: CertifiedKey, expired: CertifiedKey, no_fd_leak: None
    ) -> None:
        setup = Setup(
            write_dir(tmp_path / "s", ca, server=expired),
            write_dir(tmp_path / "c", ca),
            server_sanity=False,
        )
        _expect_server_refused(run(setup), "certificate has expired")


class TestNotYetValidCert:
    @pytest.fixture
    def future_client(self, ca: CertifiedKey) -> CertifiedKey:
        return client_cert(ca, valid_from=NOW + DAY, valid_until=NOW + 30 * DAY)

    def test_refused_at_load(
        self, tmp_path: Path, ca: CertifiedKey, future_client: CertifiedKey
    ) -> None:
        directory = write_dir(tmp_path, ca, client=future_client)
        with pytest.raises(TLSError, match=r"client-cert\.pem .* is not yet active"):
            TLSCredsX509(directory, "client")

    def test_server_refuses_it(
        self,
        tmp_path: Path,
        ca: CertifiedKey,
        good_server: CertifiedKey,
        future_client: CertifiedKey,
        no_fd_leak: None,
    ) -> None:
        setup = Setup(
            write_dir(tmp_path / "s", ca, server=good_server),
            write_dir(tmp_path / "c", ca, client=future_client),
            client_sanity=False,
        )
        _expect_client_refused(run(setup), "certificate is not yet valid")


def test_wrong_hostname(
    tmp_path: Path, ca: CertifiedKey, good_server: CertifiedKey, no_fd_leak: None
) -> None:
    setup = Setup(
        write_dir(tmp_path / "s", ca, server=good_server),
        write_dir(tmp_path / "c", ca),
        hostname="elsewhere.example",
    )
    _expect_server_refused(run(setup), "Hostname mismatch", "elsewhere.example")


def test_wrong_ip_address(
    tmp_path: Path, ca: CertifiedKey, good_server: CertifiedKey, no_fd_leak: None
) -> None:
    setup = Setup(
        write_dir(tmp_path / "s", ca, server=good_server),
        write_dir(tmp_path / "c", ca),
        hostname="127.0.0.2",
    )
    _expect_server_refused(run(setup), "IP address mismatch")


def test_ip_address_san_accepted(
    tmp_path: Path,
    ca: CertifiedKey,
    good_server: CertifiedKey,
    good_client: CertifiedKey,
    no_fd_leak: None,
) -> None:
    setup = Setup(
        write_dir(tmp_path / "s", ca, server=good_server),
        write_dir(tmp_path / "c", ca, client=good_client),
        hostname="127.0.0.1",
    )
    assert run(setup).received == b"ping"


class TestCommonNameFallback:
    """The CN is matched only when the certificate has no subjectAltName."""

    def test_cn_used_without_san(
        self, tmp_path: Path, ca: CertifiedKey, good_client: CertifiedKey, no_fd_leak: None
    ) -> None:
        no_san = create_cert(ca, "localhost")
        setup = Setup(
            write_dir(tmp_path / "s", ca, server=no_san),
            write_dir(tmp_path / "c", ca, client=good_client),
        )
        assert run(setup).received == b"ping"

    def test_cn_ignored_with_san(self, tmp_path: Path, ca: CertifiedKey, no_fd_leak: None) -> None:
        other_san = create_cert(ca, "localhost", hostnames=["other.example"])
        setup = Setup(
            write_dir(tmp_path / "s", ca, server=other_san), write_dir(tmp_path / "c", ca)
        )
        _expect_server_refused(run(setup), "Hostname mismatch")


def test_untrusted_ca(
    tmp_path: Path, ca: CertifiedKey, good_server: CertifiedKey, no_fd_leak: None
) -> None:
    other = create_ca("some other CA")
    setup = Setup(
        write_dir(tmp_path / "s", ca, server=good_server), write_dir(tmp_path / "c", other)
    )
    _expect_server_refused(run(setup), "certificate verify failed")


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
        self, tmp_path: Path, ca_flag: bool | None, message: str, endpoint: str
    ) -> None:
        bad_ca = create_ca("not a CA", ca_flag=ca_flag)
        directory = write_dir(
            tmp_path, bad_ca, server=server_cert(bad_ca), client=client_cert(bad_ca)
        )
        with pytest.raises(TLSError, match=rf"ca-cert\.pem .* {message}"):
            TLSCredsX509(directory, endpoint)  # type: ignore[arg-type]

    def test_client_refuses_it(self, tmp_path: Path, no_fd_leak: None) -> None:
        bad_ca = create_ca("not a CA", ca_flag=False)
        setup = Setup(
            write_dir(tmp_path / "s", bad_ca, server=server_cert(bad_ca)),
            write_dir(tmp_path / "c", bad_ca),
            server_sanity=False,
            client_sanity=False,
        )
        _expect_server_refused(run(setup), "invalid CA certificate")


class TestServerCertWithoutServerAuth:
    @pytest.fixture
    def client_only(self, ca: CertifiedKey) -> CertifiedKey:
        return server_cert(ca, purposes=["client"])

    def test_refused_at_load(
        self, tmp_path: Path, ca: CertifiedKey, client_only: CertifiedKey
    ) -> None:
        directory = write_dir(tmp_path, ca, server=client_only)
        with pytest.raises(TLSError, match="does not allow use with a TLS server"):
            TLSCredsX509(directory, "server")

    def test_client_refuses_it(
        self, tmp_path: Path, ca: CertifiedKey, client_only: CertifiedKey, no_fd_leak: None
    ) -> None:
        setup = Setup(
            write_dir(tmp_path / "s", ca, server=client_only),
            write_dir(tmp_path / "c", ca),
            server_sanity=False,
        )
        _expect_server_refused(run(setup), "unsuitable certificate purpose")


@pytest.mark.usefixtures("no_fd_leak")
@pytest.mark.parametrize("priority", [None, "NORMAL:-VERS-TLS1.3"])
def test_client_rejected_by_authz(
    tmp_path: Path,
    ca: CertifiedKey,
    good_server: CertifiedKey,
    good_client: CertifiedKey,
    priority: str | None,
) -> None:
    setup = Setup(
        write_dir(tmp_path / "s", ca, server=good_server),
        write_dir(tmp_path / "c", ca, client=good_client),
        authz=AuthzList([("*,CN=admin", "allow"), ("*", "deny")], policy="allow"),
        priority=priority,
    )
    outcome = run(setup)
    _expect_client_refused(outcome, "authorization denied", "C=UK,O=Example,CN=client")


def test_authz_simple_allows_exact_dn(
    tmp_path: Path,
    ca: CertifiedKey,
    good_server: CertifiedKey,
    good_client: CertifiedKey,
    no_fd_leak: None,
) -> None:
    setup = Setup(
        write_dir(tmp_path / "s", ca, server=good_server),
        write_dir(tmp_path / "c", ca, client=good_client),
        authz=AuthzSimple("C=UK,O=Example,CN=client"),
    )
    assert run(setup).received == b"ping"


@pytest.mark.parametrize("priority", [None, "NORMAL:-VERS-TLS1.3"])
def test_client_without_cert_when_server_verifies(
    tmp_path: Path,
    ca: CertifiedKey,
    good_server: CertifiedKey,
    priority: str | None,
    no_fd_leak: None,
) -> None:
    setup = Setup(
        write_dir(tmp_path / "s", ca, server=good_server),
        write_dir(tmp_path / "c", ca),
        priority=priority,
    )
    _expect_client_refused(run(setup), "peer did not return a certificate")


def test_client_without_cert_when_server_does_not_verify(
    tmp_path: Path, ca: CertifiedKey, good_server: CertifiedKey, no_fd_leak: None
) -> None:
    server_creds = TLSCredsX509(
        write_dir(tmp_path / "s", ca, server=good_server), verify_peer=False
    )
    client_creds = TLSCredsX509(write_dir(tmp_path / "c", ca), "client")
    server_master, client_master = socket_pair()
    with (
        QIOChannelTLS.new_server(server_master, server_creds) as server,
        QIOChannelTLS.new_client(client_master, client_creds, "localhost") as client,
    ):
        assert run_handshakes(server, client) == (None, None)
        assert server.peer_certificate() is None and server.peer_dn() is None


class TestRevokedCert:
    def test_server_refuses_revoked_client(
        self,
        tmp_path: Path,
        ca: CertifiedKey,
        good_server: CertifiedKey,
        no_fd_leak: None,
    ) -> None:
        revoked = client_cert(ca)
        setup = Setup(
            write_dir(tmp_path / "s", ca, server=good_server, revoked=[revoked]),
            write_dir(tmp_path / "c", ca, client=revoked),
        )
        _expect_client_refused(run(setup), "certificate revoked")

    def test_client_refuses_revoked_server(
        self, tmp_path: Path, ca: CertifiedKey, no_fd_leak: None
    ) -> None:
        revoked = server_cert(ca)
        setup = Setup(
            write_dir(tmp_path / "s", ca, server=revoked),
            write_dir(tmp_path / "c", ca, revoked=[revoked]),
        )
        _expect_server_refused(run(setup), "certificate revoked")

    def test_own_revoked_cert_refused_at_load(self, tmp_path: Path, ca: CertifiedKey) -> None:
        revoked = client_cert(ca)
        directory = write_dir(tmp_path, ca, client=revoked, revoked=[revoked])
        with pytest.raises(TLSError, match=r"client-cert\.pem .* has been revoked"):
            TLSCredsX509(directory, "client")

    def test_unrevoked_peer_accepted(
        self,
        tmp_path: Path,
        ca: CertifiedKey,
        good_server: CertifiedKey,
        good_client: CertifiedKey,
        no_fd_leak: None,
    ) -> None:
        someone_else = client_cert(ca)
        setup = Setup(
            write_dir(tmp_path / "s", ca, server=good_server, revoked=[someone_else]),
            write_dir(tmp_path / "c", ca, client=good_client, revoked=[someone_else]),
        )
        assert run(setup).received == b"ping"


def test_intermediate_ca_chain(tmp_path: Path, ca: CertifiedKey, no_fd_leak: None) -> None:
    """ca-cert.pem may hold a chain: a leaf issued by an intermediate verifies."""
    intermediate = create_ca("intermediate", issuer=ca)
    setup = Setup(
        write_dir(tmp_path / "s", [ca, intermediate], server=server_cert(intermediate)),
        write_dir(tmp_path / "c", [ca, intermediate], client=client_cert(intermediate)),
    )
    assert run(setup).received == b"ping"


Scenario = Callable[[Path, CertifiedKey], None]
