"""QEMU 7.2 multifd and postcopy-preempt migrations through ``qiochan relay`` gateways.

The source guest's RAM is a file of random bytes (``memory-backend-file``),
so every page travels; the destination's RAM is a shared file of the same
size, which must equal the source's file once QEMU reports ``completed``.
A multifd(4) migration opens 1 + 4 connections (``--connections 5``), a
postcopy-preempt one 2 (``--connections 2``); every relay must exit 0 by
itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import Background, cli_env, inspect_file, port_of
from tests.helpers.qemu import VM, qemu_vm

pytestmark = pytest.mark.timeout(300)

RAM_MIB = 64
RAM_SIZE = RAM_MIB << 20
MULTIFD_CHANNELS = 4


@pytest.fixture
def creds(tls_creds_dir: Path) -> Path:
    return tls_creds_dir


@pytest.fixture(scope="module")
def random_ram(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ram") / "source.ram"
    path.write_bytes(os.urandom(RAM_SIZE))
    return path


@contextlib.contextmanager
def _guest(
    qemu: str,
    workdir: Path,
    name: str,
    ram: Path,
    *,
    incoming: bool,
    capabilities: tuple[str, ...],
) -> Iterator[VM]:
    """A paused guest whose RAM is the file ``ram`` (shared, so the destination's is written)."""
    backend = f"memory-backend-file,id=ram0,size={RAM_MIB}M,mem-path={ram}"
    extra = [
        "-machine", "memory-backend=ram0",
        "-object", f"{backend},share={'on' if incoming else 'off'}",
    ]  # fmt: skip
    if incoming:
        extra += ["-incoming", "defer"]
    with qemu_vm(qemu, workdir, name, extra, ram_mib=RAM_MIB) as vm:
        if capabilities:
            vm.qmp.command(
                "migrate-set-capabilities",
                capabilities=[{"capability": c, "state": True} for c in capabilities],
            )
        yield vm


@contextlib.contextmanager
def _guests(
    qemu: str, workdir: Path, source_ram: Path, dest_ram: Path, capabilities: tuple[str, ...]
) -> Iterator[tuple[VM, VM]]:
    dest_ram.write_bytes(b"")
    os.truncate(dest_ram, RAM_SIZE)
    with (
        _guest(qemu, workdir, "src", source_ram, incoming=False, capabilities=capabilities) as src,
        _guest(qemu, workdir, "dst", dest_ram, incoming=True, capabilities=capabilities) as dst,
    ):
        if "multifd" in capabilities:
            for vm in (src, dst):
                vm.qmp.command("migrate-set-parameters", **{"multifd-channels": MULTIFD_CHANNELS})
        yield src, dst


def incoming_tcp(vm: VM) -> str:
    """Make an ``-incoming defer`` guest listen on a free loopback port; return its address."""
    vm.qmp.command("migrate-incoming", uri="tcp:127.0.0.1:0")
    info = vm.qmp.command("query-migrate")
    port = next(a["port"] for a in info["socket-address"] if a["type"] == "inet")
    return f"tcp:127.0.0.1:{port}"


@contextlib.contextmanager
def _relay(env: dict[str, str], *args: str) -> Iterator[Background]:
    relay = Background("relay", *args, env=env, stdout=subprocess.DEVNULL)
    try:
        yield relay
    finally:
        relay.kill()


#: Starts a chain of relays towards ``dst`` for ``n`` connections; returns the
#: address QEMU migrates to and the relays.
Chain = Callable[
    [contextlib.ExitStack, dict[str, str], str, Path, int], tuple[str, list[Background]]
]


def _direct(
    stack: contextlib.ExitStack, env: dict[str, str], dst: str, creds: Path, n: int
) -> tuple[str, list[Background]]:
    relay = stack.enter_context(_relay(env, "tcp:127.0.0.1:0", dst, "--connections", str(n)))
    return relay.listening("source"), [relay]


def _hop(middle: str, exit_layers: list[str], entry_layers: list[str]) -> Chain:
    def build(
        stack: contextlib.ExitStack, env: dict[str, str], dst: str, creds: Path, n: int
    ) -> tuple[str, list[Background]]:
        count = ["--connections", str(n)]
        layers_in = [a.format(creds=creds) for a in exit_layers]
        layers_out = [a.format(creds=creds) for a in entry_layers]
        exit_ = stack.enter_context(_relay(env, middle, dst, *layers_in, *count))
        hop = exit_.listening("source")
        entry = stack.enter_context(_relay(env, "tcp:127.0.0.1:0", hop, *layers_out, *count))
        return entry.listening("source"), [entry, exit_]

    return build


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _websockify(
    stack: contextlib.ExitStack, env: dict[str, str], dst: str, creds: Path, n: int
) -> tuple[str, list[Background]]:
    """websockify is the websocket server hop; our relay is its websocket client."""
    binary = shutil.which("websockify") or shutil.which(
        "websockify", path=os.path.dirname(sys.executable)
    )
    if binary is None:
        pytest.skip("websockify is not installed (pip install websockify)")
    port = _free_port()
    server = subprocess.Popen(
        [binary, f"127.0.0.1:{port}", f"127.0.0.1:{port_of(dst)}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stop() -> None:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    stack.callback(stop)
    _wait_listening(port, server)
    entry = stack.enter_context(
        _relay(env, "tcp:127.0.0.1:0", f"ws://127.0.0.1:{port}/", "--connections", str(n))
    )
    return entry.listening("source"), [entry]


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    """Wait until ``process`` accepts on ``port`` (connect attempts, bounded by its exit)."""
    for _attempt in range(600):
        assert process.poll() is None, "websockify exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                return
        except ConnectionRefusedError:
            # not listening yet: wait for it to say anything more, bounded
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(0.05)
    pytest.fail("websockify never listened")


CHAINS: dict[str, Chain] = {
    "tcp-tcp": _direct,
    "tcp-ws-tcp": _hop("ws://127.0.0.1:0/migrate", [], []),
    "tcp-tls-tcp": _hop(
        "tcp:127.0.0.1:0",
        ["--src-layer", "tls:creds={creds}"],
        ["--dst-layer", "tls:creds={creds},hostname=localhost"],
    ),
    "tcp-websockify-tcp": _websockify,
}


def _outputs(relays: list[Background]) -> str:
    for relay in relays:
        relay.proc.send_signal(signal.SIGTERM)
        relay.finish()
    return "\n".join(relay.stderr for relay in relays)


def _completed(vm: VM) -> bool:
    try:
        return vm.qmp.wait_migration() == "completed"
    except TimeoutError:
        return False


def _finish(src: VM, dst: VM, relays: list[Background], source_ram: Path, dest_ram: Path) -> None:
    for name, vm in (("source", src), ("destination", dst)):
        if not _completed(vm):
            pytest.fail(f"{name}: {vm.log.read_text()}\nrelays:\n{_outputs(relays)}")
    for relay in relays:
        result = relay.finish()
        assert result.returncode == 0, result.stderr
        assert "relay done" in result.stderr, result.stderr
    assert dest_ram.read_bytes() == source_ram.read_bytes()


@pytest.mark.parametrize("chain", list(CHAINS))
def test_multifd_migration_through_gateway(
    qemu: str, tmp_path: Path, creds: Path, random_ram: Path, chain: str
) -> None:
    env = cli_env(tmp_path)
    dest_ram = tmp_path / "dest.ram"
    with (
        _guests(qemu, tmp_path, random_ram, dest_ram, ("multifd",)) as (src, dst),
        contextlib.ExitStack() as stack,
    ):
        incoming = incoming_tcp(dst)
        entry, relays = CHAINS[chain](stack, env, incoming, creds, 1 + MULTIFD_CHANNELS)
        src.qmp.command("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
        src.qmp.command("migrate", uri=f"tcp:127.0.0.1:{port_of(entry)}")
        _finish(src, dst, relays, random_ram, dest_ram)
        for relay in relays:
            assert f"{1 + MULTIFD_CHANNELS} connections" in relay.stderr, relay.stderr


def test_multifd_migration_through_a_tapped_relay_inspected(
    qemu: str, tmp_path: Path, random_ram: Path
) -> None:
    """``relay --tap DIR`` leaves the main channel and each multifd channel on disk.

    ``qiochan inspect`` then reads the main channel as a complete QEVM stream
    and each other one as a multifd channel of the same source, with every
    random page carried by the multifd channels.
    """
    env = cli_env(tmp_path)
    dest_ram = tmp_path / "dest.ram"
    taps = tmp_path / "taps"
    connections = 1 + MULTIFD_CHANNELS
    with (
        _guests(qemu, tmp_path, random_ram, dest_ram, ("multifd",)) as (src, dst),
        contextlib.ExitStack() as stack,
    ):
        incoming = incoming_tcp(dst)
        relay = stack.enter_context(
            _relay(
                env, "tcp:127.0.0.1:0", incoming, "--connections", str(connections),
                "--tap", str(taps),
            )
        )  # fmt: skip
        src.qmp.command("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
        src.qmp.command("migrate", uri=relay.listening("source"))
        _finish(src, dst, [relay], random_ram, dest_ram)
    forward = sorted(taps.glob("*-src-to-dst.bin"))
    assert len(forward) == connections and len(list(taps.glob("*-dst-to-src.bin"))) == connections
    reports = [inspect_file(path, env) for path in forward]
    main = [r for r in reports if r["kind"] == "savevm"]
    multifd = [r for r in reports if r["kind"] == "multifd"]
    assert len(main) == 1 and len(multifd) == MULTIFD_CHANNELS, reports
    assert main[0]["complete"] is True and main[0]["error"] is None
    assert main[0]["ram"]["blocks"]["ram0"] == RAM_SIZE
    assert sorted(r["multifd"]["channel"] for r in multifd) == list(range(MULTIFD_CHANNELS))
    assert len({r["multifd"]["uuid"] for r in multifd}) == 1
    carried = sum(r["multifd"]["blocks"].get("ram0", 0) for r in multifd)
    assert carried >= RAM_SIZE // 4096  # random pages: none is sent as a zero page
    assert sum(path.stat().st_size for path in forward) > RAM_SIZE


def test_postcopy_preempt_through_a_websocket_chain(
    qemu: str, tmp_path: Path, creds: Path, random_ram: Path
) -> None:
    if not Path("/dev/shm").is_dir():
        pytest.skip("postcopy needs tmpfs-backed shared RAM (/dev/shm)")
    env = cli_env(tmp_path)
    shm = Path("/dev/shm") / f"qiochan-test-{os.getpid()}-{tmp_path.name}.ram"
    try:
        with (
            _guests(qemu, tmp_path, random_ram, shm, ("postcopy-ram", "postcopy-preempt")) as (
                src,
                dst,
            ),
            contextlib.ExitStack() as stack,
        ):
            incoming = incoming_tcp(dst)
            entry, relays = _hop("ws://127.0.0.1:0/postcopy", [], [])(
                stack, env, incoming, creds, 2
            )
            # slow enough that postcopy starts before the precopy pass could finish
            src.qmp.command(
                "migrate-set-parameters",
                **{"max-bandwidth": 8 << 20, "max-postcopy-bandwidth": 0},
            )
            src.qmp.command("migrate", uri=f"tcp:127.0.0.1:{port_of(entry)}")
            src.qmp.command("migrate-start-postcopy")
            _finish(src, dst, relays, random_ram, shm)
            statuses = [e["data"]["status"] for e in src.qmp.events if e["event"] == "MIGRATION"]
            assert "postcopy-active" in statuses, statuses
            for relay in relays:
                assert "2 connections" in relay.stderr, relay.stderr
    finally:
        shm.unlink(missing_ok=True)


def test_two_migrations_through_serving_relays_then_sigterm(
    qemu: str, tmp_path: Path, creds: Path, random_ram: Path
) -> None:
    env = cli_env(tmp_path)
    incoming = f"unix:{tmp_path}/incoming.sock"  # each destination QEMU listens here in turn
    with contextlib.ExitStack() as relays:
        exit_ = relays.enter_context(
            _relay(env, "tcp:127.0.0.1:0", incoming, "--src-layer", f"tls:creds={creds}")
        )
        hop = exit_.listening("source")
        entry = relays.enter_context(
            _relay(
                env,
                "tcp:127.0.0.1:0",
                hop,
                "--dst-layer",
                f"tls:creds={creds},hostname=localhost",
            )
        )
        address = entry.listening("source")
        for round_ in range(2):
            workdir = tmp_path / f"round{round_}"
            workdir.mkdir()
            dest_ram = workdir / "dest.ram"
            with _guests(qemu, workdir, random_ram, dest_ram, ()) as (src, dst):
                dst.qmp.command("migrate-incoming", uri=incoming)
                src.qmp.command("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
                src.qmp.command("migrate", uri=f"tcp:127.0.0.1:{port_of(address)}")
                for name, vm in (("source", src), ("destination", dst)):
                    assert _completed(vm), f"{name} round {round_}: {vm.log.read_text()}"
                assert dest_ram.read_bytes() == random_ram.read_bytes()
            for relay in (entry, exit_):  # each relay logged the connection's clean end
                relay.expect(rf"#{round_ + 1} .*: ok in")
        for relay in (entry, exit_):
            relay.proc.send_signal(signal.SIGTERM)
        for relay in (entry, exit_):
            result = relay.finish(timeout=5)
            assert result.returncode == 0, result.stderr
            assert "relay done" in result.stderr
            assert "2 connections" in result.stderr
