"""Faults between the store and the server never let an older save win over a newer one.

Every connection goes through a :class:`~tests.proxy.TcpProxy` that withholds or drops answers,
holds or delays requests, resets links and freezes them. Regression tests each set up one known
way to lose data (a retry, a late save, a late delete); then writers and readers in two
processes run through a schedule of faults, and :func:`tests.history.check` holds every key's
history to the promise: a write carrying an older save time (``updated_at``, taken at call time)
than the stored one never replaces it. Sizes: ``RUSTRADE_FAULT_OPS`` calls and
``RUSTRADE_FAULT_FAULTS`` faults per database (2,000 and 20 by default; ``make soak`` runs
20,000 and 200); ``RUSTRADE_FAULT_SEED`` fixes the random choices (not the timing).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from random import Random
from typing import TYPE_CHECKING

import pytest

from rustrade_store import SqlStore, StorageError

from .helpers import POSTGRES_18
from .history import ACKNOWLEDGED, FAILED, TIMED_OUT, History, Read, Write, check
from .proxy import TcpProxy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from sqlalchemy import URL

    from .proxy import Link

SERVERS = [
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
    POSTGRES_18,
]
HANG_GUARD = 120.0
"""Seconds after which a call counts as hung: far above any timeout here, so a slow shared
machine never fails a test, while a call that would wait forever still does."""
FAULT_OPS = int(os.environ.get("RUSTRADE_FAULT_OPS", "2000"))
FAULT_FAULTS = int(os.environ.get("RUSTRADE_FAULT_FAULTS", "20"))
FAULT_SEED = int(os.environ.get("RUSTRADE_FAULT_SEED", "0")) or secrets.randbelow(2**32)
STORE_TIMEOUT = 0.5
"""The timeout of the stores behind faults: short, so that faults turn into timeouts."""
ROOT = Path(__file__).parent.parent


@pytest.fixture(params=SERVERS)
def server_url(request: pytest.FixtureRequest) -> URL:
    """The run's migrated database on each server."""
    url: URL = request.getfixturevalue(f"{request.param}_url")
    return url


def proxy_for(url: URL) -> TcpProxy:
    default_port = 5432 if url.get_backend_name() == "postgresql" else 3306
    return TcpProxy(url.host or "127.0.0.1", url.port or default_port)


def new_key() -> str:
    return f"faults/{secrets.token_hex(4)}"


async def outcome(call: Awaitable[object]) -> str:
    """How ``call`` ended: 'returned', or the StorageError it raised."""
    try:
        await asyncio.wait_for(call, HANG_GUARD)
    except StorageError as exc:
        return f"raised {exc}"
    return "returned"


# -- the checker, on histories made by hand ------------------------------------------------------

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _write(value: str, start: float, end: float, outcome: str = ACKNOWLEDGED) -> Write:
    return Write("k", value, start, end, T0 + timedelta(seconds=start), outcome)


def _read(start: float, end: float, seen: Write | str | None, saved: float | None = None) -> Read:
    """A read of ``seen``, with the save time ``saved`` (default: just after its call)."""
    if isinstance(seen, Write):
        saved = seen.start + 1e-6 if saved is None else saved
        seen = seen.value
    when = None if saved is None else T0 + timedelta(seconds=saved)
    return Read("k", start, end, ACKNOWLEDGED, seen, when)


A = _write("a", 0.0, 1.0)
B = _write("b", 2.0, 3.0)
C = _write("c", 0.2, 1.2)
F = _write("f", 1.5, 1.8, FAILED)
LATE = _write("late", 0.5, 1.5, TIMED_OUT)
RETRIED = _write("retried", 0.0, 2.0)  # acknowledged after a retry
MEANWHILE = _write("meanwhile", 1.0, 1.5)

