"""The TLS layer: :class:`QIOChannelTLS` over any channel, with x509 credentials in QEMU's layout.

The record layer is the standard library's :class:`ssl.SSLObject` between two
memory BIOs, so a session runs over any master channel: a socket, a command
pipe, a memory pipe, a websocket, even another TLS channel::

    from qiochan_tls import AuthzList, QIOChannelTLS, TLSCredsX509

    creds = TLSCredsX509("/etc/pki/qemu", "server")          # checked on load, as QEMU does
    tls = QIOChannelTLS.new_server(master, creds, AuthzList([("*,CN=src.example", "allow")]))
    tls.handshake()                                          # or handshake(complete), ahandshake()
    tls.peer_dn()                                            # 'C=UK,O=Example,CN=src.example'

Through :func:`qiochan.connect`/:func:`qiochan.listen` it is the ``tls`` layer
(``"tls:creds=DIR,hostname=H,..."``, see :mod:`qiochan_tls.layer`);
:mod:`qiochan_tls.certs` makes CA, server and client certificates in QEMU's layout.

**Ending a session, and the end of the transport.**  ``bye()`` sends the TLS
close_notify and waits until it is out.  ``shutdown(Shutdown.WRITE)`` sends it
before shutting down the master's write side (in blocking mode it waits for it
as a write would); ``shutdown(BOTH)`` (an abort), non-blocking mode and
``close()`` send it only when that needs no waiting, so they never hang on a
peer that stopped reading.  A read that meets the end of the transport without
the peer's close_notify raises :class:`~qiochan.TLSError` (``ECONNABORTED``)
after every byte that arrived before it: without close_notify a truncation
cannot be told from a clean end.  ``allow_unclean_eof=True`` (the
``allow-unclean-eof=on`` layer option), ``ReadFlag.RELAXED_EOF`` on the read, or
an earlier ``shutdown(READ)`` turn that end into a plain EOF, as QEMU does for
its migration stream, whose GnuTLS source ends with a bare TCP close.

**QEMU's GnuTLS peers.**  Servers send no TLS 1.3 session tickets: a migration
source never reads, and an unread ticket in its socket turns its final close
into a TCP reset that discards the tail of the stream still queued on its side.

Needs :mod:`cryptography` (``pip install 'qiochan[tls]'``); without it the
plugin still imports and reports the backend as unavailable.
"""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

from qiochan.channel import Feature
from qiochan.errors import PluginError
from qiochan.plugin import Backend, hookimpl

from .authz import Authz, AuthzList, AuthzSimple

if TYPE_CHECKING:
    from .channel import QIOChannelTLS
    from .creds import TLSCredsX509
    from .layer import wrap

MISSING = "pip install 'qiochan[tls]'"

# the session, credentials and layer modules import cryptography and ssl (tens of
# milliseconds): they load on first use, so plugin discovery stays cheap
HAVE_CRYPTOGRAPHY = find_spec("cryptography") is not None

__all__ = [
    "HAVE_CRYPTOGRAPHY",
    "MISSING",
    "Authz",
    "AuthzList",
    "AuthzSimple",
    "QIOChannelTLS",
    "TLSCredsX509",
    "qiochan_backends",
    "wrap",
]

_LAZY = {"QIOChannelTLS": ".channel", "TLSCredsX509": ".creds", "wrap": ".layer"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qiochan_tls' has no attribute {name!r}")
    if not HAVE_CRYPTOGRAPHY:
        raise PluginError(f"qiochan_tls.{name} needs the cryptography package: {MISSING}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def _wrap(channel: Any, role: str, **options: Any) -> Any:
    """The ``tls`` layer's wrap (see :func:`qiochan_tls.layer.wrap`), loaded on first use."""
    layer_wrap: Any = __getattr__("wrap")
    return layer_wrap(channel, role, **options)


def _check(role: str, **options: Any) -> None:
    """The ``tls`` layer's check (see :func:`qiochan_tls.layer.check`), loaded on first use."""
    import_module(".layer", __name__).check(role, **options)


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
            wrap=_wrap if HAVE_CRYPTOGRAPHY else None,
            check=_check if HAVE_CRYPTOGRAPHY else None,
            description="TLS over any channel (ssl MemoryBIO), QEMU x509 credentials directory",
        )
    ]
