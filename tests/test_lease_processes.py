"""Leases between real processes on real servers.

Each copy of the bot is a ``lease_child.py`` process with a store of its own, driven a command at
a time, and stopped, resumed or killed with signals. The tests wait on the lines the children
print, never on sleeps. Every test runs on an SQLite file, PostgreSQL and MariaDB, except the
renewal tests under load: an import on SQLite, 64 concurrent savers on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from rustrade_store import Snapshot, SqlStore, resolve_url, upgrade
from rustrade_store.transfer import export

from .processes import Child, empty

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import URL

CHILD = Path(__file__).with_name("lease_child.py")
ROOT = CHILD.parent.parent
CLI = Path(sys.executable).with_name("rustrade-store")
PREFIX = "bot1/"
KEY = "bot1/breaker"
TTL = 1.0
"""The ttl of a lease a test lets expire: short, so that the tests stay fast."""
LONG_TTL = 30.0
"""The ttl of a lease that must outlive the test."""
WAIT = 30.0
"""How long a second copy waits for a lease (with a ttl of TTL, it asks every 0.1 s)."""


class Spares:
    """Children kept ready, so that a test does not wait a second for each one's Python and
    SQLAlchemy to load: one more is started whenever one is taken, and a child a test leaves
    alive is reset (a new store in the same process) and kept for the next test."""

    def __init__(self) -> None:
        self._ready: dict[tuple[str, float], list[Child]] = {}
        self._taken: list[tuple[tuple[str, float], Child]] = []

    def _start(self, url: str, timeout: float) -> Child:
        return Child(
            subprocess.Popen(
                [sys.executable, str(CHILD), url, str(timeout)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        )

    async def take(self, url: URL, store_timeout: float = 10.0) -> Child:
        """A child on ``url`` (its store's timeout ``store_timeout``) whose store has answered
        a query."""
        where = (url.render_as_string(hide_password=False), store_timeout)
        ready = self._ready.setdefault(where, [])
        child = ready.pop(0) if ready else self._start(*where)
        if not ready:
            ready.append(self._start(*where))
        self._taken.append((where, child))
        assert await child.ask("ready") == f"READY {child.pid}"
        return child

    async def give_back(self) -> None:
        """Reset the children the test took and left alive, for the next test; end the rest."""
        while self._taken:
            where, child = self._taken.pop()
            if child.killed or child.process.poll() is not None:
                child.close()
                continue
            child.resume()
            if await child.ask("reset") == f"READY {child.pid}":
                fresh = Child(child.process)
                self._ready[where].insert(0, fresh)
            else:
                child.close()

    def close(self) -> None:
        for _, child in self._taken:
            child.close()
        for ready in self._ready.values():
            for child in ready:
                child.close()


@pytest.fixture(scope="module")
def all_spares() -> Iterator[Spares]:
    started = Spares()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def spares(all_spares: Spares) -> Iterator[Spares]:
    """The module's children; those a test took are reset or ended after it."""
    try:
        yield all_spares
    finally:
        asyncio.run(all_spares.give_back())


@pytest.fixture(scope="module")
def sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> URL:
    """One migrated SQLite file for the module, so that spare children can be started on it."""
    url = resolve_url(f"sqlite:///{tmp_path_factory.mktemp('leases') / 'state.db'}")
    asyncio.run(upgrade(url))
    return url


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def url(request: pytest.FixtureRequest) -> URL:
    """A migrated, emptied database of each backend: the module's SQLite file, or the run's
    PostgreSQL or MariaDB database."""
    name = "sqlite_file" if request.param == "sqlite" else f"{request.param}_url"
    found: URL = request.getfixturevalue(name)
    asyncio.run(empty(found))
    return found


def parse(line: str) -> tuple[str, str]:
    tag, _, rest = line.partition(" ")
    return tag, rest


def refusal(line: str, error: str) -> dict[str, Any]:
    """The details of an answer that is ``error`` (LeaseHeldError or LeaseLostError)."""
    tag, rest = parse(line)
    assert tag == error, line
    details: dict[str, Any] = json.loads(rest)
    return details


def held(line: str) -> tuple[int, dict[str, Any]]:
    """The token and holder of a ``HELD`` answer."""
    tag, rest = parse(line)
    assert tag == "HELD", line
    token, _, holder = rest.partition(" ")
    return int(token), json.loads(holder)


def status(line: str) -> tuple[bool, int, str, int]:
    """Whether it holds its lease, the token, the expiry and the number of renewals."""
    tag, rest = parse(line)
    assert tag == "STATUS", line
    is_held, token, expires_at, renewals = rest.split(" ")
    return json.loads(is_held), int(token), expires_at, int(renewals)


async def load(url: URL, *keys: str) -> dict[str, Any]:
    async with SqlStore.from_url(url) as store:
        return await store.load_many(keys)


def cli(url: URL, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "--url", url.render_as_string(hide_password=False), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def backend(url: URL) -> str:
    return {"sqlite": "SQLite", "postgresql": "PostgreSQL"}.get(url.get_backend_name(), "MariaDB")


# -- one holder ------------------------------------------------------------------------------

ROUNDS = 4


async def test_two_processes_race_and_exactly_one_wins(url: URL, spares: Spares) -> None:
    """Both ask at the same moment, round after round: the first round races to insert the
    lease row, the others to take over a released one. Exactly one wins each time, and the
    loser's LeaseHeldError names the winner."""
    pair = [await spares.take(url), await spares.take(url)]
    winners = []
    for round_ in range(1, ROUNDS + 1):
        for child in pair:
            child.send("acquire", PREFIX, LONG_TTL, 0)
        answers = await asyncio.gather(*(child.answer() for child in pair))
        won = [index for index, line in enumerate(answers) if line.startswith("HELD ")]
        assert len(won) == 1, f"round {round_}: {answers}"
        winner = pair[won[0]]
        token, holder = held(answers[won[0]])
        assert (token, holder["pid"]) == (round_, winner.pid)
        details = refusal(answers[1 - won[0]], "LeaseHeldError")
        assert details["holder"] == holder, f"round {round_}: the loser heard {details['message']}"
        assert f"pid {winner.pid} " in details["message"]
        assert await winner.ask("release") == "RELEASED"
        winners.append(winner.pid)
    print(f"\nrace on {backend(url)}: {ROUNDS} rounds, one winner each (pids {winners})")


async def test_a_second_copy_that_never_calls_lease_is_refused(url: URL, spares: Spares) -> None:
    """A copy that skips ``lease()`` gets LeaseHeldError naming the holder on every write under
    the prefix (save, save_many, delete), as does the operator's ``put``; other prefixes are
    free, and nothing it sent is written."""
    holder, copy = await spares.take(url), await spares.take(url)
    held(await holder.ask("acquire", PREFIX, LONG_TTL, 0))
    assert await holder.ask("save", KEY, {"halted": True}) == f"SAVED {KEY}"
    attempts: list[tuple[Any, ...]] = [
        ("save", KEY, {"halted": False}),
        ("save", "bot1/new", 1),
        ("save_many", {"bot2/x": 1, KEY: {"halted": False}}),
        ("delete", KEY),
    ]
    for attempt in attempts:
        details = refusal(await copy.ask(*attempt), "LeaseHeldError")
        assert details["holder"]["pid"] == holder.pid, attempt
        assert f"pid {holder.pid} " in details["message"]
    put = cli(url, "put", KEY, '{"halted": false}')
    assert put.returncode != 0, put
    assert f"pid {holder.pid} " in put.stderr
    assert await copy.ask("save", "bot2/x", 2) == "SAVED bot2/x"
    assert await copy.ask("save", "no-prefix", 3) == "SAVED no-prefix"
    assert await load(url, KEY, "bot1/new", "bot2/x") == {
        KEY: {"halted": True},
        "bot1/new": None,
        "bot2/x": 2,
    }
    assert not holder.lost
    print(f"\n{backend(url)}: put exited {put.returncode}: {put.stderr.strip()}")


# -- a holder that stops, a holder that dies -------------------------------------------------


async def test_a_holder_stopped_past_its_ttl_is_fenced_out(url: URL, spares: Spares) -> None:
    """SIGSTOP the holder; a second copy waits for the lease to expire, takes it and saves;
    SIGCONT the first: its next save raises LeaseLostError, and its value never appears."""
    first, second = await spares.take(url), await spares.take(url)
    token, _ = held(await first.ask("acquire", PREFIX, TTL, 0))
    assert await first.ask("save", KEY, {"by": "first", "n": 1}) == f"SAVED {KEY}"
    first.stop()
    taken, holder = held(await second.ask("acquire", PREFIX, TTL, WAIT))
    assert (taken, holder["pid"]) == (token + 1, second.pid)
    assert await second.ask("save", KEY, {"by": "second"}) == f"SAVED {KEY}"
    first.send("save", KEY, {"by": "first", "n": 2})  # queued before it runs again
    first.resume()
    lost = refusal(await first.answer(), "LeaseLostError")
    for attempt in [("save", "bot1/other", 1), ("save_many", {KEY: 3}), ("delete", KEY)]:
        refusal(await first.ask(*attempt), "LeaseLostError")
    assert await first.ask("save", "bot2/free", 1) == "SAVED bot2/free"
    is_held, *_ = status(await first.ask("status"))
    assert not is_held
    assert len(first.lost) == 1, first.lost  # on_lost ran, once
    assert await load(url, KEY, "bot1/other") == {KEY: {"by": "second"}, "bot1/other": None}
    how = "renewal" if "renewal" in lost["message"] else "the save's own statement"
    print(f"\n{backend(url)}: the resumed holder was fenced out by {how}: {lost['message']}")


async def test_a_resumed_holder_knows_it_lost_before_it_writes(url: URL, spares: Spares) -> None:
    """SIGSTOP the holder past its ttl; a second copy takes the lease; SIGCONT the first and
    ask it, before anything else, whether it holds the lease: it does not, and its ``on_lost``
    has run, by its own clock, with no statement needed to find out."""
    first, second = await spares.take(url), await spares.take(url)
    token, _ = held(await first.ask("acquire", PREFIX, TTL, 0))
    first.stop()
    taken, _ = held(await second.ask("acquire", PREFIX, TTL, WAIT))
    assert taken == token + 1
    first.resume()
    is_held, *_ = status(await first.ask("status"))
    assert not is_held
    assert len(first.lost) == 1, first.lost


async def test_a_killed_holder_is_replaced_after_its_ttl(url: URL, spares: Spares) -> None:
    """SIGKILL the holder: its lease outlives it until its ttl, then a second copy takes it
    (a higher token) and saves."""
    first, second = await spares.take(url), await spares.take(url)
    token, _ = held(await first.ask("acquire", PREFIX, TTL, 0))
    assert await first.ask("save", KEY, {"by": "first"}) == f"SAVED {KEY}"
    _, _, last_expiry, _ = status(await first.ask("status"))
    first.kill()
    taken, holder = held(await second.ask("acquire", PREFIX, TTL, WAIT))
    assert (taken, holder["pid"]) == (token + 1, second.pid)
    # Taken only once the dead holder's lease had expired, by the database's clock.
    assert datetime.fromisoformat(holder["since"]) >= datetime.fromisoformat(last_expiry)
    assert await second.ask("save", KEY, {"by": "second"}) == f"SAVED {KEY}"
    assert await load(url, KEY) == {KEY: {"by": "second"}}


# -- backups ---------------------------------------------------------------------------------


async def test_an_export_under_a_lease_has_no_lease_row_and_its_import_leaves_the_lease(
    url: URL, spares: Spares, tmp_path: Path
) -> None:
    """``rustrade-store export`` while a lease is held writes no lease row. Importing that file
    back is refused as a whole while the lease is live (it writes under the prefix, as another
    store), naming the holder; once the lease is released it imports, and the lease row, live
    or released, stays exactly as it was."""
    holder = await spares.take(url)
    token, who = held(await holder.ask("acquire", PREFIX, LONG_TTL, 0))
    assert await holder.ask("save", KEY, {"halted": True}) == f"SAVED {KEY}"
    async with SqlStore.from_url(url) as store:
        await store.save("bot2/x", 1)
        (live,) = await store.leases()
    assert (live.prefix, live.token, live.holder, live.live) == (PREFIX, token, who, True)
    backup = tmp_path / "backup.jsonl"
    exported = cli(url, "export", str(backup))
    assert exported.returncode == 0, exported.stderr
    text = backup.read_text("utf-8")
    assert [json.loads(line).get("key") for line in text.splitlines()][:-1] == [KEY, "bot2/x"]
    assert "@lease/" not in text

    refused = cli(url, "import", str(backup))
    assert refused.returncode != 0, refused
    assert f"pid {holder.pid} " in refused.stderr
    async with SqlStore.from_url(url) as store:
        assert await store.leases() == [live]
    assert await holder.ask("save", KEY, {"halted": True, "n": 2}) == f"SAVED {KEY}"

    assert await holder.ask("release") == "RELEASED"
    async with SqlStore.from_url(url) as store:
        (released,) = await store.leases()
    imported = cli(url, "import", str(backup))
    assert imported.returncode == 0, imported.stderr
    async with SqlStore.from_url(url) as store:
        assert await store.leases() == [released]
        restored = await store.load_many([KEY, "bot2/x"])
    assert restored == {KEY: {"halted": True, "n": 2}, "bot2/x": 1}
    assert (released.token, released.live) == (token, False)
    assert not holder.lost
    print(f"\n{backend(url)}: import under the live lease refused: {refused.stderr.strip()}")


async def test_an_import_forging_a_lease_row_is_refused(
    sqlite_file: URL, spares: Spares, tmp_path: Path
) -> None:
    """A file with a line keyed ``@lease/...`` is refused at that line; the live lease stays."""
    await empty(sqlite_file)
    holder = await spares.take(sqlite_file)
    token, who = held(await holder.ask("acquire", PREFIX, LONG_TTL, 0))
    forged = tmp_path / "forged.jsonl"
    line = {"key": "@lease/bot1/", "value": {"token": 99}, "updated_at": "2099-01-01T00:00:00Z"}
    forged.write_text(json.dumps(line) + "\n", "utf-8")
    forging = cli(sqlite_file, "import", "--no-trailer-check", str(forged))
    assert forging.returncode != 0, forging
    assert "'@lease/bot1/'" in forging.stderr, forging.stderr
    async with SqlStore.from_url(sqlite_file) as store:
        (lease,) = await store.leases()
    assert (lease.token, lease.holder, lease.live) == (token, who, True)


# -- renewal under load ----------------------------------------------------------------------

IMPORT_SNAPSHOTS = 100_000
IMPORT_TTL = 240.0
"""Above 1.5 times the longest write transaction on the file (the import's, which a busy
machine stretches to a minute): see docs/leases.md. A renewal that waits longer than the ttl
loses the lease by the holder's own clock."""
IMPORT_TIMEOUT = 120.0
"""The holder's store timeout: its renewal waits this long for SQLite's write lock."""


@pytest.fixture(scope="module")
def import_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of 100,000 snapshots under ``load/``, made once for the module."""
    directory = tmp_path_factory.mktemp("import")
    source = resolve_url(f"sqlite:///{directory / 'source.db'}")
    path = directory / "load.jsonl"

    async def build() -> None:
        await upgrade(source)
        start = datetime(2026, 1, 1, tzinfo=UTC)
        async with SqlStore.from_url(source) as store:
            await store.restore(
                Snapshot(f"load/{i:06d}", {"i": i, "px": i / 4}, start + timedelta(seconds=i))
                for i in range(IMPORT_SNAPSHOTS)
            )
            with path.open("wb") as out:
                assert await export(store, out) == IMPORT_SNAPSHOTS

    asyncio.run(build())
    return path


def write_locked(path: str) -> bool:
    """Whether another connection holds the SQLite file's write lock right now."""
    connection = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            return True
        raise
    finally:
        connection.close()
    return False


async def test_renewal_holds_through_an_import_on_sqlite(
    sqlite_file: URL, spares: Spares, import_file: Path
) -> None:
    """A ``rustrade-store import`` of 100,000 snapshots in another process holds SQLite's write
    lock for its whole transaction. A renewal asked while it does waits for the lock and
    succeeds; the background renewal runs on; the holder keeps its lease and writes after."""
    await empty(sqlite_file)
    assert sqlite_file.database is not None
    holder = await spares.take(sqlite_file, IMPORT_TIMEOUT)
    try:
        token, _ = held(await holder.ask("acquire", PREFIX, IMPORT_TTL, 0))
        assert await holder.ask("save", KEY, {"halted": True}) == f"SAVED {KEY}"
        loop = asyncio.get_running_loop()
        importing = await asyncio.create_subprocess_exec(
            *(str(CLI), "--url", str(sqlite_file), "import", str(import_file)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        while not write_locked(sqlite_file.database):
            assert importing.returncode is None, await importing.communicate()
            await asyncio.sleep(0.02)
        locked_at = loop.time()
        renewed = await holder.ask("renew")  # waits for the import's write lock
        output = (await importing.communicate())[0].decode()
        held_for = loop.time() - locked_at
        assert importing.returncode == 0, output
        assert f"{IMPORT_SNAPSHOTS:,} added" in output, output
        assert parse(renewed)[0] == "RENEWED", renewed
        assert await holder.ask("save", KEY, {"halted": True, "n": 2}) == f"SAVED {KEY}"
        is_held, still, _, renewals = status(await holder.ask("status"))
        assert (is_held, still) == (True, token)
        assert not holder.lost
        async with SqlStore.from_url(sqlite_file) as store:
            assert await store.count("load/") == IMPORT_SNAPSHOTS
            (lease,) = await store.leases()
        assert (lease.token, lease.live) == (token, True)
        print(
            f"\nSQLite: the import held the write lock for about {held_for:.1f} s; the lease "
            f"(ttl {IMPORT_TTL:.0f} s) stayed with its holder through {renewals} renewal(s), one "
            "of them asked while the import held the lock"
        )
    finally:
        await empty(sqlite_file)


LOAD_TTL = 2.0
LOAD_SECONDS = 4.0
SAVERS = 64


@pytest.mark.postgres
async def test_renewal_holds_through_64_concurrent_savers_on_postgres(
    postgres_url: URL, spares: Spares
) -> None:
    """The holder runs 64 tasks saving under its own prefix (fenced writes, sharing its pool
    with the renewal), another process 64 more elsewhere, and a second copy tries to take the
    lease every 50 ms: for two ttls the lease stays with its holder, and no save fails."""
    await empty(postgres_url)
    try:
        holder, others, rival = [await spares.take(postgres_url) for _ in range(3)]
        token, _ = held(await holder.ask("acquire", PREFIX, LOAD_TTL, 0))
        holder.send("load", SAVERS, LOAD_SECONDS, "bot1/k")
        others.send("load", SAVERS, LOAD_SECONDS, "bot2/k")
        rival.send("contend", PREFIX, LONG_TTL, LOAD_SECONDS)
        loaded, elsewhere, contended = await asyncio.gather(
            holder.answer(), others.answer(), rival.answer()
        )
        tag, rest = parse(loaded)
        saves, errors = rest.split(" ", 1)
        assert (tag, json.loads(errors)) == ("LOADED", {}), loaded
        tag, rest = parse(elsewhere)
        other_saves, errors = rest.split(" ", 1)
        assert (tag, json.loads(errors)) == ("LOADED", {}), elsewhere
        tag, rest = parse(contended)
        refused, taken = map(int, rest.split())
        assert tag == "CONTENDED"
        assert refused > 0
        assert taken == 0, "the second copy took the lease from a live holder"
        is_held, still, _, renewals = status(await holder.ask("status"))
        assert (is_held, still) == (True, token)
        assert renewals > 0
        assert not holder.lost
        print(
            f"\nPostgreSQL: {saves} fenced saves by {SAVERS} tasks and "
            f"{other_saves} by {SAVERS} in another process in "
            f"{LOAD_SECONDS:.0f} s; the lease (ttl {LOAD_TTL:.0f} s) renewed {renewals} times, "
            f"the second copy refused {refused} times"
        )
    finally:
        await empty(postgres_url)
