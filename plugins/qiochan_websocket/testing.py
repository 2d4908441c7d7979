"""Helpers for tests and tools that run both ends of a websocket session in one process."""

from __future__ import annotations

import asyncio

from qiochan.errors import WebsocketHandshakeError

from .channel import QIOChannelWebsock

__all__ = ["handshake_pair"]


def handshake_pair(
    server: QIOChannelWebsock, client: QIOChannelWebsock, *, timeout: float = 10.0
) -> None:
    """Complete the opening handshakes of two ends connected to each other, concurrently.

    Both run on a private event loop in this thread (no helper thread is
    left behind).

    Raises:
        WebsocketHandshakeError: either end failed (the first failure is
            raised, the other chained), or they did not finish in ``timeout``.
    """

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
        raise WebsocketHandshakeError(
            f"Websocket handshakes did not complete within {timeout} s"
        ) from None
    finally:
        loop.close()
