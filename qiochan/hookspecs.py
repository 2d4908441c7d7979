"""The hooks a qiochan plugin may implement (pluggy project name ``"qiochan"``).

A plugin is a module (or any object) with functions decorated by
:data:`hookimpl`, registered through the ``qiochan.plugins`` entry-point group::

    # pyproject.toml of a third-party distribution
    [project.entry-points."qiochan.plugins"]
    mytransport = "mytransport_plugin"

    # mytransport_plugin.py
    from qiochan.hookspecs import hookimpl
    from qiochan.registry import Backend

    @hookimpl
    def qiochan_backends():
        return [Backend(name="mytransport", schemes=("my",), connect=...)]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .channel import QIOChannel
    from .registry import Backend

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "qiochan"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


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
