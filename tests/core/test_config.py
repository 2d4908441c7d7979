"""qiochan.config: named transports from TOML, and their use by connect/listen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qiochan import config
from qiochan.config import (
    TransportConfig,
    default_config_path,
    load_config,
    lookup_transport,
    parse_config,
    set_config_path,
)
from qiochan.errors import AddressError, ConfigError
from qiochan.hookspecs import hookimpl
from qiochan.options import LayerSpec
from qiochan.registry import Backend, plugin_manager


class _TagLayer:
    """A layer plugin for these tests: records the role and options it was applied with."""

    applied: list[tuple[str, dict[str, Any]]]

    def __init__(self) -> None:
        self.applied = []

    def wrap(self, channel: Any, role: str, **options: Any) -> Any:
        self.applied.append((role, options))
        return channel

    @hookimpl
    def qiochan_backends(self) -> list[Backend]:
        return [Backend(name="tag", schemes=("tag",), kind="layer", wrap=self.wrap)]


@pytest.fixture
def tag_layer() -> Iterator[_TagLayer]:
    plugin = _TagLayer()
    manager = plugin_manager()
    manager.register(plugin, name="test-tag-layer")
    try:
        yield plugin
    finally:
        manager.unregister(plugin)


@pytest.fixture
def config_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "transports.toml"
    set_config_path(path)
    try:
        yield path
    finally:
        set_config_path(None)


def test_string_and_table_layers(tag_layer: _TagLayer, tmp_path: Path) -> None:
    transports = parse_config(
        """
        [transports.secure-mig]
        address = "buffer:"
        layers = ["tag:creds=/etc/pki/qemu,verify-peer=on"]
        description = "to host B"

        [transports."ws.mig_2"]
        address = "null:"
        timeout = 2.5
        layers = [{ name = "TAG", path = "/m", verify-peer = false, depth = 3 }]
        options = { keep-alive = true }
        """,
        tmp_path / "t.toml",
    )
    secure = transports["secure-mig"]
    assert secure.address == "buffer:"
    assert secure.layers == (LayerSpec("tag", {"creds": "/etc/pki/qemu", "verify_peer": "on"}),)
    assert secure.description == "to host B"
    assert secure.timeout is None
    assert secure.source == tmp_path / "t.toml"
    assert str(secure) == "secure-mig = buffer: + tag:creds=/etc/pki/qemu,verify-peer=on"
    ws = transports["ws.mig_2"]
    assert ws.layers == (LayerSpec("tag", {"path": "/m", "verify_peer": "off", "depth": "3"}),)
    assert ws.timeout == 2.5
    assert ws.options == {"keep_alive": "on"}


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[transports.a\naddress = 1", "", "invalid TOML"),
        ("[other]\nx = 1", "other", "unknown top-level key"),
        ("transports = 3", "transports", "must be a table"),
        ("[transports.a]\nlayers = []", "transports.a.address", "required"),
        ('[transports.a]\naddress = "buffer:"\nport = 3', "transports.a.port", "unknown key"),
        ('[transports."a b"]\naddress = "buffer:"', "transports.a b", "letters, digits"),
        ('[transports.a]\naddress = "nowhere"', "transports.a.address", "has no scheme"),
        ('[transports.a]\naddress = "tpc:h:1"', "transports.a.address", "unknown scheme 'tpc'"),
        ('[transports.a]\naddress = "buffer:x"', "transports.a.address", "takes no options"),
        (
            '[transports.a]\naddress = "buffer:"\nlayers = "tag"',
            "transports.a.layers",
            "must be an array",
        ),
        (
            '[transports.a]\naddress = "buffer:"\nlayers = ["tag:creds"]',
            "transports.a.layers[0]",
            "not of the form key=value",
        ),
        (
            '[transports.a]\naddress = "buffer:"\nlayers = ["tag", "zip:level=9"]',
            "transports.a.layers[1]",
            "unknown layer 'zip'",
        ),
        (
            '[transports.a]\naddress = "buffer:"\nlayers = [{ path = "/" }]',
            "transports.a.layers[0]",
            "needs a 'name'",
        ),
        (
            '[transports.a]\naddress = "buffer:"\nlayers = [{ name = "tag", x = [1] }]',
            "transports.a.layers[0].x",
            "not array",
        ),
        (
            '[transports.a]\naddress = "buffer:"\nlayers = [{ name = "t/g" }]',
            "transports.a.layers[0]",
            "is not a layer name",
        ),
        (
            '[transports.a]\naddress = "buffer:"\nlayers = [{ name = "tag", "a b" = 1 }]',
            "transports.a.layers[0]",
            "'a b' is not a name",
        ),
        (
            '[transports.a]\naddress = "tcp:h:\u00b2"',
            "transports.a.address",
            "is not a number",
        ),
        (
            '[transports.a]\naddress = "buffer:"\nlayers = [3]',
            "transports.a.layers[0]",
            "spec string or a table",
        ),
        ('[transports.a]\naddress = "buffer:"\ntimeout = -1', "transports.a.timeout", "positive"),
        ('[transports.a]\naddress = "buffer:"\ntimeout = true', "transports.a.timeout", "positive"),
        ('[transports.a]\naddress = "buffer:"\noptions = 1', "transports.a.options", "table"),
        ('[transports.a]\naddress = "buffer:"\ndescription = 1', "transports.a.description", ""),
    ],
)
def test_invalid_configs_name_file_key_and_reason(
    tag_layer: _TagLayer, tmp_path: Path, text: str, key: str, reason: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert error.path == path
    assert error.key == key
    assert reason in error.reason
    assert str(error).startswith(f"{path}: ")
    assert isinstance(error, ValueError) and not isinstance(error, OSError)  # bad input, not I/O


def test_default_path_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(config.CONFIG_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_config_path() == tmp_path / "xdg" / "qiochan" / "transports.toml"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_config_path() == tmp_path / "home" / ".config" / "qiochan" / "transports.toml"
    monkeypatch.setenv(config.CONFIG_ENV, str(tmp_path / "env.toml"))
    assert default_config_path() == tmp_path / "env.toml"


def test_missing_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(config.CONFIG_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert load_config() == {}  # the default file is optional
    assert lookup_transport("anything") is None
    monkeypatch.setenv(config.CONFIG_ENV, str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match=r"absent\.toml: no such file"):
        load_config()  # a file named explicitly must exist
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "other.toml")


def test_reloads_when_the_file_changes(config_file: Path) -> None:
    config_file.write_text('[transports.a]\naddress = "buffer:"\n')
    assert lookup_transport("a") == TransportConfig("a", "buffer:", options={}, source=config_file)
    assert lookup_transport("not:a name") is None
    config_file.write_text('[transports.a]\naddress = "null:"\n[transports.b]\naddress = "null:"\n')
    assert {name: t.address for name, t in load_config().items()} == {"a": "null:", "b": "null:"}


def test_connect_and_listen_resolve_configured_names(
    config_file: Path, tag_layer: _TagLayer
) -> None:
    import qiochan

    if not any("tcp" in b.schemes and b.available for b in qiochan.backends().values()):
        pytest.skip("no tcp backend yet")

    config_file.write_text(
        """
        [transports.local]
        address = "tcp:127.0.0.1:0"
        layers = ["tag:side=inner"]
        timeout = 3
        """
    )
    with qiochan.listen("local", layers=["tag:side=outer"]) as listener:
        port = listener.address.port
        config_file.write_text(
            f"""
            [transports.local]
            address = "tcp:127.0.0.1:{port}"
            layers = ["tag:side=inner"]
            timeout = 3
            """
        )
        client = qiochan.connect("local", layers=["tag:side=outer"])
        with client, listener.accept() as server:
            client.write_all(b"over a configured transport")
            buf = bytearray(27)
            server.read_all(buf)
            assert buf == b"over a configured transport"
    assert tag_layer.applied == [
        ("client", {"side": "inner"}),
        ("client", {"side": "outer"}),
        ("server", {"side": "inner"}),
        ("server", {"side": "outer"}),
    ]


def test_unknown_names_are_address_errors(config_file: Path) -> None:
    import qiochan

    config_file.write_text('[transports.a]\naddress = "buffer:"\n')
    with pytest.raises(AddressError, match="names no configured transport"):
        qiochan.connect("b")


def test_an_invalid_file_fails_the_lookup(config_file: Path) -> None:
    import qiochan

    config_file.write_text("[transports.a]\naddress = 'buffer:'\nextra = 1\n")
    with pytest.raises(ConfigError, match=r"transports\.a\.extra: unknown key"):
        qiochan.connect("a")
