"""Return paths (what a destination sends back) are recognised and listed."""

from __future__ import annotations

from qiochan.migration import RpMessage
from tests.helpers.migration import inspect_bytes


def message(kind: RpMessage, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


STREAM = (
    message(RpMessage.PONG, (1).to_bytes(4, "big"))
    + message(RpMessage.REQ_PAGES_ID, (0x2000).to_bytes(8, "big") + bytes(4) + b"\x06pc.ram")
    + message(RpMessage.REQ_PAGES, (0x3000).to_bytes(8, "big") + (4096).to_bytes(4, "big"))
    + message(RpMessage.SHUT, bytes(4))
)


def test_messages_are_listed() -> None:
    report = inspect_bytes(STREAM)
    assert (report.kind, report.complete, report.error) == ("return-path", True, None)
    assert [(m.name, m.len, m.value, m.start) for m in report.return_path] == [
        ("PONG", 4, 1, None),
        ("REQ_PAGES_ID", 19, None, None),
        ("REQ_PAGES", 12, 4096, 0x3000),
        ("SHUT", 4, 0, None),
    ]
    assert report.end_reason == "end of stream after SHUT"
    assert report.to_json()["return_path"][2] == {
        "type": 4,
        "name": "REQ_PAGES",
        "len": 12,
        "offset": 31,
        "value": 4096,
        "start": 0x3000,
    }


def test_cuts_and_bad_messages() -> None:
    cut = inspect_bytes(STREAM[:6])
    assert not cut.complete
    assert cut.error == "offset 6: the stream ends inside the value of PONG"
    bad = inspect_bytes(message(RpMessage.PONG, bytes(4)) + b"\x00\x09\x00\x00")
    assert bad.error == "offset 8: expected a return-path message type of 1..6, found 9"
