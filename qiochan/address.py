"""Transport addresses in QEMU's migration syntax: parse them, and format them back.

::

    tcp:HOST:PORT[,ipv4=on|off][,ipv6=on|off][,keep-alive=on|off]   (IPv6 as [::1])
    unix:PATH[,abstract=on][,tight=off]
    vsock:CID:PORT
    fd:N
    file:PATH[,offset=N]
    exec:SHELL-COMMAND
    ws://HOST:PORT/PATH     wss://HOST:PORT/PATH

A scheme a plugin adds without a parser of its own reaches that plugin as a
:class:`SchemeAddress` (its scheme and the full text, which ``str()`` gives).

A comma inside a path is written ``,,`` as on QEMU's command line.  Every
address type is a frozen dataclass with a ``scheme`` attribute (the name the
registry finds its backend by) and ``str(address)`` gives the canonical text,
which :func:`parse_address` reads back to an equal object.  A malformed
address raises :class:`~qiochan.errors.AddressError` naming the bad part.

This module imports nothing heavy: parsing never touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import AddressError
from .options import is_decimal, parse_bool, parse_int, parse_options, split_options

__all__ = [
    "SCHEMES",
    "Address",
    "ExecAddress",
    "FdAddress",
    "FileAddress",
    "InetAddress",
    "SchemeAddress",
    "UnixAddress",
    "VsockAddress",
    "WebsocketURL",
    "as_address",
    "parse_address",
]

_MAX_PORT = 65535
_MAX_U32 = 0xFFFFFFFF


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def _escape(text: str) -> str:
    """Double the commas of a value so :func:`split_options` reads it back."""
    return text.replace(",", ",,")


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# never part of a host name or IP address, and each would not read back
_NOT_IN_HOST = frozenset(",[]/")


def _check_host(host: object, context: str) -> None:
    """Reject a host that is not a string or holds a character no host has."""
    if not isinstance(host, str):
        raise AddressError(f"{context}: host must be a string, not {type(host).__name__}")
    for char in host:
        if char in _NOT_IN_HOST or char.isspace() or not char.isprintable():
            raise AddressError(f"{context}: host {host!r} contains {char!r}")


@dataclass(frozen=True)
class InetAddress:
    """A TCP (or UDP, for datagram channels) endpoint.

    Attributes:
        host: a name, an IPv4 address, an IPv6 address without brackets, or ``""``
            (every interface when listening, the local host when connecting).
        port: 0..65535; 0 when listening picks a free port.
        ipv4, ipv6: restrict name resolution to a family (None: no preference).
        keep_alive: enable TCP keep-alive probes.
    """

    host: str
    port: int
    ipv4: bool | None = None
    ipv6: bool | None = None
    keep_alive: bool = False
    scheme: ClassVar[str] = "tcp"

    def __post_init__(self) -> None:
        _check_host(self.host, "tcp address")
        if not isinstance(self.port, int) or not 0 <= self.port <= _MAX_PORT:
            raise AddressError(f"tcp address: port {self.port!r} is out of range 0..{_MAX_PORT}")
        if self.ipv4 is False and self.ipv6 is False:
            raise AddressError("tcp address: ipv4=off and ipv6=off leave no address family")

    def __str__(self) -> str:
        text = f"tcp:{_format_host(self.host)}:{self.port}"
        if self.ipv4 is not None:
            text += f",ipv4={_on_off(self.ipv4)}"
        if self.ipv6 is not None:
            text += f",ipv6={_on_off(self.ipv6)}"
        if self.keep_alive:
            text += ",keep-alive=on"
        return text


@dataclass(frozen=True)
class UnixAddress:
    """A unix socket path, or a Linux abstract socket name when ``abstract`` is True.

    Attributes:
        path: the filesystem path (or the abstract name, without the leading NUL).
        abstract: use the abstract namespace (Linux).
        tight: for abstract names, the address length covers only the name
            (``tight=off`` pads it to the full ``sun_path``, as some programs expect).
    """

    path: str
    abstract: bool = False
    tight: bool = True
    scheme: ClassVar[str] = "unix"

    def __str__(self) -> str:
        text = f"unix:{_escape(self.path)}"
        if self.abstract:
            text += ",abstract=on"
        if not self.tight:
            text += ",tight=off"
        return text


@dataclass(frozen=True)
class VsockAddress:
    """A virtio-vsock endpoint: context id and port (both 32-bit)."""

    cid: int
    port: int
    scheme: ClassVar[str] = "vsock"

    def __str__(self) -> str:
        return f"vsock:{self.cid}:{self.port}"


@dataclass(frozen=True)
class FdAddress:
    """An already open file descriptor, taken over by the channel opened on it."""

    fd: int
    scheme: ClassVar[str] = "fd"

    def __str__(self) -> str:
        return f"fd:{self.fd}"


@dataclass(frozen=True)
class FileAddress:
    """A file path, read or written from byte ``offset``."""

    path: str
    offset: int = 0
    scheme: ClassVar[str] = "file"

    def __str__(self) -> str:
        text = f"file:{_escape(self.path)}"
        if self.offset:
            text += f",offset={self.offset}"
        return text


@dataclass(frozen=True)
class ExecAddress:
    """A shell command run with ``/bin/sh -c``; its stdin and stdout carry the stream."""

    command: str
    scheme: ClassVar[str] = "exec"

    def __str__(self) -> str:
        return f"exec:{self.command}"


@dataclass(frozen=True)
class WebsocketURL:
    """``ws://HOST:PORT/PATH`` or, with ``secure``, ``wss://`` (websocket over TLS)."""

    secure: bool
    host: str
    port: int
    path: str = "/"

    def __post_init__(self) -> None:
        _check_host(self.host, "websocket URL")
        if not self.host:
            raise AddressError("websocket URL: empty host")
        if not isinstance(self.port, int) or not 0 <= self.port <= _MAX_PORT:
            raise AddressError(f"websocket URL: port {self.port!r} is out of range 0..{_MAX_PORT}")
        if not self.path.startswith("/"):
            raise AddressError(f"websocket URL: path {self.path!r} must start with '/'")

    @property
    def scheme(self) -> str:
        """``"wss"`` when secure, else ``"ws"``."""
        return "wss" if self.secure else "ws"

    @property
    def inet(self) -> InetAddress:
        """The TCP address the websocket runs over."""
        return InetAddress(self.host, self.port)

    def __str__(self) -> str:
        return f"{self.scheme}://{_format_host(self.host)}:{self.port}{self.path}"


