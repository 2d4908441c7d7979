"""``qiochan certs DIR --hostname H``: TLS credentials in QEMU's directory layout.

The TLS plugin makes them (found through the registry, never imported by
name): ``ca-cert.pem``, ``server-cert.pem``/``server-key.pem`` and
``client-cert.pem``/``client-key.pem``, usable by QEMU's ``tls-creds-x509``
object and by ``tls:creds=DIR`` on both ends.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from ._common import EXIT_OK, CLIError, plugin_object, say

__all__ = ["create_credentials", "run_certs"]


def create_credentials(
    directory: str | os.PathLike[str],
    hostnames: Sequence[str],
    ips: Sequence[str],
    *,
    client: bool = True,
) -> list[Path]:
    """Create a credentials directory with the TLS plugin; return the files written.

    Raises:
        PluginError: the TLS layer is unavailable (the message says what to install).
        CLIError: the files could not be written.
    """
    create = plugin_object("layer", "tls", "certs.create_creds_dir")
    try:
        create(directory, hostnames=tuple(hostnames), ips=tuple(ips), client=client)
    except OSError as exc:
        raise CLIError(f"cannot create credentials in {directory}: {exc}") from None
    return sorted(Path(directory).glob("*.pem"))


def run_certs(args: argparse.Namespace) -> int:
    """Create the credentials directory ``args.dir`` for ``args.hostname``."""
    hostnames = args.hostname or ["localhost"]
    ips = args.ip if args.ip is not None else ["127.0.0.1"]
    files = create_credentials(args.dir, hostnames, ips, client=not args.no_client)
    names = ", ".join(path.name for path in files)
    say(f"created {names} in {args.dir} for {', '.join([*hostnames, *ips])}")
    return EXIT_OK
