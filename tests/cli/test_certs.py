"""``qiochan certs`` for real use: the CA is kept, leaves are added later, revocation bites."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

import qiochan
from qiochan.errors import HandshakeError
from tests.helpers.cli import assert_one_line_error, cli_env, run_cli

pytest.importorskip("cryptography")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path)


@pytest.fixture
def pki(env: dict[str, str], tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    result = run_cli("certs", str(directory), env=env)
    assert result.returncode == 0, result.stderr
    return directory


def test_the_ca_key_is_kept_private(pki: Path) -> None:
    key = pki / "ca-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes()


def test_an_existing_ca_is_not_replaced_without_force(env: dict[str, str], pki: Path) -> None:
    before = {p.name: p.read_bytes() for p in pki.iterdir()}
    result = run_cli("certs", str(pki), env=env)
    assert_one_line_error(result, 2, "already holds a CA", "--force")
    assert {p.name: p.read_bytes() for p in pki.iterdir()} == before
    (pki / "ca-key.pem").chmod(0o644)
    result = run_cli("certs", str(pki), "--force", env=env)
    assert result.returncode == 0, result.stderr
    assert (pki / "ca-cert.pem").read_bytes() != before["ca-cert.pem"]
    assert stat.S_IMODE((pki / "ca-key.pem").stat().st_mode) == 0o600


def _handshake(server_dir: Path, client_dir: Path) -> BaseException | None:
    """One real TLS handshake over TCP; return the server side's error, or None."""
    listener = qiochan.listen("tcp:127.0.0.1:0", layers=[f"tls:creds={server_dir}"])
    outcome: list[BaseException | None] = []

    def serve() -> None:
        try:
            listener.accept().close()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        layer = f"tls:creds={client_dir},hostname=localhost"
        try:
            with qiochan.connect(str(listener.address), layers=[layer]) as client:
                client.read(bytearray(1))  # TLS 1.3: a refused certificate shows here
        except qiochan.ChannelError:
            pass
        thread.join(30)
    finally:
        listener.close()
    assert not thread.is_alive()
    return outcome[0]


def test_a_client_added_later_works_until_it_is_revoked(
    env: dict[str, str], pki: Path, tmp_path: Path
) -> None:
    bob = tmp_path / "bob"
    result = run_cli("certs", str(pki), "--client", "bob", "--out", str(bob), env=env)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in bob.iterdir()} == {"ca-cert.pem", "client-cert.pem", "client-key.pem"}
    assert _handshake(pki, bob) is None

    result = run_cli("certs", str(pki), "--revoke", str(bob / "client-cert.pem"), env=env)
    assert result.returncode == 0, result.stderr
    assert (pki / "ca-crl.pem").exists()
    error = _handshake(pki, bob)
    assert isinstance(error, HandshakeError), error
    assert "revoked" in str(error).lower(), error
    assert _handshake(pki, pki) is None  # the first client is still trusted

    # a second revocation keeps the first one in the CRL
    result = run_cli("certs", str(pki), "--revoke", str(pki / "client-cert.pem"), env=env)
    assert result.returncode == 0, result.stderr
    assert "2 revoked" in result.stderr
    assert isinstance(_handshake(pki, bob), HandshakeError)


def test_a_server_added_later_for_another_host(
    env: dict[str, str], pki: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    args = ["certs", str(pki), "--server", "localhost", "--ip", "127.0.0.1", "--out", str(other)]
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert {"ca-cert.pem", "server-cert.pem", "server-key.pem"} <= {p.name for p in other.iterdir()}
    (other / "client-cert.pem").write_bytes((pki / "client-cert.pem").read_bytes())
    (other / "client-key.pem").write_bytes((pki / "client-key.pem").read_bytes())
    assert _handshake(other, pki) is None
    # a leaf is not replaced without --force either
    assert_one_line_error(run_cli(*args, env=env), 2, "server-cert.pem exists", "--force")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--client", "x", "--revoke", "y"], ["one of --client, --revoke"]),
        (["--out", "elsewhere"], ["--out goes with"]),
        (["--revoke", "/nonexistent.pem"], ["cannot read /nonexistent.pem"]),
    ],
)
def test_certs_usage_errors(
    env: dict[str, str], pki: Path, args: list[str], words: list[str]
) -> None:
    assert_one_line_error(run_cli("certs", str(pki), *args, env=env), 2, *words)


def test_leaves_and_revocation_need_the_ca_key(env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("certs", str(empty), "--client", "bob", env=env)
    assert_one_line_error(result, 2, "has no ca-cert.pem", "qiochan certs DIR")
    other = tmp_path / "other"
    assert run_cli("certs", str(other), env=env).returncode == 0
    pki = tmp_path / "pki"
    assert run_cli("certs", str(pki), env=env).returncode == 0
    result = run_cli("certs", str(pki), "--revoke", str(other / "client-cert.pem"), env=env)
    assert_one_line_error(result, 2, "cannot revoke", "not signed by this CA")
