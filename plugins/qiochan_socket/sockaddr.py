"""Between :mod:`qiochan.address` objects and the socket module's families and sockaddrs.

:func:`resolve` turns an address into the concrete endpoints to try (a name may
resolve to several), and :func:`to_address` turns what ``getsockname`` /
``getpeername`` return back into an address object.

``localhost`` (and names under ``.localhost``) always resolves to the loopback
addresses of both families, as RFC 6761 asks, even where ``/etc/hosts`` lists
only one of them.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from qiochan.address import Address, InetAddress, UnixAddress, VsockAddress
from qiochan.errors import AddressError, ChannelError

__all__ = ["Endpoint", "family_of", "needs_lookup", "resolve", "to_address", "unix_sockaddr"]

# sizeof(struct sockaddr_un.sun_path) on Linux
_SUN_PATH_MAX = 108
_LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


@dataclass(frozen=True)
class Endpoint:
    """One concrete socket address: what ``socket()`` and ``bind``/``connect`` need."""

    family: int
    type: int
    proto: int
    sockaddr: Any

    def __str__(self) -> str:
        return str(to_address(self.family, self.sockaddr))


def family_of(address: InetAddress) -> int:
    """Return the address family the ``ipv4``/``ipv6`` options restrict ``address`` to.

    ``AF_UNSPEC`` when both families are allowed (QEMU's rules: ``ipv4=on``
    alone means IPv4 only, ``ipv4=off`` means IPv6 only, and so on).
    """
    if address.ipv4 is False:
        return socket.AF_INET6
    if address.ipv6 is False:
        return socket.AF_INET
    if address.ipv4 and not address.ipv6:
        return socket.AF_INET
    if address.ipv6 and not address.ipv4:
        return socket.AF_INET6
    return socket.AF_UNSPEC


def _is_localhost(host: str) -> bool:
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def _resolve_inet(address: InetAddress, sock_type: int, passive: bool) -> list[Endpoint]:
    family = family_of(address)
    if _is_localhost(address.host):
        families = (socket.AF_INET, socket.AF_INET6)
        return [
            _inet_endpoint(fam, sock_type, _LOOPBACK[fam], address.port)
            for fam in families
            if family in (socket.AF_UNSPEC, fam)
        ]
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = socket.getaddrinfo(address.host or None, address.port, family, sock_type, 0, flags)
    except socket.gaierror as exc:
        raise ChannelError(
            f"Address resolution failed for '{address.host}:{address.port}': {exc.strerror}"
        ) from exc
    endpoints: list[Endpoint] = []
    for fam, typ, proto, _canon, sockaddr in infos:
        endpoint = Endpoint(fam, typ, proto, sockaddr)
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    if not endpoints:
        raise ChannelError(f"Address '{address.host}:{address.port}' resolved to nothing")
    return endpoints


def needs_lookup(address: Address) -> bool:
    """Return True when :func:`resolve` may ask a name service about ``address``.

    A numeric IP address, ``localhost``, a unix or vsock address resolves
    without any lookup: only a host name may block on DNS.
    """
    if not isinstance(address, InetAddress) or not address.host or _is_localhost(address.host):
        return False
    try:
        ipaddress.ip_address(address.host)
    except ValueError:
        return True
    return False


def _inet_endpoint(family: int, sock_type: int, host: str, port: int) -> Endpoint:
    sockaddr: tuple[Any, ...] = (host, port) if family == socket.AF_INET else (host, port, 0, 0)
    return Endpoint(family, sock_type, 0, sockaddr)


def unix_sockaddr(address: UnixAddress) -> str | bytes:
    """Return the ``AF_UNIX`` sockaddr for ``address`` (bytes with a NUL for abstract names).

    Raises:
        AddressError: the path or name does not fit in ``sun_path``.
    """
    if not address.abstract:
        if len(address.path.encode()) >= _SUN_PATH_MAX:
            raise AddressError(
                f"unix address: path is longer than {_SUN_PATH_MAX - 1} bytes: {address.path!r}"
            )
        return address.path
    name = b"\0" + address.path.encode()
    if len(name) > _SUN_PATH_MAX:
        raise AddressError(
            f"unix address: abstract name is longer than {_SUN_PATH_MAX - 1} bytes: "
            f"{address.path!r}"
        )
    if not address.tight:
        name = name.ljust(_SUN_PATH_MAX, b"\0")
    return name


def resolve(
    address: Address, sock_type: int = socket.SOCK_STREAM, *, passive: bool = False
) -> list[Endpoint]:
    """Return the endpoints ``address`` stands for, in the order to try them.

    Args:
        passive: resolve for listening (an empty host means every interface).
    Raises:
        ChannelError: name resolution failed.
        AddressError: the address cannot be a socket (``file:``, ``exec:``...) or does
            not fit the socket family's limits.
    """
    if isinstance(address, InetAddress):
        return _resolve_inet(address, sock_type, passive)
    if isinstance(address, UnixAddress):
        return [Endpoint(socket.AF_UNIX, sock_type, 0, unix_sockaddr(address))]
    if isinstance(address, VsockAddress):
        family = getattr(socket, "AF_VSOCK", None)
        if family is None:
            raise ChannelError("vsock sockets are not supported on this platform")
        return [Endpoint(family, sock_type, 0, (address.cid, address.port))]
    raise AddressError(f"'{address}' is not a socket address")


def to_address(family: int, sockaddr: Any) -> Address:
    """Return the address object for a ``getsockname()``/``getpeername()`` result.

    An unnamed unix socket (a socketpair end, an unbound client) gives
    ``UnixAddress("")``.
    """
    if family in (socket.AF_INET, socket.AF_INET6):
        return InetAddress(sockaddr[0], sockaddr[1])
    if family == socket.AF_UNIX:
        if isinstance(sockaddr, bytes):
            if sockaddr.startswith(b"\0"):
                name = sockaddr[1:]
                stripped = name.rstrip(b"\0")
                tight = len(stripped) == len(name)
                return UnixAddress(stripped.decode(errors="surrogateescape"), True, tight)
            return UnixAddress(sockaddr.decode(errors="surrogateescape"))
        return UnixAddress(sockaddr)
    if family == getattr(socket, "AF_VSOCK", None):
        return VsockAddress(sockaddr[0], sockaddr[1])
    raise ChannelError(f"Unsupported socket family {family} for an address")
