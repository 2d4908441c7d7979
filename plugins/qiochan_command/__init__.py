"""The command backend: :class:`QIOChannelCommand` over a child process's stdin/stdout.

Registered through the ``qiochan.plugins`` entry point like any third-party
plugin.  Scheme: ``exec:SHELL-COMMAND`` (run with ``/bin/sh -c``), through
``open_channel`` (mode ``r``, ``w`` or ``rw``) or ``connect`` (``rw``).

The child leads a process group of its own.  ``close()`` closes its pipes,
waits ``close_timeout`` seconds (default 5), then sends SIGTERM to the whole
group, waits again, then SIGKILL, so nothing the command started (a shell's
children, ``cmd &``) outlives the channel; a non-zero exit is raised as
:class:`~qiochan.ChannelError`, except a death by SIGPIPE after we stopped
reading its output (also as a shell reports it: status 141).  ``abort()``
terminates the group at once.
"""

from __future__ import annotations

from qiochan.channel import Feature
from qiochan.plugin import Backend, hookimpl

from .backend import connect_command, open_command
from .channel import DEFAULT_CLOSE_TIMEOUT, QIOChannelCommand

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "QIOChannelCommand",
    "connect_command",
    "open_command",
    "qiochan_backends",
]


@hookimpl
def qiochan_backends() -> list[Backend]:
    """Declare the command backend."""
    return [
        Backend(
            name="command",
            schemes=("exec",),
            kind="transport",
            features=frozenset({Feature.SHUTDOWN}),
            connect=connect_command,
            open=open_command,
            description="a child process's stdin/stdout (exec:, run with /bin/sh -c)",
        )
    ]
