"""One write, one true answer (issue 17): a write that returns normally is stored (or ordered
before a newer save), one refused is not, and where the store cannot tell it raises
:class:`~rustrade_store.OutcomeUnknownError`, never "nothing written" or "committed".

Each of the issue's failures 1-5 has a test here, on every backend where it applies, and
writes by a store holding no lease race a take-over (``test_answers_lost`` attacks the other
writes with lost answers). A lost answer is made by a :class:`~tests.proxy.TcpProxy` that
withholds the server's answer to a write that committed, then resets the link (the ``proxied``
fixture), so the store retries on a new connection. Tests assert orderings and histories,
never timings.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from random import Random
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import event

from rustrade_store import (
    BufferedStore,
    ConflictError,
    Lease,
    LeaseHeldError,
    OutcomeUnknownError,
    RestoreReport,
    Snapshot,
    SqlStore,
    StoreError,
)

from .helpers import (
    HANG_GUARD,
    Proxied,
    answer_withheld,
    ended,
    lease_state,
    refusing_values,
    true_or_unknown,
    unique_prefix,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

    from sqlalchemy import URL

    from rustrade_store import JSONValue

FILES = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]
ROUNDS = 100
"""Rounds of the race of failure 1 (the old store lost a save in 35 to 60 of 100)."""
REFUSED = "refusedbythedatabase"


# -- 1. a save refused by a lease released meanwhile ------------------------------------------


@pytest.mark.parametrize("backend", FILES)
@pytest.mark.parametrize("call", ["save", "save_many", "delete"])
async def test_a_write_racing_a_lease_release_is_done_or_refused(
    store: SqlStore, store_url: URL, call: str
) -> None:
    """Store A holds a lease and releases it while store B, holding none, writes under it:
    each write B was told is done is stored (a delete: the key is gone), each refused with
    LeaseHeldError is not, no other answer."""
    prefix = unique_prefix()
    keys = [f"{prefix}k", f"{prefix}j"] if call == "save_many" else [f"{prefix}k"]
    rng = Random(17)
    outcomes: Counter[str] = Counter()
    wrong: list[str] = []
    async with SqlStore.from_url(store_url) as b:
        await b.count()
        for round_ in range(ROUNDS):
            lease = await store.lease(prefix).acquire()
            value = f"r{round_}"
            writing: asyncio.Future[bool | None]
            done: bool | None = None
            after: set[JSONValue] = {value}
            if call == "delete":
                await store.save(keys[0], value)
                writing, done, after = asyncio.ensure_future(b.delete(keys[0])), True, {None}
            elif call == "save":
                writing = asyncio.ensure_future(b.save(keys[0], value))
            else:
                writing = asyncio.ensure_future(b.save_many(dict.fromkeys(keys, value)))
            for _ in range(rng.randrange(40)):  # the release lands anywhere in the write
                await asyncio.sleep(0)
            await lease.release()
            answer = await ended(writing)
            stored = set((await b.load_many(keys)).values())
            outcomes[type(answer).__name__] += 1
            if answer == done and stored != after:
                wrong.append(f"round {round_}: {call} was done, but {stored} is stored")
            elif isinstance(answer, LeaseHeldError) and stored == after:
                wrong.append(f"round {round_}: {call} refused ({answer}), yet done")
            elif answer != done and not isinstance(answer, LeaseHeldError):
                wrong.append(f"round {round_}: {call} answered {answer!r}; {stored} stored")
    print(f"\n{call}: {dict(outcomes)} in {ROUNDS} rounds")
    assert not wrong, f"{len(wrong)} wrong answers of {ROUNDS} ({dict(outcomes)}):\n" + "\n".join(
        wrong[:10]
    )


@pytest.mark.parametrize("backend", FILES)
async def test_a_buffer_flushing_while_a_lease_is_released_never_drops_a_value(
    store: SqlStore, store_url: URL
) -> None:
    """A BufferedStore over store B (holding no lease) flushes while store A releases its lease:
    a flush that returns leaves the value stored; one refused keeps it queued, and the flush
    after the release stores the last value."""
    prefix = unique_prefix()
    key = f"{prefix}k"
    wrong: list[str] = []
    async with BufferedStore(SqlStore.from_url(store_url), delay=HANG_GUARD) as b:
        for round_ in range(ROUNDS // 2):
            lease = await store.lease(prefix).acquire()
            value = f"r{round_}"
            await b.save(key, value)
            flushing = asyncio.ensure_future(b.flush())
            for _ in range(round_ % 40):
                await asyncio.sleep(0)
            await lease.release()
            answer = await ended(flushing)
            stored = await store.load(key)
            if answer is None and stored != value:
                wrong.append(f"round {round_}: flushed, yet {stored!r} is stored")
            elif answer is not None and (stored == value or await b.load(key) != value):
                wrong.append(f"round {round_}: flush raised {answer!r}; {stored!r} stored")
        await b.flush()
        assert await store.load(key) == value
    assert not wrong, "\n".join(wrong[:10])


# -- 2. a compare-and-set whose answer was lost --------------------------------------------------


@pytest.mark.parametrize("then", ["nothing", "a newer save", "a delete, then an older import"])
@pytest.mark.parametrize("form", ["if_updated_at", "if_absent"])
async def test_a_compare_and_set_that_wrote_is_never_called_a_conflict(
    proxied: Proxied, form: str, then: str
) -> None:
    """A's compare-and-set commits, its answer is lost; then nothing, or B saves the key, or
    deletes it and imports a snapshot older than A's write; A retries: A is told it applied, or
    that whether it did is unknown; never ConflictError, which says nothing was written."""
    a, b, proxy = proxied.a, proxied.b, proxied.proxy
    key = f"{proxied.prefix}cas"
    if form == "if_updated_at":
        await b.save(key, "v0")
        snapshot = await a.load_snapshot(key)
        assert snapshot is not None
        writing = a.save(key, "v1", if_updated_at=snapshot.updated_at)
    else:
        writing = a.save(key, "v1", if_absent=True)
    links = proxy.links
    task = asyncio.ensure_future(writing)

    async def committed() -> bool:
        return await b.load(key) == "v1"

    await answer_withheld(links, [key.encode()], task, committed)
    if then == "a newer save":
        await b.save(key, "v2")
    elif then != "nothing":
        mine = await b.load_snapshot(key)
        assert mine is not None
        assert await b.delete(key)
        await b.restore([Snapshot(key, "v2", mine.updated_at - timedelta(microseconds=1))])
    proxy.reset(links)
    answer = await ended(task)
    assert await b.load(key) == ("v1" if then == "nothing" else "v2")
    assert true_or_unknown(answer), f"a compare-and-set that wrote was answered {answer!r}"


async def increment(store: SqlStore, key: str, first: Snapshot | None = None) -> None:
    """The compare-and-set loop: load, add one, save if unchanged; on a conflict, again."""
    snapshot = first
    while True:
        if snapshot is None:
            snapshot = await store.load_snapshot(key)
        assert snapshot is not None
        assert isinstance(snapshot.value, int)
        try:
            await store.save(key, snapshot.value + 1, if_updated_at=snapshot.updated_at)
        except ConflictError:
            snapshot = None
            continue
        return


async def test_the_compare_and_set_loop_never_applies_a_change_twice(
    proxied: Proxied,
) -> None:
    """A and B each increment a counter once with the loop; A's first write commits, its
    answer is lost while B increments. The counter ends at the increments that returned, plus
    at most the ones whose outcome is unknown."""
    a, b, proxy = proxied.a, proxied.b, proxied.proxy
    key = f"{proxied.prefix}counter"
    await b.save(key, 0)
    first = await a.load_snapshot(key)
    links = proxy.links
    a_task = asyncio.ensure_future(increment(a, key, first))

    async def committed() -> bool:
        return await b.load(key) == 1

    await answer_withheld(links, [key.encode()], a_task, committed)
    b_answer = await ended(increment(b, key))
    proxy.reset(links)
    answers = [await ended(a_task), b_answer]
    counter = await b.load(key)
    done = answers.count(None)
    unknown = sum(isinstance(answer, OutcomeUnknownError) for answer in answers)
    assert done + unknown == 2, f"an increment failed: {answers}"
    assert isinstance(counter, int)
    assert done <= counter <= done + unknown, (
        f"the counter is {counter} after {done} increments that returned and {unknown} "
        f"unknown: {answers}"
    )


# -- 3. a restore retried after a lost connection ------------------------------------------------


@pytest.mark.parametrize("call", ["restore", "restore_stream"])
@pytest.mark.parametrize("lost", ["a statement's answer", "the COMMIT's answer"])
async def test_a_restore_that_lost_its_connection_says_what_it_wrote(
    proxied: Proxied, lost: str, call: str
) -> None:
    """A's restore loses its connection: before its COMMIT, it is retried and writes every item
    (its report counts them); after it, it raises OutcomeUnknownError or reports every item
    written. Never "committed" with items left out. A stream, which cannot be replayed, is
    rolled back (before its COMMIT) or raises OutcomeUnknownError, its report "committing"."""
    a, b, proxy = proxied.a, proxied.b, proxied.proxy
    prefix = f"{proxied.prefix}restored/"
    when = datetime.now(UTC)
    items = [Snapshot(f"{prefix}{index}", index, when) for index in range(3)]
    keys = [item.key for item in items]
    links = proxy.links
    streamed = RestoreReport()

    async def stream() -> AsyncIterator[Iterable[Snapshot]]:
        yield items

    if call == "restore":
        restoring = asyncio.ensure_future(a.restore(items))
    else:
        restoring = asyncio.ensure_future(a.restore_stream(stream(), report=streamed))
    if lost == "a statement's answer":
        after = [keys[0].encode()]

        async def committed() -> bool:
            return True
    else:
        after = [keys[-1].encode(), proxied.commit]

        async def committed() -> bool:
            return await b.count(prefix) == len(items)

    await answer_withheld(links, after, restoring, committed)
    proxy.reset(links)
    report = await ended(restoring)
    stored = await b.load_many(keys)
    if call == "restore_stream" and lost == "a statement's answer":
        assert isinstance(report, StoreError), report
        assert not isinstance(report, OutcomeUnknownError), report
        assert (streamed.state, set(stored.values())) == ("rolled back", {None})
        return
    assert stored == {item.key: item.value for item in items}
    if isinstance(report, OutcomeUnknownError):
        assert lost == "the COMMIT's answer", f"a retry that could replay said {report}"
        assert call == "restore" or streamed.state == "committing"
        return
    assert call == "restore", f"a stream whose COMMIT's answer was lost answered {report!r}"
    assert isinstance(report, RestoreReport), report
    assert (report.state, report.added, report.written) == ("committed", len(items), len(items))


# -- 4. an import without the lease against a take-over -------------------------------------------


async def boot(bot: SqlStore, prefix: str, key: str) -> tuple[Lease, JSONValue]:
    """A bot's start: take the lease, then load."""
    lease = await bot.lease(prefix).acquire(wait=HANG_GUARD)
    return lease, await bot.load(key)


