"""GnuTLS priority strings mapped onto ssl settings."""

from __future__ import annotations

import ssl

import pytest

from qiochan.errors import TLSError
from qiochan_tls.priority import Priority, parse_priority

V12, V13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize("text", [None, "", "NORMAL", "@SYSTEM", "PERFORMANCE", "NORMAL:%COMPAT"])
def test_defaults(text: str | None) -> None:
    priority = parse_priority(text)
    assert (priority.minimum_version, priority.maximum_version) == (V12, V13)
    assert priority.ciphers is None


@pytest.mark.parametrize(
    ("text", "versions"),
    [
        ("NORMAL:-VERS-TLS1.3", (V12, V12)),
        ("NORMAL:-VERS-TLS1.2", (V13, V13)),
        ("NORMAL:-VERS-ALL:+VERS-TLS1.3", (V13, V13)),
        ("NORMAL:-VERS-TLS-ALL:+VERS-TLS1.2", (V12, V12)),
        ("NORMAL:+VERS-TLS1.0", (V12, V13)),  # legacy versions stay off
        ("NONE:+VERS-TLS1.3", (V13, V13)),
    ],
)
def test_versions(text: str, versions: tuple[ssl.TLSVersion, ssl.TLSVersion]) -> None:
    priority = parse_priority(text)
    assert (priority.minimum_version, priority.maximum_version) == versions


def test_ciphers() -> None:
    assert parse_priority("SECURE256").ciphers == (
        "ECDHE+AES256+AESGCM:DHE+AES256+AESGCM:ECDHE+CHACHA20:DHE+CHACHA20"
    )
    only = parse_priority("NORMAL:-CIPHER-ALL:+CHACHA20-POLY1305").ciphers
    assert only == "ECDHE+CHACHA20:DHE+CHACHA20"
    without = parse_priority("NORMAL:-AES-128-GCM").ciphers
    assert without is not None and "AES128" not in without


def test_flags() -> None:
    priority = parse_priority("NORMAL:%SERVER_PRECEDENCE:%NO_TICKETS")
    assert priority.server_precedence and priority.no_tickets
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    priority.apply(context)
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert context.options & ssl.OP_NO_TICKET and context.num_tickets == 0


def test_apply_sets_versions_and_ciphers() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    parse_priority("SECURE256:-VERS-TLS1.3").apply(context)
    assert context.maximum_version == V12
    names = {cipher["name"] for cipher in context.get_ciphers() if cipher["protocol"] == "TLSv1.2"}
    assert names and all("AES128" not in name for name in names)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("BOGUS", "unknown base keyword 'BOGUS'"),
        ("NORMAL:+VERS-TLS9.9", "unknown protocol version"),
        ("NORMAL:+RC4-128", "unsupported cipher"),
        ("NORMAL:COMP-NULL", "unsupported token"),
        ("NORMAL:-VERS-ALL", "no usable protocol version"),
        ("NORMAL:-CIPHER-ALL:-VERS-TLS1.3", "no TLS 1.2 cipher left"),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(TLSError, match=message) as info:
        parse_priority(text)
    assert text in str(info.value)
    assert info.value.errno is not None


def test_priority_is_a_value() -> None:
    assert parse_priority("NORMAL") == Priority("NORMAL")
