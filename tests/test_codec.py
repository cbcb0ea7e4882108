"""Strict JSON: what is accepted, what is refused, and how the refusal reads."""

from __future__ import annotations

import math
import sys

import pytest

from rustrade_store import MAX_DEPTH, InvalidValueError, StorageError, ValueTypeError
from rustrade_store.codec import check_key, decode, encode
from rustrade_store.testing import BAD_KEYS, BAD_VALUES, EXACT_VALUES, assert_same_json


@pytest.mark.parametrize("name", list(EXACT_VALUES))
def test_exact_values_survive_encode_and_decode(name: str) -> None:
    assert_same_json(decode(encode(EXACT_VALUES[name]), "k"), EXACT_VALUES[name])


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_bad_values_are_refused_with_their_path(name: str) -> None:
    value, error, words = BAD_VALUES[name]
    with pytest.raises(error) as caught:
        encode(value)
    assert words in str(caught.value)


@pytest.mark.parametrize("name", list(BAD_KEYS))
def test_bad_keys_are_refused(name: str) -> None:
    key, error, words = BAD_KEYS[name]
    with pytest.raises(error, match=words):
        check_key(key)


def test_encoding_is_compact_utf8_json() -> None:
    assert encode({"a": [1, 2.5, None], "é": "😀\u0000"}) == '{"a":[1,2.5,null],"é":"😀\\u0000"}'


def test_errors_are_value_and_type_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        encode(math.nan)
    with pytest.raises(TypeError, match="bytes"):
        encode(b"")


def test_subclasses_are_refused_because_they_would_not_come_back() -> None:
    class Flag(int):
        pass

    with pytest.raises(ValueTypeError, match="Flag"):
        encode({"x": Flag(1)})


@pytest.mark.parametrize(
    ("make", "words"),
    [
        ("float64(1.5)", "numpy.float64 is not JSON: convert it with float(x)"),
        ("float32(1.5)", "numpy.float32 is not JSON: convert it with float(x)"),
        ("int64(3)", "numpy.int64 is not JSON: convert it with int(x)"),
        ("uint8(3)", "numpy.uint8 is not JSON: convert it with int(x)"),
        ("bool_(True)", "is not JSON: convert it with bool(x)"),
        ("str_('a')", "numpy.str_ is not JSON: convert it with str(x)"),
        ("array([1.5])", "numpy.ndarray is not JSON: convert it with x.tolist()"),
        ("datetime64(0, 's')", "numpy.datetime64 is not JSON: convert it with str(x)"),
    ],
)
def test_numpy_values_are_refused_naming_their_type_and_the_conversion(
    make: str, words: str
) -> None:
    """A float64 is a float, but it would load as a plain float: refused like every type that
    would not come back as itself, by its qualified name (numpy 2 calls its bool type just
    ``bool``, which read as "bool is not JSON"), with the conversion that fixes it."""
    import numpy

    value = eval(f"numpy.{make}", {"numpy": numpy})
    with pytest.raises(ValueTypeError) as caught:
        encode({"pnl": value})
    assert str(caught.value).startswith('value["pnl"]: numpy.')
    assert words in str(caught.value)
    fix = words.rpartition(" with ")[2]
    converted = eval(fix, {"x": value})
    assert encode({"pnl": converted})


def test_a_shared_but_acyclic_value_is_fine() -> None:
    shared = [1, 2]
    assert encode({"a": shared, "b": shared}) == '{"a":[1,2],"b":[1,2]}'


@pytest.mark.parametrize("limit", [0, 10_000])
def test_the_int_limit_holds_when_python_s_own_is_lifted(limit: int) -> None:
    default = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(limit)
    try:
        assert encode({"n": [10**4299]}) == '{"n":[1' + "0" * 4299 + "]}"
        with pytest.raises(InvalidValueError, match=r'value\["n"\]\[0\]: integer longer than 4300'):
            encode({"n": [10**4300]})
    finally:
        sys.set_int_max_str_digits(default)


def test_depth_limit_is_exact() -> None:
    value: object = 0
    for _ in range(MAX_DEPTH):
        value = [value]
    encode(value)
    with pytest.raises(InvalidValueError, match=f"deeper than {MAX_DEPTH}"):
        encode([value])


@pytest.mark.parametrize(
    ("stored", "words"),
    [
        ('{"a": ', "not valid JSON"),
        ("NaN", "NaN is not JSON"),
        ("[Infinity]", "Infinity is not JSON"),
        ("1e999", "out of the range"),
        ("1" * 5000, "not valid JSON"),
        (b"{}", "bytes, not JSON text"),
    ],
)
def test_corrupt_stored_text_is_a_storage_error_naming_the_key(stored: object, words: str) -> None:
    with pytest.raises(StorageError, match="'bot/BTC'") as caught:
        decode(stored, "bot/BTC")
    assert words in str(caught.value)
