"""``qiochan inspect`` on real QEMU 7.2 migrations: captured to files and inspected live.

Guests run under TCG, driven over QMP (tests.helpers.qemu).  What the test
knows independently of the inspector: RAM block names and used lengths from
HMP ``info ramblock``; the device sections QEMU itself listed in the JSON
description at the end of a capture; the capabilities it set; that a paused
guest sends each page once; that a guest whose RAM is a file of random bytes
has no zero pages in that block; the multifd channel count.

Streams reach the inspector straight from QEMU (``migrate`` to ``qiochan
inspect tcp:...``, also over TLS and in postcopy), or through a small asyncio
forwarder that tees both directions of each connection to files, as a
relay's taps do: each such stream is inspected live and from its file.
Guests: paused, running, random RAM with a return path, postcopy, multifd
(two channels, between two QEMUs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import Background, cli_env, inspect_file, port_of
from tests.helpers.qemu import VM, qemu_vm

PAGE = 4096
RANDOM_MIB = 16

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def random_ram(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ram") / "ram.bin"
    path.write_bytes(os.urandom(RANDOM_MIB << 20))
    return path


def random_ram_args(path: Path) -> list[str]:
    return [
        "-object", f"memory-backend-file,id=ram0,size={RANDOM_MIB}M,mem-path={path},share=on",
        "-machine", "memory-backend=ram0",
    ]  # fmt: skip


class TapForwarder:
    """Forwards each TCP connection to ``target`` and tees both directions to files.

    Connection n (from 0, in accept order) leaves ``directory/<n>-src-to-dst.bin``
    and ``directory/<n>-dst-to-src.bin``, as a relay's taps do.
    """

    def __init__(self, target: tuple[str, int], directory: Path) -> None:
        self.target = target
        self.directory = directory
        self.done: list[Path] = []
        self._changed = threading.Condition()
        self._count = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()
        self._server.close()
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = self._count
        self._count += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, tee: Path) -> None:
            with open(tee, "wb") as copy:
                while data := await src.read(1 << 16):
                    copy.write(data)
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.write_eof()

        with contextlib.suppress(ConnectionError):
            await asyncio.gather(
                pump(reader, up_writer, self.directory / f"{n}-src-to-dst.bin"),
                pump(up_reader, writer, self.directory / f"{n}-dst-to-src.bin"),
            )
        for w in (writer, up_writer):
            w.close()
        with self._changed:
            self.done.append(self.directory / f"{n}-src-to-dst.bin")
            self._changed.notify_all()

    def wait(self, count: int, timeout: float = 60) -> list[Path]:
        """Block until ``count`` connections ended; return their src-to-dst files in order."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.done) >= count, timeout), self.done
        return sorted(self.done, key=lambda p: int(p.stem.split("-")[0]))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


@contextlib.contextmanager
def forwarder(target: tuple[str, int], directory: Path) -> Iterator[TapForwarder]:
    tap = TapForwarder(target, directory)
    try:
        yield tap
    finally:
        tap.close()


@contextlib.contextmanager
def live_inspector(env: dict[str, str], *layers: str) -> Iterator[tuple[Background, int]]:
    process = Background(
        "inspect", "--json", "--timeout", "60", *layers, "tcp:127.0.0.1:0", env=env
    )
    try:
        yield process, port_of(process.listening("source"))
    finally:
        process.kill()


