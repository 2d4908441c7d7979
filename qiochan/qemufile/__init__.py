"""QEMUFile: QEMU's buffered, big-endian migration stream over any channel.

The package keeps QEMU's ``migration/qemu-file.c`` apart from the channel
layer, as QEMU does: :class:`QEMUFile` (``_file``) is assembled from the output,
input and control mixins, which run on one core holding the buffer, the
per-value and per-page fast paths and the iovec queue (``_core``: the
pure-Python reference, or its C twin ``_speedups`` when it was built).
"""

from __future__ import annotations

from ._base import IO_BUF_SIZE, MAX_IOV_SIZE
from ._control import (
    RAM_CONTROL_BLOCK_REG,
    RAM_CONTROL_FINISH,
    RAM_CONTROL_HOOK,
    RAM_CONTROL_ROUND,
    RAM_CONTROL_SETUP,
    RAM_SAVE_CONTROL_DELAYED,
    RAM_SAVE_CONTROL_NOT_SUPP,
)
from ._core import ACCELERATED
from ._file import QEMUFile
from ._output import compress_bound

__all__ = [
    "ACCELERATED",
    "IO_BUF_SIZE",
    "MAX_IOV_SIZE",
    "RAM_CONTROL_BLOCK_REG",
    "RAM_CONTROL_FINISH",
    "RAM_CONTROL_HOOK",
    "RAM_CONTROL_ROUND",
    "RAM_CONTROL_SETUP",
    "RAM_SAVE_CONTROL_DELAYED",
    "RAM_SAVE_CONTROL_NOT_SUPP",
    "QEMUFile",
    "compress_bound",
]
