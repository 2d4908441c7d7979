"""The file names of QEMU's x509 credentials directory (``tls-creds-x509,dir=...``)."""

from __future__ import annotations

from typing import Literal

__all__ = [
    "CA_CERT",
    "CA_CRL",
    "CA_KEY",
    "CLIENT_CERT",
    "CLIENT_KEY",
    "ENDPOINTS",
    "SERVER_CERT",
    "SERVER_KEY",
    "Endpoint",
    "cert_file",
    "key_file",
]

#: Which side of a TLS session the credentials are for.
Endpoint = Literal["server", "client"]
ENDPOINTS: tuple[Endpoint, ...] = ("server", "client")

CA_CERT = "ca-cert.pem"
CA_CRL = "ca-crl.pem"
#: The CA's private key: not part of QEMU's layout (QEMU never reads it), kept by
#: ``qiochan certs`` to sign more certificates and CRLs later.  The one secret to guard.
CA_KEY = "ca-key.pem"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"
CLIENT_CERT = "client-cert.pem"
CLIENT_KEY = "client-key.pem"


def cert_file(endpoint: Endpoint) -> str:
    """Return the certificate file name of ``endpoint`` (``server-cert.pem``...)."""
    return SERVER_CERT if endpoint == "server" else CLIENT_CERT


def key_file(endpoint: Endpoint) -> str:
    """Return the private key file name of ``endpoint`` (``server-key.pem``...)."""
    return SERVER_KEY if endpoint == "server" else CLIENT_KEY