CHECKER_CASES: dict[str, tuple[list[Write], list[Read], set[str]]] = {
    "in order": ([A, B], [_read(1.1, 1.2, A), _read(3.1, 3.2, B)], set()),
    "overlapping writes seen in either order while they run": (
        [A, C],
        [_read(0.5, 0.6, A), _read(0.7, 0.8, C), _read(1.3, 1.4, C)],
        set(),
    ),
    "a failed write landing late in its place": ([A, F], [_read(5, 5.1, F)], set()),
    "a failed write that never landed": ([A, F], [_read(5, 5.1, A)], set()),
    "a failed write landing over a newer save": (
        [LATE, B],
        [_read(3.5, 3.6, B), _read(4, 4.1, LATE)],
        {"read went back", "acknowledged write lost", "stale read"},
    ),
    "a retry writing over a newer save": (
        [RETRIED, MEANWHILE],
        [_read(1.6, 1.7, MEANWHILE), _read(2.5, 2.6, RETRIED)],
        {"read went back", "acknowledged write lost"},
    ),
    "the older of two acknowledged saves": (
        [A, C],
        [_read(1.3, 1.4, A)],
        {"acknowledged write lost"},
    ),
    "a missing key after a save": (
        [A],
        [_read(1.5, 1.6, None)],
        {"acknowledged write lost", "stale read"},
    ),
    "a read from the future": ([B], [_read(1.0, 1.5, B)], {"read from the future"}),
    "an unknown value": ([A], [_read(1.5, 1.6, "zzz", 0.5)], {"unknown value"}),
    "two save times for one write": (
        [A],
        [_read(1.1, 1.2, A), _read(1.3, 1.4, A, 0.1)],
        {"two save times"},
    ),
    "a save time before the call": ([A], [_read(1.1, 1.2, A, -1.0)], {"save time before the call"}),
    "save times out of call order": (
        [A, B],
        [_read(0.5, 0.6, A, 2.5), _read(3.5, 3.6, B, 2.1)],
        {"save times out of call order", "read went back", "acknowledged write lost"},
    ),
}


@pytest.mark.parametrize("case", CHECKER_CASES)
def test_the_checker_flags_exactly_the_broken_rules(case: str) -> None:
    writes, reads, broken = CHECKER_CASES[case]
    assert {anomaly.rule for anomaly in check(writes, reads)} == broken


# -- regression tests --------------------------------------------------------------------------


async def committed_unanswered(
    reader: SqlStore, key: str, value: str, writer_links: list[Link], writing: asyncio.Future[None]
) -> None:
    """Wait until the writer's answer is withheld and ``reader`` sees ``value`` committed."""
    async with asyncio.timeout(HANG_GUARD):
        while not any(link.triggered for link in writer_links) or (
            (snapshot := await reader.load_snapshot(key)) is None or snapshot.value != value
        ):
            assert not writing.done(), (
                f"the write {await outcome(writing)} before the proxy saw its commit "
                "(the key, then COMMIT for save_many): has the way it commits changed?"
            )
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("call", ["save", "save_many"])
async def test_a_retry_after_a_lost_answer_never_writes_over_a_newer_save(
    server_url: URL, call: str
) -> None:
    """A's write commits but its answer never comes back; meanwhile B's newer save is
    acknowledged; then A's link is reset and A retries on a new one. The retry must leave B's
    save in place."""
    key, other = new_key(), new_key()
    async with proxy_for(server_url) as proxy:
        a = SqlStore.from_url(server_url.set(port=proxy.port))
        b = SqlStore.from_url(server_url)
        try:
            await a.save(key, "v0")  # A's connection is open and ready
            a_links = proxy.links
            # Withheld from the answer to the commit: of the statement itself (autocommit), or
            # of the COMMIT after it.
            commit = (key.encode(),) if call == "save" else (key.encode(), b"COMMIT")
            for link in a_links:
                link.withhold_answers(after=commit)
            writing = asyncio.ensure_future(
                a.save(key, "v1") if call == "save" else a.save_many({key: "v1", other: "v1"})
            )
            await committed_unanswered(b, key, "v1", a_links, writing)
            await b.save(key, "v2")
            newer = await b.load_snapshot(key)
            proxy.reset(a_links)
            a_result = await outcome(writing)
            after = await b.load_snapshot(key)
        finally:
            await a.aclose()
            await b.aclose()
    assert newer is not None
    assert after is not None
    assert after == newer, (
        f"{key!r} holds {after.value!r} (updated_at {after.updated_at}), not B's newer "
        f"'v2' (updated_at {newer.updated_at}): A's {call} of 'v1' {a_result}"
    )


