"""The outgoing queue of a websocket channel: encoded frames out.

(Decoded payload waits in a :class:`qiochan.iov.ByteQueue`.)  :class:`Outbox`
carries encoded frames to the master channel in order, from any thread,
without ever interleaving two frames and without a reader blocking behind a
writer (a reader queueing a pong lets an active writer carry it).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from qiochan.channel import ERR_BLOCK, Feature, QIOChannel, Shutdown
from qiochan.errors import ChannelError

__all__ = ["Outbox"]

log = logging.getLogger("qiochan.websocket")

# at most this many queued chunks go into one vectored write to the master
_MAX_IOV = 64


class Outbox:
    """Encoded bytes waiting for the master channel, written in order from any thread.

    ``None`` in the queue stands for "half-close the master" (the protocol's
    ``SEND_EOF``).  One thread at a time writes; a writer inside
    :meth:`writing` drains everything queued before it leaves, so a reader
    that queues a control frame meanwhile leaves the writing to it
    (:meth:`flush_control`) instead of blocking behind a large frame.
    """

    def __init__(self, master: QIOChannel) -> None:
        self.master = master
        self._queue: deque[memoryview | None] = deque()
        self._queue_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._writers = 0
        self._size = 0

    @property
    def pending(self) -> bool:
        """True while some queued bytes (or a half-close) were not written yet."""
        return bool(self._queue)

    @property
    def pending_bytes(self) -> int:
        """How many queued bytes were not written yet."""
        return self._size

    def push(self, chunks: Iterable[bytes | memoryview]) -> None:
        """Queue ``chunks`` in order; an empty chunk means "half-close the master"."""
        with self._queue_lock:
            for chunk in chunks:
                if chunk:
                    self._queue.append(memoryview(chunk))
                    self._size += len(chunk)
                else:
                    self._queue.append(None)

    def own(self) -> None:
        """Replace queued views of buffers that are not ``bytes`` by copies.

        For a writer leaving frames queued (an exception, or a non-blocking
        write the master took only part of): they point into its caller's
        buffers, which may change once it returns.
        """
        with self._queue_lock:
            self._queue = deque(
                item if item is None or isinstance(item.obj, bytes) else memoryview(bytes(item))
                for item in self._queue
            )

    def clear(self) -> None:
        """Drop everything queued (the connection failed or is gone)."""
        with self._queue_lock:
            self._queue.clear()
            self._size = 0

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Mark a writer as active: control frames queued meanwhile are left to it."""
        with self._queue_lock:
            self._writers += 1
        try:
            yield
        finally:
            with self._queue_lock:
                self._writers -= 1
        if self._queue and not self._writers:
            # a reader queued a control frame while we were finishing
            self.flush(wait=False)

    def flush_control(self) -> bool:
        """Write queued control frames now unless a writer is active (it carries them).

        Returns:
            True when nothing is left for this thread to do.
        """
        if self._writers:
            return True
        return self.flush(wait=False)

    def flush(self, *, wait: bool) -> bool:
        """Write queued bytes to the master in order.

        Args:
            wait: wait for another thread's write to finish instead of leaving
                the queue to it.
        Returns:
            True when the queue is empty; False when the master would block or
            another thread is writing.
        Raises:
            ChannelError: the master failed; the queue is dropped.
        """
        while True:
            if not self._write_lock.acquire(blocking=wait):
                return False
            try:
                drained = self._drain()
            except ChannelError:
                self.clear()
                raise
            finally:
                self._write_lock.release()
            if not drained:
                return False
            if not self._queue:
                return True
            # something was queued between the drain and the release: go again

    def _drain(self) -> bool:
        master = self.master
        while True:
            with self._queue_lock:
                if not self._queue:
                    return True
                head = self._queue[0]
                if head is None:
                    self._queue.popleft()
                    batch: list[memoryview] = []
                else:
                    batch = []
                    for item in self._queue:
                        if item is None or len(batch) == _MAX_IOV:
                            break
                        batch.append(item)
            if not batch:
                self._half_close()
                continue
            n = master.writev_full(batch) if len(batch) > 1 else master.write(batch[0])
            if n == ERR_BLOCK:
                return False
            self._consume(n)

    def _consume(self, n: int) -> None:
        with self._queue_lock:
            self._size -= n
            queue = self._queue
            while n:
                head = queue[0]
                assert head is not None
                if n >= head.nbytes:
                    n -= head.nbytes
                    queue.popleft()
                else:
                    queue[0] = head[n:]
                    n = 0

    def _half_close(self) -> None:
        master = self.master
        if master.closed or not master.has_feature(Feature.SHUTDOWN):
            return
        try:
            master.shutdown(Shutdown.WRITE)
        except ChannelError as exc:
            log.debug("websocket: half-closing %r failed: %s", master, exc)
