"""qiochan.iov: views cut from the front (advance) and from the back (clip), never copied."""

from __future__ import annotations

import pytest

from qiochan.iov import advance, clip


def _iov() -> list[memoryview]:
    return [memoryview(bytearray(b"abc")), memoryview(bytearray(b"")), memoryview(bytearray(b"de"))]


@pytest.mark.parametrize(
    ("size", "expected"),
    [(0, []), (2, [b"ab"]), (3, [b"abc"]), (4, [b"abc", b"", b"d"]), (9, [b"abc", b"", b"de"])],
)
def test_clip_keeps_the_first_bytes(size: int, expected: list[bytes]) -> None:
    iov = _iov()
    clipped = clip(iov, size)
    assert [bytes(view) for view in clipped] == expected
    assert [bytes(view) for view in iov] == [b"abc", b"", b"de"]  # the list is left alone
    if clipped:
        clipped[0][:1] = b"X"  # views of the same memory, not copies
        assert bytes(iov[0][:1]) == b"X"


@pytest.mark.parametrize(
    ("done", "expected"),
    [(0, [b"abc", b"", b"de"]), (1, [b"bc", b"", b"de"]), (3, [b"de"]), (5, [])],
)
def test_advance_drops_the_first_bytes(done: int, expected: list[bytes]) -> None:
    assert [bytes(view) for view in advance(_iov(), done)] == expected
