"""Layered pairs for layer authors: wrap both ends of a pair in layers, handshakes done.

A layer is checked like any channel, through pairs whose two ends are its
server and client sides over some masters (a TCP connection by default).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from ..channel import QIOChannel
from ..layer import apply_layers, complete_handshakes, deadline_after
from . import _checks
from ._checks import PairFactory

__all__ = ["check_layer", "layered_pairs", "loopback_pair"]


def loopback_pair() -> tuple[QIOChannel, QIOChannel]:
    """Return a connected ``(client, server)`` TCP pair on 127.0.0.1 (through the registry)."""
    from ..transport import connect, listen

    with listen("tcp:127.0.0.1:0") as listener:
        client = connect(listener.address)
        try:
            server = listener.accept()
        except BaseException:
            client.close()
            raise
    return client, server


def layered_pairs(
    masters: PairFactory,
    server_layers: Iterable[Any],
    client_layers: Iterable[Any] | None = None,
) -> PairFactory:
    """Return a factory of ``(client, server)`` pairs wrapped in layers over ``masters()`` pairs.

    Each call takes a fresh ``(client master, server master)`` pair, wraps the
    ends in ``client_layers`` (default: ``server_layers``) and
    ``server_layers`` with :func:`qiochan.layer.apply_layers`, and runs both
    sides' handshakes at once (the server's in a thread), each bounded by the
    kit's :data:`~qiochan.testing.TIMEOUT`.

    Raises (from the factory):
        HandshakeError: a handshake failed (every channel is closed).
    """
    server_specs = list(server_layers)
    client_specs = server_specs if client_layers is None else list(client_layers)

    def make() -> tuple[QIOChannel, QIOChannel]:
        client_master, server_master = masters()
        try:
            server = apply_layers(server_master, server_specs, "server", handshake=False)
        except BaseException:
            client_master.close()
            raise
        try:
            client = apply_layers(client_master, client_specs, "client", handshake=False)
        except BaseException:
            server.close()
            raise
        deadline = deadline_after(_checks.TIMEOUT)
        failure: list[BaseException] = []

        def serve() -> None:
            try:
                complete_handshakes(server, deadline)
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=serve, name="qiochan-layered-pair", daemon=True)
        thread.start()
        try:
            complete_handshakes(client, deadline)
        except BaseException as exc:
            failure.append(exc)
        thread.join(_checks.TIMEOUT)
        if failure or thread.is_alive():
            client.close()
            server.close()
            if failure:
                raise failure[0]
            raise AssertionError("the server side of the layers never finished its handshake")
        return client, server

    return make


def check_layer(
    server_layers: Iterable[Any],
    client_layers: Iterable[Any] | None = None,
    *,
    masters: PairFactory = loopback_pair,
) -> dict[str, str | None]:
    """Run every two-way conformance check on ``layered_pairs(masters, ...)``.

    Args:
        server_layers: layer specs for the server ends (``["tls:creds=DIR"]``).
        client_layers: for the client ends (default: the same).
        masters: the pairs to wrap (default: TCP over loopback).
    Returns:
        Check name -> None (passed) or the reason it was skipped.
    Raises:
        AssertionError: naming the first check that failed and why.
    """
    from . import check_two_way_channel  # the package imports this module first

    return check_two_way_channel(layered_pairs(masters, server_layers, client_layers))