def finish_live(process: Background) -> dict[str, Any]:
    result = process.finish()
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def migrate(vm: VM, uri: str) -> None:
    vm.qmp.command("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
    vm.qmp.command("migrate", uri=uri)
    assert vm.qmp.wait_migration() == "completed", vm.log.read_text()
    vm.qmp.events.clear()


def migrate_tapped_to_inspector(
    vm: VM, env: dict[str, str], workdir: Path
) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Migrate ``vm`` to a live inspector through a tap; return (live, captured, capture)."""
    with (
        live_inspector(env) as (process, port),
        forwarder(("127.0.0.1", port), workdir) as tap,
    ):
        migrate(vm, f"tcp:127.0.0.1:{tap.port}")
        live = finish_live(process)
        (capture,) = tap.wait(1)
    return live, inspect_file(capture, env), capture


def check_stream(report: dict[str, Any], blocks: dict[str, int], pages: str = "once") -> None:
    """Compare a complete main stream with what the test knows of the guest.

    ``pages``: ``"once"`` (a paused guest sends each page once), ``"again"``
    (a running one may send some again) or ``"multifd"`` (normal pages go
    over the multifd channels).
    """
    assert report["error"] is None
    assert report["complete"] is True
    assert (report["magic"], report["version"], report["kind"]) == ("QEVM", 3, "savevm")
    assert report["configuration"]["machine"] == "pc-i440fx-7.2"
    assert report["ram"]["blocks"] == blocks
    names = [s["name"] for s in report["sections"]]
    assert names[0] == "ram"
    assert {"timer", "cpu", "apic", "globalstate"} <= set(names)
    assert len(names) == len({(s["name"], s["instance"]) for s in report["sections"]})
    assert len({s["id"] for s in report["sections"]}) == len(names)
    assert report["vmdesc"]["page_size"] == PAGE
    assert report["vmdesc"]["devices"] == len(names) - 1  # every section but ram
    assert report["vmdesc"]["mismatches"] == []
    if pages == "multifd":
        return
    for name, size in blocks.items():
        seen = report["ram"]["pages"][name]
        sent = seen["zero"] + seen["normal"]
        assert sent == size // PAGE if pages == "once" else sent >= size // PAGE, name
    sent = report["ram"]["zero_pages"] + report["ram"]["normal_pages"]
    total = sum(blocks.values()) // PAGE
    assert sent == total if pages == "once" else sent >= total


def check_sections_against_qemu_description(report: dict[str, Any], capture: Path) -> None:
    """The device sections are those QEMU described in the JSON at the end of the capture."""
    data = capture.read_bytes()
    described = json.loads(data[data.rindex(b'{"page_size"') :])
    devices = [(d["name"], d["instance_id"]) for d in described["devices"]]
    sections = [(s["name"], s["instance"]) for s in report["sections"] if s["name"] != "ram"]
    assert sections == devices
    assert report["vmdesc"]["bytes"] == len(data) - data.rindex(b'{"page_size"')


def test_paused_guest_captured_and_live(qemu: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    with qemu_vm(qemu, tmp_path, "paused") as vm:
        blocks = vm.ramblocks()
        live, from_file, capture = migrate_tapped_to_inspector(vm, env, tmp_path)
    for report in (live, from_file):
        check_stream(report, blocks)
        assert report["commands"] == []
        assert report["bytes"] == capture.stat().st_size
    # a file is delimited by its description, found first; a live stream by its footers
    assert all(s["delimited"] in ("parsed", "vmdesc") for s in from_file["sections"])
    assert all(s["delimited"] in ("parsed", "footer-scan") for s in live["sections"])
    assert live["sections"] == [
        dict(s, delimited=live["sections"][n]["delimited"])
        for n, s in enumerate(from_file["sections"])
    ]
    assert live["ram"] == from_file["ram"]
    check_sections_against_qemu_description(from_file, capture)


def test_random_ram_guest_with_return_path(qemu: str, tmp_path: Path, random_ram: Path) -> None:
    env = cli_env(tmp_path)
    with qemu_vm(qemu, tmp_path, "random", random_ram_args(random_ram), ram_mib=RANDOM_MIB) as vm:
        blocks = vm.ramblocks()
        assert blocks["ram0"] == RANDOM_MIB << 20
        vm.qmp.command(
            "migrate-set-capabilities", capabilities=[{"capability": "return-path", "state": True}]
        )
        # QEMU completes only if the inspector answers on the return path (SHUT)
        live, captured, capture = migrate_tapped_to_inspector(vm, env, tmp_path)
    for report in (live, captured):
        check_stream(report, blocks)
        assert report["ram"]["pages"]["ram0"] == {"zero": 0, "normal": (RANDOM_MIB << 20) // PAGE}
        assert [c["name"] for c in report["commands"]][:2] == ["OPEN_RETURN_PATH", "PING"]
    assert live["bytes"] == captured["bytes"] == capture.stat().st_size
    check_sections_against_qemu_description(captured, capture)
    replies = inspect_file(capture.with_name("0-dst-to-src.bin"), env)
    assert (replies["kind"], replies["complete"]) == ("return-path", True)
    messages = [(m["name"], m["value"]) for m in replies["return_path"]]
    assert messages[0] == ("PONG", 1)  # the answer to the PING after OPEN_RETURN_PATH
    assert messages[-1] == ("SHUT", 0)


def test_postcopy_live(qemu: str, tmp_path: Path, random_ram: Path) -> None:
    """Postcopy: discards, then the device state in a PACKAGED stream, then the rest of RAM."""
    env = cli_env(tmp_path)
    with qemu_vm(qemu, tmp_path, "postcopy", random_ram_args(random_ram), ram_mib=RANDOM_MIB) as vm:
        blocks = vm.ramblocks()
        vm.qmp.command(
            "migrate-set-capabilities", capabilities=[{"capability": "postcopy-ram", "state": True}]
        )
        # slow enough that precopy cannot finish before the switch to postcopy
        vm.qmp.command("migrate-set-parameters", **{"max-bandwidth": 4 << 20})
        with live_inspector(env) as (process, port):
            vm.qmp.command("migrate", uri=f"tcp:127.0.0.1:{port}")
            vm.qmp.command("migrate-start-postcopy")
            assert vm.qmp.wait_migration() == "completed", vm.log.read_text()
            live = finish_live(process)
    assert live["complete"] is True and live["error"] is None
    names = [c["name"] for c in live["commands"]]
    assert names[:3] == ["OPEN_RETURN_PATH", "PING", "POSTCOPY_ADVISE"]
    package = names.index("PACKAGED")
    assert "POSTCOPY_RAM_DISCARD" in names[:package]
    assert names.index("POSTCOPY_LISTEN") > package and names.index("POSTCOPY_RUN") > package
    assert live["vmdesc"] is None  # QEMU sends none after a postcopy migration
    assert live["ram"]["blocks"] == blocks
    assert live["ram"]["pages"]["ram0"] == {"zero": 0, "normal": (RANDOM_MIB << 20) // PAGE}
    assert {"cpu", "globalstate"} <= {s["name"] for s in live["sections"]}


def test_running_guest_captured_and_live(qemu: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    with qemu_vm(qemu, tmp_path, "running") as vm:
        blocks = vm.ramblocks()
        vm.qmp.command("cont")
        live, captured, capture = migrate_tapped_to_inspector(vm, env, tmp_path)
    for report in (live, captured):
        check_stream(report, blocks, "again")
        assert report["sections"][0]["records"] >= 3  # START, PART(s), END
        assert report["bytes"] == capture.stat().st_size
    assert live["ram"] == captured["ram"]
    check_sections_against_qemu_description(captured, capture)


def test_paused_guest_live_over_tls(qemu: str, tmp_path: Path, tls_creds_dir: Path) -> None:
    env = cli_env(tmp_path)
    tls = ["-object", f"tls-creds-x509,id=tls0,dir={tls_creds_dir},endpoint=client"]
    with qemu_vm(qemu, tmp_path, "tls", tls) as vm:
        blocks = vm.ramblocks()
        vm.qmp.command(
            "migrate-set-parameters", **{"tls-creds": "tls0", "tls-hostname": "localhost"}
        )
        with live_inspector(env, "--layer", f"tls:creds={tls_creds_dir}") as (process, port):
            migrate(vm, f"tcp:127.0.0.1:{port}")
            live = finish_live(process)
    check_stream(live, blocks)


def test_multifd_channels_captured_per_connection(
    qemu: str, tmp_path: Path, random_ram: Path
) -> None:
    env = cli_env(tmp_path)
    channels = 2
    caps = [{"capability": "multifd", "state": True}]
    args = random_ram_args(random_ram)
    dst_args = [
        "-object", f"memory-backend-ram,id=ram0,size={RANDOM_MIB}M",
        "-machine", "memory-backend=ram0",
        "-incoming", "defer",
    ]  # fmt: skip
    with (
        qemu_vm(qemu, tmp_path, "src", args, ram_mib=RANDOM_MIB) as src,
        qemu_vm(
            qemu,
            tmp_path,
            "dst",
            dst_args,
            ram_mib=RANDOM_MIB,
        ) as dst,
    ):
        blocks = src.ramblocks()
        for vm in (src, dst):
            vm.qmp.command("migrate-set-capabilities", capabilities=caps)
            vm.qmp.command("migrate-set-parameters", **{"multifd-channels": channels})
        dst.qmp.command("migrate-incoming", uri="tcp:127.0.0.1:0")
        info = dst.qmp.command("query-migrate")
        port = next(a["port"] for a in info["socket-address"] if a["type"] == "inet")
        with forwarder(("127.0.0.1", int(port)), tmp_path) as tap:
            migrate(src, f"tcp:127.0.0.1:{tap.port}")
            assert dst.qmp.wait_migration() == "completed", dst.log.read_text()
            files = tap.wait(1 + channels)
    reports = [inspect_file(path, env) for path in files]
    main = [r for r in reports if r["kind"] == "savevm"]
    multifd = [r for r in reports if r["kind"] == "multifd"]
    assert len(main) == 1 and len(multifd) == channels
    check_stream(main[0], blocks, "multifd")
    assert sorted(r["multifd"]["channel"] for r in multifd) == list(range(channels))
    for report in multifd:
        assert report["complete"] is True and report["error"] is None
        assert report["multifd"]["compression"] == "none"
        assert report["multifd"]["sync_packets"] >= 1
    carried = sum(r["multifd"]["normal_pages"] for r in multifd)
    per_block = sum(r["multifd"]["blocks"].get("ram0", 0) for r in multifd)
    assert per_block >= (RANDOM_MIB << 20) // PAGE  # every random page went over multifd
    assert main[0]["ram"]["pages"]["ram0"]["normal"] == 0
    assert carried + main[0]["ram"]["zero_pages"] >= sum(blocks.values()) // PAGE
