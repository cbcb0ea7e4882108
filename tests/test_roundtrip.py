"""Property tests: every accepted value round-trips exactly on every backend, and every value
with something non-JSON inside is refused with nothing stored."""

from __future__ import annotations

import datetime
import math
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rustrade_store import MAX_DEPTH, InvalidValueError, ValueTypeError
from rustrade_store.testing import assert_same_json

if TYPE_CHECKING:
    from rustrade_store import JSONValue, SqlStore

PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values: st.SearchStrategy[JSONValue] = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=25,
)


def depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(item) for item in value.values()), default=0)
    return 0


@PROPERTY_SETTINGS
@given(value=json_values)
async def test_every_json_value_round_trips_exactly(store: SqlStore, value: JSONValue) -> None:
    assume(depth(value) <= MAX_DEPTH)
    await store.save("property", value)
    assert_same_json(await store.load("property"), value)


non_json_leaves = st.sampled_from(
    [
        math.nan,
        math.inf,
        -math.inf,
        b"bytes",
        bytearray(b"x"),
        {1, 2},
        frozenset(),
        (1, 2),
        datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        datetime.date(2026, 1, 1),
        Decimal("1.1"),
        object(),
        1 + 2j,
    ]
)


def _plant(container: JSONValue, leaf: Any, where: int) -> Any:
    """Put ``leaf`` somewhere inside ``container``, or wrap it if there is no room."""
    if isinstance(container, list):
        return [*container[:where], leaf, *container[where:]]
    if isinstance(container, dict):
        return {**container, f"k{where}": leaf}
    return [container, leaf]


@PROPERTY_SETTINGS
@given(
    base=json_values,
    leaf=non_json_leaves,
    where=st.integers(min_value=0, max_value=5),
    as_key=st.booleans(),
)
async def test_non_json_anywhere_is_refused_and_nothing_is_stored(
    store: SqlStore, base: JSONValue, leaf: Any, where: int, as_key: bool
) -> None:
    assume(depth(base) < MAX_DEPTH - 1)
    hashable = isinstance(leaf, (bytes, frozenset, tuple, datetime.date, Decimal, complex))
    bad = {leaf: 1} if as_key and hashable else _plant(base, leaf, where)
    await store.save("kept", {"v": 1})
    with pytest.raises((InvalidValueError, ValueTypeError)):
        await store.save("property/bad", bad)
    with pytest.raises((InvalidValueError, ValueTypeError)):
        await store.save_many({"property/other": 1, "property/bad": bad})
    assert await store.load_many(["property/bad", "property/other"]) == {
        "property/bad": None,
        "property/other": None,
    }
    assert await store.load("kept") == {"v": 1}
