"""The ``qiochan`` command (also ``python -m qiochan``).

Subcommands::

    qiochan backends                      every discovered backend, available or why not
    qiochan demo [--size 64M]             a checksummed QEMUFile stream through every chain
    qiochan relay SRC [DST]               a gateway: every SRC peer gets its own DST connection
    qiochan send FILE DST                 stream a file to DST
    qiochan recv SRC FILE                 receive a stream from SRC into FILE
    qiochan certs DIR [--hostname H]      TLS credentials in QEMU's layout (also
                                          --server, --client, --revoke later)
    qiochan inspect SOURCE                what a QEMU migration stream holds

Every address takes the address syntax (``tcp:HOST:PORT``, ``unix:PATH``,
``exec:CMD``, ``file:PATH``, ``ws://``, ``wss://``...) or the name of a
transport from the transports file (``--config``), plus repeatable ``--layer
SPEC`` options.  Every failure is one line on stderr, ``qiochan COMMAND:
error: ...``.  Exit status: 0 success; 1 the operation failed at run time
(peer, I/O, handshake, a cut-off stream, ``--timeout``); 2 bad usage or input
found before any I/O (an address, a layer or its options, credentials, the
transports file, the files named); 128 + N stopped by signal N (130 for
SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from typing import Any

from .. import __version__
from ._common import (
    EXIT_FAILED,
    EXIT_USAGE,
    CLIError,
    Stopped,
    add_layer_argument,
    error_line,
    parse_rate,
    parse_size,
    positive_float,
    positive_int,
)

__all__ = ["build_parser", "main"]

log = logging.getLogger("qiochan.cli")

Handler = Callable[[argparse.Namespace], int]


def _handler(module: str, name: str) -> Handler:
    """Return a handler that imports its module only when the subcommand runs."""

    def run(args: argparse.Namespace) -> int:
        from importlib import import_module

        func: Handler = getattr(import_module(module, __package__), name)
        return func(args)

    return run


def _common_options(for_subcommand: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the subcommand (``qiochan -v demo`` = ``demo -v``)."""
    default: Any = argparse.SUPPRESS if for_subcommand else None
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("common options")
    group.add_argument(
        "--config",
        metavar="FILE",
        default=default,
        help="transports file naming transports (default: $QIOCHAN_CONFIG, else "
        "~/.config/qiochan/transports.toml)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS if for_subcommand else 0,
        help="log what happens (-vv: debug, with tracebacks)",
    )
    group.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=default,
        help="show progress bars even when stderr is not a terminal",
    )
    group.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=default,
        help="never show progress bars (the last of the two wins)",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``qiochan`` command."""
    common = _common_options(for_subcommand=True)
    parser = argparse.ArgumentParser(
        prog="qiochan",
        description="QEMU's QIOChannel transports, layers and QEMUFile stream from the shell.",
        parents=[_common_options(for_subcommand=False)],
    )
    parser.add_argument("--version", action="version", version=f"qiochan {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, module: str, func: str, *, help: str, description: str
    ) -> argparse.ArgumentParser:
        """Add subcommand ``name`` run by ``module.func`` (imported when it runs)."""
        command = commands.add_parser(name, parents=[common], help=help, description=description)
        command.set_defaults(handler=_handler(module, func))
        return command

    backends = add(
        "backends",
        "._backends",
        "run_backends",
        help="list every discovered backend: schemes, kind, features, availability",
        description="List every backend the plugins provide, including unavailable ones "
        "and plugins that failed to load, with the reason.",
    )
    backends.add_argument("--json", action="store_true", help="print JSON instead of a table")

    demo = add(
        "demo",
        "._demo",
        "run_demo",
        help="move a checksummed QEMUFile page stream through every transport chain",
        description="Move a generated stream of RAM page records through QEMUFile over every "
        "available transport and layer chain on loopback, verify every byte and print "
        "the throughput of each chain.",
    )
    demo.add_argument(
        "--size",
        type=parse_size,
        default=64 << 20,
        help="bytes of RAM pages per chain (default 64M; K/M/G are powers of 1024)",
    )
    demo.add_argument(
        "--chain",
        action="append",
        default=[],
        metavar="NAME",
        help="run only chains whose name contains NAME (repeatable), e.g. tls",
    )
    _json_option(demo, "one JSON object per chain on stdout instead of the table")

    relay = add(
        "relay",
        "._relay",
        "run_relay",
        help="a gateway: relay every connection on SRC to its own connection to DST",
        description="Listen on SRC (or connect to it) and, for every peer, connect to DST "
        "(or take the next peer accepted on it) and copy both directions until each ends; "
        "an end of stream is passed on as a half-close.  Serves until SIGTERM/SIGINT "
        "(then drains), or until --connections N have ended.  Exit 0 when every "
        "connection ended cleanly or by a peer close after the data passed.",
    )
    relay.add_argument("src", metavar="SRC", help="source address or transport name")
    relay.add_argument(
        "dst",
        metavar="DST",
        nargs="?",
        help="destination address or transport name (omitted with --targets)",
    )
    relay.add_argument(
        "--connect-src", action="store_true", help="connect to SRC instead of listening on it"
    )
    relay.add_argument(
        "--listen-dst", action="store_true", help="listen on DST instead of connecting to it"
    )
    add_layer_argument(relay, "--src-layer", "src_layers", "the source side")
    add_layer_argument(relay, "--dst-layer", "dst_layers", "the destination side")
    count = relay.add_mutually_exclusive_group()
    count.add_argument(
        "--connections",
        type=positive_int,
        metavar="N",
        help="exit once N connections have ended (a multifd(4) migration is 5)",
    )
    count.add_argument("--once", action="store_true", help="the same as --connections 1")
    relay.add_argument(
        "--targets",
        metavar="FILE",
        help="route by token: TOML [targets] token = address (DST omitted); the token is "
        "the last path segment or the token query parameter of the websocket request",
    )
    relay.add_argument(
        "--drain-timeout",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, seconds active connections get to finish (default 30)",
    )
    relay.add_argument(
        "--handshake-timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="seconds a client's TLS/websocket handshakes may take (default 10)",
    )
    relay.add_argument(
        "--max-active",
        type=positive_int,
        default=1024,
        metavar="N",
        help="connections handled at once; more wait in the listen backlog (default 1024)",
    )
    relay.add_argument(
        "--json", action="store_true", help="print one JSON object per connection on stdout"
    )
    relay.add_argument(
        "--tap",
        metavar="DIR",
        help="write a copy of each direction to DIR/<n>-src-to-dst.bin and <n>-dst-to-src.bin",
    )

    send = add(
        "send",
        "._transfer",
        "run_send",
        help="stream a file to a transport",
        description="Connect to DST (or accept one peer with --listen), write FILE ('-': "
        "stdin), half-close and wait for the peer to close.  Exit 0 once every byte was "
        "written, even if the peer then resets.  Stopped before the end (a signal, an "
        "error, --timeout) it aborts the connection, so the peer sees a cut stream.",
    )
    send.add_argument("file", metavar="FILE", help="file to send, '-' for stdin")
    send.add_argument("dst", metavar="DST", help="destination address or transport name")
    send.add_argument("--listen", action="store_true", help="listen on DST and accept one peer")
    _transfer_options(send)

    recv = add(
        "recv",
        "._transfer",
        "run_recv",
        help="receive a stream from a transport into a file",
        description="Accept one peer on SRC (or connect with --connect) and write what it "
        "sends to FILE ('-': stdout) until its end of stream, through a temporary file "
        "renamed to FILE only then.  Exit 0 only when the stream ended cleanly, i.e. FILE "
        "is complete; a cut stream exits 1 and leaves an existing FILE unchanged.",
    )
    recv.add_argument("src", metavar="SRC", help="source address or transport name")
    recv.add_argument("file", metavar="FILE", help="file to write, '-' for stdout")
    recv.add_argument("--connect", action="store_true", help="connect to SRC instead")
    recv.add_argument(
        "--keep-partial",
        action="store_true",
        help="when the stream does not end cleanly, keep what arrived as FILE.partial "
        "(FILE itself is never touched unless the stream ended cleanly)",
    )
    _transfer_options(recv)

    certs = add(
        "certs",
        "._certs",
        "run_certs",
        help="create TLS credentials in QEMU's directory layout, add certificates, revoke",
        description="Create ca-cert.pem, ca-key.pem (the CA's key: keep it secret), "
        "server-cert.pem/server-key.pem and client-cert.pem/client-key.pem in DIR, as "
        "QEMU's tls-creds-x509 and tls:creds=DIR read them.  An existing CA is kept unless "
        "--force.  With --server, --client or --revoke, DIR's CA signs one more certificate "
        "or revokes one in DIR/ca-crl.pem.",
    )
    certs.add_argument("dir", metavar="DIR", help="the credentials directory (with the CA)")
    certs.add_argument(
        "--hostname",
        action="append",
        metavar="H",
        help="server host name of a new CA's server certificate (repeatable; default localhost)",
    )
    certs.add_argument(
        "--ip",
        action="append",
        metavar="ADDR",
        help="server IP address (repeatable; default 127.0.0.1 for a new CA, none for --server)",
    )
    certs.add_argument(
        "--no-client", action="store_true", help="do not create a client certificate"
    )
    certs.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA (certificates it signed stop verifying) or certificate",
    )
    certs.add_argument(
        "--server",
        action="append",
        metavar="HOST",
        help="sign a new server certificate for HOST with DIR's CA (repeatable: more names)",
    )
    certs.add_argument(
        "--client", metavar="NAME", help="sign a new client certificate (CN=NAME) with DIR's CA"
    )
    certs.add_argument(
        "--out",
        metavar="OUTDIR",
        help="write the --server/--client certificate into OUTDIR (with a copy of the CA "
        "certificate) instead of DIR",
    )
    certs.add_argument(
        "--revoke",
        metavar="CERT",
        help="revoke the certificate file CERT in DIR/ca-crl.pem, enforced by tls:creds=DIR",
    )
    inspect = add(
        "inspect",
        "._inspect",
        "run_inspect",
        help="show what a QEMU migration stream holds (file, stdin or live)",
        description="Walk a QEMU migration stream (savevm format, or a multifd channel) "
        "and print its sections, RAM blocks and pages, commands and where it ended.  "
        "SOURCE is a file, '-' (stdin), or an address to listen on so QEMU can migrate "
        "straight to it.  Exit 0 when the stream is complete, 1 when it is cut off or "
        "malformed.",
    )
    inspect.add_argument("source", metavar="SOURCE", help="file, '-', or address")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.add_argument("--compact", action="store_true", help="with --json: on one line")
    inspect.add_argument(
        "--timeout",
        type=positive_float,
        default=None,
        metavar="S",
        help="live source: give up when no peer came or no data arrived for S seconds",
    )
    add_layer_argument(inspect)
    return parser


def _transfer_options(parser: argparse.ArgumentParser) -> None:
    add_layer_argument(parser)
    parser.add_argument(
        "--rate-limit",
        type=parse_rate,
        default=None,
        metavar="RATE",
        help="at most RATE bytes per second, e.g. 10M (K/M/G are powers of 1024)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="give up (exit 1, aborting the connection) when nothing moves for SECONDS: "
        "waiting for the peer, a handshake, or the next chunk",
    )
    _json_option(parser, "print one JSON object describing the transfer on stdout")


def _json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help=f"{what} (keys: bytes, seconds, mib_per_s, outcome, error...)",
    )


def _configure_logging(verbosity: int) -> None:
    if verbosity <= 0:
        level = logging.WARNING
    elif verbosity == 1:
        level = logging.INFO
    else:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="qiochan: %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``qiochan`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 1 the operation failed, 2 a usage error
        found before any I/O, 128 + N stopped by signal N.
    """
    from ..errors import AddressError, ConfigError, Error

    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    command: str = args.command
    try:
        if args.config:
            from ..config import load_config, set_config_path

            set_config_path(args.config)
            load_config()  # a named file must exist and be valid, whether used or not
        return int(args.handler(args))
    except CLIError as exc:
        error_line(command, str(exc))
        return exc.code
    except (AddressError, ConfigError) as exc:
        error_line(command, str(exc))
        return EXIT_USAGE
    except (Error, OSError) as exc:  # I/O and plugin errors, and a file the command opened
        error_line(command, str(exc))
        return EXIT_FAILED
    except Stopped as exc:
        error_line(command, exc.reason)
        return exc.code
    except KeyboardInterrupt:
        error_line(command, "interrupted by SIGINT")
        return 130
    except Exception as exc:
        if args.verbose >= 2:
            raise
        error_line(
            command, f"internal error: {type(exc).__name__}: {exc} (-vv shows the traceback)"
        )
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
