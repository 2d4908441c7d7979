"""QIOChannelXor: a layer that XORs the byte stream with a repeating key.

A layer is a :class:`~qiochan.QIOChannel` wrapping a *master* channel and
using only the master's public methods, so it works over every transport and
under every other layer.  XOR maps each byte to one byte, so this layer never
buffers: a write sends exactly the bytes the master accepts and a read decodes
exactly the bytes the master returned.  The key position is kept per
direction, so partial writes and reads stay in step with the peer.
"""

from __future__ import annotations

from collections.abc import Sequence

from qiochan.channel import ERR_BLOCK, Feature, QIOChannel, ReadFlag, Shutdown, WriteFlag
from qiochan.watch import ChildWatchSource, Condition, WatchSource

__all__ = ["QIOChannelXor"]

#: Largest chunk encoded per write: bounds the temporary buffer.
MAX_CHUNK = 256 * 1024


class _KeyStream:
    """The repeating key as a stream: XOR a buffer in place from the current position."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.position = 0

    def apply(self, view: memoryview, advance: bool = True) -> None:
        """XOR ``view`` (writable bytes) in place with the key from the current position."""
        size = len(view)
        if not size:
            return
        start = self.position % len(self._key)
        repeats = (start + size) // len(self._key) + 1
        stream = (self._key * repeats)[start : start + size]
        mixed = int.from_bytes(view, "little") ^ int.from_bytes(stream, "little")
        view[:] = mixed.to_bytes(size, "little")
        if advance:
            self.position += size


class QIOChannelXor(QIOChannel):
    """XOR every byte with a repeating ``key``, over ``master``.

    Declares ``SHUTDOWN`` when the master has it; closing closes the master.

    Args:
        master: the channel to wrap (this layer owns it from now on).
        key: 1 or more key bytes; the peer must use the same key.
    """

    def __init__(self, master: QIOChannel, key: bytes) -> None:
        super().__init__()
        if not key:
            raise ValueError("the xor key must not be empty")
        self.master = master
        self._encoder = _KeyStream(key)
        self._decoder = _KeyStream(key)
        if master.has_feature(Feature.SHUTDOWN):
            self.set_feature(Feature.SHUTDOWN)

    def io_readv(
        self, iov: list[memoryview], want_fds: bool, flags: ReadFlag
    ) -> tuple[int, list[int]]:
        n, _fds = self.master.readv_full(iov, flags=flags & ReadFlag.RELAXED_EOF)
        if n > 0:
            left = n
            for view in iov:
                chunk = min(left, len(view))
                self._decoder.apply(view[:chunk])
                left -= chunk
                if not left:
                    break
        return n, []

    def io_writev(self, iov: list[memoryview], fds: Sequence[int], flags: WriteFlag) -> int:
        encoded = bytearray()
        for view in iov:
            encoded += view[: MAX_CHUNK - len(encoded)]
            if len(encoded) >= MAX_CHUNK:
                break
        # encode without moving the key: only what the master takes is consumed
        self._encoder.apply(memoryview(encoded), advance=False)
        n = self.master.write(encoded)
        if n != ERR_BLOCK:
            self._encoder.position += n
        return n

    def io_close(self) -> None:
        self.master.close()

    def io_create_watch(self, condition: Condition) -> WatchSource:
        # nothing is ever held back here: readiness is the master's
        return ChildWatchSource(self.master, condition)

    def io_set_blocking(self, enabled: bool) -> None:
        self.master.set_blocking(enabled)

    def io_shutdown(self, how: Shutdown) -> None:
        self.master.shutdown(how)

    def io_set_delay(self, enabled: bool) -> None:
        self.master.set_delay(enabled)

    def io_set_cork(self, enabled: bool) -> None:
        self.master.set_cork(enabled)
