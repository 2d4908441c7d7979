"""Distinguished names as QEMU shows them (certificate order) and in RFC 4514 form."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = ["format_dn"]

# GnuTLS spells a few attribute types differently from RFC 4514's short names
_GNUTLS_NAMES = {NameOID.EMAIL_ADDRESS: "EMAIL"}


def format_dn(name: x509.Name, *, rfc4514: bool = False) -> str:
    """Return ``name`` as a string.

    By default the RDNs come in certificate order, as GnuTLS and QEMU print them
    (``C=UK,O=Example,CN=client``), so QEMU authorization lists carry over
    unchanged.  With ``rfc4514=True`` the order is reversed, as RFC 4514 says
    (``CN=client,O=Example,C=UK``).  Special characters are escaped per RFC 4514
    in both forms; a multi-valued RDN joins its attributes with ``+``.
    """
    if rfc4514:
        return name.rfc4514_string()
    return ",".join(rdn.rfc4514_string(_GNUTLS_NAMES) for rdn in name.rdns)
