"""Error latching with a channel failing at every position of a stream.

A fixed stream of mixed operations (several flushes, zero-copy buffers, a
page, a compressed block) is written to and read from a channel that fails
after N bytes, for every N.  Whatever N, no exception escapes, exactly the
first N bytes reach the channel, the first error is latched as ``-EIO`` with
the channel's exception, and the channel is not touched again after it.
"""

from __future__ import annotations

import errno

import pytest

from qiochan import ChannelError, QEMUFile
from tests.helpers.qemufile import RAM, Op, ScriptedChannel, expected, read_ops, write_ops

pytestmark = pytest.mark.usefixtures("qemufile_core")

OPS: list[Op] = [
    ("be64", 0x0102030405060708, ""),
    ("byte", 7, ""),
    ("buffer", RAM[:700], "get_buffer"),
    ("flush", None, ""),
    ("async", RAM[700:1000], "in_place"),
    ("be32", 0xCAFEF00D, ""),
    ("counted", "hello", ""),
    ("flush", None, ""),
    ("pages", 1, "get_bytes"),
    ("compress", RAM[:2000], ""),
    ("be16", 0xABCD, ""),
    ("flush", None, ""),
    ("async", b"tail", "get_buffer"),
    ("buffer", RAM[:300], "get_bytes"),
    ("be64", 2**64 - 1, ""),
]


def _reference() -> tuple[bytes, list[int]]:
    """Return the stream and the end offset of each value-producing op."""
    channel = ScriptedChannel()
    f = QEMUFile.new_output(channel)
    ends = []
    for op in OPS:
        write_ops(f, [op])
        if op[0] != "flush":
            ends.append(f.transferred_noflush())
    assert f.fclose() == 0
    return bytes(channel.written), ends


STREAM, ENDS = _reference()
EXPECTED = expected(OPS)


def test_the_stream_is_written_in_several_flushes() -> None:
    channel = ScriptedChannel()
    f = QEMUFile.new_output(channel)
    write_ops(f, OPS)
    f.fclose()
    assert len(channel.writes) == 4
    assert len(STREAM) > 5000


def test_writer_failing_at_every_position() -> None:
    for limit in range(len(STREAM) + 1):
        channel = ScriptedChannel(fail_after=limit)
        f = QEMUFile.new_output(channel)
        write_ops(f, OPS)
        f.fflush()
        error, exc = f.get_error_obj()
        ret = f.fclose()
        assert channel.written == STREAM[:limit], limit
        assert channel.closed
        if limit < len(STREAM):
            assert ret == error == -errno.EIO, limit
            assert isinstance(exc, ChannelError) and exc.errno == errno.EPIPE
            assert channel.failures == 1, limit  # no write after the failed one
        else:
            assert ret == error == 0
            assert channel.failures == 0


@pytest.mark.parametrize("eof", [False, True], ids=["reset", "eof"])
@pytest.mark.parametrize("chunk", [997, 1 << 20])
def test_reader_failing_at_every_position(eof: bool, chunk: int) -> None:
    for limit in range(len(STREAM) + 1):
        channel = ScriptedChannel(STREAM, fail_after=limit, eof=eof, chunk=chunk)
        f = QEMUFile.new_input(channel)
        values = read_ops(f, OPS)
        error, exc = f.get_error_obj()
        for value, want, end in zip(values, EXPECTED, ENDS, strict=True):
            if end <= limit:
                assert value == want, (limit, end)
        assert channel.late_reads == 0, limit  # nothing read after the failure
        if limit < len(STREAM):
            assert error == -errno.EIO, limit
            assert isinstance(exc, ChannelError)
            if not eof:
                assert exc.errno == errno.ECONNRESET
        else:
            assert error == 0
            assert values == EXPECTED
        f.fclose()
