"""The ``command`` backend: ``exec:SHELL-COMMAND`` runs ``/bin/sh -c SHELL-COMMAND``."""

from __future__ import annotations

import os

from qiochan.address import ExecAddress
from qiochan.errors import AddressError

from .channel import DEFAULT_CLOSE_TIMEOUT, QIOChannelCommand

__all__ = ["SHELL", "connect_command", "open_command"]

SHELL = "/bin/sh"
_FLAGS = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR}


def _argv(address: ExecAddress) -> list[str]:
    if not isinstance(address, ExecAddress):
        raise AddressError(f"The command backend cannot run '{address}'")
    return [SHELL, "-c", address.command]


def open_command(
    address: ExecAddress, mode: str, *, close_timeout: float = DEFAULT_CLOSE_TIMEOUT
) -> QIOChannelCommand:
    """Run the shell command; ``"r"`` reads its stdout, ``"w"`` writes its stdin, ``"rw"`` both.

    Raises:
        ChannelError: the shell could not be started.
    """
    return QIOChannelCommand.new_spawn(_argv(address), _FLAGS[mode], close_timeout=close_timeout)


def connect_command(
    address: ExecAddress,
    *,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    timeout: float | None = None,
) -> QIOChannelCommand:
    """Run the shell command with both pipes (as ``open_command(address, "rw")``).

    ``timeout`` (the connect timeout every transport takes) has nothing to
    bound: the command starts at once.
    """
    del timeout
    return open_command(address, "rw", close_timeout=close_timeout)
