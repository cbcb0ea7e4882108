"""The contract suite, packaged: run every test the package holds itself to against any store.

Subclass :class:`StateStoreContract` in a test module and say how to open a fresh, empty store::

    class TestMyStore(StateStoreContract):
        async def make_store(self) -> StateStore:
            return MyStore()

The kit closes the store after each test. A store that needs more set-up or tear-down than
that overrides the ``store`` fixture instead (with ``@pytest_asyncio.fixture``, which
pytest-asyncio's strict mode requires of an async fixture).

Needs pytest and pytest-asyncio (``pip install 'rustrade-store[testing]'``); the tests carry
their own asyncio mark, so they run in pytest-asyncio's strict mode as well as in auto mode.
A store can hold values however it likes; :func:`rustrade_store.codec.encode_entry` (or
:func:`~rustrade_store.codec.check_key` and :func:`~rustrade_store.codec.encode`) and
:func:`~rustrade_store.codec.decode` give it the checks and the exact round trip the tests ask
for.
"""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
import pytest_asyncio

from .codec import MAX_DEPTH, MAX_KEY_LENGTH, MAX_VALUE_BYTES
from .errors import InvalidKeyError, InvalidValueError, KeyTypeError, ValueTypeError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .codec import JSONValue
    from .store import StateStore

__all__ = [
    "BAD_KEYS",
    "BAD_VALUES",
    "EXACT_VALUES",
    "StateStoreContract",
    "assert_same_json",
    "nested",
]


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
    "datetime": ({"at": __import__("datetime").datetime(2026, 1, 1)}, ValueTypeError, "datetime"),
    "Decimal": ({"px": Decimal("1.5")}, ValueTypeError, 'value["px"]: Decimal'),
    "object": ([_Opaque()], ValueTypeError, "value[0]: _Opaque"),
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


