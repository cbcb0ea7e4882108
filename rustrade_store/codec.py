"""Strict JSON: exactly the values ``serde_json::Value`` can hold, checked before any I/O.

Accepted: ``dict`` with ``str`` keys, ``list``, ``str``, ``int``, finite ``float``, ``bool`` and
``None``, exact types only, so that every accepted value comes back from the database with the
same types and the same values. One decoder reads JSON text back, stored or typed, and refuses
what the encoder could never have written.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias, cast

from ._clock import supersedes
from ._errors import InvalidKeyError, InvalidValueError, KeyTypeError, StorageError, ValueTypeError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "BATCH_ROWS",
    "LEASE_PREFIX",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_KEY_LENGTH",
    "MAX_VALUE_BYTES",
    "JSONInput",
    "JSONValue",
    "check_key",
    "check_keys",
    "check_time",
    "decode",
    "encode",
    "encode_entry",
    "encode_rows",
    "lease_key",
    "parse",
]

JSONValue: TypeAlias = dict[str, "JSONValue"] | list["JSONValue"] | str | int | float | bool | None
"""A JSON value as the store returns it."""

JSONInput: TypeAlias = Mapping[str, object] | Sequence[object] | str | int | float | bool | None
"""A value as the store takes it, typed loosely enough for ordinary typed code.

