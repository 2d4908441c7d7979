"""Fixtures of the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import cli_env, run_cli


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A credentials directory made by ``qiochan certs`` (skips without cryptography)."""
    directory = tmp_path_factory.mktemp("pki")
    result = run_cli("certs", str(directory), env=cli_env(directory))
    if result.returncode != 0:
        pytest.skip(f"no TLS credentials: {result.stderr}")
    return directory