@pytest.mark.parametrize("call", ["save", "delete"])
async def test_a_request_that_arrives_after_its_timeout_never_undoes_a_newer_save(
    server_url: URL, call: str
) -> None:
    """A's request is held on its way to the server past A's timeout, and the network refuses
    new connections (so neither a retry nor asyncpg's cancel request gets through): A's call
    fails. B then saves a newer value, acknowledged. When the network comes back the held
    request reaches the server and runs; B's save must still be there."""
    key, spare = new_key(), new_key()
    async with proxy_for(server_url) as proxy:
        a = SqlStore.from_url(server_url.set(port=proxy.port), timeout=STORE_TIMEOUT)
        b = SqlStore.from_url(server_url)
        try:
            await b.save(key, "v0")
            for _ in range(3):  # A's connection has the statement prepared: one request runs it
                await (a.save(key, "v0") if call == "save" else a.delete(spare))
            a_links = proxy.links
            for link in a_links:
                link.hold_requests()
            proxy.refuse()
            with pytest.raises(StorageError):
                await asyncio.wait_for(
                    a.save(key, "v1") if call == "save" else a.delete(key), HANG_GUARD
                )
            held = sum(link.to_server.pending for link in a_links)
            assert held > 0, "A's request never reached the proxy"
            await b.save(key, "v2")
            newer = await b.load_snapshot(key)
            await proxy.restore()  # the network is back: the held request reaches the server
            async with asyncio.timeout(HANG_GUARD):
                await asyncio.gather(*(link.settled() for link in a_links))
            after = await b.load_snapshot(key)
        finally:
            await a.aclose()
            await b.aclose()
    assert newer is not None
    found = "nothing" if after is None else f"{after.value!r} (updated_at {after.updated_at})"
    assert after == newer, (
        f"{key!r} holds {found}, not B's newer 'v2' (updated_at {newer.updated_at}): A's "
        f"{call} failed, then its {held} held request bytes reached the server"
    )


# -- many writers and readers through a schedule of faults --------------------------------------


async def clients(
    stores: Sequence[SqlStore],
    history: History,
    keys: Sequence[str],
    name: str,
    stop: asyncio.Event,
    rng: Random,
    *,
    writers: int,
    readers: int,
) -> None:
    """Writers save (a quarter of the time two keys at once) values unique to them; readers
    read; each on the stores in turn, until ``stop``."""

    async def writer(number: int, store: SqlStore) -> None:
        step = 0
        while not stop.is_set():
            step += 1
            value = f"{name}.{number}.{step}"
            if rng.random() < 0.25:
                await history.save_many(store, dict.fromkeys(rng.sample(keys, 2), value))
            else:
                await history.save(store, rng.choice(keys), value)

    async def reader(store: SqlStore) -> None:
        while not stop.is_set():
            await history.read(store, rng.choice(keys))

    await asyncio.gather(
        *(writer(number, stores[number % len(stores)]) for number in range(writers)),
        *(reader(stores[number % len(stores)]) for number in range(readers)),
    )


async def _answers_withheld_then_reset(links: list[Link], rng: Random, *, drop: bool) -> None:
    for link in links:
        link.withhold_answers(drop=drop)
    await asyncio.sleep(rng.uniform(0.02, 0.3))
    for link in links:
        link.reset()


async def _requests_delayed(links: list[Link], rng: Random) -> None:
    """Requests sent in the window arrive late, most of them after the store's timeout."""
    # Up to six timeouts: past PostgreSQL's graceful close too (SQLAlchemy waits 2 s for it), so
    # some calls fail before their request has even arrived.
    for link in links:
        link.delay_requests(rng.uniform(0.5, 6) * STORE_TIMEOUT)
    await asyncio.sleep(rng.uniform(0.1, 0.4))
    for link in links:
        link.delay_requests(0)  # what was sent meanwhile keeps its delay


async def _reset(links: list[Link], rng: Random) -> None:
    for link in links:
        link.reset()


async def _frozen_then_released(links: list[Link], rng: Random) -> None:
    for link in links:
        link.freeze()
    await asyncio.sleep(rng.uniform(0.1, 2) * STORE_TIMEOUT)
    for link in links:
        link.release()


FAULTS: dict[str, Callable[[list[Link], Random], Awaitable[None]]] = {
    "answers held, then reset": partial(_answers_withheld_then_reset, drop=False),
    "answers dropped, then reset": partial(_answers_withheld_then_reset, drop=True),
    "requests delayed": _requests_delayed,
    "reset": _reset,
    "frozen, then released": _frozen_then_released,
}


