"""Leases from the command line, run as the installed command: ``leases`` lists them, ``lease
break`` ends a dead holder's, and the operator's writes under a live lease are refused (exit 5)
unless ``--force``. The holder is a store in a thread of the test's own process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from rustrade_store import Snapshot, SqlStore, resolve_url, upgrade
from rustrade_store._lines import format_time
from rustrade_store.cli import EXIT_LEASED
from rustrade_store.transfer import export

from .commandline import T0, cli, ok, on_terminal, one_line_error

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator, Mapping
    from pathlib import Path

    from sqlalchemy import URL

    from rustrade_store import JSONValue, Lease

HALTED: JSONValue = {"halted": True, "loss_streak": 3}
T = TypeVar("T")
PID = f"pid {os.getpid()}"
"""How a refusal names the holder: this process."""


@contextlib.contextmanager
def lease_held(url: URL, prefix: str) -> Iterator[Lease]:
    """A lease on ``prefix``, held (and renewed) by a store whose event loop runs in a thread
    of this process while the commands run; released on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, loop).result(timeout=30)

    async def take() -> tuple[SqlStore, Lease]:
        store = SqlStore.from_url(url)
        return store, await store.lease(prefix, ttl=120).acquire()

    try:
        store, lease = run(take())
        try:
            yield lease
        finally:
            run(store.aclose())  # releases the lease
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


async def _seed(url: URL, items: Mapping[str, JSONValue]) -> None:
    async with SqlStore.from_url(url) as store:
        await store.restore(Snapshot(key, value, T0) for key, value in items.items())


async def _stored(url: URL) -> dict[str, JSONValue]:
    async with SqlStore.from_url(url) as store:
        return {snapshot.key: snapshot.value async for snapshot in store.snapshots()}


def test_leases_lists_each_lease_with_its_holder(sqlite_url: URL, tmp_path: Path) -> None:
    with lease_held(sqlite_url, "bot1/") as lease:
        assert lease.expires_at is not None
        expires = format_time(lease.expires_at)
        listed = ok(cli("leases", url=sqlite_url, cwd=tmp_path)).out
        assert listed.split()[:4] == ["bot1/", "1", "live", expires]
        assert f"{PID} (lease {lease.holder['id']}) since {lease.holder['since']}" in listed
        lines = ok(cli("leases", "--json", url=sqlite_url, cwd=tmp_path)).out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "prefix": "bot1/",
            "token": 1,
            "live": True,
            "expires_at": expires,
            "holder": lease.holder,
        }
    ]
    # Released now: listed as expired, keeping its token.
    after = json.loads(ok(cli("leases", "--json", url=sqlite_url, cwd=tmp_path)).out)
    assert (after["token"], after["live"]) == (1, False)


def test_lease_break_asks_names_the_holder_and_ends_the_lease(
    sqlite_url: URL, tmp_path: Path
) -> None:
    with lease_held(sqlite_url, "bot1/") as lease:
        # Without a terminal nor --yes: refused with the fix, like rm.
        refused = cli("lease", "break", "bot1/", url=sqlite_url, cwd=tmp_path)
        one_line_error(refused, 2, "add --yes", "'bot1/' (token 1)", PID)
        # On a terminal it asks, naming the holder; yes breaks it.
        code, seen = on_terminal(
            "lease", "break", "bot1/", url=sqlite_url, cwd=tmp_path, answer="y"
        )
        assert code == 0, seen
        assert "break the live lease on 'bot1/' (token 1) held by" in seen, seen
        assert "broke the live lease on 'bot1/' (token 1)" in seen, seen
        assert f"{PID} (lease {lease.holder['id']})" in seen, seen
        broken = json.loads(ok(cli("leases", "--json", url=sqlite_url, cwd=tmp_path)).out)
        assert (broken["token"], broken["live"]) == (2, False)
        assert list(broken["holder"]) == ["broken at"]

    missing = cli("lease", "break", "bot9/", "--yes", url=sqlite_url, cwd=tmp_path)
    one_line_error(missing, 1, "no lease on 'bot9/'", "rustrade-store leases")
    bad = cli("lease", "break", "bot1", "--yes", url=sqlite_url, cwd=tmp_path)
    one_line_error(bad, 2, "ending in '/'", "'bot1/'")


