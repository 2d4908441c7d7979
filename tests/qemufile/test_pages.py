"""Memory helpers of QEMUFile's zero-copy writes: addresses, adjacency, page release."""

from __future__ import annotations

import array
import mmap

import pytest

from qiochan.qemufile._pages import buffer_address, byte_view, merge_adjacent, release_pages
from tests.helpers.qemufile import private_anonymous_mmap

pytestmark = pytest.mark.usefixtures("qemufile_core")

PAGE = mmap.PAGESIZE


def test_buffer_address_follows_slices() -> None:
    data = bytearray(100)
    view = memoryview(data)
    assert buffer_address(view[10:]) - buffer_address(data) == 10
    text = b"abc"
    assert buffer_address(memoryview(text)[1:]) - buffer_address(text) == 1
    with pytest.raises(TypeError):
        buffer_address("text")


def test_byte_view() -> None:
    view = memoryview(b"ab")
    assert byte_view(view, "x") is view
    words = byte_view(array.array("I", [1, 2]), "x")
    assert words.format == "B" and words.nbytes == 8
    with pytest.raises(TypeError, match="bytes-like"):
        byte_view(3, "put_thing")
    with pytest.raises(TypeError, match="contiguous"):
        byte_view(memoryview(b"abcd")[::2], "put_thing")


def test_merge_adjacent() -> None:
    data = bytes(range(100))
    view = memoryview(data)
    merged = merge_adjacent(view[10:20], view[20:35])
    assert merged is not None and bytes(merged) == data[10:35]
    assert merge_adjacent(view[10:20], view[21:30]) is None
    assert merge_adjacent(view[20:30], view[10:20]) is None


def test_release_pages_only_touches_whole_pages_of_mappings() -> None:
    mapping = private_anonymous_mmap(3 * PAGE)
    other = bytearray(b"\x01" * PAGE)
    try:
        mapping[:] = b"\x07" * (3 * PAGE)
        view = memoryview(mapping)
        release_pages([view[1 : PAGE + 1], view[PAGE + 1 : 3 * PAGE - 1], memoryview(other)])
        view.release()
        assert mapping[:PAGE] == b"\x07" * PAGE  # page 0 is only partly covered
        assert mapping[PAGE : 2 * PAGE] == bytes(PAGE)  # covered by the two merged regions
        assert mapping[2 * PAGE :] == b"\x07" * PAGE
        assert other == b"\x01" * PAGE
    finally:
        mapping.close()
