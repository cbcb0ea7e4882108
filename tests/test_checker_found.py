"""What the history checker's fault run found, each as a deterministic test that failed before
its fix."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

from rustrade_store import ConflictError, SqlStore, StorageError

from .helpers import proxy_for

if TYPE_CHECKING:
    from sqlalchemy import URL

SERVERS = [
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]


@pytest.fixture(params=SERVERS)
def server_url(request: pytest.FixtureRequest) -> URL:
    url: URL = request.getfixturevalue(f"{request.param}_url")
    return url


async def test_a_compare_and_set_refused_by_a_lease_that_expired_since_is_no_conflict(
    server_url: URL,
) -> None:
    """B, holding no lease, compare-and-sets a key on its stored time while A's lease on the
    prefix is live. The transaction that settles the refusal runs its UPDATE (refused by the
    live lease); its answer is withheld until A's lease has expired (A's links frozen, so it
    cannot renew); then the transaction reads what refused it, and sees no live lease and the
    base still stored. The write must be tried again and apply, not fail with a conflict that
    names its own base as stored ("its time ... is not after the stored ...")."""
    prefix = f"cas{secrets.token_hex(3)}/"
    key = prefix + "k"
    async with proxy_for(server_url) as for_a, proxy_for(server_url) as for_b:
        a = SqlStore.from_url(server_url.set(port=for_a.port), timeout=2)
        b = SqlStore.from_url(server_url.set(port=for_b.port), timeout=20)
        try:
            await b.save(key, "v0")
            snapshot = await b.load_snapshot(key)
            assert snapshot is not None
            lease = a.lease(prefix, ttl=1.0)
            await lease.acquire()
            for_a.freeze(for_a.links)
            for_a.refuse()  # A's renewals never arrive: its lease expires at its ttl
            links = for_b.links
            # The settling transaction's UPDATE: its BEGIN (PostgreSQL) or isolation level
            # (MariaDB), then the new value, in its parameters or its text.
            begin = b"BEGIN" if server_url.get_backend_name() == "postgresql" else b"ISOLATION"
            for link in links:
                link.withhold_answers(after=(begin, b"v1-marker"))
            cas = asyncio.ensure_future(b.save(key, "v1-marker", if_updated_at=snapshot.updated_at))
            async with asyncio.timeout(10):
                while not any(link.triggered for link in links):
                    await asyncio.wait([cas], timeout=0.01)
            assert lease.expires_at is not None
            await asyncio.sleep((lease.expires_at - datetime.now(UTC)).total_seconds() + 0.2)
            for_b.release(links)
            try:
                await cas
            except ConflictError as exc:
                raise AssertionError(f"{exc} (stored_at {exc.stored_at})") from exc
            after = await b.load_snapshot(key)
        finally:
            await for_a.restore()
            await a.aclose()
            await b.aclose()
    assert after is not None
    assert after.value == "v1-marker"


@pytest.mark.mariadb
async def test_a_transaction_after_one_that_timed_out_gets_a_new_connection(
    mariadb_url: URL,
) -> None:
    """A ``save_many`` (one transaction) times out on a frozen link; the link comes back. The
    next ones must work: a broken connection is replaced (as ``load`` and ``save`` do), not
    handed out again to fail each call at once with "(0, 'Not connected')". Found as hundreds
    of failed lease acquires (and failed ``save_many``, ``delete``, restores) in the fault run."""
    key = f"stale{secrets.token_hex(3)}/"
    async with proxy_for(mariadb_url) as proxy:
        store = SqlStore.from_url(mariadb_url.set(port=proxy.port), timeout=0.5)
        try:
            await store.save_many({key + "a": 1, key + "b": 1})
            proxy.freeze(proxy.links)
            with pytest.raises(StorageError):
                await store.save_many({key + "a": 2, key + "b": 2})
            proxy.release(proxy.links)
            for number in range(3):
                await store.save_many({key + "a": 3 + number, key + "b": 3})
            await store.lease(key).acquire()
        finally:
            await store.aclose()
