"""The hooks a qiochan plugin may implement (pluggy project name ``"qiochan"``).

Plugins import :data:`~qiochan.plugin.hookimpl` and :class:`~qiochan.plugin.Backend`
from :mod:`qiochan.plugin`; this module only specifies the hooks (``hookimpl`` and
``hookspec`` stay importable from here as well).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .plugin import PROJECT, hookimpl, hookspec

if TYPE_CHECKING:
    from .channel import QIOChannel
    from .plugin import Backend

__all__ = ["PROJECT", "hookimpl", "hookspec"]


@hookspec
def qiochan_backends() -> list[Backend]:  # type: ignore[empty-body]
    """Return the backends this plugin provides (transports and layers).

    A backend whose optional dependency is missing is still returned, with
    ``available=False`` and ``missing`` saying what to install.
    """


@hookspec
def qiochan_channel_opened(channel: QIOChannel, address: object) -> None:
    """Observe a channel opened by :func:`qiochan.connect`, ``listen`` or ``open_channel``."""


@hookspec
def qiochan_channel_closed(channel: QIOChannel) -> None:
    """Observe a channel being closed."""
