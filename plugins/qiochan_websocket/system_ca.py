"""The system CA store as TLS credentials, for ``wss://`` clients given no ``tls:`` layer.

The ``tls`` layer reads QEMU's credentials layout (a directory with
``ca-cert.pem``).  A ``wss://`` client without a ``tls:`` layer verifies the
server against the system's trusted CAs, as a browser does: this module makes
a private directory whose ``ca-cert.pem`` links to the system CA bundle (the
file OpenSSL uses: ``SSL_CERT_FILE``, else the distribution's bundle), and
hands the ``tls`` layer that directory with QEMU's certificate sanity checks
off (they are meant for one's own CA, not for the hundred-odd public roots).
"""

from __future__ import annotations

import atexit
import os
import shutil
import ssl
import tempfile
import threading
from pathlib import Path

from qiochan.errors import AddressError

__all__ = ["system_ca_bundle", "system_ca_options"]

# where distributions keep the bundle when OpenSSL's default path is not a file
_KNOWN_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/ssl/cert.pem",  # macOS, BSDs
)

_lock = threading.Lock()
_dirs: dict[Path, Path] = {}


def system_ca_bundle() -> Path:
    """Return the system CA bundle file OpenSSL would use.

    Raises:
        AddressError: there is none (the message says to give a ``tls:`` layer).
    """
    paths = ssl.get_default_verify_paths()
    candidates = [
        os.environ.get(paths.openssl_cafile_env),
        paths.cafile,
        paths.openssl_cafile,
        *_KNOWN_BUNDLES,
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise AddressError(
        "wss:// without a 'tls:' layer verifies the server against the system CA store, "
        "but no CA bundle was found: add a 'tls:creds=DIR' layer"
    )


def _remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def _credentials_dir(bundle: Path) -> Path:
    with _lock:
        directory = _dirs.get(bundle)
        if directory is None or not (directory / "ca-cert.pem").exists():
            directory = Path(tempfile.mkdtemp(prefix="qiochan-system-ca-"))
            (directory / "ca-cert.pem").symlink_to(bundle)
            atexit.register(_remove, directory)
            _dirs[bundle] = directory
        return directory


def system_ca_options(hostname: str) -> dict[str, str]:
    """Return ``tls`` layer options that verify ``hostname`` against the system CA store.

    Raises:
        AddressError: no system CA bundle was found.
    """
    directory = _credentials_dir(system_ca_bundle())
    return {"creds": str(directory), "hostname": hostname, "sanity_check": "off"}
