"""Memory helpers for :class:`~qiochan.qemufile.QEMUFile`'s zero-copy writes.

``put_buffer_async`` queues the caller's memory itself.  Two things need the
address of that memory, which Python does not expose: coalescing a buffer with
the one queued just before it when they are adjacent (QEMU's ``add_to_iovec``),
and releasing the pages of ``may_free`` buffers after the flush (QEMU's
``qemu_iovec_release_ram`` with ``madvise(MADV_DONTNEED)``).  Addresses come
from the buffer protocol itself (``PyObject_GetBuffer`` through ``ctypes``),
so no memory is ever copied or reinterpreted.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
from collections.abc import Iterable

__all__ = ["buffer_address", "byte_view", "merge_adjacent", "release_pages"]

log = logging.getLogger("qiochan.qemufile")

_PAGE_SIZE = mmap.PAGESIZE


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (stable layout since Python 3.3)."""

    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)
_release_buffer.restype = None
_PYBUF_SIMPLE = 0


def buffer_address(obj: object) -> int:
    """Return the address of the first byte of ``obj``'s buffer.

    Raises:
        TypeError: ``obj`` does not support the buffer protocol.
        BufferError: its buffer is not contiguous.
    """
    view = _PyBuffer()
    ref = ctypes.byref(view)
    _get_buffer(obj, ref, _PYBUF_SIMPLE)
    try:
        return view.buf or 0
    finally:
        _release_buffer(ref)


def byte_view(buf: object, what: str) -> memoryview:
    """Return a one-dimensional unsigned-byte view of ``buf`` without copying.

    Raises:
        TypeError: ``buf`` is not a bytes-like object, or not C-contiguous.
    """
    if type(buf) is memoryview and buf.format == "B" and buf.ndim == 1 and buf.c_contiguous:
        return buf
    try:
        view = memoryview(buf)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} needs a bytes-like object, not {type(buf).__name__}") from None
    if not view.c_contiguous:
        raise TypeError(f"{what} needs a C-contiguous buffer")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def merge_adjacent(prev: memoryview, view: memoryview) -> memoryview | None:
    """Return one view covering ``prev`` then ``view`` if they are adjacent in memory, else None.

    Both must be byte views of the same exporting object (``prev.obj is view.obj``).
    """
    start = buffer_address(prev)
    if start + prev.nbytes != buffer_address(view):
        return None
    try:
        whole = byte_view(prev.obj, "merge")
    except (TypeError, BufferError):
        return None
    offset = start - buffer_address(whole)
    end = offset + prev.nbytes + view.nbytes
    if offset < 0 or end > whole.nbytes:
        return None
    return whole[offset:end]


def _page_ranges(regions: Iterable[memoryview]) -> Iterable[tuple[mmap.mmap, int, int]]:
    """Yield ``(mapping, start, length)`` for the whole pages inside mmap-backed regions.

    Adjacent regions are merged first, as QEMU does, so pages straddling two
    queued buffers are released too.
    """
    current: tuple[mmap.mmap, int, int] | None = None
    for region in regions:
        mapping = region.obj
        if not isinstance(mapping, mmap.mmap):
            continue
        start = buffer_address(region) - buffer_address(mapping)
        end = start + region.nbytes
        if current is not None and current[0] is mapping and current[2] == start:
            current = (mapping, current[1], end)
            continue
        if current is not None:
            yield current
        current = (mapping, start, end)
    if current is not None:
        yield current


def release_pages(regions: Iterable[memoryview]) -> None:
    """Release with ``madvise(MADV_DONTNEED)`` the whole pages of mmap-backed ``regions``.

    Only pages lying entirely inside a region are released, so bytes around
    it stay intact; regions that are not backed by an ``mmap.mmap`` are left
    alone.  Failures are logged (as QEMU reports them) and never raised: the
    data was already sent.
    """
    for mapping, start, end in _page_ranges(regions):
        first = -(-start // _PAGE_SIZE) * _PAGE_SIZE
        last = end // _PAGE_SIZE * _PAGE_SIZE
        if last <= first:
            continue
        try:
            mapping.madvise(mmap.MADV_DONTNEED, first, last - first)
        except (OSError, ValueError) as exc:
            log.warning(
                "migrate: madvise DONTNEED failed at offset %d, %d bytes: %s",
                first,
                last - first,
                exc,
            )
