"""``qiochan certs DIR``: TLS credentials in QEMU's directory layout, for real use.

The TLS plugin makes them (found through the registry, never imported by
name): ``ca-cert.pem``, ``server-cert.pem``/``server-key.pem`` and
``client-cert.pem``/``client-key.pem``, usable by QEMU's ``tls-creds-x509``
object and by ``tls:creds=DIR`` on both ends, plus ``ca-key.pem`` (mode
0600), the CA's key, which QEMU never reads: it signs further certificates
(``--server HOST``, ``--client NAME``) and the CRL (``--revoke CERT``) later.
It is the one secret to guard: whoever has it can mint certificates every
peer of this CA trusts.

An existing CA is never replaced silently: that would make every
certificate it signed stop verifying.  ``--force`` replaces it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._common import EXIT_OK, EXIT_USAGE, CLIError, plugin_object, say

__all__ = ["create_credentials", "run_certs"]


def _certs() -> Any:
    """The TLS plugin's certificate tooling (``qiochan_tls.certs``), through the registry."""
    return plugin_object("layer", "tls", "certs")


def _cannot(directory: str | os.PathLike[str], exc: OSError) -> CLIError:
    return CLIError(f"cannot create credentials in {directory}: {exc.strerror or exc}")


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
    try:
        _certs().create_creds_dir(
            directory, hostnames=tuple(hostnames), ips=tuple(ips), client=client
        )
    except OSError as exc:
        raise _cannot(directory, exc) from None
    return sorted(Path(directory).glob("*.pem"))


def _names(files: Sequence[Path]) -> str:
    return ", ".join(path.name for path in files)


def _new_ca(args: argparse.Namespace) -> str:
    hostnames = args.hostname or ["localhost"]
    ips = args.ip if args.ip is not None else ["127.0.0.1"]
    if Path(args.dir, "ca-cert.pem").exists() and not args.force:
        raise CLIError(
            f"{args.dir} already holds a CA (ca-cert.pem): --force replaces it (every "
            "certificate it signed stops verifying); --server, --client or --revoke use it",
            EXIT_USAGE,
        )
    files = create_credentials(args.dir, hostnames, ips, client=not args.no_client)
    return (
        f"created {_names(files)} in {args.dir} for {', '.join([*hostnames, *ips])} "
        "(keep ca-key.pem secret)"
    )


def _leaf(args: argparse.Namespace) -> str:
    out = args.out or args.dir
    if args.server:
        endpoint, name, hostnames, ips = "server", args.server[0], args.server, args.ip or []
    else:
        endpoint, name, hostnames, ips = "client", args.client, [], []
    try:
        files = _certs().add_leaf(
            args.dir, endpoint, name, hostnames=hostnames, ips=ips, out=out, force=args.force
        )
    except FileExistsError as exc:
        raise CLIError(f"{exc} (--force replaces it)", EXIT_USAGE) from None
    except FileNotFoundError as exc:
        raise CLIError(f"{exc}: create the CA first with 'qiochan certs DIR'", EXIT_USAGE) from None
    except ValueError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise _cannot(out, exc) from None
    return f"created {_names(files)} in {out}: a {endpoint} certificate for {name}"


def _revoke(args: argparse.Namespace) -> str:
    certs = _certs()
    if not Path(args.revoke).is_file():
        raise CLIError(f"cannot read {args.revoke}: no such file", EXIT_USAGE)
    try:
        crl = certs.revoke(args.dir, args.revoke)
    except FileNotFoundError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None
    except ValueError as exc:
        raise CLIError(f"cannot revoke {args.revoke}: {exc}", EXIT_USAGE) from None
    except OSError as exc:
        raise CLIError(f"cannot revoke {args.revoke}: {exc.strerror or exc}") from None
    return (
        f"revoked {args.revoke} in {Path(args.dir, 'ca-crl.pem')} ({len(crl)} revoked; "
        f"renew it by revoking again before {crl.next_update_utc:%Y-%m-%d})"
    )


def run_certs(args: argparse.Namespace) -> int:
    """Create a CA and its first certificates, add one, or revoke one (see the module doc)."""
    chosen = [flag for flag in ("server", "client", "revoke") if getattr(args, flag)]
    if len(chosen) > 1:
        raise CLIError(f"give one of --{', --'.join(chosen)}, not several", EXIT_USAGE)
    if args.out and not (args.server or args.client):
        raise CLIError("--out goes with --server or --client", EXIT_USAGE)
    if args.revoke:
        say(_revoke(args))
    elif args.server or args.client:
        say(_leaf(args))
    else:
        say(_new_ca(args))
    return EXIT_OK
