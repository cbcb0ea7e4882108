"""The values and keys every store must keep exactly, or refuse: the kit's tables."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .._errors import InvalidKeyError, InvalidValueError, KeyTypeError, ValueTypeError
from ..codec import MAX_DEPTH, MAX_KEY_LENGTH, MAX_VALUE_BYTES

if TYPE_CHECKING:
    from ..codec import JSONValue

__all__ = ["BAD_KEYS", "BAD_VALUES", "EXACT_VALUES", "assert_same_json", "nested"]


def nested(depth: int) -> JSONValue:
    """A value with ``depth`` levels of lists and dicts."""
    value: JSONValue = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"level": value}
    return value


def assert_same_json(actual: object, expected: object, path: str = "value") -> None:
    """Assert two JSON values are equal with the same types, float bits and key order."""
    assert type(actual) is type(expected), f"{path}: {actual!r} is not {expected!r}"
    if isinstance(expected, float):
        assert isinstance(actual, float)
        assert actual.hex() == expected.hex(), f"{path}: {actual!r} is not {expected!r}"
    elif isinstance(expected, list):
        assert isinstance(actual, list)
        assert len(actual) == len(expected), f"{path}: {len(actual)} items, not {len(expected)}"
        for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
            assert_same_json(got, want, f"{path}[{index}]")
    elif isinstance(expected, dict):
        assert isinstance(actual, dict)
        assert list(actual) == list(expected), f"{path}: keys {list(actual)} != {list(expected)}"
        for name, want in expected.items():
            assert_same_json(actual[name], want, f"{path}[{name!r}]")
    else:
        assert actual == expected, f"{path}: {actual!r} is not {expected!r}"


class _Opaque:
    pass


def _cycle() -> list[Any]:
    loop: list[Any] = [1]
    loop.append({"back": loop})
    return loop


EXACT_VALUES: dict[str, JSONValue] = {
    "null": None,
    "true": True,
    "false": False,
    "zero": 0,
    "int": -42,
    "float one": 1.0,
    "negative zero": -0.0,
    "tiny float": 5e-324,
    "huge float": 1e300,
    "fraction": 0.1,
    "int beyond 64 bits": 2**100 + 1,
    "negative big int": -(10**60),
    "empty string": "",
    "NUL in string": "a\u0000b",
    "astral plane": "𝄞 😀 \U0010fffd",
    "line separators": "\u2028\u2029\n\r\t",
    "quotes and backslashes": '"\\/\b\f',
    "empty list": [],
    "empty dict": {},
    "mixed list": [1, 1.0, "1", True, None, [], {}],
    "dict key order": {"z": 1, "a": 2, "m": {"y": [3], "b": None}},
    "unicode dict keys": {"ключ": "значение", "": "empty key", "\u0000": 0},
    "deepest nesting": nested(MAX_DEPTH),
}
"""Values that must come back with the same types and values from every backend."""

BAD_VALUES: dict[str, tuple[object, type[Exception], str]] = {
    "NaN": ({"pnl": [1, 2, 3, math.nan]}, InvalidValueError, 'value["pnl"][3]: NaN'),
    "Infinity": ([math.inf], InvalidValueError, "value[0]: Infinity"),
    "-Infinity": ({"x": -math.inf}, InvalidValueError, 'value["x"]: -Infinity'),
    "int dict key": ({1: "a"}, ValueTypeError, "dict key 1"),
    "tuple dict key": ({"a": {(1, 2): 0}}, ValueTypeError, 'value["a"]: dict key (1, 2)'),
    "bytes": ({"raw": b"\x00"}, ValueTypeError, 'value["raw"]: bytes'),
    "set": ([{1, 2}], ValueTypeError, "value[0]: set"),
    "tuple": ((1, 2), ValueTypeError, "value: tuple"),
    "datetime": (
        {"at": __import__("datetime").datetime(2026, 1, 1)},
        ValueTypeError,
        'value["at"]: datetime.datetime is not JSON: convert it with x.isoformat()',
    ),
    "Decimal": (
        {"px": Decimal("1.5")},
        ValueTypeError,
        'value["px"]: decimal.Decimal is not JSON: convert it with float(x), or str(x)',
    ),
    "object": (
        [_Opaque()],
        ValueTypeError,
        f"value[0]: {__name__}._Opaque is not",
    ),
    "cycle": (_cycle(), InvalidValueError, 'value[1]["back"]: refers back'),
    "too deep": (nested(MAX_DEPTH + 1), InvalidValueError, f"deeper than {MAX_DEPTH}"),
    "too large": ("x" * (MAX_VALUE_BYTES + 1), InvalidValueError, "over the limit"),
    "lone surrogate": ({"s": "a\ud800"}, InvalidValueError, 'value["s"]: string contains'),
    "huge int": (10**5000, InvalidValueError, "longer than 4300 digits"),
}
"""Values every store refuses: (value, error type, words the message must contain)."""

BAD_KEYS: dict[str, tuple[object, type[Exception], str]] = {
    "empty": ("", InvalidKeyError, "empty"),
    "too long": ("k" * (MAX_KEY_LENGTH + 1), InvalidKeyError, "over the limit"),
    "NUL": ("a\x00b", InvalidKeyError, "NUL"),
    "lone surrogate": ("a\udc00", InvalidKeyError, "surrogate"),
    "int": (42, KeyTypeError, "int"),
    "bytes": (b"key", KeyTypeError, "bytes"),
    "None": (None, KeyTypeError, "NoneType"),
}
"""Keys every store refuses: (key, error type, words the message must contain)."""