def test_put_edit_and_rm_under_a_live_lease_are_refused_unless_forced(
    sqlite_url: URL, tmp_path: Path
) -> None:
    key = "bot1/BTCUSDT"
    asyncio.run(_seed(sqlite_url, {key: HALTED}))
    marker = tmp_path / "editor-ran"
    with lease_held(sqlite_url, "bot1/"):
        put = cli("put", key, '{"halted": false}', url=sqlite_url, cwd=tmp_path)
        one_line_error(put, EXIT_LEASED, "'bot1/' is leased by", PID, "--force")
        # Refused before the editor opens, and before rm asks.
        edit = cli(
            "edit", key, "--yes", url=sqlite_url, cwd=tmp_path, env={"EDITOR": f"touch {marker}"}
        )
        one_line_error(
            edit,
            EXIT_LEASED,
            "under the live lease on 'bot1/'",
            PID,
            "lease break bot1/",
            "--force",
        )
        assert not marker.exists()
        rm = cli("rm", key, "--yes", url=sqlite_url, cwd=tmp_path)
        one_line_error(rm, EXIT_LEASED, "under the live lease on 'bot1/'", PID, "--force")
        assert asyncio.run(_stored(sqlite_url)) == {key: HALTED}

        # --force writes under the lease: the operator who knows what the bot will do.
        unhalt = {"EDITOR": "sed -i 's/true/false/'"}
        ok(cli("edit", key, "--yes", "--force", url=sqlite_url, cwd=tmp_path, env=unhalt))
        assert asyncio.run(_stored(sqlite_url)) == {key: {"halted": False, "loss_streak": 3}}
        ok(cli("rm", key, "--yes", "--force", url=sqlite_url, cwd=tmp_path))
        assert asyncio.run(_stored(sqlite_url)) == {}


def test_import_under_a_live_lease_is_refused_unless_forced_and_no_lease_row_travels(
    sqlite_url: URL, tmp_path: Path
) -> None:
    backup = tmp_path / "backup.jsonl"
    source = resolve_url(f"sqlite:///{tmp_path / 'source.db'}")

    async def write_backup() -> None:
        await upgrade(source)
        await _seed(source, {"bot1/BTCUSDT": HALTED, "bot2/ETHUSDT": HALTED})
        async with SqlStore.from_url(source) as store, store.lease("bot1/"):
            with backup.open("wb") as out:  # exported while a lease is held there
                await export(store, out)

    asyncio.run(write_backup())
    assert "@lease/" not in backup.read_text()
    with lease_held(sqlite_url, "bot1/"):
        refused = cli("import", str(backup), url=sqlite_url, cwd=tmp_path)
        one_line_error(refused, EXIT_LEASED, "'bot1/' is leased by", PID, "--force")
        assert asyncio.run(_stored(sqlite_url)) == {}  # all or nothing: bot2/ neither
        ok(cli("import", str(backup), "--force", url=sqlite_url, cwd=tmp_path))
        assert asyncio.run(_stored(sqlite_url)) == {"bot1/BTCUSDT": HALTED, "bot2/ETHUSDT": HALTED}
        # copy into a database under a live lease: the same refusal, the same --force.
        copy = ["copy", "--from", source.render_as_string(), "--to", sqlite_url.render_as_string()]
        merge = cli(*copy, "--merge", cwd=tmp_path)
        one_line_error(merge, EXIT_LEASED, "'bot1/' is leased by", PID, "--force")
        ok(cli(*copy, "--merge", "--force", cwd=tmp_path))

    # A line forging a lease row is a bad line, whatever the lease's state.
    forged = tmp_path / "forged.jsonl"
    lease_row = {"key": "@lease/bot1/", "value": {"token": 99}, "updated_at": format_time(T0)}
    forged.write_text(json.dumps(lease_row) + "\n")
    bad = cli("import", str(forged), "--no-trailer-check", url=sqlite_url, cwd=tmp_path)
    assert bad.code == 2, bad
    assert "forged.jsonl:1:" in bad.err, bad
    assert "keys that start with '@lease/' are leases" in bad.err, bad
