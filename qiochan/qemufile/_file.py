"""QEMUFile: QEMU's buffered, big-endian migration stream over any :class:`QIOChannel`.

Semantics follow ``migration/qemu-file.c``: a 32 KiB internal buffer, up to
64 iovecs sent with one vectored write per flush, zero-copy
``put_buffer_async``, and an error latch instead of exceptions mid-stream::

    with QEMUFile.new_output(channel) as f:     # fclose on exit
        f.put_be64(address | flags)
        f.put_buffer_async(page)
    # a latched error is raised here as ChannelError

    f = QEMUFile.new_input(channel)
    header = f.get_be64()
    page = f.get_buffer_in_place(4096)          # a view into the internal buffer
    if f.get_error():
        ...                                     # -EIO: end of stream or a failed read

The first error wins and is kept with its exception (:meth:`get_error_obj`);
every later operation becomes a no-op (reads return zeros).  Misuse is raised
at once: a value out of range for its width, a counted string of 256 bytes or
more and a peek beyond the buffer raise ``ValueError``; any use of a closed
QEMUFile raises :class:`~qiochan.errors.ChannelError` (``EBADF``).
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any, Self, cast

from ..channel import Feature, QIOChannel, Shutdown
from ..errors import ChannelError
from ._control import ControlMixin
from ._core import QEMUFileCore
from ._input import InputMixin
from ._output import OutputMixin

__all__ = ["QEMUFile", "qemufile_on"]

log = logging.getLogger("qiochan.qemufile")


if TYPE_CHECKING:
    _Core = QEMUFileCore
else:  # the C core when it was built, else the Python one
    from ._core import Core as _Core


class QEMUFile(OutputMixin, InputMixin, ControlMixin, _Core):
    """A buffered migration stream reading or writing a :class:`QIOChannel`.

    Make one with :meth:`new_output`, :meth:`new_input`, :meth:`open_buffer`
    or :meth:`get_return_path`.  The file owns its channel from then on:
    :meth:`fclose` closes it.

    Args:
        ioc: the channel.
        writable: True for an output stream, False for an input stream.
    Raises:
        TypeError: ``ioc`` is not a QIOChannel.
    """

    @classmethod
    def new_output(cls, ioc: QIOChannel) -> Self:
        """Return an output stream writing to ``ioc``."""
        return cls(ioc, True)

    @classmethod
    def new_input(cls, ioc: QIOChannel) -> Self:
        """Return an input stream reading from ``ioc``."""
        return cls(ioc, False)

    def get_return_path(self) -> Self:
        """Return a stream in the opposite direction over the same channel.

        Raises:
            ChannelError: the file is closed.
        """
        self._check_open()
        return type(self)(self._ioc, not self._writable)

    @classmethod
    def open_buffer(cls, mode: str, data: Any = None) -> Self:
        """Open a stream over a new in-memory buffer channel (QEMU's ``qemu_bufopen``).

        The buffer channel is found through the registry (``buffer:``, the
        memory plugin's ``QIOChannelBuffer``); it grows as needed.

        Args:
            mode: ``"r"`` to read ``data``, ``"w"`` to write into an empty buffer.
            data: the bytes-like input for ``"r"`` (None: empty).
        Raises:
            ValueError: a bad mode, or ``data`` with ``"w"``.
            PluginError: no buffer backend is available.
        """
        if mode not in ("r", "w"):
            raise ValueError(f"open_buffer: mode must be 'r' or 'w', not {mode!r}")
        if mode == "w" and data is not None:
            raise ValueError("open_buffer: data is only accepted with mode 'r'")
        from ..transport import open_channel

        ioc = open_channel("buffer:", "rw")
        if mode == "w":
            return cls.new_output(ioc)
        try:
            if data is not None:
                ioc.write_all(data)
                ioc.seek(0)
        except BaseException:
            ioc.close()
            raise
        return cls.new_input(ioc)

    def buffer_contents(self) -> bytes:
        """Flush, then return everything in the underlying buffer channel.

        Raises:
            ChannelError: the file is closed, or its channel is not a buffer
                (``ENOTSUP``).
        """
        self._check_open()
        getvalue = getattr(self._ioc, "getvalue", None)
        if getvalue is None:
            raise ChannelError(
                f"buffer_contents: {type(self._ioc).__name__} is not a buffer channel",
                errno.ENOTSUP,
            )
        self.fflush()
        return bytes(getvalue())

    def transferred(self) -> int:
        """Flush, then return the bytes written to (output) or read from (input) the channel.

        Raises:
            ChannelError: the file is closed.
        """
        self.fflush()
        return self._total

    def shutdown(self) -> int:
        """Stop the stream in both directions, from any thread.

        ``-EIO`` is latched first (unless an error already is), so a reader
        woken by the shutdown cannot mistake the end for valid data.

        Returns:
            0; ``-ENOSYS`` when the channel lacks ``SHUTDOWN``; ``-EIO`` when
            the channel's shutdown failed.
        Raises:
            ChannelError: the file is closed.
        """
        self._check_open()
        if not self._error:
            self._latch(-errno.EIO, None)
        if not self._ioc.has_feature(Feature.SHUTDOWN):
            return -errno.ENOSYS
        try:
            self._ioc.shutdown(Shutdown.BOTH)
        except ChannelError as exc:
            log.debug("QEMUFile shutdown failed: %s", exc)
            return -errno.EIO
        return 0

    def fclose(self) -> int:
        """Flush, close the channel and release the file.

        Returns:
            The latched error if there is one, else the channel close's error
            (``-errno``), else 0.
        Raises:
            ChannelError: the file is already closed.
        """
        self._check_open()
        self.fflush()
        ret = self._error
        try:
            self._ioc.close()
        except ChannelError as exc:
            self._close_error = exc
            if ret >= 0:
                ret = -(exc.errno or errno.EIO)
        if self._error:
            ret = self._error
        if self._writable:
            self._discard_output()
        self._closed = True
        self._fast_end = 0
        self._reading = False
        self._index = self._size = 0
        log.debug("qemu_file_fclose %r -> %d", self, ret)
        return ret

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        """Close the file; raise the latched (or close) error unless the block raised."""
        if self._closed:
            return
        ret = self.fclose()
        if ret < 0 and exc_type is None:
            raise self._failure(ret)


def qemufile_on(core: type[QEMUFileCore]) -> type[QEMUFile]:
    """Return a QEMUFile class built on ``core`` instead of the default one.

    ``qemufile_on(QEMUFileCore)`` is QEMUFile on the pure-Python core even when
    the C core is built: the tests run both side by side.  The class has
    QEMUFile's methods but is not a subclass of :class:`QEMUFile`.
    """
    if core is _Core:
        return QEMUFile
    bases = (*(base for base in QEMUFile.__bases__ if base is not _Core), core)
    namespace = {k: v for k, v in vars(QEMUFile).items() if k not in ("__dict__", "__weakref__")}
    return cast("type[QEMUFile]", type("QEMUFile", bases, namespace))
