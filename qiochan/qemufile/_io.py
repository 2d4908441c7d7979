"""Channel access for :class:`~qiochan.qemufile.QEMUFile`'s flushes and refills.

QEMUFile always hands the channel what the public methods would have made
of it: a list of one-dimensional, C-contiguous unsigned-byte memoryviews, no
fds, no flags.  So the first attempt of a flush or a refill calls the
backend's ``io_writev``/``io_readv`` directly, skipping the argument
conversion and checks of ``writev_full``/``readv_full`` (several microseconds
per call: as much as sending 32 KiB over a unix socket).  Anything short of
complete success — a partial write, a would-block, a closed channel — goes
through the public ``writev_all`` and ``wait``, so the semantics are exactly
those of ``qio_channel_writev_all``/``qio_channel_read``.
"""

from __future__ import annotations

from ..channel import ERR_BLOCK, QIOChannel, ReadFlag, WriteFlag
from ..errors import ChannelError, from_oserror
from ..iov import advance
from ..watch import Condition

__all__ = ["read_once", "write_all"]

_NO_READ_FLAGS = ReadFlag(0)
_NO_WRITE_FLAGS = WriteFlag(0)


def write_all(
    ioc: QIOChannel, iov: list[memoryview], total: int, written: int | None = None
) -> None:
    """Write the ``total`` bytes of the byte views ``iov`` (one vectored write when possible).

    ``written`` says a direct write (the C core's, on the channel's
    :meth:`~QIOChannel.io_write_fd`) already sent that many bytes of ``iov``:
    only the rest goes out, through ``writev_all``.

    Raises:
        ChannelError: the write failed or the channel is closed.
    """
    if written is None:
        if ioc.closed:
            ioc.writev_all(iov)  # raises the channel's "closed" error
            return
        try:
            written = ioc.io_writev(iov, (), _NO_WRITE_FLAGS)
        except ChannelError:
            raise
        except OSError as exc:
            raise from_oserror("Unable to write to channel", exc) from exc
    if written != total:
        ioc.writev_all(advance(iov, written) if written > 0 else iov)


def read_once(ioc: QIOChannel, target: memoryview) -> int:
    """Read once into the byte view ``target``, waiting with ``wait(IN)`` while it would block.

    Returns:
        Bytes read; 0 at end of file.
    Raises:
        ChannelError: the read failed or the channel is closed.
    """
    if ioc.closed:
        return ioc.read(target)  # raises the channel's "closed" error
    iov = [target]
    try:
        n = ioc.io_readv(iov, False, _NO_READ_FLAGS)[0]
        while n == ERR_BLOCK:
            ioc.wait(Condition.IN)
            n = ioc.io_readv(iov, False, _NO_READ_FLAGS)[0]
    except ChannelError:
        raise
    except OSError as exc:
        raise from_oserror("Unable to read from channel", exc) from exc
    return n
