"""The TLS layer: :class:`QIOChannelTLS` over any channel, with x509 credentials in QEMU's layout.

Registered through the ``qiochan.plugins`` entry point as the ``tls`` layer
(``"tls:creds=DIR,..."``, see :mod:`qiochan_tls.layer`).  Needs
:mod:`cryptography` (``pip install 'qiochan[tls]'``); without it the plugin
still imports and reports the backend as unavailable.
"""

from __future__ import annotations

from typing import Any

from qiochan.channel import Feature
from qiochan.errors import PluginError
from qiochan.hookspecs import hookimpl
from qiochan.registry import Backend

from .authz import Authz, AuthzList, AuthzSimple

MISSING = "pip install 'qiochan[tls]'"

try:
    from .channel import QIOChannelTLS
    from .creds import TLSCredsX509
    from .layer import wrap
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    if not (exc.name or "").startswith("cryptography"):
        raise
    HAVE_CRYPTOGRAPHY = False
else:
    HAVE_CRYPTOGRAPHY = True

__all__ = [
    "HAVE_CRYPTOGRAPHY",
    "MISSING",
    "Authz",
    "AuthzList",
    "AuthzSimple",
    "QIOChannelTLS",
    "TLSCredsX509",
    "qiochan_backends",
]

_NEEDS_CRYPTOGRAPHY = frozenset({"QIOChannelTLS", "TLSCredsX509", "wrap"})


def __getattr__(name: str) -> Any:
    if name in _NEEDS_CRYPTOGRAPHY and not HAVE_CRYPTOGRAPHY:
        raise PluginError(f"qiochan_tls.{name} needs the cryptography package: {MISSING}")
    raise AttributeError(f"module 'qiochan_tls' has no attribute {name!r}")


@hookimpl
def qiochan_backends() -> list[Backend]:
    """Declare the ``tls`` layer (unavailable without :mod:`cryptography`)."""
    return [
        Backend(
            name="tls",
            schemes=("tls",),
            kind="layer",
            features=frozenset({Feature.SHUTDOWN}),
            available=HAVE_CRYPTOGRAPHY,
            missing="" if HAVE_CRYPTOGRAPHY else MISSING,
            wrap=wrap if HAVE_CRYPTOGRAPHY else None,
            description="TLS over any channel (ssl MemoryBIO), QEMU x509 credentials directory",
        )
    ]
