"""A holder knows it has lost its lease before any rival can take it: by its own monotonic
clock, whatever a renewal in flight is doing (issue 18). Asserted as orderings: when a rival's
take-over returns, the cut-off holder no longer counts itself as holding, and its ``on_lost``
(a coroutine function here) has run."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from rustrade_store import LeaseLostError, SqlStore

from .proxy import TcpProxy

if TYPE_CHECKING:
    from sqlalchemy import URL

HANG_GUARD = 120.0
"""Seconds after which a wait counts as hung: far above anything here, so that a slow shared
machine never fails a test, while one that would wait forever still does."""

SERVERS = [
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]


@pytest.mark.parametrize("backend", SERVERS)
async def test_a_holder_cut_off_knows_it_lost_before_a_rival_takes_over(
    store_url: URL, backend: str
) -> None:
    """The network to the database freezes under the holder while a renewal may be in flight
    (its timeout is longer than the ttl, so the renewal cannot fail in time). A rival waits for
    the lease to expire and takes it: by then the holder's ``held`` is False, its writes are
    refused before they are sent, and its ``on_lost`` coroutine has run."""
    ttl = 2.0
    order: list[str] = []
    ran = asyncio.Event()

    async def on_lost(error: LeaseLostError) -> None:
        order.append("on_lost")
        ran.set()

    async with TcpProxy(store_url.host or "127.0.0.1", store_url.port or 0) as proxy:
        holder = SqlStore.from_url(store_url.set(port=proxy.port), timeout=3 * ttl)
        rival = SqlStore.from_url(store_url)
        try:
            lease = await holder.lease("frozen/", ttl=ttl, on_lost=on_lost).acquire()
            await holder.save("frozen/k", "holder")
            proxy.freeze()
            taken = await rival.lease("frozen/", ttl=30).acquire(wait=HANG_GUARD)
            order.append("rival took over")
            assert not lease.held
            await asyncio.wait_for(ran.wait(), HANG_GUARD)
            assert order == ["on_lost", "rival took over"]
            with pytest.raises(LeaseLostError):
                await holder.save("frozen/k", "late")
            assert taken.token == lease.token + 1
            await rival.save("frozen/k", "rival")
            await proxy.restore()
            assert await rival.load("frozen/k") == "rival"
            await taken.release()
        finally:
            await proxy.restore()
            await rival.aclose()
            await holder.aclose()