@pytest.mark.parametrize("backend", FILES)
@pytest.mark.parametrize("state", ["released", "expired", "never leased"])
async def test_an_import_and_a_take_over_are_serialised(
    store: SqlStore, store_url: URL, state: str
) -> None:
    """An operator's import (a store holding no lease) writes under a prefix and pauses before
    its COMMIT; a bot takes the lease there and loads. Either the import commits first and the
    bot's load sees it, or the take-over does and the import raises LeaseHeldError."""
    prefix = unique_prefix()
    key = f"{prefix}halted"
    await lease_state(store, store_url, prefix, state)
    paused, resume, take_over_sent = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def batches() -> AsyncIterator[Iterable[Snapshot]]:
        yield [Snapshot(key, {"halted": False}, datetime.now(UTC))]
        paused.set()  # written, not committed: the COMMIT follows the end of the stream
        await resume.wait()

    def sent(*_: object) -> None:
        take_over_sent.set()

    async with SqlStore.from_url(store_url) as operator, SqlStore.from_url(store_url) as bot:
        await bot.count()
        event.listen(bot.engine.sync_engine, "before_cursor_execute", sent)
        importing = asyncio.ensure_future(operator.restore_stream(batches()))
        await asyncio.wait_for(asyncio.shield(paused.wait()), HANG_GUARD)
        booting = asyncio.ensure_future(boot(bot, prefix, key))
        # The take-over has sent its first statement, or is done: give it a moment to reach
        # the database before the import goes on (it may then wait there: that is the point).
        await asyncio.wait_for(asyncio.shield(take_over_sent.wait()), HANG_GUARD)
        await asyncio.wait([booting], timeout=0.2)
        resume.set()
        imported = await ended(importing)
        lease, first_load = await asyncio.wait_for(booting, HANG_GUARD)
        final = await bot.load(key)
        await lease.release()
    if isinstance(imported, RestoreReport):
        assert first_load == {"halted": False}, (
            f"the import committed, yet the bot that took the lease loaded {first_load!r}"
        )
        assert final == {"halted": False}
    else:
        assert isinstance(imported, LeaseHeldError), f"the import raised {imported!r}"
        assert (first_load, final) == (None, None), "a refused import wrote"


