"""QEMU-style ``key=value,key=value`` option lists, shared by addresses and layer specs.

A literal comma inside a value is written ``,,`` as on QEMU's command line.
Option keys are names (ASCII letters, digits, ``_``, ``-`` and ``.``; a dash
is read as an underscore) and numbers are plain ASCII decimal digits.
Everything parsed here formats back, through ``str()`` or
:func:`format_options`, to text that parses to the same value; malformed
text raises :class:`~qiochan.errors.AddressError` naming the bad part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import AddressError

__all__ = [
    "LayerSpec",
    "format_options",
    "is_decimal",
    "parse_bool",
    "parse_int",
    "parse_layer",
    "parse_options",
    "split_options",
]

_TRUE = frozenset({"on", "yes", "true", "1"})
_FALSE = frozenset({"off", "no", "false", "0"})
# an option key once dashes became underscores; a layer name
_KEY = re.compile(r"[A-Za-z0-9_.]+")
_LAYER_NAME = re.compile(r"[a-z0-9][a-z0-9_.+-]*")
# longer numbers are out of every range here (and int() refuses past 4300 digits)
_MAX_DIGITS = 1000


def is_decimal(text: str) -> bool:
    """Return True when ``text`` is a non-empty run of ASCII digits ``0``-``9``.

    ``str.isdigit`` alone also accepts ``"²"`` and other scripts' digits.
    """
    return text.isascii() and text.isdigit()


def _check_key(key: str, context: str) -> None:
    if not _KEY.fullmatch(key):
        raise AddressError(
            f"{context}: option name {key.replace('_', '-')!r} is not a name "
            "(letters, digits, '-', '_' and '.')"
        )


def split_options(text: str) -> list[str]:
    """Split ``text`` on single commas, turning ``,,`` into a literal comma.

    Returns the list of parts (an empty ``text`` gives ``[""]``).
    """
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == ",":
            if text.startswith(",,", i):
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def parse_options(parts: list[str], context: str) -> dict[str, str]:
    """Parse ``key=value`` items into a dict with dashes in keys turned into underscores.

    Raises:
        AddressError: an item has no ``=``, a key that is not a name, or a key
            given twice; the message names ``context`` and the item.
    """
    options: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise AddressError(f"{context}: option {part!r} is not of the form key=value")
        name = key.strip().replace("-", "_")
        _check_key(name, context)
        if name in options:
            raise AddressError(f"{context}: option {key!r} given twice")
        options[name] = value
    return options


def format_options(options: dict[str, str]) -> str:
    """Format options back to ``key=value,...`` with underscores shown as dashes."""
    return ",".join(
        f"{key.replace('_', '-')}={value.replace(',', ',,')}" for key, value in options.items()
    )


def parse_bool(value: str | bool, key: str, context: str = "option") -> bool:
    """Return the boolean an ``on``/``off`` style value means.

    Raises:
        AddressError: the value is not one of on/off, yes/no, true/false, 1/0.
    """
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise AddressError(f"{context}: {key.replace('_', '-')}={value!r} is not a boolean (on/off)")


def parse_int(
    value: str | int,
    key: str,
    context: str = "option",
    *,
    minimum: int = 0,
    maximum: int | None = None,
) -> int:
    """Return ``value`` as an integer within ``[minimum, maximum]``.

    Raises:
        AddressError: the value is not a decimal integer (ASCII digits) or is
            out of range.
    """
    if isinstance(value, int):
        number = value
    else:
        text = value.strip()
        if not is_decimal(text):
            raise AddressError(f"{context}: {key.replace('_', '-')}={value!r} is not a number")
        if len(text.lstrip("0")) > _MAX_DIGITS:
            raise AddressError(
                f"{context}: {key.replace('_', '-')}={text[:20]}... is out of range "
                f"{minimum}{'' if maximum is None else f'..{maximum}'}"
            )
        number = int(text)
    if number < minimum or (maximum is not None and number > maximum):
        upper = "" if maximum is None else f"..{maximum}"
        raise AddressError(
            f"{context}: {key.replace('_', '-')}={number} is out of range {minimum}{upper}"
        )
    return number


@dataclass(frozen=True)
class LayerSpec:
    """A parsed layer: its name and options (keys with underscores).

    ``str(spec)`` formats it back to ``name:key=value,...``, which
    :func:`parse_layer` reads back to an equal spec.

    Raises:
        AddressError: ``name`` is not a lower-case layer name (ASCII letters,
            digits, ``_ . + -``), or an option name is not a name.
    """

    name: str
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_layer_name(self.name)
        for key, value in self.options.items():
            _check_key(key, f"layer {self.name!r}")
            if not isinstance(value, str):
                raise AddressError(
                    f"layer {self.name!r}: option {key!r} must be a string, "
                    f"not {type(value).__name__}"
                )

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return f"{self.name}:{format_options(self.options)}"


def _check_layer_name(name: object) -> None:
    if not isinstance(name, str) or not _LAYER_NAME.fullmatch(name):
        raise AddressError(
            f"Layer name {name!r} is not a layer name "
            "(lower-case letters, digits, '_', '.', '+' and '-', e.g. 'tls')"
        )


def parse_layer(text: str) -> LayerSpec:
    """Parse ``"name[:key=value,...]"``.

    Raises:
        AddressError: empty or malformed name, or a malformed option (the
            message names it).
    """
    name, _sep, rest = text.partition(":")
    name = name.strip().lower()
    if not name:
        raise AddressError(f"Layer {text!r} has no name (expected e.g. 'tls:creds=DIR')")
    _check_layer_name(name)
    options = parse_options(split_options(rest), f"layer {name!r}") if rest else {}
    return LayerSpec(name, options)
