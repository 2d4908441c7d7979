"""Layer specs, layer application and address dispatch (transport-independent parts)."""

from __future__ import annotations

import pytest

import qiochan
from qiochan import AddressError, HandshakeError, PluginError, QIOChannel
from qiochan.plugin import Backend, hookimpl
from qiochan.registry import plugin_manager
from qiochan.transport import (
    LayeredListener,
    LayerSpec,
    Role,
    apply_layers,
    check_layers,
    parse_layer,
    resolve_address,
)
from qiochan_memory import QIOChannelBuffer, memory_pipe


def test_parse_layer_spec() -> None:
    spec = parse_layer("tls:creds=/etc/pki/qemu,verify-peer=off,priority=NORMAL,,-VERS-ALL")
    assert spec == LayerSpec(
        "tls", {"creds": "/etc/pki/qemu", "verify_peer": "off", "priority": "NORMAL,-VERS-ALL"}
    )
    assert str(spec) == "tls:creds=/etc/pki/qemu,verify-peer=off,priority=NORMAL,,-VERS-ALL"
    assert parse_layer("websocket") == LayerSpec("websocket")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (":x=1", "no name"),
        ("tls:creds", "key=value"),
        ("tls:a=1,a=2", "given twice"),
        ("tls:=v", "key=value"),
    ],
)
def test_bad_layer_specs(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        parse_layer(text)


def test_callable_layers_apply_innermost_first() -> None:
    order: list[tuple[str, Role]] = []

    def tag(name: str):  # type: ignore[no-untyped-def]
        def layer(channel: QIOChannel, role: Role) -> QIOChannel:
            order.append((name, role))
            return channel

        return layer

    with QIOChannelBuffer() as buf:
        assert apply_layers(buf, [tag("inner"), tag("outer")], "client") is buf
    assert order == [("inner", "client"), ("outer", "client")]


def test_failed_layer_closes_the_channels() -> None:
    left, right = memory_pipe()

    def failing(channel: QIOChannel, role: Role) -> QIOChannel:
        raise HandshakeError("peer refused")

    with pytest.raises(HandshakeError):
        apply_layers(left, [failing], "server")
    assert left.closed
    right.close()


def test_unknown_layer_and_bad_layer_type() -> None:
    with (
        QIOChannelBuffer() as buf,
        pytest.raises(PluginError, match="No layer backend for 'nosuchlayer'"),
    ):
        apply_layers(buf, ["nosuchlayer:x=1"], "client")
    with QIOChannelBuffer() as buf, pytest.raises(TypeError, match="a layer must be"):
        apply_layers(buf, [42], "client")


def test_resolve_address_errors() -> None:
    with pytest.raises(AddressError, match="no scheme"):
        resolve_address("no-scheme-here")
    with pytest.raises(PluginError, match="No transport backend for 'nosuch'"):
        resolve_address("nosuch:1")
    with pytest.raises(TypeError, match="address must be"):
        resolve_address(42)
    with pytest.raises(ValueError, match="mode"):
        qiochan.open_channel("buffer:", "x")


def test_layered_listener_wraps_accepted_channels() -> None:
    class PairListener:
        """Hands out the server ends of memory pipes."""

        def __init__(self) -> None:
            self.clients: list[QIOChannel] = []
            self.closed = False

        @property
        def address(self) -> str:
            return "memory-pair"

        def accept(self) -> QIOChannel:
            client, server = memory_pipe()
            self.clients.append(client)
            return server

        def close(self) -> None:
            self.closed = True

    wrapped: list[Role] = []

    def mark(channel: QIOChannel, role: Role) -> QIOChannel:
        wrapped.append(role)
        return channel

    inner = PairListener()
    with LayeredListener(inner, [mark]) as listener:
        assert listener.address == "memory-pair"
        channel = listener.accept()
        channel.close()
        assert listener.clients is inner.clients
    assert inner.closed and wrapped == ["server"]
    for client in inner.clients:
        client.close()


class _CheckedLayer:
    """A third-party layer whose backend checks its options before any channel exists."""

    def __init__(self) -> None:
        self.checked: list[tuple[str, dict[str, str]]] = []
        self.wrapped = 0

    def check(self, role: str, **options: str) -> None:
        self.checked.append((role, options))
        if options.get("level") not in ("1", "2"):
            raise AddressError(f"layer 'checked': level={options.get('level')!r} is not 1 or 2")

    def wrap(self, channel: QIOChannel, role: str, **options: str) -> QIOChannel:
        self.wrapped += 1
        return channel

    @hookimpl
    def qiochan_backends(self) -> list[Backend]:
        return [
            Backend(
                name="checked", schemes=("checked",), kind="layer", wrap=self.wrap, check=self.check
            )
        ]


def test_a_third_party_check_runs_before_connect_and_listen() -> None:
    layer = _CheckedLayer()
    plugin_manager().register(layer, name="test-checked-layer")
    try:
        check_layers(["checked:level=1"], "server")
        assert layer.checked == [("server", {"level": "1"})]
        with pytest.raises(AddressError, match="level='9'"):
            qiochan.connect("exec:cat", layers=["checked:level=9"])
        with pytest.raises(AddressError, match="level=None"):
            qiochan.listen("tcp:127.0.0.1:0", layers=["checked"])
        assert layer.wrapped == 0  # nothing was started, connected or bound
        channel = qiochan.connect("exec:cat", layers=["checked:level=2"])
        channel.close()
        assert layer.wrapped == 1
    finally:
        plugin_manager().unregister(name="test-checked-layer")


def test_check_layers_needs_available_layers_and_good_specs() -> None:
    with pytest.raises(PluginError, match="nosuch"):
        check_layers(["nosuch:x=1"], "client")
    with pytest.raises(AddressError, match="not of the form"):
        check_layers(["websocket:path"], "client")
    check_layers([lambda channel, role: channel], "client")  # callables run when applied
