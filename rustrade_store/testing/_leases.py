"""Leases, an optional capability, as tests: one holder at a time writes under a prefix."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import pytest
import pytest_asyncio

from .._errors import InvalidKeyError, LeaseHeldError, LeaseLostError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Mapping
    from datetime import datetime
    from types import TracebackType

    from .._lease import LeaseInfo
    from ..codec import JSONInput, JSONValue

__all__ = ["BAD_PREFIXES", "LeaseHandle", "LeasingStore", "StateStoreLeaseContract"]


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
