"""qiochan-xor: the ``xor`` layer, an example third-party qiochan plugin.

``layers=["xor:key=HEX"]`` XORs every byte with the repeating ``key`` (given in
hexadecimal, 1 to 64 bytes) in both directions.  Both ends must use the same
key.  This module is the plugin: qiochan finds it through the
``qiochan.plugins`` entry point of this distribution and calls its
``qiochan_backends()`` hook.
"""

from __future__ import annotations

from typing import Any

from qiochan.channel import Feature, QIOChannel
from qiochan.errors import AddressError
from qiochan.plugin import Backend, hookimpl

from .channel import QIOChannelXor

__all__ = ["QIOChannelXor", "parse_key", "qiochan_backends", "wrap"]

MAX_KEY = 64


def parse_key(text: str) -> bytes:
    """Return the key an ``xor:key=HEX`` option names.

    Raises:
        AddressError: not 1 to 64 bytes of hexadecimal.
    """
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise AddressError(f"xor layer: key={text!r} is not hexadecimal (e.g. key=5a17)") from None
    if not 1 <= len(key) <= MAX_KEY:
        raise AddressError(f"xor layer: the key must be 1 to {MAX_KEY} bytes, got {len(key)}")
    return key


def wrap(channel: QIOChannel, role: str, **options: Any) -> QIOChannelXor:
    """Wrap ``channel`` in the xor layer (the role does not matter: XOR is symmetric).

    Returns:
        The layer channel; it owns ``channel`` and closes it.
    Raises:
        AddressError: a missing or bad ``key``, or an unknown option.
    """
    unknown = sorted(set(options) - {"key"})
    if unknown:
        raise AddressError(f"xor layer: unknown option(s) {', '.join(unknown)} (known: key)")
    if "key" not in options:
        raise AddressError("xor layer needs key=HEX (e.g. xor:key=5a17)")
    return QIOChannelXor(channel, parse_key(str(options["key"])))


@hookimpl
def qiochan_backends() -> list[Backend]:
    """Declare the ``xor`` layer."""
    return [
        Backend(
            name="xor",
            schemes=("xor",),
            kind="layer",
            features=frozenset({Feature.SHUTDOWN}),
            wrap=wrap,
            description="repeating-key XOR over any channel (example third-party plugin)",
        )
    ]
