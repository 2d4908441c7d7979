"""Rate limiting and RAM-control hooks of :class:`~qiochan.qemufile.QEMUFile` (QEMU 2019).

The rate limiter counts the bytes queued for output since the last
:meth:`reset_rate_limit` (plus the pages a ``save_page`` hook took over); it
is derived from the transfer counters, so the put fast paths pay nothing for it.

Hooks are any object with some of these methods (QEMU's ``QEMUFileHooks``,
used by RDMA migration)::

    before_ram_iterate(f, flags, data) -> int | None
    after_ram_iterate(f, flags, data) -> int | None
    hook_ram_load(f, flags, data) -> int | None
    save_page(f, block_offset, offset, size) -> (ret, bytes_sent)

A negative return value is latched as the file's error.
"""

from __future__ import annotations

import errno
from typing import Any

from ._base import QEMUFileBase

__all__ = [
    "RAM_CONTROL_BLOCK_REG",
    "RAM_CONTROL_FINISH",
    "RAM_CONTROL_HOOK",
    "RAM_CONTROL_ROUND",
    "RAM_CONTROL_SETUP",
    "RAM_SAVE_CONTROL_DELAYED",
    "RAM_SAVE_CONTROL_NOT_SUPP",
    "ControlMixin",
]

#: ``flags`` values passed to the RAM-control hooks.
RAM_CONTROL_SETUP = 0
RAM_CONTROL_ROUND = 1
RAM_CONTROL_HOOK = 2
RAM_CONTROL_FINISH = 3
RAM_CONTROL_BLOCK_REG = 4

#: ``save_page`` results: the hook does not handle pages / it will send the page later.
RAM_SAVE_CONTROL_NOT_SUPP = -1000
RAM_SAVE_CONTROL_DELAYED = -2000


class ControlMixin(QEMUFileBase):
    """Rate limiting and the ram_control_* hook calls."""

    # -- rate limiting --------------------------------------------------------------

    def _rate_used(self) -> int:
        queued = self.transferred_noflush() if self._writable else 0
        return queued - self._rate_mark + self._rate_adjust

    def rate_limit(self) -> bool:
        """Return True when the caller should stop sending for now.

        That is when an error is latched, or when a limit is set (> 0) and more
        than that many bytes were queued since :meth:`reset_rate_limit`.

        Raises:
            ChannelError: the file is closed.
        """
        self._check_open()
        if self._error:
            return True
        return self._rate_max > 0 and self._rate_used() > self._rate_max

    def set_rate_limit(self, limit: int) -> None:
        """Set the byte budget checked by :meth:`rate_limit` (0 or less: unlimited).

        Raises:
            TypeError: ``limit`` is not an int.
            ChannelError: the file is closed.
        """
        self._check_open()
        if not isinstance(limit, int):
            raise TypeError(f"rate limit must be an int, not {type(limit).__name__}")
        self._rate_max = limit

    def get_rate_limit(self) -> int:
        """Return the byte budget set with :meth:`set_rate_limit` (0: unlimited)."""
        self._check_open()
        return self._rate_max

    def reset_rate_limit(self) -> None:
        """Start a new budget period: count queued bytes from zero again."""
        self._check_open()
        self._rate_mark = self.transferred_noflush() if self._writable else 0
        self._rate_adjust = 0

    # -- hooks --------------------------------------------------------------------

    def set_hooks(self, hooks: object | None) -> None:
        """Install the RAM-control hooks object (None removes it); see the module docstring."""
        self._check_open()
        self._hooks = hooks

    def _hook(self, name: str) -> Any:
        self._check_open()
        return getattr(self._hooks, name, None) if self._hooks is not None else None

    def _latch_hook_result(self, ret: int | None) -> None:
        if ret is not None and ret < 0:
            self._latch(ret, None)

    def ram_control_before_iterate(self, flags: int) -> None:
        """Call the ``before_ram_iterate`` hook, if any; a negative result is latched."""
        hook = self._hook("before_ram_iterate")
        if hook is not None:
            self._latch_hook_result(hook(self, flags, None))

    def ram_control_after_iterate(self, flags: int) -> None:
        """Call the ``after_ram_iterate`` hook, if any; a negative result is latched."""
        hook = self._hook("after_ram_iterate")
        if hook is not None:
            self._latch_hook_result(hook(self, flags, None))

    def ram_control_load_hook(self, flags: int, data: object = None) -> None:
        """Call the ``hook_ram_load`` hook; a negative result is latched.

        Without the hook, ``flags == RAM_CONTROL_HOOK`` latches ``-EINVAL``: the
        source asked for a hook this side does not have.
        """
        hook = self._hook("hook_ram_load")
        if hook is not None:
            self._latch_hook_result(hook(self, flags, data))
        elif flags == RAM_CONTROL_HOOK:
            self._latch(-errno.EINVAL, None)

    def ram_control_save_page(self, block_offset: int, offset: int, size: int) -> tuple[int, int]:
        """Offer a page to the ``save_page`` hook.

        The page counts against the rate limit unless the hook declines it;
        bytes the hook reports sent count as transferred; a negative result
        with nothing sent (other than NOT_SUPP/DELAYED) is latched.

        Returns:
            ``(ret, bytes_sent)`` from the hook, or ``(RAM_SAVE_CONTROL_NOT_SUPP, 0)``
            without one.
        """
        hook = self._hook("save_page")
        if hook is None:
            return RAM_SAVE_CONTROL_NOT_SUPP, 0
        ret, bytes_sent = hook(self, block_offset, offset, size)
        if ret != RAM_SAVE_CONTROL_NOT_SUPP:
            self._rate_adjust += size
        if ret not in (RAM_SAVE_CONTROL_DELAYED, RAM_SAVE_CONTROL_NOT_SUPP):
            if bytes_sent > 0:
                self._total += bytes_sent
                self._rate_adjust -= bytes_sent
            elif ret < 0:
                self._latch(ret, None)
        return ret, bytes_sent
