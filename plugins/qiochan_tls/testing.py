"""Helpers for tests and tools that run both ends of a TLS session in one process."""

from __future__ import annotations

import asyncio

from qiochan.errors import TLSHandshakeError

from .channel import QIOChannelTLS

__all__ = ["handshake_pair", "run_handshakes"]

Outcome = tuple[BaseException | None, BaseException | None]


def run_handshakes(
    server: QIOChannelTLS, client: QIOChannelTLS, *, timeout: float = 10.0
) -> Outcome:
    """Run the handshakes of two ends connected to each other, concurrently.

    Both run on a private event loop in this thread (no helper thread can be
    left behind); their blocking modes are restored afterwards.  An end whose
    handshake fails is closed at once, so the other end meets the end of the
    transport instead of waiting for it.

    Returns:
        ``(server_error, client_error)``, each None when that end succeeded.
    Raises:
        TLSHandshakeError: the handshakes did not finish within ``timeout`` seconds.
    """
    modes = [(channel, channel.blocking) for channel in (server, client)]

    async def one(channel: QIOChannelTLS) -> BaseException | None:
        try:
            await channel.ahandshake()
        except Exception as exc:
            channel.close()
            return exc
        return None

    async def both() -> Outcome:
        return await asyncio.gather(one(server), one(client))

    loop = asyncio.new_event_loop()
    try:
        server_error, client_error = loop.run_until_complete(asyncio.wait_for(both(), timeout))
    except TimeoutError:
        raise TLSHandshakeError(f"TLS handshakes did not complete within {timeout} s") from None
    finally:
        loop.close()
        for channel, blocking in modes:
            if not channel.closed and channel.blocking != blocking:
                channel.set_blocking(blocking)
    return server_error, client_error


def handshake_pair(server: QIOChannelTLS, client: QIOChannelTLS, *, timeout: float = 10.0) -> None:
    """Complete both handshakes concurrently (see :func:`run_handshakes`).

    Raises:
        BaseException: the server's error, else the client's (the other one chained).
        TLSHandshakeError: they did not finish within ``timeout`` seconds.
    """
    server_error, client_error = run_handshakes(server, client, timeout=timeout)
    first = server_error or client_error
    if first is not None:
        other = client_error if first is server_error else None
        if other is not None:
            raise first from other
        raise first
