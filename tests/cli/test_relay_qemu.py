"""A real QEMU live migration carried by ``qiochan relay`` chains.

A paused source and an ``-incoming defer`` destination run under TCG, both
driven over QMP (QEMU connects to a socket the test listens on, so nothing
polls for it to appear).  Guest RAM holds a random blob loaded at start; the
source migrates to the first relay, the chain carries the stream to the
destination, and the test waits for QEMU's MIGRATION events: the destination
must report ``completed``, its copy of the blob must equal the source's, and
every relay must exit 0.

Chains: tcp -> unix; tcp -> websocket -> tcp; tcp -> TLS -> tcp.  QEMU comes
from Debian's ``qemu-system-x86``: installed with apt-get when missing and
possible, skipped otherwise.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import Background, cli_env, port_of, run_cli
from tests.helpers.qemu import VM, qemu_vm

RAM_MIB = 64
BLOB_ADDRESS = 0x1000000
BLOB_SIZE = 16 << 20

# room for installing QEMU on first use; the migrations themselves take about a second
pytestmark = pytest.mark.timeout(300)


@contextlib.contextmanager
def _vm(qemu: str, workdir: Path, name: str, blob: Path | None, incoming: bool) -> Iterator[VM]:
    """Start a paused TCG guest, with ``blob`` loaded into its RAM or waiting for a migration."""
    extra: list[str] = []
    if blob is not None:
        extra += ["-device", f"loader,file={blob},addr={BLOB_ADDRESS:#x},force-raw=on"]
    if incoming:
        extra += ["-incoming", "defer"]
    with qemu_vm(qemu, workdir, name, extra, ram_mib=RAM_MIB) as vm:
        yield vm


def _blob_of(vm: VM, path: Path) -> bytes:
    vm.qmp.command("pmemsave", val=BLOB_ADDRESS, size=BLOB_SIZE, filename=str(path))
    return path.read_bytes()


@contextlib.contextmanager
def _relay(env: dict[str, str], *args: str) -> Iterator[Background]:
    relay = Background("relay", "--once", *args, env=env, stdout=subprocess.DEVNULL)
    try:
        yield relay
    finally:
        relay.kill()


#: Starts a chain's relays towards the destination's address; returns the address the
#: source migrates to and the relays, entry first.
Build = Callable[[contextlib.ExitStack, dict[str, str], str, Path], tuple[str, list[Background]]]


def _tcp_unix(
    stack: contextlib.ExitStack, env: dict[str, str], dst: str, creds: Path
) -> tuple[str, list[Background]]:
    relay = stack.enter_context(_relay(env, "tcp:127.0.0.1:0", dst))
    return relay.listening("source"), [relay]


def _two_hops(src_layer: list[str], dst_layer: list[str], middle: str) -> Build:
    def build(
        stack: contextlib.ExitStack, env: dict[str, str], dst: str, creds: Path
    ) -> tuple[str, list[Background]]:
        layers_in = [a.format(creds=creds) for a in src_layer]
        layers_out = [a.format(creds=creds) for a in dst_layer]
        exit_ = stack.enter_context(_relay(env, middle, dst, *layers_in))
        hop = exit_.listening("source")
        entry = stack.enter_context(_relay(env, "tcp:127.0.0.1:0", hop, *layers_out))
        return entry.listening("source"), [entry, exit_]

    return build


#: chain name -> (how to build it, the destination's incoming transport)
CHAINS: dict[str, tuple[Build, str]] = {
    "tcp-unix": (_tcp_unix, "unix"),
    "tcp-websocket-tcp": (_two_hops([], [], "ws://127.0.0.1:0/migrate"), "tcp"),
    "tcp-tls-tcp": (
        _two_hops(
            ["--src-layer", "tls:creds={creds}"],
            ["--dst-layer", "tls:creds={creds},hostname=localhost"],
            "tcp:127.0.0.1:0",
        ),
        "tcp",
    ),
}


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    result = run_cli("certs", str(directory), env=cli_env(directory))
    assert result.returncode == 0, result.stderr
    return directory


@pytest.mark.parametrize("chain_name", list(CHAINS))
def test_live_migration_through_relay(
    qemu: str, tmp_path: Path, creds: Path, chain_name: str
) -> None:
    build, incoming_kind = CHAINS[chain_name]
    env = cli_env(tmp_path)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(BLOB_SIZE))
    with (
        _vm(qemu, tmp_path, "src", blob, incoming=False) as src,
        _vm(qemu, tmp_path, "dst", None, incoming=True) as dst,
        contextlib.ExitStack() as stack,
    ):
        if incoming_kind == "unix":
            incoming = f"unix:{tmp_path}/incoming.sock"
            dst.qmp.command("migrate-incoming", uri=incoming)
        else:
            dst.qmp.command("migrate-incoming", uri="tcp:127.0.0.1:0")
            info = dst.qmp.command("query-migrate")
            port = next(a["port"] for a in info["socket-address"] if a["type"] == "inet")
            incoming = f"tcp:127.0.0.1:{port}"
        entry, relays = build(stack, env, incoming, creds)
        src.qmp.command("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
        src.qmp.command("migrate", uri=f"tcp:127.0.0.1:{port_of(entry)}")

        assert src.qmp.wait_migration() == "completed", src.log.read_text()
        assert dst.qmp.wait_migration() == "completed", dst.log.read_text()
        assert dst.qmp.command("query-migrate")["status"] == "completed"
        for relay in relays:
            result = relay.finish()
            assert result.returncode == 0, result.stderr
            assert "relay done" in result.stderr
        assert _blob_of(dst, tmp_path / "dst.mem") == blob.read_bytes()
        assert _blob_of(src, tmp_path / "src.mem") == blob.read_bytes()
