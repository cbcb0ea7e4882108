"""Failover: the primary stops mid-run, its standby is promoted, and the writers carry on there.

Each run builds its own primary and standby (:mod:`tests.cluster`: PostgreSQL 15 clusters on
free ports, dropped at the end whatever happens) and opens one store on the multi-host URL in
SQLAlchemy's form for asyncpg, ``?host=127.0.0.1:P1&host=127.0.0.1:P2&target_session_attrs=
read-write``. Writers save continuously (most saves to a key of their own, so that each
acknowledged save can be looked for afterwards; the rest to a few shared keys, a fifth of them
through ``save_many``) and readers read, while the primary is stopped in ``immediate`` mode and,
``RUSTRADE_FAILOVER_PAUSE`` seconds later (1 by default: a failover manager's time to decide),
the standby promoted. The writers go on on the new primary, then every key is read there and
:func:`tests.history.check` holds the history to the store's register.

A read may see a save that was never acknowledged and that the new primary lacks (committed on
the old primary, never replicated): such reads are counted and left out of the check, since a
save that never returned may be lost. Acknowledged saves are what counts: with synchronous
replication none may be lost; with asynchronous replication the run counts those lost.

No call in flight at the failover may fail: the store retries a lost connection until its
deadline, and a server going away looks lost in several ways, each also tested on its own: a
refused connection, a standby answering read-only, no host read-write yet, a server "shutting
down" at connect, a connection closed during the handshake.

The clusters need root on a machine with Debian's PostgreSQL 15 (elsewhere those tests skip, and
fail under ``CI=true``); ``make failover`` runs this module alone and prints the figures.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from random import Random
from typing import TYPE_CHECKING, Any, Self

import pytest

from rustrade_store import SqlStore, StorageError, upgrade

from .cluster import drop_leftovers, missing, replicated_pair
from .helpers import unavailable
from .history import ACKNOWLEDGED, FAILED, TIMED_OUT, History, Read, Write, check, clients

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterator

    from sqlalchemy import URL

    from .cluster import Failover, ReplicatedPair
    from .history import Anomaly

pytestmark = [pytest.mark.postgres, pytest.mark.failover]

STORE_TIMEOUT = 10.0
"""Each call's deadline: the store retries a lost connection until then, so a call in flight at
the failover returns normally if the standby is promoted in time."""
PAUSE = float(os.environ.get("RUSTRADE_FAILOVER_PAUSE", "1.0"))
"""Seconds between the primary's stop and the standby's promotion."""
LAG = float(os.environ.get("RUSTRADE_FAILOVER_LAG", "0.5"))
"""Seconds the asynchronous standby lags before the crash (its primary's WAL sender stalled):
what that primary acknowledged meanwhile is what the failover loses. 0: no stall, the lag of a
standby on the same machine (well under a millisecond)."""
BEFORE = 2.0
"""Seconds of writes before the failover."""
AFTER = 2.0
"""Seconds of writes on the new primary, after the first one acknowledged there."""
WRITERS = 8
READERS = 2
HANG_GUARD = 60.0
"""Seconds after which a call counts as hung, far above ``STORE_TIMEOUT``."""


@pytest.fixture(scope="module")
def clusters() -> None:
    """Skip (fail under CI) where clusters cannot be made; drop those of crashed runs."""
    reason = missing()
    if reason is not None:
        unavailable("a PostgreSQL primary and standby", RuntimeError(reason))
    for name in drop_leftovers():
        print(f"\ndropped cluster {name}, left by an earlier run")


@pytest.fixture
def sync_pair(clusters: None) -> Iterator[ReplicatedPair]:
    with replicated_pair(synchronous=True) as pair:
        yield pair


@pytest.fixture
def async_pair(clusters: None) -> Iterator[ReplicatedPair]:
    with replicated_pair(synchronous=False) as pair:
        yield pair


@dataclass(slots=True)
class NotedHistory(History):
    """A :class:`History` that also keeps the message of every failed call."""

    errors: list[str] = field(default_factory=list)

    async def _call(self, call: Awaitable[Any]) -> tuple[str, Any]:
        async def noted() -> Any:
            try:
                return await call
            except StorageError as exc:
                self.errors.append(str(exc))
                raise

        return await History._call(self, noted())


async def outcome(call: Awaitable[object]) -> str:
    """How ``call`` ended: 'returned', or the StorageError it raised."""
    try:
        await asyncio.wait_for(call, HANG_GUARD)
    except StorageError as exc:
        return f"raised {exc}"
    return "returned"


# -- writers and readers through a failover ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """A run's history and what it shows."""

    history: NotedHistory
    failover: Failover
    finals: dict[str, Read]
    """Each key as the new primary holds it at the end."""
    vanished: list[Read]
    """Reads of a save never acknowledged that the new primary lacks."""
    anomalies: list[Anomaly]
    """The checker's findings, those reads left out."""
    lost: list[Write]
    """Acknowledged saves the new primary lacks (and holds nothing newer in their place)."""

    def acknowledged_ends(self) -> list[float]:
        return sorted({w.end for w in self.history.writes if w.acknowledged})

    def first_on_new_primary(self) -> float | None:
        """When the first save acknowledged after the old primary was gone returned."""
        return next((end for end in self.acknowledged_ends() if end > self.failover.stopped), None)

    def last_on_old_primary(self) -> float:
        return max(end for end in self.acknowledged_ends() if end <= self.failover.stopped)

    def report(self, title: str) -> str:
        history = self.history
        acknowledged = sum(w.acknowledged for w in history.writes)
        failed = sorted((w for w in history.writes if not w.acknowledged), key=lambda w: w.end)
        first_new = self.first_on_new_primary()
        seen = "never" if first_new is None else f"{first_new - self.last_on_old_primary():.2f} s"
        lines = [
            f"{title}: {history.calls} operations ({len(history.writes)} key writes, "
            f"{acknowledged} acknowledged; {len(history.reads)} reads), "
            f"outcomes {dict(history.outcomes())}",
            f"  failover: primary stopped in {self.failover.stopped - self.failover.stopping:.2f}"
            f" s, standby promoted {self.failover.took:.2f} s after the stop began "
            f"(pause {PAUSE} s)",
            f"  writers saw: no acknowledgement for {seen} (last on the old primary to first on "
            f"the new); longest call {max(w.end - w.start for w in history.writes):.2f} s",
        ]
        if failed and first_new is not None:
            lines.append(
                f"  {len(failed)} failed key writes; first failed call to first success on the "
                f"new primary: {first_new - failed[0].end:.2f} s"
            )
        lines.append(
            f"  acknowledged saves lost: {len(self.lost)}; reads of never-acknowledged saves "
            f"that vanished: {len(self.vanished)}; anomalies: {len(self.anomalies)} "
            f"{dict(Counter(a.rule for a in self.anomalies))}"
        )
        lines += [f"  failed: {error}" for error in dict.fromkeys(history.errors)]
        if self.lost:
            ends = [w.end - self.failover.stopping for w in self.lost]
            lines.append(
                f"  the lost saves were acknowledged from {min(ends):+.2f} s to {max(ends):+.2f} "
                f"s of the stop; the first: {self.lost[0].key} = {self.lost[0].value!r}"
            )
        lines += [f"  {anomaly}" for anomaly in self.anomalies[:5]]
        return "\n".join(lines)


async def read_all(url: URL, keys: list[str]) -> dict[str, Read]:
    """Each key as stored at ``url``, read after the run."""
    finals = History(guard=HANG_GUARD)
    async with SqlStore.from_url(url, timeout=STORE_TIMEOUT) as store:
        for start in range(0, len(keys), 100):
            await asyncio.gather(*(finals.read(store, key) for key in keys[start : start + 100]))
    failed = [read for read in finals.reads if read.outcome != ACKNOWLEDGED]
    assert not failed, f"{len(failed)} reads failed on the new primary, of {failed[0].key!r} first"
    return {read.key: read for read in finals.reads}


def vanished_reads(history: History, finals: dict[str, Read]) -> list[Read]:
    """The reads that saw a save never acknowledged, newer than what the new primary holds."""
    writes = {(w.key, w.value): w for w in history.writes}
    return [
        read
        for read in history.reads
        if read.outcome == ACKNOWLEDGED
        and (write := writes.get((read.key, read.value or ""))) is not None
        and not write.acknowledged
        and finals[read.key].saved < read.saved
    ]


def lost_saves(history: History, finals: dict[str, Read]) -> list[Write]:
    """Acknowledged saves the new primary lacks: their key is missing, or holds a save older
    than theirs (saved before their call, or by a call that ended before theirs began)."""
    writes = {(w.key, w.value): w for w in history.writes}
    lost = []
    for write in history.writes:
        final = finals[write.key]
        if not write.acknowledged or final.value == write.value:
            continue
        if (
            final.value is None
            or final.saved < write.called_at
            or writes[(write.key, final.value)].end < write.start
        ):
            lost.append(write)
    return lost


async def run_through_failover(pair: ReplicatedPair, seed: int, lag: float = 0.0) -> Run:
    """Writers and readers through the multi-host URL while the pair fails over, its
    replication stalled for the last ``lag`` seconds before; then every key read on the new
    primary."""
    url = pair.url()
    await upgrade(url)  # through the multi-host URL: on the primary, the one read-write host
    history = NotedHistory(guard=HANG_GUARD)
    stop = asyncio.Event()
    async with SqlStore.from_url(url, timeout=STORE_TIMEOUT) as store:
        running = asyncio.ensure_future(
            clients(
                [store],
                history,
                stop,
                Random(seed),
                prefix="failover",
                writers=WRITERS,
                readers=READERS,
            )
        )
        try:
            await asyncio.sleep(BEFORE)
            if lag:
                await asyncio.to_thread(pair.stall_replication)
                await asyncio.sleep(lag)
            failover = await asyncio.to_thread(pair.failover, PAUSE)
            async with asyncio.timeout(STORE_TIMEOUT + HANG_GUARD):
                while not any(w.acknowledged and w.end > failover.stopped for w in history.writes):
                    assert not running.done(), "the clients stopped"
                    await asyncio.sleep(0.05)
            await asyncio.sleep(AFTER)
        finally:
            stop.set()
            await running
    keys = sorted({w.key for w in history.writes})
    finals = await read_all(pair.direct_url(pair.standby), keys)
    vanished = vanished_reads(history, finals)
    kept = [read for read in history.reads if read not in vanished]
    anomalies = check(history.writes, [*kept, *finals.values()])
    return Run(history, failover, finals, vanished, anomalies, lost_saves(history, finals))


def assert_carried_on(run: Run) -> None:
    """No call hung or failed, and the writers were acknowledged on the new primary within the
    timeout."""
    outcomes = run.history.outcomes()
    assert not outcomes["hung"], f"{outcomes['hung']} calls hung past {HANG_GUARD} s"
    first = run.first_on_new_primary()
    assert first is not None, "no save was acknowledged on the new primary"
    assert first - run.failover.promoted <= STORE_TIMEOUT, (
        f"the first save on the new primary returned {first - run.failover.promoted:.1f} s "
        f"after the promotion, beyond the store's timeout of {STORE_TIMEOUT} s"
    )
    # Promotion comes well inside the deadline, so every call in flight must have returned.
    failed = outcomes[FAILED] + outcomes[TIMED_OUT]
    assert not failed, (
        f"{failed} calls failed during a failover shorter than their deadline "
        f"({STORE_TIMEOUT} s):\n" + "\n".join(dict.fromkeys(run.history.errors))
    )


async def test_synchronous_replication_loses_no_acknowledged_save(
    sync_pair: ReplicatedPair,
) -> None:
    settings = sync_pair.settings()
    assert settings["synchronous_standby_names"] == f'"{sync_pair.standby.name}"', settings
    assert settings["synchronous_commit"] == "on", settings
    run = await run_through_failover(sync_pair, seed=secrets.randbelow(2**32))
    print("\n" + run.report("synchronous replication"))
    assert not run.lost, f"{len(run.lost)} acknowledged saves lost:\n{run.report('sync')}"
    assert not run.anomalies, "\n".join(str(anomaly) for anomaly in run.anomalies[:20])
    assert_carried_on(run)


LOSS_RULES = {"acknowledged write lost", "stale read", "read went back"}
"""What losing saves at a failover looks like to the checker; nothing else may show."""


async def test_asynchronous_replication_counts_the_acknowledged_saves_lost(
    async_pair: ReplicatedPair,
) -> None:
    """The figure for the docs: how many acknowledged saves the new primary lacks, with the
    standby ``LAG`` seconds behind at the crash. Checked only for sanity: each lost save was
    acknowledged in that lag (or, without a stall, the last second), and with a stall some
    are lost."""
    assert async_pair.settings()["synchronous_standby_names"] == ""
    run = await run_through_failover(async_pair, seed=secrets.randbelow(2**32), lag=LAG)
    print("\n" + run.report(f"asynchronous replication, the standby {LAG} s behind"))
    early = [w for w in run.lost if w.end < run.failover.stopping - max(LAG, 1.0)]
    assert not early, f"saves acknowledged before the lag began were lost: {early[:5]}"
    assert run.lost or not LAG, f"no save lost though the standby was {LAG} s behind"
    others = [anomaly for anomaly in run.anomalies if anomaly.rule not in LOSS_RULES]
    assert not others, "\n".join(str(anomaly) for anomaly in others[:20])
    assert_carried_on(run)


# -- the ways a failing-over server turns a connection away, one at a time ---------------------


async def test_standbys_refusing_writes_are_retried_until_one_is_promoted(
    sync_pair: ReplicatedPair,
) -> None:
    """Between the primary's stop and the standby's promotion, a store finds no host that
    takes writes. Without ``target_session_attrs`` its new connection lands on the standby,
    which refuses the write ("cannot execute INSERT in a read-only transaction"); with
    ``target_session_attrs=read-write`` and every reachable host a standby (a switchover
    demotes the old primary before it promotes the new one), asyncpg finds no host at all
    ("None of the hosts match the target attribute requirement"). Both are lost connections:
    the save is retried until its deadline and returns once the standby is promoted."""
    await upgrade(sync_pair.url())
    stores = {
        "a standby answering read-only": SqlStore.from_url(
            sync_pair.url(read_write=False), timeout=STORE_TIMEOUT
        ),
        "no host read-write": SqlStore.from_url(
            sync_pair.url(sync_pair.standby), timeout=STORE_TIMEOUT
        ),
    }
    try:
        await stores["a standby answering read-only"].save("failover/read-only", "before")
        await asyncio.to_thread(sync_pair.primary.stop, "immediate")
        promoting = asyncio.ensure_future(asyncio.to_thread(_promote_after, sync_pair, PAUSE))
        started = time.monotonic()
        results = await asyncio.gather(
            *(outcome(store.save(f"failover/{case}", "after")) for case, store in stores.items())
        )
        took = time.monotonic() - started
        await promoting
        ended = dict(zip(stores, results, strict=True))
    finally:
        for store in stores.values():
            await store.aclose()
    async with SqlStore.from_url(sync_pair.direct_url(sync_pair.standby)) as promoted:
        stored = await promoted.load_many(f"failover/{case}" for case in stores)
    print(f"\nstandbys refusing writes, after {took:.2f} s: {ended}")
    failed = {case: result for case, result in ended.items() if result != "returned"}
    assert not failed, f"saves while no host took writes failed: {failed}"
    assert set(stored.values()) == {"after"}, stored


def _promote_after(pair: ReplicatedPair, pause: float) -> None:
    time.sleep(pause)
    pair.standby.promote()


def _error_response(sqlstate: str, message: str) -> bytes:
    """A FATAL ErrorResponse message of PostgreSQL's protocol."""
    fields = b"".join(
        code + text.encode() + b"\0"
        for code, text in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", message))
    )
    return b"E" + struct.pack("!i", len(fields) + 5) + fields + b"\0"


_ENCRYPTION_REQUESTS = {80877103, 80877104}
"""The codes of the SSLRequest and GSSENCRequest that may come before the startup message."""


class GoingDown:
    """A loopback port in front of a PostgreSQL server that turns every connection away as a
    server going down does, until :meth:`recover`; then it forwards them.

    ``shutting down``: answers the startup message with PostgreSQL's FATAL 57P03 ("the database
    system is shutting down"). ``closed``: closes the connection once the startup message is
    in, before authentication, as a server killed mid-handshake does.
    """

    __slots__ = ("_server", "_tasks", "_upstream", "how", "port", "turned_away")

    def __init__(self, upstream: tuple[str, int], how: str) -> None:
        self._upstream = upstream
        self.how = how
        self.turned_away = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def recover(self) -> None:
        self.how = "forward"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.how == "forward":
                await self._forward(reader, writer)
            else:
                await self._turn_away(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client gave up on this connection: it is its own to retry
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _turn_away(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            (length,) = struct.unpack("!i", await reader.readexactly(4))
            body = await reader.readexactly(length - 4)
            if struct.unpack("!i", body[:4])[0] not in _ENCRYPTION_REQUESTS:
                break  # the startup message
            writer.write(b"N")  # no encryption here
            await writer.drain()
        self.turned_away += 1
        if self.how == "shutting down":
            writer.write(_error_response("57P03", "the database system is shutting down"))
            await writer.drain()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._upstream)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while chunk := await source.read(65536):
                    sink.write(chunk)
                    await sink.drain()
            finally:
                sink.close()

        try:
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        finally:
            upstream_writer.close()


@pytest.mark.parametrize("how", ["shutting down", "closed"])
async def test_a_server_going_down_at_connect_is_retried_until_the_deadline(
    postgres_url: URL, how: str
) -> None:
    """A new connection to a server going down gets "the database system is shutting down"
    (57P03) or is closed mid-handshake ("connection was closed in the middle of operation"):
    a lost connection, retried until the deadline. Here the server comes back after
    ``PAUSE`` seconds, and the save returns."""
    upstream = (postgres_url.host or "127.0.0.1", postgres_url.port or 5432)
    key = f"failover/going-down/{secrets.token_hex(4)}"
    async with GoingDown(upstream, how) as server:
        url = postgres_url.set(host="127.0.0.1", port=server.port)
        async with SqlStore.from_url(url, timeout=STORE_TIMEOUT) as store:
            loop = asyncio.get_running_loop()
            loop.call_later(PAUSE, server.recover)
            result = await outcome(store.save(key, "v"))
            turned_away = server.turned_away
    assert turned_away > 0, "no connection was turned away"
    assert result == "returned", f"a save while the server was {how} {result}"
