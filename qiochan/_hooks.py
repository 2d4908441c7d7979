"""The core's link to the observer hooks, kept free of imports so channels stay cheap.

:mod:`qiochan.registry` installs the plugin manager here once it exists; until
then (and when no plugin observes), notifying costs one attribute test.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("qiochan.registry")

#: The pluggy hook relay, set by qiochan.registry when the manager is created.
hook: Any = None


def channel_opened(channel: object, address: object) -> None:
    """Tell observer plugins that ``channel`` was opened for ``address``."""
    if hook is not None:
        try:
            hook.qiochan_channel_opened(channel=channel, address=address)
        except Exception:
            log.exception("a qiochan_channel_opened observer failed")


def channel_closed(channel: object) -> None:
    """Tell observer plugins that ``channel`` was closed."""
    if hook is not None:
        try:
            hook.qiochan_channel_closed(channel=channel)
        except Exception:
            log.exception("a qiochan_channel_closed observer failed")
