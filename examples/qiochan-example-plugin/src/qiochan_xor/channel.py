"""QIOChannelXor: a layer that XORs the byte stream with a repeating key.

A layer subclasses :class:`qiochan.layer.QIOChannelLayer`: it wraps a
*master* channel and uses only the master's public methods, so it works over
every transport and under every other layer.  The base forwards what the
layer does not change (blocking mode, shutdown, cork/delay hints, watches,
closing the master); this layer has no handshake, so it only implements
``io_readv`` and ``io_writev``.  XOR maps each byte to one byte, so this layer never
buffers: a write sends exactly the bytes the master accepts and a read decodes
exactly the bytes the master returned.  The key position is kept per
direction, so partial writes and reads stay in step with the peer.
"""

from __future__ import annotations

from collections.abc import Sequence

from qiochan.channel import ERR_BLOCK, QIOChannel, ReadFlag, WriteFlag
from qiochan.layer import QIOChannelLayer

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


class QIOChannelXor(QIOChannelLayer):
    """XOR every byte with a repeating ``key``, over ``master``.

    Declares ``SHUTDOWN`` when the master has it; closing closes the master.

    Args:
        master: the channel to wrap (this layer owns it from now on).
        key: 1 or more key bytes; the peer must use the same key.
    """

    def __init__(self, master: QIOChannel, key: bytes) -> None:
        if not key:
            raise ValueError("the xor key must not be empty")
        super().__init__(master)
        self._encoder = _KeyStream(key)
        self._decoder = _KeyStream(key)

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