``dict[str, float]``, ``list[float]``, a ``TypedDict`` and an inferred ``dict[str, object]`` all
fit, where ``JSONValue`` (whose ``dict`` and ``list`` are invariant) would take only literals.
The type cannot say everything: what the containers hold, and tuples, ``bytes`` and mappings
that are not ``dict`` (which fit ``Sequence`` and ``Mapping``), are checked when the value is
saved, and a refused one raises :class:`~rustrade_store.ValueTypeError` or
:class:`~rustrade_store.InvalidValueError` before anything is written.
"""

MAX_KEY_LENGTH = 255
"""Longest key, in characters; the primary key column is ``VARCHAR(255)``."""

MAX_DEPTH = 31
"""Deepest nesting of lists and dicts: the most MariaDB's JSON check accepts, so that every
stored value can be copied to every supported database."""

MAX_VALUE_BYTES = 8 * 1024 * 1024
"""Largest encoded value, in bytes of UTF-8."""

MAX_INT_DIGITS = 4300
"""Longest integer, in decimal digits: Python refuses to parse longer ones by default."""

BATCH_ROWS = 1000
"""The most rows one statement, page or batch carries."""

_BIG_INT_BITS = 14_000  # below this no int can reach MAX_INT_DIGITS, so no str() is needed

_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, check_circular=False, separators=(",", ":")
)
_LEAVES = frozenset({str, int, float, bool, type(None)})


LEASE_PREFIX = "@lease/"
"""Keys that start with it are lease rows (see :class:`~rustrade_store.Lease`), reserved."""


def lease_key(key: str) -> str | None:
    """The lease row covering ``key``: that of its first path segment (``bot1/`` for
    ``bot1/BTCUSDT``), or ``None`` for a key no lease covers: one with no ``/``, or whose first
    segment is too long to name a lease row (MariaDB printed "Data truncated" at each write)."""
    segment, slash, _ = key.partition("/")
    if not slash or len(LEASE_PREFIX) + len(segment) + 1 > MAX_KEY_LENGTH:
        return None
    return f"{LEASE_PREFIX}{segment}/"


def check_key(key: object) -> str:
    """Return ``key`` if it is a usable key, else raise naming what is wrong with it."""
    if type(key) is not str:
        raise KeyTypeError(f"key must be a str, not {type(key).__name__}: {key!r:.80}")
    if not key:
        raise InvalidKeyError("key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(
            f"key {key[:40]!r}... is {len(key)} characters long, over the limit of {MAX_KEY_LENGTH}"
        )
    if "\x00" in key:
        raise InvalidKeyError(f"key {key!r} contains a NUL character, which databases cannot store")
    if key.startswith(LEASE_PREFIX):
        raise InvalidKeyError(f"key {key!r}: keys that start with {LEASE_PREFIX!r} are leases")
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidKeyError(
                f"key {key!r} contains a lone surrogate (U+{ord(key[exc.start]):04X}), "
                "which is not valid Unicode"
            ) from None
    return key


def check_keys(keys: Iterable[object]) -> list[str]:
    """The distinct keys of ``keys``, in order, each checked; a lone str is refused, since
    iterating it would ask for one key per character."""
    if isinstance(keys, str):
        raise KeyTypeError(f"expected an iterable of keys, not one str: {keys!r:.80}")
    return list(dict.fromkeys(check_key(key) for key in keys))


class _Rejected(Exception):
    """Raised inside the walk; each container frame adds its path segment on the way out."""

    def __init__(self, error: Callable[[str], Exception], reason: str) -> None:
        self.error = error
        self.reason = reason
        self.segments: list[str] = []


def _walk(value: object, depth: int, open_containers: set[int]) -> None:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return
    if kind is int:
        if cast("int", value).bit_length() > _BIG_INT_BITS:
            _check_int_digits(cast("int", value))
        return
    if kind is float:
        number = cast("float", value)
        if not math.isfinite(number):
            label = "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
            raise _Rejected(InvalidValueError, f"{label} is not JSON")
        return
    if kind is not list and kind is not dict:
        raise _Rejected(ValueTypeError, _not_json(kind))
    if depth == MAX_DEPTH:
        raise _Rejected(InvalidValueError, f"nested deeper than {MAX_DEPTH} levels")
    ident = id(value)
    if ident in open_containers:
        raise _Rejected(InvalidValueError, "refers back to a container it is inside (a cycle)")
    open_containers.add(ident)
    if kind is list:
        for index, item in enumerate(cast("list[object]", value)):
            try:
                _walk(item, depth + 1, open_containers)
            except _Rejected as rejected:
                rejected.segments.append(f"[{index}]")
                raise
    else:
        for name, item in cast("dict[object, object]", value).items():
            if type(name) is not str:
                raise _Rejected(
                    ValueTypeError,
                    f"dict key {name!r} is a {type(name).__name__}; JSON object keys are str",
                )
            try:
                _walk(item, depth + 1, open_containers)
            except _Rejected as rejected:
                rejected.segments.append(f"[{json.dumps(name)}]")
                raise
    open_containers.discard(ident)


_CONVERSIONS = {
    ("numpy", "bool"): "bool(x)",  # numpy 2's name of numpy.bool_
    ("numpy", "bool_"): "bool(x)",
    ("numpy", "integer"): "int(x)",
    ("numpy", "floating"): "float(x)",
    ("numpy", "ndarray"): "x.tolist()",
    ("numpy", "datetime64"): "str(x)",
    ("decimal", "Decimal"): "float(x), or str(x) to keep every digit",
    ("datetime", "datetime"): "x.isoformat()",
    ("datetime", "date"): "x.isoformat()",
    ("datetime", "time"): "x.isoformat()",
    ("builtins", "bool"): "bool(x)",
    ("builtins", "int"): "int(x)",
    ("builtins", "float"): "float(x)",
    ("builtins", "str"): "str(x)",
    ("builtins", "tuple"): "list(x)",
    ("builtins", "set"): "list(x)",
    ("builtins", "frozenset"): "list(x)",
}
"""The conversion to a JSON type, by (module, class) of a type or one of its bases: numpy's
scalars are refused like every type that would not come back as itself (a numpy.float64 would
load as a float), and the message says how to convert them, found by name so that numpy is
never imported."""


def _not_json(kind: type) -> str:
    """Why a value of ``kind`` is refused: its qualified type, and the conversion if known."""
    module = kind.__module__
    name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
    for base in kind.__mro__:
        fix = _CONVERSIONS.get((base.__module__, base.__qualname__))
        if fix is not None:
            return f"{name} is not JSON: convert it with {fix}"
    return f"{name} is not JSON"


def _check_int_digits(number: int) -> None:
    try:
        digits = len(str(abs(number)))
    except ValueError:
        digits = MAX_INT_DIGITS + 1
    if digits > MAX_INT_DIGITS:
        raise _Rejected(InvalidValueError, f"integer longer than {MAX_INT_DIGITS} digits")


def _find_surrogate(value: object, path: str) -> NoReturn:
    """Raise for the first string (or dict key) under ``value`` that is not valid Unicode."""
    stack: list[tuple[object, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidValueError(
                    f"{where}: string contains a lone surrogate (U+{ord(item[exc.start]):04X}), "
                    "which is not valid Unicode"
                ) from None
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, dict):
            for name, child in item.items():
                stack.append((name, f"{where} key {json.dumps(name)}"))
                stack.append((child, f"{where}[{json.dumps(name)}]"))
    raise AssertionError("no lone surrogate found")  # pragma: no cover - encode() found one


def _plain(value: object, depth: int) -> bool:
    """Whether the dict or list ``value`` at ``depth`` holds only exact JSON types under str keys,
    with no container deeper than :data:`MAX_DEPTH` (so no cycle either)."""
    keyed = type(value) is dict
    pairs: Iterable[tuple[object, object]] = (
        cast("dict[object, object]", value).items()
        if keyed
        else enumerate(cast("list[object]", value))
    )
    for name, item in pairs:
        if keyed and type(name) is not str:
            return False
        kind = type(item)
        if kind in _LEAVES:
            continue
        if (kind is dict or kind is list) and depth < MAX_DEPTH - 1 and _plain(item, depth + 1):
            continue
        return False
    return True


def _encode_plain(value: object) -> str | None:
    """The JSON text of ``value`` when the encoder's own checks are all it needs: :func:`_plain`
    holds, and the encoder takes it (refusing non-finite floats, and ints longer than Python's
    int-to-str limit when that is at most :data:`MAX_INT_DIGITS`); else ``None``."""
    kind = type(value)
    if kind is dict or kind is list:
        if not _plain(value, 0):
            return None
    elif kind not in _LEAVES:
        return None
    if not 0 < sys.get_int_max_str_digits() <= MAX_INT_DIGITS:
        return None
    try:
        return _encoder.encode(value)
    except (ValueError, RecursionError):
        return None


def encode(value: object) -> str:
    """Return the compact JSON text of ``value``, or raise naming the offending path.

    Nothing is written anywhere before this succeeds, so a rejected value changes no stored state.
    """
    text = _encode_plain(value)
    if text is None:
        try:
            _walk(value, 0, set())
        except _Rejected as rejected:
            path = "value" + "".join(reversed(rejected.segments))
            raise rejected.error(f"{path}: {rejected.reason}") from None
        text = _encoder.encode(value)
    size = len(text)
    if not text.isascii():
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            _find_surrogate(value, "value")
    if size > MAX_VALUE_BYTES:
        raise InvalidValueError(
            f"value: {size} bytes as JSON, over the limit of {MAX_VALUE_BYTES} bytes"
        )
    return text


def encode_entry(key: object, value: object) -> str:
    """Check ``key`` and return the JSON text of ``value``; a refused value's error names its key.

    What a batch write checks for every item before it writes any of them.
    """
    check_key(key)
    try:
        return encode(value)
    except (InvalidValueError, ValueTypeError) as exc:
        raise type(exc)(f"key {key!r}: {exc}") from None


def _reject_constant(name: str) -> NoReturn:
    """``parse_constant`` hook: ``NaN`` and ``Infinity``, read by Python's json, are not JSON."""
    raise ValueError(f"{name} is not JSON")