TAKE_OVERS = 40
"""Rounds of a write racing a take-over, each on a prefix of its own."""


@pytest.mark.parametrize("backend", FILES)
@pytest.mark.parametrize("call", ["save", "save_many", "delete"])
async def test_a_write_racing_a_take_over_is_seen_by_the_new_holder_or_refused(
    store: SqlStore, store_url: URL, call: str
) -> None:
    """Store B, holding no lease, writes while the bot's store takes the lease (released
    before, or never taken) and loads: a write B was told is done is what the bot's first
    load sees; one refused with LeaseHeldError is not stored. No other answer."""
    rng = Random(4)
    wrong: list[str] = []
    outcomes: Counter[str] = Counter()
    async with (
        SqlStore.from_url(store_url) as b,
        SqlStore.from_url(store_url, ignore_leases=True) as seeder,
    ):
        for round_ in range(TAKE_OVERS):
            prefix = unique_prefix()
            key, value = f"{prefix}k", f"r{round_}"
            await lease_state(store, store_url, prefix, ("never leased", "released")[round_ % 2])
            writing: asyncio.Future[bool | None]
            if call == "delete":
                await seeder.save(key, "seeded")  # no lease row made
                writing = asyncio.ensure_future(b.delete(key))
            elif call == "save":
                writing = asyncio.ensure_future(b.save(key, value))
            else:
                writing = asyncio.ensure_future(b.save_many({key: value, f"{prefix}j": value}))
            for _ in range(rng.randrange(40)):
                await asyncio.sleep(0)
            lease, first_load = await asyncio.wait_for(boot(store, prefix, key), HANG_GUARD)
            answer = await ended(writing)
            final = await store.load(key)
            await lease.release()
            outcomes[type(answer).__name__] += 1
            written = None if call == "delete" else value
            before = "seeded" if call == "delete" else None
            if isinstance(answer, LeaseHeldError):
                if (first_load, final) != (before, before):
                    wrong.append(f"round {round_}: refused, yet {first_load!r}, {final!r} stored")
            elif answer in (None, True):
                if first_load != written:
                    wrong.append(f"round {round_}: done, yet the new holder loaded {first_load!r}")
            else:
                wrong.append(f"round {round_}: {call} answered {answer!r}; {final!r} stored")
    print(f"\n{call}: {dict(outcomes)} in {TAKE_OVERS} rounds")
    assert not wrong, "\n".join(wrong[:10])


