"""GnuTLS priority strings (QEMU's ``tls-creds priority=``) mapped onto :class:`ssl.SSLContext`.

QEMU hands its priority string to GnuTLS; here the same syntax is read and
turned into ``ssl`` settings.  Supported, separated by ``:``:

* a base keyword first: ``NORMAL``, ``@SYSTEM``, ``PERFORMANCE`` (OpenSSL's
  defaults), ``PFS`` (forward-secret AEAD suites), ``SECURE128``/``SECURE``,
  ``SECURE192``/``SECURE256`` (AES-256-GCM or ChaCha20 only), ``NONE``;
* protocol versions: ``+VERS-TLS1.2``, ``-VERS-TLS1.3``, ``-VERS-ALL``,
  ``+VERS-ALL`` / ``+VERS-TLS-ALL`` (TLS 1.0 and 1.1 are never enabled: a
  request for them is logged and ignored);
* AEAD ciphers for TLS 1.2: ``+AES-128-GCM``, ``+AES-256-GCM``,
  ``+CHACHA20-POLY1305``, their ``-`` forms and ``-CIPHER-ALL``;
* ``%SERVER_PRECEDENCE`` (server cipher preference), ``%NO_TICKETS``, and
  ``%COMPAT``, ``%DUMBFW``, ``%LATEST_RECORD_VERSION`` (accepted, no effect).

The standard library cannot choose TLS 1.3 suites: they stay OpenSSL's (all AEAD).
"""

from __future__ import annotations

import errno
import logging
import ssl
from dataclasses import dataclass

from qiochan.errors import TLSError

__all__ = ["Priority", "parse_priority"]

log = logging.getLogger("qiochan.tls")

_VERSIONS = {"TLS1.2": ssl.TLSVersion.TLSv1_2, "TLS1.3": ssl.TLSVersion.TLSv1_3}
_LEGACY_VERSIONS = frozenset({"SSL3.0", "TLS1.0", "TLS1.1", "DTLS1.0", "DTLS1.2"})
_CIPHERS = {
    "AES-128-GCM": "AES128+AESGCM",
    "AES-256-GCM": "AES256+AESGCM",
    "CHACHA20-POLY1305": "CHACHA20",
}
_ALL_CIPHERS = frozenset(_CIPHERS)
_STRONG_CIPHERS = frozenset({"AES-256-GCM", "CHACHA20-POLY1305"})
# base keyword -> (AEAD ciphers, or None for OpenSSL's default list)
_BASES: dict[str, frozenset[str] | None] = {
    "NORMAL": None,
    "@SYSTEM": None,
    "PERFORMANCE": None,
    "PFS": _ALL_CIPHERS,
    "SECURE": _ALL_CIPHERS,
    "SECURE128": _ALL_CIPHERS,
    "SECURE192": _STRONG_CIPHERS,
    "SECURE256": _STRONG_CIPHERS,
    "NONE": frozenset(),
}
_IGNORED_FLAGS = frozenset({"%COMPAT", "%DUMBFW", "%LATEST_RECORD_VERSION"})


@dataclass(frozen=True)
class Priority:
    """The ``ssl`` settings a priority string stands for.

    Attributes:
        text: the priority string as given.
        minimum_version, maximum_version: the enabled protocol range.
        ciphers: an OpenSSL cipher list for TLS 1.2, or None for the default.
        server_precedence: prefer the server's cipher order.
        no_tickets: send no session tickets.
    """

    text: str
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    maximum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    ciphers: str | None = None
    server_precedence: bool = False
    no_tickets: bool = False

    def apply(self, context: ssl.SSLContext) -> None:
        """Configure ``context`` accordingly.

        Raises:
            TLSError: OpenSSL refused the cipher list.
        """
        context.minimum_version = self.minimum_version
        context.maximum_version = self.maximum_version
        if self.ciphers is not None:
            try:
                context.set_ciphers(self.ciphers)
            except ssl.SSLError as exc:
                raise TLSError(
                    f"TLS priority {self.text!r}: OpenSSL refused cipher list {self.ciphers!r}",
                    errno.EINVAL,
                ) from exc
        if self.server_precedence:
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        if self.no_tickets:
            context.options |= ssl.OP_NO_TICKET
            if context.protocol == ssl.PROTOCOL_TLS_SERVER:
                context.num_tickets = 0


