"""Helpers for tests and tools that run both ends of a TLS session in one process."""

from __future__ import annotations

import asyncio

from qiochan.errors import TLSHandshakeError

from .channel import QIOChannelTLS

__all__ = ["handshake_pair"]


def handshake_pair(server: QIOChannelTLS, client: QIOChannelTLS, *, timeout: float = 10.0) -> None:
    """Complete the handshakes of two ends connected to each other, concurrently.

    Both run on a private event loop in this thread (no helper thread can be
    left behind); their blocking modes are restored afterwards.

    Raises:
        TLSHandshakeError: either end failed (the first failure is raised; the
            other end's error is chained), or they did not finish in ``timeout``.
    """
    modes = [(channel, channel.blocking) for channel in (server, client)]

    async def both() -> None:
        results = await asyncio.gather(
            server.ahandshake(), client.ahandshake(), return_exceptions=True
        )
        errors = [result for result in results if isinstance(result, BaseException)]
        if errors:
            if len(errors) > 1:
                raise errors[0] from errors[1]
            raise errors[0]

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(both(), timeout))
    except TimeoutError:
        raise TLSHandshakeError(f"TLS handshakes did not complete within {timeout} s") from None
    finally:
        loop.close()
        for channel, blocking in modes:
            if not channel.closed and channel.blocking != blocking:
                channel.set_blocking(blocking)
