"""The exceptions qiochan raises.

Every error raised by this library is a :class:`ChannelError`, itself an
:class:`OSError`, so code that already handles ``OSError`` keeps working.
When an operating-system error caused it, ``errno`` is set and the message
names the operation that failed, e.g. ``"Unable to read from socket:
Connection reset by peer"``.

Two families are kept apart, as h11 does: errors that mean *you misused the
API* are ``TypeError``/``ValueError`` or a :class:`ChannelError` with
``errno=EINVAL``/``ENOTSUP``/``EBADF``; errors that mean *the peer
misbehaved* are :class:`HandshakeError` and the protocol errors of the layers
(:class:`TLSError`, :class:`WebsocketError`).
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "AddressError",
    "ChannelError",
    "ConfigError",
    "HandshakeError",
    "PluginError",
    "TLSError",
    "TLSHandshakeError",
    "WebsocketError",
    "WebsocketHandshakeError",
    "closed_error",
    "from_oserror",
    "unsupported",
]


class ChannelError(OSError):
    """Base class of every error raised by qiochan.

    Args:
        message: what failed, in words a user can act on.
        errno: the OS error number behind it, if any.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        if errno is None:
            super().__init__(message)
        else:
            super().__init__(errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[ChannelError], tuple[str, int | None]]:
        return (type(self), (self.message, self.errno))


class AddressError(ChannelError, ValueError):
    """An address or layer specification is malformed; the message names the bad part."""


class ConfigError(ChannelError):
    """A transports configuration file is invalid; the message names the file, key and reason.

    Attributes:
        path: the file (None when the text did not come from a file).
        key: the dotted key that is wrong (``"transports.mig.layers[0]"``), or ``""``.
        reason: what is wrong with it.
    """

    def __init__(self, path: object, key: str, reason: str) -> None:
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{where}{key}: {reason}" if key else f"{where}{reason}")
        self.path = path
        self.key = key
        self.reason = reason

    def __reduce__(self) -> tuple[type[ConfigError], tuple[object, str, str]]:  # type: ignore[override]
        return (type(self), (self.path, self.key, self.reason))


class PluginError(ChannelError):
    """A plugin is missing, unavailable, or broke its contract."""


class HandshakeError(ChannelError):
    """A layer's handshake with the peer failed."""


class TLSError(ChannelError):
    """A TLS session or its credentials failed."""


class TLSHandshakeError(TLSError, HandshakeError):
    """The TLS handshake failed (bad certificate, authorization denied, protocol error)."""


class WebsocketError(ChannelError):
    """The websocket peer broke the protocol, or the session failed."""


class WebsocketHandshakeError(WebsocketError, HandshakeError):
    """The websocket upgrade handshake failed."""


def from_oserror(what: str, exc: OSError) -> ChannelError:
    """Return a :class:`ChannelError` for ``exc`` whose message starts with ``what``.

    ``from_oserror("Unable to read from socket", exc)`` gives
    ``"Unable to read from socket: Connection reset by peer"`` with the same errno.
    """
    if exc.errno is not None:
        return ChannelError(f"{what}: {os.strerror(exc.errno)}", exc.errno)
    return ChannelError(f"{what}: {exc}")


def unsupported(what: str) -> ChannelError:
    """Return the ``ENOTSUP`` error for an operation a channel does not implement."""
    return ChannelError(f"{what} is not supported by this channel", _errno.ENOTSUP)


def closed_error(name: str | None) -> ChannelError:
    """Return the ``EBADF`` error raised when a closed channel is used."""
    label = f"Channel '{name}'" if name else "Channel"
    return ChannelError(f"{label} is closed", _errno.EBADF)
