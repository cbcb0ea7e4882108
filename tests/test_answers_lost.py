"""Lost answers of deletes, saves and leases (issue 17): the store retries on a new connection
and answers true, or raises :class:`~rustrade_store.OutcomeUnknownError`; never an answer that
its write contradicts. Store ``a`` of the ``proxied`` fixture goes through a proxy, which
withholds the server's answer to a write that committed; then the link is reset."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rustrade_store import LeaseHeldError, OutcomeUnknownError

from .helpers import Proxied, answer_withheld, ended, true_or_unknown, unique_prefix


@pytest.mark.parametrize("then", ["nothing", "a newer save"])
async def test_a_delete_whose_answer_was_lost_is_true_or_unknown(
    proxied: Proxied, then: str
) -> None:
    """A's delete commits, its answer is lost (then B saves the key again, or not), A retries:
    A is told it removed the key, or that the outcome is unknown; B's newer save stays."""
    a, b, proxy = proxied.a, proxied.b, proxied.proxy
    key = f"{proxied.prefix}gone"
    await b.save(key, "v0")
    links = proxy.links
    deleting = asyncio.ensure_future(a.delete(key))

    async def committed() -> bool:
        return await b.load_snapshot(key) is None

    await answer_withheld(links, [key.encode(), proxied.commit], deleting, committed)
    if then == "a newer save":
        await b.save(key, "v2")
    proxy.reset(links)
    answer = await ended(deleting)
    assert await b.load(key) == (None if then == "nothing" else "v2")
    assert true_or_unknown(answer, expected=True), f"a delete that removed was {answer!r}"


@pytest.mark.parametrize("call", ["save", "save_many"])
@pytest.mark.parametrize("prefix", ["with a lease row", "new"])
async def test_a_save_whose_answer_was_lost_is_true_or_unknown(
    proxied: Proxied, call: str, prefix: str
) -> None:
    """A's save or save_many commits, under a prefix with a lease row or a new one (then it is
    written again in a transaction, after the row is made), the answer to its commit is lost, B
    saves its key, A retries: A returns normally (its write was applied, then superseded) or
    raises OutcomeUnknownError; B's save stays, and A's other key holds A's value."""
    a, b, proxy = proxied.a, proxied.b, proxied.proxy
    under = proxied.prefix if prefix == "with a lease row" else unique_prefix()
    key, other = f"{under}k", f"{under}j"
    links = proxy.links
    if call == "save":
        other = key
        writing = asyncio.ensure_future(a.save(key, "v1"))
    else:
        writing = asyncio.ensure_future(a.save_many({key: "v1", other: "v1"}))

    async def committed() -> bool:
        return await b.load(key) == "v1"

    if prefix == "new":  # the commit of its write once the lease row (its token 0) is made
        after = [b"token", key.encode(), proxied.commit]
    elif call == "save":  # one statement, committed on its own
        after = [key.encode()]
    else:
        after = [key.encode(), proxied.commit]
    await answer_withheld(links, after, writing, committed)
    await b.save(key, "v2")
    proxy.reset(links)
    answer = await ended(writing)
    assert await b.load_many([key, other]) == {key: "v2", other: "v1" if other != key else "v2"}
    assert true_or_unknown(answer), f"a {call} that wrote was answered {answer!r}"


@pytest.mark.parametrize("call", ["acquire", "acquire, never leased", "renew", "release"])
async def test_a_lease_call_whose_answer_was_lost_is_true_or_unknown(
    proxied: Proxied, call: str
) -> None:
    """A's acquire, renew or release commits, its answer is lost, A retries: A is told it
    succeeded (and the lease row agrees), or that the outcome is unknown."""
    a, b, proxy = proxied.a, proxied.b, proxied.proxy
    prefix = unique_prefix() if call == "acquire, never leased" else proxied.prefix
    if call != "acquire, never leased":
        async with a.lease(prefix):  # the lease row holds a token
            pass
    call = call.partition(",")[0]
    lease = a.lease(prefix, ttl=60)
    if call != "acquire":
        await lease.acquire()

    async def row() -> list[Any]:  # the LeaseInfo of the prefix
        return [info for info in await b.leases() if info.prefix == prefix]

    before = await row()
    links = proxy.links
    task = asyncio.ensure_future(getattr(lease, call)())

    async def committed() -> bool:
        infos = await row()
        if call == "acquire":
            return any(info.live for info in infos)
        if call == "renew":
            return infos != before and all(info.live for info in infos)
        return not any(info.live for info in infos)

    after = [prefix.encode()]
    if call == "acquire":  # its transaction's commit, once its lease row (token 0) is made
        after = [b"token", prefix.encode(), proxied.commit]
    await answer_withheld(links, after, task, committed)
    proxy.reset(links)
    answer = await ended(task)
    try:
        if isinstance(answer, OutcomeUnknownError):
            return
        assert answer == (lease if call == "acquire" else None), f"{call} answered {answer!r}"
        [info] = await row()
        if call == "release":
            assert not info.live
            assert not lease.held
            async with b.lease(prefix):  # free for the next holder
                pass
            return
        assert lease.held
        assert (info.live, info.token, info.holder) == (True, lease.token, lease.holder), (
            f"{call} returned, yet the lease row holds {info}"
        )
        await a.save(f"{prefix}x", 1)
        with pytest.raises(LeaseHeldError):
            await b.save(f"{prefix}x", 2)
    finally:
        await lease.release()