class StateStoreContract:
    """Every behaviour the ``StateStore`` contract promises, as tests.

    A subclass implements :meth:`make_store`, or overrides the ``store`` fixture: either way,
    each test gets a fresh, empty store.
    """

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.asyncio]

    async def make_store(self) -> StateStore:
        """Return a fresh, empty store for one test; the kit closes it afterwards.

        ``aclose`` must be safe to call twice: a test that enters ``async with store`` has
        closed it once already.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement make_store() or override the store fixture"
        )

    @pytest_asyncio.fixture
    async def store(self) -> AsyncIterator[StateStore]:
        """The store under test, from :meth:`make_store`, closed after the test."""
        opened = await self.make_store()
        try:
            yield opened
        finally:
            await opened.aclose()

    # -- the Rust seed's own tests ---------------------------------------------------------

    async def test_load_missing_key_returns_none(self, store: StateStore) -> None:
        assert await store.load("nope") is None

    async def test_save_then_load_roundtrips(self, store: StateStore) -> None:
        value: JSONValue = {"realised": 12.5, "halted": True}
        await store.save("bot/BTCUSDT", value)
        assert_same_json(await store.load("bot/BTCUSDT"), value)

    async def test_save_overwrites_previous(self, store: StateStore) -> None:
        await store.save("k", 1)
        await store.save("k", 2)
        assert await store.load("k") == 2

    async def test_clones_share_state(self, store: StateStore) -> None:
        """Every task holding the same store sees the others' writes."""

        async def writer() -> None:
            await store.save("k", "v")

        await asyncio.create_task(writer())
        assert await asyncio.create_task(store.load("k")) == "v"

    async def test_flush_default_is_ok(self, store: StateStore) -> None:
        await store.save("k", [1])
        await store.flush()
        assert await store.load("k") == [1]

    # -- keys and values -------------------------------------------------------------------

    async def test_many_keys_are_independent(self, store: StateStore) -> None:
        for index in range(50):
            await store.save(f"bot{index % 5}/SYM{index}", {"n": index})
        for index in range(50):
            assert await store.load(f"bot{index % 5}/SYM{index}") == {"n": index}

    async def test_unicode_and_odd_keys_are_kept_verbatim(self, store: StateStore) -> None:
        keys = [
            "bot/BTC-USDT",
            "бот/ЕВРО",  # noqa: RUF001 - Cyrillic on purpose
            "🤖/😀",
            "a b",
            "a ",
            "A",
            "a",
            "k" * MAX_KEY_LENGTH,
            "'; DROP TABLE snapshots; --",
            "100%_done\\",
        ]
        for index, key in enumerate(keys):
            await store.save(key, index)
        for index, key in enumerate(keys):
            assert await store.load(key) == index, key

    @pytest.mark.parametrize("name", list(EXACT_VALUES))
    async def test_values_round_trip_exactly(self, store: StateStore, name: str) -> None:
        await store.save("exact", EXACT_VALUES[name])
        assert_same_json(await store.load("exact"), EXACT_VALUES[name])

    async def test_large_value_round_trips(self, store: StateStore) -> None:
        value: JSONValue = {"ticks": [[i, i * 0.25, "x" * 20] for i in range(60_000)]}
        await store.save("large", value)
        assert_same_json(await store.load("large"), value)

    async def test_saved_value_is_a_copy(self, store: StateStore) -> None:
        value: dict[str, JSONValue] = {"streak": 1}
        await store.save("k", value)
        value["streak"] = 99
        loaded = await store.load("k")
        assert loaded == {"streak": 1}
        assert isinstance(loaded, dict)
        loaded["streak"] = 7
        assert await store.load("k") == {"streak": 1}

    async def test_stored_null_loads_as_none(self, store: StateStore) -> None:
        await store.save("k", {"a": 1})
        await store.save("k", None)
        assert await store.load("k") is None

    @pytest.mark.parametrize("name", list(BAD_VALUES))
    async def test_bad_value_is_refused_and_nothing_changes(
        self, store: StateStore, name: str
    ) -> None:
        value, error, words = BAD_VALUES[name]
        await store.save("k", {"kept": True})
        with pytest.raises(error) as caught:
            await store.save("k", value)  # type: ignore[arg-type]
        assert words in str(caught.value)
        assert await store.load("k") == {"kept": True}
        with pytest.raises(error):
            await store.save("new", value)  # type: ignore[arg-type]
        assert await store.load("new") is None

    @pytest.mark.parametrize("name", list(BAD_KEYS))
    async def test_bad_key_is_refused(self, store: StateStore, name: str) -> None:
        key, error, words = BAD_KEYS[name]
        await store.save("kept", 1)
        with pytest.raises(error) as caught:
            await store.save(key, 2)  # type: ignore[arg-type]
        assert words in str(caught.value)
        with pytest.raises(error):
            await store.load(key)  # type: ignore[arg-type]
        with pytest.raises(error):
            await store.load_many(["kept", key])  # type: ignore[list-item]
        assert await store.load_many(["kept"]) == {"kept": 1}

    async def test_load_many_refuses_one_str(self, store: StateStore) -> None:
        """A lone str is not a list of keys: iterating it would ask for one key per letter."""
        with pytest.raises(TypeError, match="not one str"):
            await store.load_many("bot1/BTCUSDT")

    # -- batches ---------------------------------------------------------------------------

    async def test_load_many_returns_every_key_asked(self, store: StateStore) -> None:
        await store.save_many({"a": 1, "b": None, "c": [3]})
        assert await store.load_many(["c", "missing", "a", "b"]) == {
            "c": [3],
            "missing": None,
            "a": 1,
            "b": None,
        }
        assert await store.load_many([]) == {}

    async def test_load_many_of_a_thousand_keys(self, store: StateStore) -> None:
        values: dict[str, JSONValue] = {f"bot/{i:04d}": {"i": i} for i in range(1000)}
        await store.save_many(values)
        assert await store.load_many(values) == values

    async def test_save_many_refuses_a_bad_value_and_writes_nothing(
        self, store: StateStore
    ) -> None:
        await store.save("a", "old")
        with pytest.raises(InvalidValueError, match=r"key 'c'.*NaN"):
            await store.save_many({"a": "new", "b": 2, "c": math.nan})
        assert await store.load_many(["a", "b", "c"]) == {"a": "old", "b": None, "c": None}

    async def test_save_many_refuses_a_bad_key_and_writes_nothing(self, store: StateStore) -> None:
        with pytest.raises(InvalidKeyError):
            await store.save_many({"a": 1, "": 2})
        assert await store.load("a") is None

    async def test_save_many_refuses_a_key_of_another_type_and_writes_nothing(
        self, store: StateStore
    ) -> None:
        with pytest.raises(KeyTypeError, match="int"):
            await store.save_many({"a": 1, 42: 2})  # type: ignore[dict-item]
        assert await store.load("a") is None

    # -- concurrency -----------------------------------------------------------------------

    async def test_concurrent_saves_are_all_kept(self, store: StateStore) -> None:
        """64 tasks save at once while others read: every save that returned is there.

        A store sharing one connection between tasks loses saves here: one task's rollback on
        returning its connection discards another's executed but uncommitted upsert.
        """
        keys = [f"task/{index:02d}" for index in range(64)]

        async def save(index: int) -> None:
            await store.save(keys[index], {"i": index})

        async def load(index: int) -> None:
            await store.load(keys[index])

        async def save_batch(index: int) -> None:
            await store.save_many({f"{keys[index]}/batch": index})

        await asyncio.gather(
            *(save(i) for i in range(64)),
            *(load(i) for i in range(64)),
            *(save_batch(i) for i in range(0, 64, 4)),
        )
        loaded = await store.load_many(keys)
        assert loaded == {key: {"i": index} for index, key in enumerate(keys)}
        batches = await store.load_many(f"{keys[i]}/batch" for i in range(0, 64, 4))
        assert list(batches.values()) == list(range(0, 64, 4))

    async def test_concurrent_saves_to_one_key_end_at_a_written_value(
        self, store: StateStore
    ) -> None:
        await asyncio.gather(*(store.save("shared", index) for index in range(32)))
        assert await store.load("shared") in range(32)

    # -- lifecycle -------------------------------------------------------------------------

    async def test_async_with_returns_the_store(self, store: StateStore) -> None:
        async with store as entered:
            assert entered is store