# -- 5. group commit: one caller's refused row ---------------------------------------------------


BATCHES = {
    "one key, its prefix new": ("a/k", "a/k", False),
    "one key, its prefix written before": ("a/k", "a/k", True),
    "two keys, their prefix new": ("a/k", "a/j", False),
    "two keys, their prefix written before": ("a/k", "a/j", True),
    "two prefixes, the refused one's new": ("a/k", "b/j", True),
}
"""The fine save's key, the refused save's key, and whether prefix ``a/`` was written before
(it then has a lease row, and its saves apply in the batch's first statement)."""


@pytest.mark.parametrize("batch", BATCHES)
async def test_a_refused_save_in_a_batch_fails_only_its_own_caller(
    store: SqlStore, batch: str
) -> None:
    """Two saves in one group-commit batch; the database refuses the later one's value: the
    earlier save applies and returns normally, the later one raises."""
    fine, refused, written = BATCHES[batch]
    prefixes = {"a/": unique_prefix(), "b/": unique_prefix()}
    fine_key, refused_key = (prefixes[key[:2]] + key[2:] for key in (fine, refused))
    if written:
        await store.save(f"{prefixes['a/']}before", 0)
    async with refusing_values(store, REFUSED):
        earlier, later = await asyncio.gather(
            store.save(fine_key, "fine"), store.save(refused_key, REFUSED), return_exceptions=True
        )
        stored = await store.load(fine_key)
    assert (earlier, stored) == (None, "fine"), (
        f"the earlier save, whose value is fine, raised {earlier!r}; {stored!r} is stored"
    )
    assert isinstance(later, StoreError), later