async def inject_faults(
    proxy: TcpProxy, rng: Random, injected: Counter[str], enough: Callable[[], bool]
) -> None:
    """One fault after another, each kind in turn, on a random part of the live links."""
    kinds = list(FAULTS)
    while not enough():
        await asyncio.sleep(rng.uniform(0.02, 0.1))
        links = proxy.links
        if not links:
            continue
        kind = kinds[injected.total() % len(kinds)]
        await FAULTS[kind](rng.sample(links, rng.randint(1, max(1, len(links) // 2))), rng)
        injected[kind] += 1


async def start_child(
    url: URL, name: str, seed: int, keys: Sequence[str]
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.test_faults",
        url.render_as_string(hide_password=False),
        name,
        str(seed),
        *keys,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )


async def test_histories_under_faults_are_an_atomic_register_per_key(
    server_url: URL, request: pytest.FixtureRequest
) -> None:
    """Writers and readers in this process (three stores, so several pooled connections) and in
    a second one, all through the proxy, while faults are injected; afterwards, with every link
    closed, a direct read of each key. Every key's history must pass :func:`check`."""
    rng = Random(FAULT_SEED)
    keys = [f"faults/{secrets.token_hex(4)}/{number}" for number in range(4)]
    history = History(guard=HANG_GUARD)
    injected: Counter[str] = Counter()
    stop = asyncio.Event()
    async with proxy_for(server_url) as proxy:
        proxied = server_url.set(port=proxy.port)
        stores = [SqlStore.from_url(proxied, timeout=STORE_TIMEOUT) for _ in range(3)]
        child = await start_child(proxied, "p1", rng.randrange(2**32), keys)
        try:
            running = asyncio.ensure_future(
                clients(stores, history, keys, "p0", stop, rng, writers=6, readers=3)
            )
            await inject_faults(
                proxy,
                rng,
                injected,
                lambda: history.calls >= FAULT_OPS and injected.total() >= FAULT_FAULTS,
            )
            stop.set()
            await running
            out, err = await asyncio.wait_for(child.communicate(b""), HANG_GUARD)
            assert child.returncode == 0, f"the second process failed:\n{err.decode()[-3000:]}"
            history.extend(json.loads(out))
        finally:
            stop.set()
            if child.returncode is None:
                child.kill()
                await child.wait()
            await proxy.restore()  # whatever was held or delayed goes now
            for store in stores:
                await store.aclose()
        async with asyncio.timeout(HANG_GUARD):  # nothing left in flight
            await asyncio.gather(*(link.wait_closed() for link in proxy.links))
    async with SqlStore.from_url(server_url) as direct:
        for key in keys:
            await history.read(direct, key)

    anomalies = check(history.writes, history.reads)
    outcomes = history.outcomes()
    writes = len(history.writes)
    reads = len(history.reads)
    kinds = ", ".join(f"{kind}: {count}" for kind, count in injected.items())
    rules = ", ".join(
        f"{rule}: {count}" for rule, count in Counter(a.rule for a in anomalies).items()
    )
    print(
        f"\n{request.node.callspec.id}: {history.calls} operations checked ({writes} key writes, "
        f"{reads} reads; outcomes {dict(outcomes)}) in 2 processes, seed {FAULT_SEED}; "
        f"{injected.total()} faults injected ({kinds}); {len(anomalies)} anomalies"
        + (f" ({rules})" if anomalies else "")
    )
    for anomaly in anomalies[:10]:
        print(f"  {anomaly}")
    assert not outcomes["hung"], f"{outcomes['hung']} calls hung past {HANG_GUARD} s"
    assert not anomalies, "\n".join(str(anomaly) for anomaly in anomalies[:20])


# -- the second process ------------------------------------------------------------------------


async def _child(url: str, name: str, seed: int, keys: list[str]) -> None:
    """Run clients on one store until stdin closes, then print the history as JSON."""
    history = History(guard=HANG_GUARD)
    stop = asyncio.Event()
    async with SqlStore.from_url(url, timeout=STORE_TIMEOUT) as store:
        running = asyncio.ensure_future(
            clients([store], history, keys, name, stop, Random(seed), writers=2, readers=1)
        )
        await asyncio.to_thread(sys.stdin.read)
        stop.set()
        await running
    print(json.dumps(history.to_json()))


if __name__ == "__main__":
    asyncio.run(_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]))
