"""Named transports from a TOML file: a base address plus layers, used by name.

A transport name can stand wherever an address goes: :func:`qiochan.connect`,
:func:`qiochan.listen`, :mod:`qiochan.aio` and every address argument of the
``qiochan`` command.  The file is ``$QIOCHAN_CONFIG`` when set, else
``$XDG_CONFIG_HOME/qiochan/transports.toml`` (``~/.config/qiochan/transports.toml``);
the command's ``--config FILE`` overrides both.  It is read on first use of a
name, never by ``import qiochan``, and read again when it changes.

Schema::

    # one table per transport under [transports]; names are letters, digits, . _ -
    [transports.secure-mig]
    address = "tcp:127.0.0.1:4444"             # required: any qiochan address
    layers = ["tls:creds=/etc/pki/qemu"]       # optional, innermost first
    description = "migration to host B"        # optional, shown by tools

    [transports.ws-mig]
    address = "tcp:192.0.2.7:8080"
    timeout = 5.0                              # optional: connect timeout, seconds
    layers = [
        { name = "tls", creds = "/etc/pki/qemu", verify-peer = true },
        { name = "websocket", path = "/migrate" },
    ]
    options = { keep-alive = "on" }            # optional: extra connect/listen options

A layer is a spec string in the layer syntax (``"name:key=value,..."``) or a
table with ``name`` and the options as keys (booleans become ``on``/``off``).
Layers given to ``connect``/``listen`` along with a name are applied outside
the configured ones.  Every problem is a :class:`~qiochan.errors.ConfigError`
naming the file, the key and the reason: TOML syntax, an unknown key, a wrong
type, a malformed address or layer, a scheme or layer no plugin knows.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AddressError, ConfigError, PluginError
from .options import LayerSpec, parse_layer
from .registry import backends, resolve_address

__all__ = [
    "CONFIG_ENV",
    "TransportConfig",
    "config_path",
    "default_config_path",
    "load_config",
    "lookup_transport",
    "parse_config",
    "set_config_path",
]

#: The environment variable naming the transports file.
CONFIG_ENV = "QIOCHAN_CONFIG"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRANSPORT_KEYS = frozenset({"address", "layers", "description", "timeout", "options"})


@dataclass(frozen=True)
class TransportConfig:
    """One configured transport.

    Attributes:
        name: the name it is used by.
        address: the base address (its scheme names the transport backend).
        layers: layer specs (:class:`~qiochan.transport.LayerSpec`), innermost first.
        timeout: connect timeout in seconds, or None.
        options: extra keyword options for the backend's connect/listen.
        description: free text.
        source: the file it came from (None for text parsed directly).
    """

    name: str
    address: str
    layers: tuple[Any, ...] = ()
    timeout: float | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    source: Path | None = None

    def __str__(self) -> str:
        chain = " + ".join([self.address, *(str(layer) for layer in self.layers)])
        return f"{self.name} = {chain}"


def default_config_path() -> Path:
    """Return the file used without ``--config``: ``$QIOCHAN_CONFIG`` or the XDG location."""
    env = os.environ.get(CONFIG_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME", "").strip() or os.path.join("~", ".config")
    return Path(base).expanduser() / "qiochan" / "transports.toml"


_lock = threading.Lock()
_explicit_path: Path | None = None
_cache: dict[Path, tuple[tuple[int, int], dict[str, TransportConfig]]] = {}


def set_config_path(path: str | os.PathLike[str] | None) -> None:
    """Use ``path`` as the transports file from now on (None: back to the default).

    An explicitly set file must exist when a name is looked up.
    """
    global _explicit_path
    with _lock:
        _explicit_path = None if path is None else Path(path).expanduser()


def config_path() -> tuple[Path, bool]:
    """Return the transports file in use and whether it was chosen explicitly."""
    with _lock:
        explicit = _explicit_path
    if explicit is not None:
        return explicit, True
    return default_config_path(), bool(os.environ.get(CONFIG_ENV, "").strip())


def _as_option_value(value: Any, path: Path | None, key: str) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value
    raise ConfigError(path, key, f"must be a string, number or boolean, not {_toml_type(value)}")


def _toml_type(value: Any) -> str:
    names = {dict: "table", list: "array", str: "string", bool: "boolean"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _parse_layer(value: Any, path: Path | None, key: str) -> Any:
    if isinstance(value, str):
        try:
            return parse_layer(value)
        except AddressError as exc:
            raise ConfigError(path, key, str(exc)) from None
    if isinstance(value, dict):
        name = value.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(path, key, "a layer table needs a 'name' string (e.g. name = 'tls')")
        options = {
            option.replace("-", "_"): _as_option_value(item, path, f"{key}.{option}")
            for option, item in value.items()
            if option != "name"
        }
        try:
            return LayerSpec(name.strip().lower(), options)
        except AddressError as exc:
            raise ConfigError(path, key, str(exc)) from None
    raise ConfigError(
        path, key, f"a layer must be a spec string or a table, not {_toml_type(value)}"
    )


def _check_address(address: str, path: Path | None, key: str) -> None:
    """Reject a malformed address or one whose scheme no plugin knows."""
    scheme, sep, _rest = address.partition(":")
    scheme = scheme.strip().lower()
    if not sep or not scheme:
        raise ConfigError(path, key, f"{address!r} has no scheme (e.g. 'tcp:HOST:PORT')")
    known = {s for b in backends().values() if b.kind == "transport" for s in b.schemes}
    if scheme not in known:
        raise ConfigError(
            path, key, f"unknown scheme {scheme!r} (known: {', '.join(sorted(known))})"
        )
    try:
        resolve_address(address)
    except AddressError as exc:
        raise ConfigError(path, key, str(exc)) from None
    except PluginError:
        pass  # a known scheme whose backend is unavailable here: reported when used


def _check_layer(layer: Any, path: Path | None, key: str) -> None:
    known = {s for b in backends().values() if b.kind == "layer" for s in b.schemes}
    if layer.name not in known:
        raise ConfigError(
            path, key, f"unknown layer {layer.name!r} (known: {', '.join(sorted(known))})"
        )


def _parse_transport(name: str, table: Any, path: Path | None) -> TransportConfig:
    key = f"transports.{name}"
    if not _NAME.match(name):
        raise ConfigError(path, key, "a transport name uses letters, digits, '.', '_' and '-' only")
    if not isinstance(table, dict):
        raise ConfigError(path, key, f"must be a table, not {_toml_type(table)}")
    unknown = sorted(set(table) - _TRANSPORT_KEYS)
    if unknown:
        raise ConfigError(
            path,
            f"{key}.{unknown[0]}",
            f"unknown key (allowed: {', '.join(sorted(_TRANSPORT_KEYS))})",
        )
    address = table.get("address")
    if not isinstance(address, str) or not address.strip():
        raise ConfigError(path, f"{key}.address", "required: an address string")
    address = address.strip()
    _check_address(address, path, f"{key}.address")
    raw_layers = table.get("layers", [])
    if not isinstance(raw_layers, list):
        raise ConfigError(path, f"{key}.layers", f"must be an array, not {_toml_type(raw_layers)}")
    layers = []
    for index, raw in enumerate(raw_layers):
        layer_key = f"{key}.layers[{index}]"
        layer = _parse_layer(raw, path, layer_key)
        _check_layer(layer, path, layer_key)
        layers.append(layer)
    timeout = table.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        raise ConfigError(path, f"{key}.timeout", "must be a positive number of seconds")
    raw_options = table.get("options", {})
    if not isinstance(raw_options, dict):
        raise ConfigError(path, f"{key}.options", f"must be a table, not {_toml_type(raw_options)}")
    options = {
        option.replace("-", "_"): _as_option_value(value, path, f"{key}.options.{option}")
        for option, value in raw_options.items()
    }
    description = table.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(path, f"{key}.description", "must be a string")
    return TransportConfig(
        name=name,
        address=address,
        layers=tuple(layers),
        timeout=None if timeout is None else float(timeout),
        options=options,
        description=description,
        source=path,
    )


def toml_table(text: str, path: Path | None, key: str, expected: str) -> Any:
    """Parse TOML ``text`` whose one top-level key may be ``key``; return its value.

    Args:
        path: the file it came from, named in errors.
        expected: how errors describe the key (``"[transports.NAME]"``).
    Returns:
        The value of ``key``, or None when the document lacks it.
    Raises:
        ConfigError: invalid TOML or another top-level key.
    """
    import tomllib

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"invalid TOML: {exc}") from None
    unknown = sorted(set(document) - {key})
    if unknown:
        raise ConfigError(path, unknown[0], f"unknown top-level key (expected {expected})")
    return document.get(key)


def parse_config(text: str, path: Path | None = None) -> dict[str, TransportConfig]:
    """Parse and check the TOML ``text`` of a transports file.

    Args:
        path: the file it came from, named in errors.
    Returns:
        The transports by name.
    Raises:
        ConfigError: invalid TOML or an invalid entry (the message names file, key, reason).
    """
    transports = toml_table(text, path, "transports", "[transports.NAME]")
    if transports is None:
        transports = {}
    if not isinstance(transports, dict):
        raise ConfigError(path, "transports", "must be a table of [transports.NAME] tables")
    return {name: _parse_transport(name, table, path) for name, table in transports.items()}


def load_config(
    path: str | os.PathLike[str] | None = None, *, required: bool | None = None
) -> dict[str, TransportConfig]:
    """Read the transports file ``path`` (default: :func:`config_path`).

    Args:
        required: raise when the file does not exist (default: when the path was
            chosen explicitly, by argument, :func:`set_config_path` or ``$QIOCHAN_CONFIG``).
    Returns:
        The transports by name; empty when an optional file does not exist.
    Raises:
        ConfigError: the file is unreadable or invalid.
    """
    if path is None:
        file, explicit = config_path()
    else:
        file, explicit = Path(path).expanduser(), True
    must_exist = explicit if required is None else required
    try:
        stat = file.stat()
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(file, "", "no such file") from None
        return {}
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read it: {exc.strerror}") from None
    stamp = (stat.st_mtime_ns, stat.st_size)
    with _lock:
        cached = _cache.get(file)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "", f"cannot read it: {exc}") from None
    transports = parse_config(text, file)
    with _lock:
        _cache[file] = (stamp, transports)
    return transports


def lookup_transport(name: str) -> TransportConfig | None:
    """Return the configured transport called ``name``, or None when there is none.

    Raises:
        ConfigError: the transports file is invalid (or an explicit one is missing).
    """
    if not _NAME.match(name):
        return None
    return load_config().get(name)
