"""The ``tls`` layer of :func:`qiochan.connect`/:func:`qiochan.listen`.

Spec: ``tls:creds=DIR[,hostname=H][,verify-peer=on|off][,priority=...]
[,authz=GLOB][,allow-unclean-eof=on|off][,sanity-check=on|off]
[,handshake-timeout=SECONDS]``; the role (client or server) picks the
endpoint's files in ``DIR``.  ``handshake-timeout`` bounds the handshake
(a server's default is 10 s, a client's none: ``connect(timeout=)`` bounds it).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qiochan.channel import QIOChannel
from qiochan.errors import AddressError
from qiochan.layer import DEFAULT_SERVER_HANDSHAKE_TIMEOUT, parse_seconds
from qiochan.options import parse_bool

from .authz import Authz, AuthzList
from .channel import QIOChannelTLS
from .creds import TLSCredsX509
from .layout import CA_CERT, CA_CRL, Endpoint, cert_file, key_file

__all__ = ["OPTIONS", "check", "load_creds", "wrap"]

_CONTEXT = "layer 'tls'"
#: The options the layer understands (dashes written as underscores).
OPTIONS = (
    "creds",
    "hostname",
    "verify_peer",
    "priority",
    "authz",
    "allow_unclean_eof",
    "sanity_check",
    "handshake_timeout",
)
_CACHE_SIZE = 16
_cache: OrderedDict[tuple[Any, ...], TLSCredsX509] = OrderedDict()
_cache_lock = threading.Lock()


def _stamp(directory: Path, endpoint: Endpoint) -> tuple[tuple[int, int] | None, ...]:
    stamps: list[tuple[int, int] | None] = []
    for name in (CA_CERT, CA_CRL, cert_file(endpoint), key_file(endpoint)):
        try:
            info = os.stat(directory / name)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((info.st_mtime_ns, info.st_size))
    return tuple(stamps)


def load_creds(
    directory: str | os.PathLike[str],
    endpoint: Endpoint,
    verify_peer: bool = True,
    priority: str | None = None,
    sanity_check: bool = True,
) -> TLSCredsX509:
    """Return credentials for ``endpoint`` from ``directory``, reusing a previous load.

    A listener wraps every accepted client, so loads are cached; a change to
    any of the files (mtime or size) loads them again.

    Raises:
        TLSError: as :class:`TLSCredsX509`.
    """
    path = Path(directory).absolute()
    key = (path, endpoint, verify_peer, priority, sanity_check, _stamp(path, endpoint))
    with _cache_lock:
        creds = _cache.get(key)
        if creds is not None:
            _cache.move_to_end(key)
            return creds
    creds = TLSCredsX509(path, endpoint, verify_peer, priority, sanity_check)
    with _cache_lock:
        _cache[key] = creds
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return creds


def _remote_host(channel: QIOChannel) -> str | None:
    host = getattr(getattr(channel, "remote_address", None), "host", None)
    return host if isinstance(host, str) and host else None


def _authz(value: Any) -> Authz | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return AuthzList([(value, "allow")], policy="deny")
    if isinstance(value, Authz):
        return value
    raise AddressError(f"{_CONTEXT}: authz must be a glob or an authorizer, not {value!r}")


def _creds(value: Any, role: Endpoint, options: dict[str, Any]) -> TLSCredsX509:
    if isinstance(value, TLSCredsX509):
        return value
    if not value:
        raise AddressError(f"{_CONTEXT} needs creds=DIR (a QEMU x509 credentials directory)")
    return load_creds(
        str(value),
        role,
        verify_peer=parse_bool(options.get("verify_peer", True), "verify_peer", _CONTEXT),
        priority=options.get("priority") or None,
        sanity_check=parse_bool(options.get("sanity_check", True), "sanity_check", _CONTEXT),
    )


@dataclass(frozen=True)
class _Settings:
    """What a ``tls`` layer spec means for one role, checked."""

    creds: TLSCredsX509
    hostname: str | None
    authz: Authz | None
    allow_unclean_eof: bool
    handshake_timeout: float | None


def _settings(role: Endpoint, options: dict[str, Any]) -> _Settings:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        known = ", ".join(name.replace("_", "-") for name in OPTIONS)
        raise AddressError(f"{_CONTEXT}: unknown option(s) {', '.join(unknown)} (known: {known})")
    if role not in ("client", "server"):
        raise AddressError(f"{_CONTEXT}: role must be 'client' or 'server', not {role!r}")
    hostname = options.get("hostname") or None
    authz = _authz(options.get("authz"))
    if role == "server" and hostname is not None:
        raise AddressError(f"{_CONTEXT}: hostname= applies to a client only")
    if role == "client" and authz is not None:
        raise AddressError(f"{_CONTEXT}: authz= applies to a server only")
    unclean = parse_bool(options.get("allow_unclean_eof", False), "allow_unclean_eof", _CONTEXT)
    creds = _creds(options.get("creds"), role, options)
    if authz is not None and not creds.verify_peer:
        raise AddressError(f"{_CONTEXT}: authz= needs verify-peer=on (clients send no certificate)")
    default = DEFAULT_SERVER_HANDSHAKE_TIMEOUT if role == "server" else None
    timeout = parse_seconds(
        options.get("handshake_timeout", default), "handshake-timeout", _CONTEXT
    )
    return _Settings(creds, hostname, authz, unclean, timeout)


def check(role: Endpoint, **options: Any) -> None:
    """Check a ``tls`` layer's options for ``role`` as :func:`wrap` will, with no channel.

    The credentials are loaded (and cached for the wrap that follows).

    Raises:
        AddressError: an unknown or malformed option, or one for the other role.
        TLSError: the credentials directory is missing, unreadable or fails
            QEMU's checks.
    """
    _settings(role, options)


def wrap(channel: QIOChannel, role: Endpoint, **options: Any) -> QIOChannelTLS:
    """Wrap ``channel`` in TLS for ``role``; the handshake is left to the caller.

    :func:`qiochan.layer.apply_layers` (behind ``connect``/``listen``) runs it,
    sync or async, under its deadline.  A client without ``hostname=``
    verifies the server against the host of the channel's ``remote_address``
    (a TCP peer's address), if it has one.

    Returns:
        The TLS channel, handshake not run (the caller owns it).
    Raises:
        AddressError: as :func:`check`, or a client that verifies its peer
            with no hostname to check.
        TLSError: bad credentials.
    """
    settings = _settings(role, options)
    creds, hostname, unclean = settings.creds, settings.hostname, settings.allow_unclean_eof
    timeout = settings.handshake_timeout
    if role == "server":
        return QIOChannelTLS.new_server(
            channel, creds, settings.authz, allow_unclean_eof=unclean, handshake_timeout=timeout
        )
    if hostname is None and creds.verify_peer:
        hostname = _remote_host(channel)
        if hostname is None:
            raise AddressError(
                f"{_CONTEXT}: hostname= is needed to verify the server "
                "(the channel has no remote host to use)"
            )
    return QIOChannelTLS.new_client(
        channel, creds, hostname, allow_unclean_eof=unclean, handshake_timeout=timeout
    )
