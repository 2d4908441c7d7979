"""QEMUFile round trips over real transports: memory buffer, memory pipe, unix socketpair, ``cat``.

Every put/get pair is checked over every transport, then random mixed
sequences generated with hypothesis must read back identically.  A writer
that disconnects mid-stream must leave the reader with ``-EIO``, never a hang.
"""

from __future__ import annotations

import errno
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qiochan import QEMUFile
from qiochan.qemufile import IO_BUF_SIZE
from tests.helpers.qemufile import (
    RAM,
    TRANSPORTS,
    Op,
    Outcome,
    expected,
    read_ops,
    write_ops,
)

pytestmark = pytest.mark.usefixtures("no_fd_leak", "qemufile_core")

VARIANTS = ("get_buffer", "get_bytes", "in_place")

EVERY_PAIR: list[Op] = [
    ("byte", 0, ""),
    ("byte", 255, ""),
    ("be16", 0xBEEF, ""),
    ("be32", 0xDEADBEEF, ""),
    ("be64", 2**64 - 1, ""),
    ("be64", 0x0102030405060708, ""),
    ("buffer", b"", "get_buffer"),
    ("buffer", b"copy", "get_buffer"),
    ("buffer", RAM[:50000], "get_bytes"),
    ("buffer", RAM[5:4101], "in_place"),
    ("async", b"zero-copy", "get_bytes"),
    ("async", bytearray(RAM[: IO_BUF_SIZE + 10]), "in_place"),
    ("pages", 40, "get_buffer"),
    ("counted", "héllo", ""),
    ("counted", b"", ""),
    ("counted", "x" * 255, ""),
    ("compress", RAM[:4096], ""),
    ("flush", None, ""),
    ("compress", b"", ""),
    ("be32", 0, ""),
]


def _roundtrip(transport: str, ops: list[Op]) -> Outcome:
    def read(f: QEMUFile) -> tuple[list[object], int]:
        values = read_ops(f, ops)
        before_eof = f.get_error()
        f.get_byte()  # the writer is gone: end of stream
        return values, before_eof

    return TRANSPORTS[transport](partial(write_ops, ops=ops), read)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_put_get_pair(transport: str) -> None:
    outcome = _roundtrip(transport, EVERY_PAIR)
    values, before_eof = outcome.values
    assert values == expected(EVERY_PAIR)
    assert before_eof == 0
    assert outcome.writer_error == 0
    assert outcome.reader_error == -errno.EIO


def _pattern(size: int, seed: int) -> bytes:
    return bytes((seed + n * 7) % 256 for n in range(min(size, 512))) * (size // 512 + 1)


_blobs = st.builds(_pattern, st.integers(0, 3 * IO_BUF_SIZE // 2), st.integers(0, 255))
_small = st.builds(_pattern, st.integers(0, 300), st.integers(0, 255))


_ops = st.one_of(
    st.tuples(st.just("byte"), st.integers(0, 255), st.just("")),
    st.tuples(st.just("be16"), st.integers(0, 2**16 - 1), st.just("")),
    st.tuples(st.just("be32"), st.integers(0, 2**32 - 1), st.just("")),
    st.tuples(st.just("be64"), st.integers(0, 2**64 - 1), st.just("")),
    st.tuples(st.just("buffer"), _blobs, st.sampled_from(VARIANTS)),
    st.tuples(st.just("async"), _small | _blobs, st.sampled_from(VARIANTS)),
    st.tuples(st.just("pages"), st.integers(1, 40), st.sampled_from(VARIANTS)),
    st.tuples(st.just("counted"), st.binary(max_size=255), st.just("")),
    st.tuples(st.just("counted"), st.text(max_size=60), st.just("")),
    st.tuples(st.just("compress"), _small, st.just("")),
    st.tuples(st.just("flush"), st.none(), st.just("")),
)

_sequences = st.lists(_ops, max_size=40)


def _check_sequence(transport: str, ops: list[Op]) -> None:
    outcome = _roundtrip(transport, ops)
    values, before_eof = outcome.values
    assert values == expected(ops)
    assert before_eof == 0
    assert outcome.writer_error == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_random_sequences_read_back_identically(transport: str) -> None:
    examples = {"buffer": 100, "memory-pipe": 60}.get(transport, 30)

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(ops=_sequences)
    def check(ops: list[Op]) -> None:
        _check_sequence(transport, ops)

    check()


@pytest.mark.parametrize("transport", [t for t in TRANSPORTS if t != "buffer"])
def test_peer_disconnecting_mid_stream_leaves_eio(transport: str) -> None:
    ops = EVERY_PAIR
    half = len(ops) // 2

    def read(f: QEMUFile) -> list[object]:
        return read_ops(f, ops)

    outcome = TRANSPORTS[transport](partial(write_ops, ops=ops[:half]), read)
    values = outcome.values
    assert values[: len(expected(ops[:half]))] == expected(ops[:half])
    assert outcome.reader_error == -errno.EIO
    assert outcome.writer_error == 0
