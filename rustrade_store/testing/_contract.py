"""The contract's own capability: load, save, flush and their batches, as tests."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, ClassVar

import pytest
import pytest_asyncio

from .._errors import InvalidKeyError, InvalidValueError, KeyTypeError
from ..codec import MAX_KEY_LENGTH
from ._values import BAD_KEYS, BAD_VALUES, EXACT_VALUES, assert_same_json

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .._store import StateStore
    from ..codec import JSONValue

__all__ = ["StateStoreContract"]


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
