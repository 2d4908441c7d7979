"""Option lists and layer specs: every accepted spec reads back, every bad one is named."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qiochan.errors import AddressError
from qiochan.options import (
    LayerSpec,
    format_options,
    is_decimal,
    parse_int,
    parse_layer,
    parse_options,
    split_options,
)
from tests.helpers.roundtrip import assert_reads_back_or_is_an_address_error


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (",: =", "',' is not a layer name"),
        ("tls: =1", "not of the form key=value"),
        ("tls:a b=1", "'a b' is not a name"),
        ("tls:\u00e4=1", "is not a name"),
        ("tls:a=1,", "not of the form key=value"),
        ("t/ls", "is not a layer name"),
        ("-tls", "is not a layer name"),
        ("   :x=1", "no name"),
    ],
)
def test_malformed_layer_specs_name_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_layer(text)
    assert message in str(info.value)


def test_layer_spec_constructor_checks_what_str_could_not_write_back() -> None:
    with pytest.raises(AddressError, match="is not a layer name"):
        LayerSpec("TLS")
    with pytest.raises(AddressError, match="'a=b' is not a name"):
        LayerSpec("tls", {"a=b": "1"})
    with pytest.raises(AddressError, match="must be a string"):
        LayerSpec("tls", {"depth": 3})  # type: ignore[dict-item]
    spec = LayerSpec("tls", {"priority": "NORMAL,-VERS-ALL", "verify_peer": ""})
    assert str(spec) == "tls:priority=NORMAL,,-VERS-ALL,verify-peer="
    assert parse_layer(str(spec)) == spec


@pytest.mark.parametrize("text", ["0", "7", "0042", "65535"])
def test_ascii_digits_are_numbers(text: str) -> None:
    assert is_decimal(text)
    assert parse_int(text, "n") == int(text)


@pytest.mark.parametrize("text", ["", "-1", "+1", "1.0", "\u00b2", "\u0661", "1\u00b2", "0x10"])
def test_anything_else_is_not_a_number(text: str) -> None:
    assert not is_decimal(text)
    with pytest.raises(AddressError, match=r"n=.* is not a number"):
        parse_int(text, "n", "ctx")


def test_parse_int_ranges() -> None:
    with pytest.raises(AddressError, match=r"out of range 1\.\.9"):
        parse_int("10", "n", minimum=1, maximum=9)
    with pytest.raises(AddressError, match="out of range"):
        parse_int("9" * 5000, "n")  # int() itself would refuse it with a bare ValueError
    assert parse_int(" 12 ", "n") == 12
    assert parse_int(5, "n") == 5


def test_options_split_and_format_back() -> None:
    parts = split_options("a=1,b=x,,y,c-d=")
    assert parts == ["a=1", "b=x,y", "c-d="]
    options = parse_options(parts, "ctx")
    assert options == {"a": "1", "b": "x,y", "c_d": ""}
    assert format_options(options) == "a=1,b=x,,y,c-d="
    assert parse_options(split_options(format_options(options)), "ctx") == options


# a layer name, then options built from the characters that matter to the syntax
_NAMES = st.sampled_from(["tls", "websocket", "TLS", "x.y", ",", "", " ", "a b", "\u00e4"])
_ITEM = st.tuples(
    st.text(alphabet="a -_.\u00e4=", max_size=3),
    st.sampled_from(["=", ""]),
    st.text(alphabet="a,=:\0", max_size=3),
).map("".join)
_OPTIONS = st.lists(_ITEM, max_size=3).map(",".join)
LAYER_TEXT = st.one_of(
    st.text(), st.tuples(_NAMES, st.sampled_from([":", ""]), _OPTIONS).map("".join)
)


@settings(max_examples=500)
@given(LAYER_TEXT)
def test_any_text_is_a_layer_spec_that_reads_back_or_an_address_error(text: str) -> None:
    assert_reads_back_or_is_an_address_error(parse_layer, text)


@given(st.dictionaries(st.from_regex(r"[A-Za-z0-9_.]+", fullmatch=True), st.text(), max_size=5))
def test_any_options_format_back(options: dict[str, str]) -> None:
    spec = LayerSpec("layer", options)
    assert parse_layer(str(spec)) == spec
