"""The parse-then-format property shared by the address and layer-spec tests."""

from __future__ import annotations

from collections.abc import Callable

from qiochan.errors import AddressError


def assert_reads_back_or_is_an_address_error(parse: Callable[[str], object], text: str) -> None:
    """Assert ``parse(text)`` gives a value whose ``str()`` parses back equal, or an AddressError.

    Any other exception fails the test: malformed text must be named, never a bare error.
    """
    try:
        value = parse(text)
    except AddressError as exc:
        assert str(exc), "an AddressError must say what is wrong"
        return
    again = parse(str(value))
    assert again == value
    assert str(again) == str(value)
