"""I/O vectors and the byte queue, written once for the core and every layer.

An iov here is a list of one-dimensional, byte-format :class:`memoryview`
objects, as :class:`~qiochan.QIOChannel` hands them to ``io_readv`` and
``io_writev``.  Nothing in this module copies a caller's buffer except
:meth:`ByteQueue.copy_into`, whose job is the one copy into a reader's buffer.
"""

from __future__ import annotations

from collections import deque

__all__ = ["ByteQueue", "advance", "clip", "iov_size"]


def iov_size(iov: list[memoryview]) -> int:
    """Return the number of bytes the views of ``iov`` hold together."""
    return sum(map(len, iov))  # byte-format views: len == nbytes


def advance(views: list[memoryview], done: int) -> list[memoryview]:
    """Return ``views`` without their first ``done`` bytes (no copying).

    A partly consumed view is replaced by the slice that is left; ``views``
    itself is not modified.
    """
    index = 0
    while index < len(views) and done >= views[index].nbytes:
        done -= views[index].nbytes
        index += 1
    rest = views[index:]
    if done and rest:
        rest[0] = rest[0][done:]
    return rest


def clip(views: list[memoryview], size: int) -> list[memoryview]:
    """Return the first ``size`` bytes of ``views`` as views (no copying).

    ``views`` itself is not modified; when it holds fewer bytes, all of them
    are returned.
    """
    clipped: list[memoryview] = []
    for view in views:
        if size <= 0:
            break
        clipped.append(view if view.nbytes <= size else view[:size])
        size -= view.nbytes
    return clipped


class ByteQueue:
    """A FIFO of byte chunks read out in order into caller buffers.

    Chunks are kept by reference (the producer must not modify them after
    :meth:`append`), so bytes are copied once: into the reader's buffer.  One
    thread appends and consumes at a time; ``len()`` may be read from any
    thread (watch sources use it).
    """

    __slots__ = ("_chunks", "_size")

    def __init__(self) -> None:
        self._chunks: deque[memoryview] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` (an empty chunk is ignored)."""
        view = memoryview(data)
        if view.nbytes:
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
            self._chunks.append(view)
            self._size += view.nbytes

    def copy_into(self, iov: list[memoryview]) -> int:
        """Move queued bytes into the buffers of ``iov`` in order.

        Returns:
            The number of bytes moved (0 when the queue is empty).
        """
        done = 0
        chunks = self._chunks
        for target in iov:
            filled = 0
            room = target.nbytes
            while filled < room and chunks:
                head = chunks[0]
                take = min(room - filled, head.nbytes)
                target[filled : filled + take] = head[:take]
                filled += take
                if take == head.nbytes:
                    chunks.popleft()
                else:
                    chunks[0] = head[take:]
            done += filled
            if not chunks:
                break
        self._size -= done
        return done

    def clear(self) -> None:
        """Drop everything queued."""
        self._chunks.clear()
        self._size = 0