@dataclass(frozen=True)
class SchemeAddress:
    """An address of a scheme :mod:`qiochan.address` does not know, kept as text.

    What a plugin's ``connect``/``listen``/``open`` receive for its own scheme
    when its :class:`~qiochan.plugin.Backend` has no ``parse``: a plugin adds
    a scheme without writing a parser.

    Attributes:
        scheme: the scheme, lower case (``"loop"`` for ``"loop:abc"``).
        text: the whole address as given; ``str()`` returns it.
    """

    scheme: str
    text: str

    @property
    def rest(self) -> str:
        """The text after the scheme's colon (``"abc"`` for ``"loop:abc"``)."""
        return self.text.partition(":")[2]

    def __str__(self) -> str:
        return self.text


#: Any address object :func:`parse_address` returns.
Address = (
    InetAddress | UnixAddress | VsockAddress | FdAddress | FileAddress | ExecAddress | WebsocketURL
)

_ADDRESS_TYPES = (
    InetAddress,
    UnixAddress,
    VsockAddress,
    FdAddress,
    FileAddress,
    ExecAddress,
    WebsocketURL,
)


def _split_host_port(text: str, context: str) -> tuple[str, str]:
    """Split ``HOST:PORT`` or ``[V6]:PORT``; return (host, port text)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise AddressError(f"{context}: unterminated '[' in {text!r}")
        host = text[1:end]
        if not host:
            raise AddressError(f"{context}: empty IPv6 address in '[]'")
        rest = text[end + 1 :]
        if not rest.startswith(":"):
            raise AddressError(f"{context}: expected ':PORT' after '[{host}]', got {rest!r}")
        return host, rest[1:]
    host, sep, port = text.rpartition(":")
    if not sep:
        raise AddressError(f"{context}: missing ':PORT' in {text!r}")
    if ":" in host:
        raise AddressError(f"{context}: an IPv6 address must be written in brackets, as [{host}]")
    if "]" in host:
        raise AddressError(f"{context}: unbalanced ']' in {text!r}")
    return host, port


def _port(text: str, context: str) -> int:
    if not text:
        raise AddressError(f"{context}: empty port")
    if not is_decimal(text):
        raise AddressError(f"{context}: port {text!r} is not a number")
    if len(text.lstrip("0")) > len(str(_MAX_PORT)) or int(text) > _MAX_PORT:
        raise AddressError(f"{context}: port {text} is out of range 0..{_MAX_PORT}")
    return int(text)


def _options(parts: list[str], allowed: tuple[str, ...], context: str) -> dict[str, str]:
    options = parse_options(parts, context)
    for key in options:
        if key not in allowed:
            known = ", ".join(name.replace("_", "-") for name in allowed)
            raise AddressError(
                f"{context}: unknown option {key.replace('_', '-')!r} (known: {known})"
            )
    return options


def _parse_tcp(rest: str) -> InetAddress:
    context = f"tcp address 'tcp:{rest}'"
    first, *option_parts = split_options(rest)
    host, port_text = _split_host_port(first, context)
    options = _options(option_parts, ("ipv4", "ipv6", "keep_alive"), context)
    ipv4 = parse_bool(options["ipv4"], "ipv4", context) if "ipv4" in options else None
    ipv6 = parse_bool(options["ipv6"], "ipv6", context) if "ipv6" in options else None
    keep_alive = parse_bool(options.get("keep_alive", "off"), "keep_alive", context)
    return InetAddress(host, _port(port_text, context), ipv4, ipv6, keep_alive)


def _parse_unix(rest: str) -> UnixAddress:
    context = f"unix address 'unix:{rest}'"
    path, *option_parts = split_options(rest)
    if not path:
        raise AddressError(f"{context}: empty path")
    options = _options(option_parts, ("abstract", "tight"), context)
    abstract = parse_bool(options.get("abstract", "off"), "abstract", context)
    tight = parse_bool(options.get("tight", "on"), "tight", context)
    if "\0" in path:
        raise AddressError(f"{context}: NUL byte in path")
    return UnixAddress(path, abstract, tight)


def _parse_vsock(rest: str) -> VsockAddress:
    context = f"vsock address 'vsock:{rest}'"
    cid_text, sep, port_text = rest.partition(":")
    if not sep:
        raise AddressError(f"{context}: expected 'vsock:CID:PORT'")
    if not cid_text:
        raise AddressError(f"{context}: empty cid")
    if not port_text:
        raise AddressError(f"{context}: empty port")
    cid = parse_int(cid_text, "cid", context, maximum=_MAX_U32)
    port = parse_int(port_text, "port", context, maximum=_MAX_U32)
    return VsockAddress(cid, port)


def _parse_fd(rest: str) -> FdAddress:
    context = f"fd address 'fd:{rest}'"
    if not rest:
        raise AddressError(f"{context}: empty file descriptor number")
    return FdAddress(parse_int(rest, "fd", context, maximum=2**31 - 1))


def _parse_file(rest: str) -> FileAddress:
    context = f"file address 'file:{rest}'"
    path, *option_parts = split_options(rest)
    if not path:
        raise AddressError(f"{context}: empty path")
    options = _options(option_parts, ("offset",), context)
    offset = parse_int(options.get("offset", "0"), "offset", context, maximum=2**63 - 1)
    return FileAddress(path, offset)


def _parse_exec(rest: str) -> ExecAddress:
    if not rest.strip():
        raise AddressError("exec address: empty command")
    return ExecAddress(rest)


def _parse_websocket(scheme: str, rest: str) -> WebsocketURL:
    context = f"websocket URL '{scheme}:{rest}'"
    if not rest.startswith("//"):
        raise AddressError(f"{context}: expected '{scheme}://HOST:PORT/PATH'")
    slash = rest.find("/", 2)
    if rest.startswith("//["):
        # the path starts after the bracketed host, not at a ':' inside it
        close = rest.find("]")
        if close < 0:
            raise AddressError(f"{context}: unterminated '[' in host")
        slash = rest.find("/", close)
    netloc, path = (rest[2:], "/") if slash < 0 else (rest[2:slash], rest[slash:])
    if not netloc:
        raise AddressError(f"{context}: empty host")
    secure = scheme == "wss"
    default_port = 443 if secure else 80
    if netloc.startswith("[") and netloc.endswith("]"):
        host, port = netloc[1:-1], default_port
    elif netloc.startswith("[") or ":" in netloc:
        host, port_text = _split_host_port(netloc, context)
        port = _port(port_text, context)
    else:
        host, port = netloc, default_port
    if not host:
        raise AddressError(f"{context}: empty host")
    return WebsocketURL(secure, host, port, path)


_PARSERS: dict[str, Any] = {
    "tcp": _parse_tcp,
    "unix": _parse_unix,
    "vsock": _parse_vsock,
    "fd": _parse_fd,
    "file": _parse_file,
    "exec": _parse_exec,
}

#: The schemes :func:`parse_address` knows.
SCHEMES = frozenset([*_PARSERS, "ws", "wss"])


def _scheme_of(text: str) -> str:
    """Return the lower-case scheme of ``text``.

    Raises:
        AddressError: no ``SCHEME:`` prefix.
    """
    scheme, sep, _rest = text.partition(":")
    scheme = scheme.strip().lower()
    if not sep or not scheme:
        raise AddressError(f"Address {text!r} has no scheme (e.g. 'tcp:HOST:PORT')")
    return scheme


def parse_address(text: str) -> Address:
    """Parse an address string.

    Returns:
        The address object for its scheme (:class:`InetAddress`, :class:`UnixAddress`...).
    Raises:
        AddressError: no scheme, an unknown scheme, or a malformed part (the
            message names it: empty port, port out of range, unknown option,
            bad boolean, unterminated ``[``...).
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"address must be a string, not {type(text).__name__}")
    scheme = _scheme_of(text)
    rest = text.partition(":")[2]
    if scheme in ("ws", "wss"):
        return _parse_websocket(scheme, rest)
    parser = _PARSERS.get(scheme)
    if parser is None:
        known = ", ".join(sorted(SCHEMES))
        raise AddressError(f"Address {text!r}: unknown scheme {scheme!r} (known: {known})")
    result: Address = parser(rest)
    return result


def as_address(value: Address | str) -> Address:
    """Return ``value`` parsed if it is a string, unchanged if it is an address object.

    Raises:
        AddressError: a malformed string.
        TypeError: neither a string nor an address object.
    """
    if isinstance(value, str):
        return parse_address(value)
    if isinstance(value, _ADDRESS_TYPES):
        return value
    raise TypeError(f"expected an address string or object, not {type(value).__name__}")