def _finite_float(literal: str) -> float:
    """``parse_float`` hook: ``1e999`` is valid JSON text that Python would read as inf."""
    number = float(literal)
    if not math.isfinite(number):
        raise ValueError(f"number {literal} is out of the range of a float")
    return number


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: a member given twice is refused, where Python keeps the last."""
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f"object member {json.dumps(name)} appears twice")
            seen.add(name)
    return found


_decoder = json.JSONDecoder(
    object_pairs_hook=_unique_members, parse_constant=_reject_constant, parse_float=_finite_float
)
"""Built once: ``json.loads`` with these hooks would build a new decoder on every call."""

_SPACE = " \t\n\r"
"""JSON's whitespace: text that starts with none of it is read by ``raw_decode`` alone."""


def parse(text: str) -> JSONValue:
    """Parse JSON text strictly; raise ``ValueError`` naming the fault.

    Refused: anything not JSON, ``NaN`` and ``Infinity`` (which Python's ``json`` accepts),
    numbers no float can hold, integers longer than Python reads (:data:`MAX_INT_DIGITS`
    digits by default), an object member given twice (which the encoder never writes), and
    nesting too deep to parse.
    """
    try:
        if text[:1] not in _SPACE:
            value, end = _decoder.raw_decode(text)
            if end == len(text):
                return cast("JSONValue", value)
        return cast("JSONValue", _decoder.decode(text))
    except RecursionError:
        raise ValueError("nested too deeply") from None


def decode(text: object, key: str) -> JSONValue:
    """Parse a stored document with :func:`parse`; one it refuses (corrupt, or written outside
    the store with a member given twice) is a :class:`StorageError` naming its key."""
    if type(text) is not str:
        raise StorageError(
            f"stored value for key {key!r} is a {type(text).__name__}, not JSON text: "
            "the row was written outside rustrade-store"
        )
    try:
        return parse(text)
    except ValueError as exc:
        raise StorageError(f"stored value for key {key!r} is not valid JSON: {exc}") from None


def check_time(key: str, when: object) -> datetime:
    """``when`` if it is a time-zone-aware datetime, else the error naming the key."""
    if type(when) is not datetime:
        raise ValueTypeError(f"key {key!r}: updated_at is a {type(when).__name__}, not a datetime")
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidValueError(f"key {key!r}: updated_at {when.isoformat()} has no time zone")
    return when


def encode_rows(items: Iterable[tuple[str, object, object]]) -> list[dict[str, Any]]:
    """Check and encode every ``(key, value, updated_at)``, raising before any is written, and
    return the rows to write in key order (concurrent batches then take their row locks in one
    order and never deadlock). A key given twice keeps its latest time, the last one on a tie."""
    latest: dict[str, tuple[str, datetime]] = {}
    for key, value, when in items:
        text = encode_entry(key, value)
        time = check_time(key, when)
        held = latest.get(key)
        if held is None or supersedes(time, held[1]):
            latest[key] = (text, time)
    return [
        {"key": key, "value": text, "updated_at": when}
        for key, (text, when) in sorted(latest.items())
    ]
