"""The exceptions qiochan raises, in one hierarchy.

Every exception this library defines derives from :class:`Error`; each also
derives from the built-in exception that says what kind of fault it is, so
code written against the standard library keeps working::

    Error
    ├── ChannelError(OSError)             an I/O operation failed; errno set when the OS said why
    │   ├── ChannelClosedError            you used a channel after closing it (EBADF)
    │   ├── BrokenChannelError            the peer broke the stream: reset (ECONNRESET),
    │   │                                 broken pipe (EPIPE), end of file in the middle of a
    │   │                                 *_all read (EPIPE)
    │   ├── HandshakeError                a layer's handshake with the peer failed
    │   ├── TLSError                      a TLS session or its credentials failed
    │   │   └── TLSHandshakeError(TLSError, HandshakeError)
    │   └── WebsocketError                the websocket peer broke the protocol
    │       └── WebsocketHandshakeError(WebsocketError, HandshakeError)
    ├── AddressError(ValueError)          a malformed address or layer spec (names the bad part)
    ├── ConfigError(ValueError)           an invalid transports file (names file, key, reason)
    └── PluginError(LookupError)          no usable backend for a scheme, layer or operation,
                                          or a plugin that broke its contract

Whose fault it is decides the family, as in h11 and trio: :class:`AddressError`
and :class:`ConfigError` mean the *input* is wrong (the ``qiochan`` command
exits with status 2 for them); :class:`PluginError` means the *installation*
cannot serve the request (a lookup by name that failed, as ``codecs.lookup``
raises :class:`LookupError`); a :class:`ChannelError` means the *I/O* failed.
Among I/O errors, :class:`ChannelClosedError` is your side's doing (trio's
``ClosedResourceError``) and :class:`BrokenChannelError` the peer's (trio's
``BrokenResourceError``).

Like :class:`OSError` itself (PEP 3151), constructing a plain
:class:`ChannelError` with ``errno`` ``EBADF``, ``ECONNRESET`` or ``EPIPE``
gives the matching subclass, so every backend's errors are classified the
same way.  When an operating-system error caused it, ``errno`` is set and the
message names the operation that failed, e.g. ``"Unable to read from socket:
Connection reset by peer"``.  Misusing an argument raises ``TypeError`` /
``ValueError`` or a :class:`ChannelError` with ``errno=EINVAL``; an optional
operation a channel lacks raises :class:`ChannelError` with ``errno=ENOTSUP``.
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "ACCEPT_RETRY_DELAY",
    "RESOURCE_ERRNOS",
    "AddressError",
    "BrokenChannelError",
    "ChannelClosedError",
    "ChannelError",
    "ConfigError",
    "Error",
    "HandshakeError",
    "PluginError",
    "TLSError",
    "TLSHandshakeError",
    "WebsocketError",
    "WebsocketHandshakeError",
    "closed_error",
    "from_oserror",
    "unexpected_eof",
    "unsupported",
]


#: errnos saying the process or the system ran out of a resource (fds,
#: buffers, memory): trying again at once fails again, so a server that gets
#: one from ``accept()`` backs off for :data:`ACCEPT_RETRY_DELAY` seconds.
RESOURCE_ERRNOS = frozenset({_errno.EMFILE, _errno.ENFILE, _errno.ENOBUFS, _errno.ENOMEM})
#: Seconds qiochan's listeners stop accepting after one of :data:`RESOURCE_ERRNOS`
#: (as asyncio does).
ACCEPT_RETRY_DELAY = 1.0


class Error(Exception):
    """Base class of every exception qiochan defines."""


class ChannelError(Error, OSError):
    """An I/O operation on a channel or transport failed.

    ``ChannelError(message, errno.EPIPE)`` returns a :class:`BrokenChannelError`
    and ``errno.EBADF`` a :class:`ChannelClosedError` (as ``OSError`` picks its
    subclass from the errno).

    Args:
        message: what failed, in words a user can act on.
        errno: the OS error number behind it, if any.
    """

    def __new__(cls, message: str, errno: int | None = None) -> ChannelError:
        kind = _BY_ERRNO.get(errno, cls) if cls is ChannelError and errno is not None else cls
        if errno is None:
            return super().__new__(kind, message)
        return super().__new__(kind, errno, message)

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


class ChannelClosedError(ChannelError):
    """The channel was used after it was closed (``errno`` is ``EBADF``)."""


class BrokenChannelError(ChannelError):
    """The peer broke the stream: a reset, a broken pipe, or end of file mid-message.

    ``errno`` is ``ECONNRESET`` or ``EPIPE`` (also for a ``*_all`` read that
    reached end of file before all the data arrived).
    """


_BY_ERRNO: dict[int, type[ChannelError]] = {
    _errno.EBADF: ChannelClosedError,
    _errno.ECONNRESET: BrokenChannelError,
    _errno.EPIPE: BrokenChannelError,
}


class AddressError(Error, ValueError):
    """An address or layer specification is malformed; the message names the bad part."""


class ConfigError(Error, ValueError):
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

    def __reduce__(self) -> tuple[type[ConfigError], tuple[object, str, str]]:
        return (type(self), (self.path, self.key, self.reason))


class PluginError(Error, LookupError):
    """No usable backend serves a scheme, layer or operation, or a plugin broke its contract.

    The message names the plugin (or the scheme looked up) and, when a
    dependency is missing, what to install.
    """


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
    ``"Unable to read from socket: Connection reset by peer"`` with the same
    errno (a :class:`BrokenChannelError` for that one).
    """
    if exc.errno is not None:
        return ChannelError(f"{what}: {os.strerror(exc.errno)}", exc.errno)
    return ChannelError(f"{what}: {exc}")


def unsupported(what: str) -> ChannelError:
    """Return the ``ENOTSUP`` error for an operation a channel does not implement."""
    return ChannelError(f"{what} is not supported by this channel", _errno.ENOTSUP)


def closed_error(name: str | None) -> ChannelClosedError:
    """Return the ``EBADF`` error raised when a closed channel is used."""
    label = f"Channel '{name}'" if name else "Channel"
    return ChannelClosedError(f"{label} is closed", _errno.EBADF)


def unexpected_eof() -> BrokenChannelError:
    """Return the error for end of file before a ``*_all`` read got all its data."""
    return BrokenChannelError("Unexpected end-of-file before all data were read", _errno.EPIPE)
