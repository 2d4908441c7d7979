"""The command with a scheme a third-party plugin adds without writing a parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import background, cli_env, run_cli
from tests.helpers.plugins import RENDEZVOUS_PLUGIN, make_distribution


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment where the ``rdv:`` plugin is installed as a distribution."""
    site = tmp_path / "site"
    site.mkdir()
    make_distribution(site, "qiochan_rdv_demo", RENDEZVOUS_PLUGIN)
    meet = tmp_path / "meet"
    meet.mkdir()
    return cli_env(tmp_path, {"PYTHONPATH": str(site), "QIOCHAN_RDV_DIR": str(meet)})


def test_backends_lists_the_scheme(env: dict[str, str]) -> None:
    result = run_cli("backends", env=env)
    assert result.returncode == 0, result.stderr
    assert "rendezvous" in result.stdout and "rdv" in result.stdout


def test_send_and_recv_over_a_scheme_without_a_parser(env: dict[str, str], tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(bytes(range(256)) * 64)
    received = tmp_path / "received.bin"
    with background("recv", "rdv:inbox", str(received), env=env) as receiver:
        assert receiver.listening("source") == "rdv:inbox"
        sent = run_cli("send", str(payload), "rdv:inbox", env=env)
        assert sent.returncode == 0, sent.stderr
        done = receiver.finish()
    assert done.returncode == 0, done.stderr
    assert received.read_bytes() == payload.read_bytes()


def test_send_with_listen_and_recv_with_connect(env: dict[str, str], tmp_path: Path) -> None:
    received = tmp_path / "received.txt"
    with background("send", "--listen", "/etc/hostname", "rdv:outbox", env=env) as sender:
        assert sender.listening() == "rdv:outbox"
        got = run_cli("recv", "--connect", "rdv:outbox", str(received), env=env)
        assert got.returncode == 0, got.stderr
        assert sender.finish().returncode == 0
    assert received.read_bytes() == Path("/etc/hostname").read_bytes()


def test_relay_between_two_such_addresses(env: dict[str, str], tmp_path: Path) -> None:
    received = tmp_path / "received.txt"
    with background("recv", "rdv:far", str(received), env=env) as receiver:
        receiver.listening("source")
        with background("relay", "rdv:near", "rdv:far", env=env) as relay:
            assert relay.listening() == "rdv:near"
            sent = run_cli("send", "/etc/hostname", "rdv:near", env=env)
            assert sent.returncode == 0, sent.stderr
            done = receiver.finish()
    assert done.returncode == 0, done.stderr
    assert received.read_bytes() == Path("/etc/hostname").read_bytes()