def _fail(text: str, why: str) -> TLSError:
    return TLSError(f"TLS priority {text!r}: {why}", errno.EINVAL)


def parse_priority(text: str | None) -> Priority:
    """Parse a GnuTLS-style priority string (None or empty: the defaults).

    Raises:
        TLSError: an unknown keyword or token, or no protocol version or cipher
            left enabled (``errno`` EINVAL; the message names the token).
    """
    if text is None or not text.strip():
        return Priority(text or "")
    tokens = [token.strip() for token in text.split(":")]
    base = tokens[0].upper()
    if base not in _BASES:
        raise _fail(text, f"unknown base keyword {tokens[0]!r} (known: {', '.join(_BASES)})")
    ciphers = _BASES[base]
    versions = set(_VERSIONS) if base != "NONE" else set()
    precedence = no_tickets = False
    for token in tokens[1:]:
        if not token:
            continue
        upper = token.upper()
        if upper in _IGNORED_FLAGS:
            continue
        if upper == "%SERVER_PRECEDENCE":
            precedence = True
        elif upper == "%NO_TICKETS":
            no_tickets = True
        elif upper[:1] in "+-!" and upper[1:].startswith("VERS-"):
            versions = _version_change(text, upper, versions)
        elif upper[:1] in "+-!":
            ciphers = _cipher_change(text, upper, ciphers)
        else:
            raise _fail(text, f"unsupported token {token!r}")
    if not versions:
        raise _fail(text, "no usable protocol version left (TLS 1.2 and 1.3 are supported)")
    if ciphers is not None and not ciphers and "TLS1.2" in versions:
        raise _fail(text, "no TLS 1.2 cipher left")
    ordered = sorted(_VERSIONS[name] for name in versions)
    return Priority(
        text,
        minimum_version=ordered[0],
        maximum_version=ordered[-1],
        ciphers=_cipher_list(ciphers),
        server_precedence=precedence,
        no_tickets=no_tickets,
    )


def _version_change(text: str, token: str, versions: set[str]) -> set[str]:
    add = token[0] == "+"
    name = token[len("+VERS-") :]
    if name in ("ALL", "TLS-ALL"):
        return set(_VERSIONS) if add else set()
    if name in _LEGACY_VERSIONS:
        if add:
            log.warning("TLS priority %r: %s is not supported and stays disabled", text, name)
        return versions
    if name not in _VERSIONS:
        raise _fail(text, f"unknown protocol version in {token!r}")
    return versions | {name} if add else versions - {name}


def _cipher_change(text: str, token: str, ciphers: frozenset[str] | None) -> frozenset[str]:
    add = token[0] == "+"
    name = token[1:]
    current = _ALL_CIPHERS if ciphers is None else ciphers
    if name == "CIPHER-ALL":
        return _ALL_CIPHERS if add else frozenset()
    if name not in _CIPHERS:
        raise _fail(
            text, f"unsupported cipher in {token!r} (supported: {', '.join(_CIPHERS)}, CIPHER-ALL)"
        )
    return current | {name} if add else current - {name}


def _cipher_list(ciphers: frozenset[str] | None) -> str | None:
    if ciphers is None:
        return None
    if not ciphers:
        return "ECDHE+AESGCM"  # unused: TLS 1.2 is off; keep OpenSSL's list non-empty
    selectors = [_CIPHERS[name] for name in sorted(ciphers)]
    return ":".join(f"{kx}+{sel}" for sel in selectors for kx in ("ECDHE", "DHE"))
