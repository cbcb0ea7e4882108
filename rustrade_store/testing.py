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

Leases are an optional capability with a kit of their own: a backend that offers them (as
:class:`~rustrade_store.SqlStore` does) subclasses :class:`StateStoreLeaseContract` too and says
how to open a second store on the same database, a second copy of the bot::

    class TestMyStoreLeases(StateStoreLeaseContract):
        async def make_store(self) -> LeasingStore:
            return MyStore(DATABASE)

        async def make_rival(self, store: LeasingStore) -> LeasingStore:
            return MyStore(DATABASE)
"""

from __future__ import annotations

import asyncio
import math
import os
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import pytest
import pytest_asyncio

from .codec import MAX_DEPTH, MAX_KEY_LENGTH, MAX_VALUE_BYTES
from .errors import (
    InvalidKeyError,
    InvalidValueError,
    KeyTypeError,
    LeaseHeldError,
    LeaseLostError,
    ValueTypeError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Mapping
    from datetime import datetime
    from types import TracebackType

    from .codec import JSONInput, JSONValue
    from .lease import LeaseInfo
    from .store import StateStore

__all__ = [
    "BAD_KEYS",
    "BAD_PREFIXES",
    "BAD_VALUES",
    "EXACT_VALUES",
    "LeaseHandle",
    "LeasingStore",
    "StateStoreContract",
    "StateStoreLeaseContract",
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
    "object": ([_Opaque()], ValueTypeError, "value[0]: rustrade_store.testing._Opaque is not"),
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


# -- leases: an optional capability ----------------------------------------------------------


class LeaseHandle(Protocol):
    """A lease as the kit uses it: what :meth:`LeasingStore.lease` returns."""

    prefix: str
    token: int
    holder: dict[str, Any]
    expires_at: datetime | None

    @property
    def held(self) -> bool: ...

    async def acquire(self, *, wait: float | None = None) -> LeaseHandle: ...

    async def renew(self) -> None: ...

    async def release(self) -> None: ...

    async def __aenter__(self) -> LeaseHandle: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class LeasingStore(Protocol):
    """A store with leases, as :class:`StateStoreLeaseContract` calls it: the contract's
    :class:`~rustrade_store.StateStore` methods it uses, and the lease methods."""

    async def load(self, key: str) -> JSONValue: ...

    async def save(self, key: str, value: JSONInput) -> None: ...

    async def load_many(self, keys: Iterable[str]) -> dict[str, JSONValue]: ...

    async def save_many(self, values: Mapping[str, JSONInput]) -> None: ...

    def check_writable(self, key: str) -> None: ...

    async def aclose(self) -> None: ...

    def lease(
        self,
        prefix: str,
        *,
        ttl: float = ...,
        wait: float = ...,
        on_lost: Callable[[LeaseLostError], object] | None = ...,
    ) -> LeaseHandle: ...

    async def leases(self) -> list[LeaseInfo]: ...

    async def break_lease(self, prefix: str) -> LeaseInfo | None: ...


BAD_PREFIXES: dict[str, str] = {
    "no slash": "bot1",
    "two segments": "bot1/sub/",
    "empty segment": "/",
    "empty": "",
    "the lease key form": "@lease/",
}
"""Prefixes no lease can cover: a lease covers one first path segment, such as ``bot1/``."""


class StateStoreLeaseContract:
    """Leases, an optional capability, as tests: one holder at a time may write the keys under
    a prefix, and a writer that does not hold the lease writes nothing there.

    A backend with leases subclasses this beside :class:`StateStoreContract` and implements
    :meth:`make_store` and :meth:`make_rival` (or overrides the ``store`` and ``rival``
    fixtures). Every test uses the prefix ``bot1/``, with ``bot2/`` as another prefix.
    """

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.asyncio]

    async def make_store(self) -> LeasingStore:
        """Return a fresh, empty store with leases; the kit closes it afterwards."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement make_store() or override the store fixture"
        )

    async def make_rival(self, store: LeasingStore) -> LeasingStore:
        """Return a second store on ``store``'s database, as a second copy of the bot would
        open it; the kit closes it afterwards."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement make_rival() or override the rival fixture"
        )

    @pytest_asyncio.fixture
    async def store(self) -> AsyncIterator[LeasingStore]:
        """The store under test, from :meth:`make_store`, closed after the test."""
        opened = await self.make_store()
        try:
            yield opened
        finally:
            await opened.aclose()

    @pytest_asyncio.fixture
    async def rival(self, store: LeasingStore) -> AsyncIterator[LeasingStore]:
        """A second copy of the bot, from :meth:`make_rival`, closed after the test."""
        opened = await self.make_rival(store)
        try:
            yield opened
        finally:
            await opened.aclose()

    # -- taking a lease --------------------------------------------------------------------

    async def test_a_lease_names_its_holder_and_is_listed(self, store: LeasingStore) -> None:
        lease = await store.lease("bot1/", ttl=30).acquire()
        try:
            assert lease.held
            assert lease.token >= 1
            assert {"host", "pid", "id", "since"} <= set(lease.holder)
            assert lease.holder["pid"] == os.getpid()
            assert lease.expires_at is not None
            (listed,) = await store.leases()
            assert (listed.prefix, listed.token, listed.live) == ("bot1/", lease.token, True)
            assert (listed.holder, listed.expires_at) == (lease.holder, lease.expires_at)
        finally:
            await lease.release()

    async def test_the_holder_writes_under_its_prefix(self, store: LeasingStore) -> None:
        async with store.lease("bot1/", ttl=30):
            await store.save("bot1/BTCUSDT", {"halted": True})
            await store.save_many({"bot1/ETHUSDT": 1, "bot2/x": 2})
            assert await store.load_many(["bot1/BTCUSDT", "bot1/ETHUSDT", "bot2/x"]) == {
                "bot1/BTCUSDT": {"halted": True},
                "bot1/ETHUSDT": 1,
                "bot2/x": 2,
            }

    async def test_renew_pushes_the_expiry_on(self, store: LeasingStore) -> None:
        async with store.lease("bot1/", ttl=30) as lease:
            before = lease.expires_at
            assert before is not None
            await asyncio.sleep(0.01)
            await lease.renew()
            assert lease.expires_at is not None
            assert lease.expires_at > before
            assert lease.held

    @pytest.mark.parametrize("name", list(BAD_PREFIXES))
    async def test_a_lease_covers_one_first_path_segment(
        self, store: LeasingStore, name: str
    ) -> None:
        with pytest.raises(InvalidKeyError):
            await store.lease(BAD_PREFIXES[name], ttl=30).acquire()
        assert await store.leases() == []

    async def test_the_lease_key_form_is_reserved(self, store: LeasingStore) -> None:
        """Keys that start with ``@lease/`` are lease rows: no save or load reaches them."""
        async with store.lease("bot1/", ttl=30):
            with pytest.raises(InvalidKeyError, match="lease"):
                await store.save("@lease/bot1/", {"token": 99})
            with pytest.raises(InvalidKeyError, match="lease"):
                await store.save_many({"@lease/bot2/": 1})
            with pytest.raises(InvalidKeyError, match="lease"):
                await store.load("@lease/bot1/")

    # -- a second copy ---------------------------------------------------------------------

    async def test_a_second_copy_cannot_take_a_live_lease(
        self, store: LeasingStore, rival: LeasingStore
    ) -> None:
        """It gets LeaseHeldError naming the holder (host, pid, id, since) and until when."""
        async with store.lease("bot1/", ttl=30) as lease:
            with pytest.raises(LeaseHeldError) as refused:
                await rival.lease("bot1/", ttl=30).acquire()
            assert refused.value.holder == lease.holder
            assert refused.value.until == lease.expires_at
            assert f"pid {lease.holder['pid']} " in str(refused.value)
            async with rival.lease("bot2/", ttl=30):  # another prefix is free
                pass

    async def test_a_store_without_the_lease_is_refused_and_writes_nothing(
        self, store: LeasingStore, rival: LeasingStore
    ) -> None:
        """Whether or not it ever called ``lease()``: every write under the prefix raises
        LeaseHeldError, and a ``save_many`` that includes one writes none of its items."""
        async with store.lease("bot1/", ttl=30) as lease:
            await store.save("bot1/breaker", {"halted": True})
            with pytest.raises(LeaseHeldError) as refused:
                await rival.save("bot1/breaker", {"halted": False})
            assert refused.value.holder == lease.holder
            with pytest.raises(LeaseHeldError):
                await rival.save("bot1/new", 1)
            with pytest.raises(LeaseHeldError):
                await rival.save_many({"bot2/x": 1, "bot1/breaker": {"halted": False}})
            await rival.save("bot2/y", 2)
            await rival.save("no-slash", 3)  # a key with no '/' is under no lease
            assert await rival.load_many(["bot1/breaker", "bot1/new", "bot2/x", "bot2/y"]) == {
                "bot1/breaker": {"halted": True},
                "bot1/new": None,
                "bot2/x": None,
                "bot2/y": 2,
            }

    async def test_release_hands_the_lease_on_with_a_higher_token(
        self, store: LeasingStore, rival: LeasingStore
    ) -> None:
        first = await store.lease("bot1/", ttl=30).acquire()
        await first.release()
        assert not first.held
        (released,) = await store.leases()
        assert (released.token, released.live) == (first.token, False)
        async with rival.lease("bot1/", ttl=30) as second:
            assert second.token == first.token + 1
            await rival.save("bot1/breaker", {"by": "second"})
            with pytest.raises(LeaseHeldError):
                await store.save("bot1/breaker", {"by": "first"})
        assert await store.load("bot1/breaker") == {"by": "second"}

    async def test_wait_takes_the_lease_once_it_is_released(
        self, store: LeasingStore, rival: LeasingStore
    ) -> None:
        first = await store.lease("bot1/", ttl=30).acquire()

        async def release_soon() -> None:
            await asyncio.sleep(0.2)
            await first.release()

        second, _ = await asyncio.gather(
            rival.lease("bot1/", ttl=1).acquire(wait=10), release_soon()
        )
        try:
            assert second.held
            assert second.token == first.token + 1
        finally:
            await second.release()

    # -- losing a lease --------------------------------------------------------------------

    async def test_a_broken_lease_fences_its_holder_out(
        self, store: LeasingStore, rival: LeasingStore
    ) -> None:
        """``break_lease`` (an operator who knows the holder is dead) ends the lease: the
        holder's next write raises LeaseLostError and writes nothing, ``on_lost`` hears it
        once, and every write under the prefix fails from then on, at once (``check_writable``
        says so before anything is queued)."""
        lost: list[LeaseLostError] = []
        lease = await store.lease("bot1/", ttl=30, on_lost=lost.append).acquire()
        try:
            await store.save("bot1/breaker", {"halted": True})
            broken = await rival.break_lease("bot1/")
            assert broken is not None
            assert (broken.prefix, broken.token, broken.live) == ("bot1/", lease.token, True)
            assert broken.holder == lease.holder
            with pytest.raises(LeaseLostError):
                await store.save("bot1/breaker", {"halted": False})
            assert len(lost) == 1
            assert not lease.held
            with pytest.raises(LeaseLostError):
                store.check_writable("bot1/other")
            with pytest.raises(LeaseLostError):
                await store.save_many({"bot1/other": 1})
            with pytest.raises(LeaseLostError):
                await lease.renew()
            store.check_writable("bot2/x")
            await store.save("bot2/x", 1)
            assert await store.load_many(["bot1/breaker", "bot1/other"]) == {
                "bot1/breaker": {"halted": True},
                "bot1/other": None,
            }
            (after,) = await rival.leases()
            assert after.token > lease.token
            assert not after.live
            assert len(lost) == 1
        finally:
            await lease.release()

    async def test_breaking_a_prefix_without_a_lease_returns_none(
        self, store: LeasingStore
    ) -> None:
        assert await store.break_lease("bot1/") is None
        assert await store.leases() == []
