"""The registry: entry-point discovery, failures isolated, runtime registration, blocking."""

from __future__ import annotations

import asyncio
import importlib
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pluggy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qiochan
import qiochan.aio
from qiochan import AddressError, Feature, PluginError, QIOChannel
from qiochan.address import SchemeAddress
from qiochan.hookspecs import hookimpl
from qiochan.registry import (
    Backend,
    backends,
    find_backend,
    plugin_manager,
    reload_plugins,
    resolve_address,
)
from qiochan_memory import QIOChannelNull
from tests.helpers.plugins import RENDEZVOUS_PLUGIN, make_distribution


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Rediscover plugins for the test and again afterwards (env and sys.path restored)."""
    yield monkeypatch
    monkeypatch.undo()
    reload_plugins()


def test_memory_backend_is_discovered_through_entry_points() -> None:
    found = backends()
    memory = found["memory"]
    assert memory.available and memory.kind == "transport"
    assert memory.plugin == "memory" and "buffer" in memory.schemes
    assert Feature.SEEKABLE in memory.features
    assert plugin_manager().has_plugin("memory")
    assert qiochan.backends() == found


def test_runtime_registration_adds_backends(fresh_registry: pytest.MonkeyPatch) -> None:
    class Runtime:
        @hookimpl
        def qiochan_backends(self) -> list[Backend]:
            return [Backend(name="runtime", schemes=("rt",), description="registered live")]

    plugin_manager().register(Runtime(), name="runtime-plugin")
    runtime = backends()["runtime"]
    assert runtime.plugin == "runtime-plugin" and runtime.available
    assert find_backend("rt") is runtime


def test_a_plugins_aconnect_runs_on_the_loop_and_is_checked(
    fresh_registry: pytest.MonkeyPatch,
) -> None:
    made: list[QIOChannelNull] = []

    def connect(address: object) -> QIOChannel:
        raise AssertionError("aconnect is preferred on a loop")

    async def aconnect(address: object) -> object:
        await asyncio.sleep(0)
        if str(address).endswith("bad"):
            return "not a channel"
        made.append(QIOChannelNull())
        return made[-1]

    class Looped:
        @hookimpl
        def qiochan_backends(self) -> list[Backend]:
            # aconnect breaks its contract on purpose (lp:bad)
            looped = Backend(name="looped", schemes=("lp",), connect=connect, aconnect=aconnect)  # type: ignore[arg-type]
            return [looped]

    plugin_manager().register(Looped(), name="looped-plugin")

    async def main() -> None:
        channel = await qiochan.aio.aconnect("lp:good")
        assert made == [channel]
        with pytest.raises(PluginError, match="aconnect returned str, not a QIOChannel"):
            await qiochan.aio.aconnect("lp:bad")

    asyncio.run(main())
    made[0].close()


def test_broken_plugin_is_reported_and_others_still_load(
    tmp_path: Path, fresh_registry: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    make_distribution(tmp_path, "qiochan_broken_demo", "raise ImportError('no such lib')\n")
    fresh_registry.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="qiochan.registry"):
        reload_plugins()
        found = backends()
    broken = found["qiochan_broken_demo"]
    assert not broken.available
    assert "qiochan_broken_demo 1.2.3" in broken.missing and "no such lib" in broken.missing
    assert "qiochan_broken_demo 1.2.3" in caplog.text
    assert found["memory"].available


def test_plugin_with_missing_dependency_is_listed_unavailable(
    tmp_path: Path, fresh_registry: pytest.MonkeyPatch
) -> None:
    make_distribution(
        tmp_path,
        "qiochan_optional_demo",
        """
        from qiochan.hookspecs import hookimpl
        from qiochan.registry import Backend

        @hookimpl
        def qiochan_backends():
            return [Backend(name="optional", schemes=("opt",), available=False,
                            missing="pip install 'qiochan-optional[extra]'")]
        """,
    )
    fresh_registry.syspath_prepend(str(tmp_path))
    reload_plugins()
    with pytest.raises(PluginError, match="unavailable: pip install"):
        find_backend("opt")
    with pytest.raises(PluginError, match="unavailable"):
        backends()["optional"].require("connect")


def test_plugin_selection_and_autoload_switch(fresh_registry: pytest.MonkeyPatch) -> None:
    fresh_registry.setenv("QIOCHAN_DISABLE_PLUGIN_AUTOLOAD", "1")
    reload_plugins()
    assert backends() == {}
    fresh_registry.delenv("QIOCHAN_DISABLE_PLUGIN_AUTOLOAD")
    fresh_registry.setenv("QIOCHAN_PLUGINS", "memory")
    reload_plugins()
    assert set(backends()) == {"memory"}


def test_blocked_plugin_disappears(fresh_registry: pytest.MonkeyPatch) -> None:
    reload_plugins().set_blocked("memory")
    assert "memory" not in backends()
    with pytest.raises(PluginError, match="No transport backend for 'buffer'"):
        find_backend("buffer")


def test_bad_hook_result_names_the_plugin_and_hook(fresh_registry: pytest.MonkeyPatch) -> None:
    class Wrong:
        @hookimpl
        def qiochan_backends(self) -> object:
            return ["not a backend"]

    plugin_manager().register(Wrong(), name="wrong-plugin")
    with pytest.raises(PluginError, match=r"plugin 'wrong-plugin', hook qiochan_backends\(\)"):
        backends()


def test_misspelled_hook_of_an_entry_point_is_reported_and_others_still_load(
    tmp_path: Path, fresh_registry: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    make_distribution(
        tmp_path,
        "qiochan_typo_demo",
        """
        from qiochan.plugin import Backend, hookimpl

        @hookimpl
        def qiochan_backend():
            return [Backend(name="typo", schemes=("typo",))]
        """,
    )
    fresh_registry.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="qiochan.registry"):
        manager = reload_plugins()
        found = backends()
    typo = found["qiochan_typo_demo"]
    assert not typo.available
    for words in ("qiochan_typo_demo 1.2.3", "unknown hook 'qiochan_backend'", "qiochan_backends"):
        assert words in typo.missing
        assert words in caplog.text
    assert not manager.has_plugin("qiochan_typo_demo")
    assert found["memory"].available


def test_misspelled_hook_registered_at_runtime_is_a_plugin_error(
    fresh_registry: pytest.MonkeyPatch,
) -> None:
    class Typo:
        @hookimpl
        def qiochan_channel_open(self, channel: object, address: object) -> None:
            """Meant qiochan_channel_opened."""

    plugin_manager().register(Typo(), name="typo-plugin")
    with pytest.raises(PluginError) as info:
        backends()
    message = str(info.value)
    assert "'typo-plugin'" in message and "unknown hook 'qiochan_channel_open'" in message
    assert "did you mean 'qiochan_channel_opened'?" in message
    assert isinstance(info.value.__cause__, pluggy.PluginValidationError)
    plugin_manager().unregister(name="typo-plugin")
    assert backends()["memory"].available


def test_raising_hook_is_reported_not_fatal(fresh_registry: pytest.MonkeyPatch) -> None:
    class Raising:
        @hookimpl
        def qiochan_backends(self) -> list[Backend]:
            raise RuntimeError("bug in plugin")

    plugin_manager().register(Raising(), name="raising-plugin")
    found = backends()
    assert not found["raising-plugin"].available
    assert "bug in plugin" in found["raising-plugin"].missing
    assert found["memory"].available


def test_bad_hook_signature_is_rejected_with_names(fresh_registry: pytest.MonkeyPatch) -> None:
    class BadSignature:
        @hookimpl
        def qiochan_channel_opened(self, channel: object, address: object, extra: int) -> None:
            """Takes an argument the spec does not have."""

    with pytest.raises(pluggy.PluginValidationError, match="qiochan_channel_opened"):
        plugin_manager().register(BadSignature(), name="bad-signature")


def test_backend_validation() -> None:
    with pytest.raises(PluginError, match="kind"):
        Backend(name="x", kind="socket")  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="non-empty"):
        Backend(name="")
    with pytest.raises(PluginError, match="connect must be callable"):
        Backend(name="x", connect="nope")  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="'x': aconnect must be callable"):
        Backend(name="x", aconnect="nope")  # type: ignore[arg-type]
    assert Backend(name="x", schemes="one").schemes == ("one",)  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="does not support listen"):
        Backend(name="x").require("listen")


def test_observer_hooks_see_open_and_close(fresh_registry: pytest.MonkeyPatch) -> None:
    events: list[str] = []

    class Observer:
        @hookimpl
        def qiochan_channel_opened(self, channel: object, address: object) -> None:
            events.append(f"opened {address}")

        @hookimpl
        def qiochan_channel_closed(self, channel: object) -> None:
            events.append("closed")

    plugin_manager().register(Observer(), name="observer")
    qiochan.open_channel("null:", "w").close()
    assert events == ["opened null:", "closed"]


def test_import_qiochan_does_not_load_plugins() -> None:
    code = (
        "import sys, qiochan; "
        "assert 'pluggy' not in sys.modules and 'qiochan_memory' not in sys.modules; "
        "assert 'asyncio' not in sys.modules, 'asyncio imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_a_scheme_without_a_parser_reaches_its_plugin_as_a_scheme_address(
    tmp_path: Path, fresh_registry: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rdv_runtime.py").write_text(RENDEZVOUS_PLUGIN)
    fresh_registry.syspath_prepend(str(tmp_path))
    fresh_registry.setenv("QIOCHAN_RDV_DIR", str(tmp_path))
    plugin = importlib.import_module("rdv_runtime")
    plugin_manager().register(plugin, name="rdv-runtime")
    assert backends()["rendezvous"].parse is None

    with qiochan.listen("rdv:meet") as listener:
        assert listener.address == SchemeAddress("rdv", "rdv:meet")
        with qiochan.connect("RDV:meet", timeout=10) as client, listener.accept() as server:
            client.write_all(b"ping")
            got = bytearray(4)
            server.read_all(got)
            assert got == b"ping"
    with qiochan.open_channel(SchemeAddress("rdv", "rdv:note"), "w") as out:
        out.write_all(b"kept")
    assert (tmp_path / "note.dat").read_bytes() == b"kept"

    seen = plugin.SEEN
    assert seen == [
        SchemeAddress("rdv", "rdv:meet"),
        SchemeAddress("rdv", "RDV:meet"),
        SchemeAddress("rdv", "rdv:note"),
    ]
    assert [str(address) for address in seen] == ["rdv:meet", "RDV:meet", "rdv:note"]
    assert seen[1].rest == "meet"
    sys.modules.pop("rdv_runtime")


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.tuples(
            st.sampled_from(["buffer:", "null:", "tcp:", "exec:", "rdv:", "nope:", "Buffer:"]),
            st.text(alphabet="a:, =1", max_size=6),
        ).map("".join),
    )
)
def test_any_address_text_resolves_and_reads_back_or_is_an_address_or_plugin_error(
    text: str,
) -> None:
    try:
        backend, parsed = resolve_address(text)
    except (AddressError, PluginError) as exc:
        assert str(exc)
        return
    again_backend, again = resolve_address(str(parsed))
    assert (again_backend, again) == (backend, parsed)
