"""Moving state: ``export``, ``import`` and ``copy`` as the installed command. Round trips give
identical files; copies between all three databases keep everything; ``import`` and ``copy
--merge`` never silently replace newer state and say what they did (``--overwrite`` forces, at a
time past the stored one); a bad or cut-short file changes nothing; two multi-host URLs are
told apart by their hosts; progress shows only on a terminal."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from rustrade_store import Snapshot, SqlStore, resolve_url
from rustrade_store._lines import format_line
from rustrade_store.cli import main
from rustrade_store.cli.moving import same_database
from rustrade_store.codec import encode
from rustrade_store.testing import EXACT_VALUES, assert_same_json
from rustrade_store.transfer import ExportWriter

from .commandline import EMPTY_DATABASES, T0, Run, cli, copy_cli, empty_database, ok, one_line_error

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import URL


@pytest.fixture(params=EMPTY_DATABASES)
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    """An empty database of each kind, never migrated."""
    return empty_database(request, tmp_path)


async def _read_all(url: URL) -> list[tuple[str, str, datetime]]:
    async with SqlStore.from_url(url) as store:
        return [(s.key, encode(s.value), s.updated_at) async for s in store.snapshots()]


async def _seed(url: URL, count: int) -> list[Snapshot]:
    items = [
        Snapshot(f"exact/{name}", value, T0 + timedelta(microseconds=index))
        for index, (name, value) in enumerate(EXACT_VALUES.items())
    ]
    items += [
        Snapshot(f"bot{i % 7}/SYM{i:05d}", {"i": i, "pnl": i * 0.1}, T0 - timedelta(seconds=i))
        for i in range(count)
    ]
    async with SqlStore.from_url(url) as store:
        await store.restore(items)
    return items


@pytest.mark.postgres
def test_export_import_round_trip_gives_identical_files(
    tmp_path: Path, fresh_postgres: URL
) -> None:
    """SQLite -> file A -> empty PostgreSQL -> file B -> empty SQLite -> file C: A = B = C."""
    first = resolve_url(f"sqlite:///{tmp_path / 'first.db'}")
    last = resolve_url(f"sqlite:///{tmp_path / 'last.db'}")
    for url in (first, fresh_postgres, last):
        ok(cli("upgrade", url=url, cwd=tmp_path))
    asyncio.run(_seed(first, 2100))

    ok(cli("export", "a.jsonl", url=first, cwd=tmp_path))
    ok(cli("import", "a.jsonl", url=fresh_postgres, cwd=tmp_path))
    exported = ok(cli("export", url=fresh_postgres, cwd=tmp_path))  # to stdout
    (tmp_path / "b.jsonl").write_text(exported.out, encoding="utf-8")
    ok(cli("import", "-", stdin=exported.out, url=last, cwd=tmp_path))
    ok(cli("export", "c.jsonl", url=last, cwd=tmp_path))

    a = (tmp_path / "a.jsonl").read_bytes()
    assert a.count(b"\n") == 2100 + len(EXACT_VALUES) + 1  # and the trailer
    assert (tmp_path / "b.jsonl").read_bytes() == a
    assert (tmp_path / "c.jsonl").read_bytes() == a
    assert asyncio.run(_read_all(last)) == asyncio.run(_read_all(first))
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.mariadb
@pytest.mark.postgres
def test_copy_moves_state_between_all_three_databases(
    tmp_path: Path, fresh_postgres: URL, fresh_mariadb: URL
) -> None:
    """SQLite -> MariaDB -> PostgreSQL -> SQLite: every key, value and timestamp arrives."""
    first = resolve_url(f"sqlite:///{tmp_path / 'first.db'}")
    last = resolve_url(f"sqlite:///{tmp_path / 'last.db'}")
    route = (first, fresh_mariadb, fresh_postgres, last)
    for url in route:
        ok(cli("upgrade", url=url, cwd=tmp_path))
    seeded = asyncio.run(_seed(first, 300))
    for source, target in itertools.pairwise(route):
        run = ok(copy_cli(source, target, cwd=tmp_path))
        assert f"copied {len(seeded):,} snapshot(s)" in run.err
    original = asyncio.run(_read_all(first))
    for url in route[1:]:
        assert asyncio.run(_read_all(url)) == original


@pytest.mark.postgres
def test_copy_sqlite_to_postgres_and_back_keeps_everything(
    tmp_path: Path, fresh_postgres: URL
) -> None:
    first = resolve_url(f"sqlite:///{tmp_path / 'first.db'}")
    back = resolve_url(f"sqlite:///{tmp_path / 'back.db'}")
    for url in (first, fresh_postgres, back):
        ok(cli("upgrade", url=url, cwd=tmp_path))
    seeded = asyncio.run(_seed(first, 2500))

    def copy(source: URL, target: URL, *extra: str) -> Run:
        return copy_cli(source, target, *extra, cwd=tmp_path)

    there = ok(copy(first, fresh_postgres))
    assert f"copied {len(seeded):,} snapshot(s)" in there.err
    assert "\r" not in there.err  # no progress line when stderr is not a terminal
    ok(copy(fresh_postgres, back))

    original = asyncio.run(_read_all(first))
    assert len(original) == len(seeded)
    assert asyncio.run(_read_all(fresh_postgres)) == original
    assert asyncio.run(_read_all(back)) == original

    async def values(url: URL) -> None:
        async with SqlStore.from_url(url) as store:
            for name, value in EXACT_VALUES.items():
                snapshot = await store.load_snapshot(f"exact/{name}")
                assert snapshot is not None
                assert_same_json(snapshot.value, value)

    asyncio.run(values(back))

    # Into a database that holds snapshots: refused, and nothing changes there.
    one_line_error(copy(first, back), 2, "already holds", "--merge")
    one_line_error(copy(first, first), 2, "same database")
    assert asyncio.run(_read_all(back)) == original
    merged = ok(copy(first, back, "--merge"))
    assert "verified" in merged.err


def test_a_bad_import_file_changes_nothing(empty_db: URL, tmp_path: Path) -> None:
    ok(cli("upgrade", url=empty_db, cwd=tmp_path))
    ok(cli("put", "kept", '"old"', url=empty_db, cwd=tmp_path))
    good = [format_line(Snapshot(f"new/{i:05d}", i, T0)) for i in range(2500)]
    good.append(format_line(Snapshot("kept", "new", datetime.now(UTC) + timedelta(seconds=1))))
    bad = [
        "not json\n",
        '{"key": "x", "value": NaN, "updated_at": "2026-01-01T00:00:00+00:00"}\n',
        '{"key": "x", "value": 1, "updated_at": "2026-01-01T00:00:00"}\n',
        '{"key": "x", "value": 1}\n',
        '{"key": "x", "value": 1, "updated_at": "2026-01-01T00:00:00Z", "extra": 0}\n',
        '{"key": "", "value": 1, "updated_at": "2026-01-01T00:00:00Z"}\n',
        # Valid ISO 8601, but before year 1 in UTC: once an OverflowError and exit 3.
        '{"key": "x", "value": 1, "updated_at": "0001-01-01T00:00:00+01:00"}\n',
    ]
    # Two batches of good lines are written inside the transaction before the first bad one.
    lines = [*good, *bad]
    (tmp_path / "bad.jsonl").write_text("".join(lines), encoding="utf-8")
    bad_numbers = list(range(len(good) + 1, len(lines) + 1))

    for args in (["import", "--dry-run", "bad.jsonl"], ["import", "bad.jsonl"]):
        run = cli(*args, url=empty_db, cwd=tmp_path)
        assert run.code == 2, run
        reported = [line for line in run.err.splitlines() if line.startswith("bad.jsonl:")]
        assert [int(line.split(":")[1]) for line in reported] == bad_numbers
        assert "0001-01-01T00:00:00+01:00' is out of range once converted to UTC" in run.err
        assert "nothing was imported" in run.err.splitlines()[-1]
        assert "Traceback" not in run.err
    assert ok(cli("ls", "--keys", url=empty_db, cwd=tmp_path)).out == "kept\n"
    assert ok(cli("get", "kept", url=empty_db, cwd=tmp_path)).out == '"old"\n'

    # Written by another tool (a BOM, no trailer): imported once told not to check the trailer.
    (tmp_path / "good.jsonl").write_text("\ufeff" + "".join(good), encoding="utf-8")
    unchecked = ("good.jsonl", "--no-trailer-check")
    dry = ok(cli("import", "--dry-run", *unchecked, url=empty_db, cwd=tmp_path))
    assert "2,501 snapshot(s), all valid" in dry.err
    assert ok(cli("ls", "--keys", url=empty_db, cwd=tmp_path)).out == "kept\n"
    ok(cli("import", *unchecked, url=empty_db, cwd=tmp_path))
    assert ok(cli("get", "kept", url=empty_db, cwd=tmp_path)).out == '"new"\n'
    one_line_error(cli("import", "missing.jsonl", url=empty_db, cwd=tmp_path), 2, "missing")


def test_copy_shows_progress_only_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    source = resolve_url(f"sqlite:///{tmp_path / 'a.db'}")
    target = resolve_url(f"sqlite:///{tmp_path / 'b.db'}")
    for url in (source, target):
        assert main(["--url", url.render_as_string(hide_password=False), "upgrade"]) == 0
    asyncio.run(_seed(source, 1500))
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert main(["copy", "--from", str(source), "--to", str(target)]) == 0
    total = 1500 + len(EXACT_VALUES)
    assert f"\rcopied {total:,} of {total:,} (100%)\ncopied {total:,} snapshot(s)" in err.getvalue()


LATER = T0 + timedelta(hours=1)


def export_file(path: Path, items: list[Snapshot]) -> None:
    with path.open("wb") as out:
        writer = ExportWriter(out)
        writer.write(items)
        writer.close()


async def _seed_items(url: URL, items: list[Snapshot]) -> None:
    async with SqlStore.from_url(url) as store:
        await store.restore(items)


async def _read(url: URL) -> dict[str, Snapshot]:
    async with SqlStore.from_url(url) as store:
        return {snapshot.key: snapshot async for snapshot in store.snapshots()}


def stored(url: URL) -> dict[str, Snapshot]:
    return asyncio.run(_read(url))


# The database and the file disagree in every way a restore can meet:
#   added: only in the file; replaced: older in the database; unchanged: the same;
#   newer: the database's is newer (a bot halted today, a backup from yesterday);
#   conflicting: the same time, another value.
IN_DATABASE = [
    Snapshot("replaced", {"halted": False}, T0),
    Snapshot("unchanged", {"halted": False}, T0),
    Snapshot("newer", {"halted": True}, LATER),
    Snapshot("conflicting", {"halted": True}, T0),
]


IN_FILE = [
    Snapshot("added", {"halted": False}, T0),
    Snapshot("replaced", {"halted": True}, LATER),
    Snapshot("unchanged", {"halted": False}, T0),
    Snapshot("newer", {"halted": False}, T0),
    Snapshot("conflicting", {"halted": False}, T0),
]


def test_import_keeps_newer_state_and_counts_what_it_found(sqlite_url: URL, tmp_path: Path) -> None:
    asyncio.run(_seed_items(sqlite_url, IN_DATABASE))
    export_file(tmp_path / "yesterday.jsonl", IN_FILE)

    run = ok(cli("import", "yesterday.jsonl", url=sqlite_url, cwd=tmp_path))
    assert (
        "1 added, 1 replaced (older there), 1 unchanged, 1 kept (newer there), "
        "1 kept (same time, another value there)"
    ) in run.err
    assert "2 snapshot(s) in the database are newer" in run.err
    assert "--overwrite" in run.err
    after = stored(sqlite_url)
    assert after["newer"] == IN_DATABASE[2]  # the halt of today survives yesterday's backup
    assert after["conflicting"] == IN_DATABASE[3]
    assert after["replaced"] == IN_FILE[1]
    assert after["added"] == IN_FILE[0]

    forced = ok(cli("import", "--overwrite", "yesterday.jsonl", url=sqlite_url, cwd=tmp_path))
    assert (
        "0 added, 0 replaced (older there), 3 unchanged, 1 overwritten (newer there), "
        "1 overwritten (same time, another value there)"
    ) in forced.err
    now = stored(sqlite_url)
    for key in ("newer", "conflicting"):
        assert now[key].value == {"halted": False}
        # Written at a time past the stored one, never back to the file's.
        assert now[key].updated_at > after[key].updated_at


def test_a_cut_short_or_changed_export_is_refused(sqlite_url: URL, tmp_path: Path) -> None:
    items = [Snapshot(f"bot1/S{i:04d}", {"i": i}, T0) for i in range(2500)]
    export_file(tmp_path / "whole.jsonl", items)
    whole = (tmp_path / "whole.jsonl").read_bytes().splitlines(keepends=True)
    trailer = json.loads(whole[-1])["rustrade_store_export"]
    assert trailer["count"] == 2500

    variants = {
        # `export > file` killed after 2,000 lines: whole lines, no trailer.
        "cut.jsonl": (b"".join(whole[:2000]), "no export trailer"),
        "changed.jsonl": (
            b"".join([whole[0].replace(b'"i":0', b'"i":1'), *whole[1:]]),
            "SHA-256 differs",
        ),
        "short.jsonl": (b"".join(whole[1:]), "counts 2,500 snapshot(s) but the file holds 2,499"),
        "joined.jsonl": (b"".join(whole + whole), "trailer before the end"),
    }
    for name, (data, words) in variants.items():
        (tmp_path / name).write_bytes(data)
        refused = cli("import", "--dry-run", name, cwd=tmp_path)
        assert refused.code == 2, refused
        assert words in refused.err, refused
        assert "nothing was imported" in refused.err.splitlines()[-1]
    one_line_error(cli("import", "cut.jsonl", url=sqlite_url, cwd=tmp_path), 2, "trailer")
    assert stored(sqlite_url) == {}  # two batches were written, then rolled back
    one_line_error(cli("import", "-", stdin="", url=sqlite_url, cwd=tmp_path), 2, "stdin: empty")

    # Told so, the cut file imports as it is (a file made before exports had a trailer).
    ok(cli("import", "--no-trailer-check", "cut.jsonl", url=sqlite_url, cwd=tmp_path))
    assert len(stored(sqlite_url)) == 2000


def test_export_shows_progress_only_on_a_terminal(
    sqlite_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    asyncio.run(_seed_items(sqlite_url, [Snapshot(f"k{i:05d}", i, T0) for i in range(2500)]))
    piped = ok(cli("export", "piped.jsonl", url=sqlite_url, cwd=tmp_path))
    assert "\r" not in piped.err
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    url = sqlite_url.render_as_string(hide_password=False)
    assert main(["--url", url, "export", str(tmp_path / "seen.jsonl")]) == 0
    assert "\rexported 2,500 of 2,500 (100%)\nexported 2,500 snapshot(s)" in err.getvalue()
    assert (tmp_path / "seen.jsonl").read_bytes() == (tmp_path / "piped.jsonl").read_bytes()


def test_copy_merge_keeps_the_newer_side_and_overwrite_makes_the_source_win(
    sqlite_url: URL, tmp_path: Path
) -> None:
    """A merge used to fail its own verification (exit 3) when the target kept a newer row."""
    source = resolve_url(f"sqlite:///{tmp_path / 'source.db'}")
    ok(cli("upgrade", url=source, cwd=tmp_path))
    asyncio.run(_seed_items(source, IN_FILE))
    asyncio.run(_seed_items(sqlite_url, [*IN_DATABASE, Snapshot("target-only", 1, T0)]))

    merged = ok(copy_cli(source, sqlite_url, "--merge", cwd=tmp_path))
    assert "merged 5 snapshot(s)" in merged.err
    assert (
        "1 added, 1 replaced (older in the target), 1 unchanged, 1 kept (newer in the target), "
        "1 kept (same time, another value in the target); verified"
    ) in merged.err
    after = stored(sqlite_url)
    assert after["newer"] == IN_DATABASE[2]
    assert after["conflicting"] == IN_DATABASE[3]
    assert after["target-only"].value == 1

    refused = copy_cli(source, sqlite_url, "--overwrite", cwd=tmp_path)
    one_line_error(refused, 2, "--overwrite applies to a merge")
    forced = ok(copy_cli(source, sqlite_url, "--merge", "--overwrite", cwd=tmp_path))
    assert "1 overwritten (newer in the target)" in forced.err
    assert "the source's replaced the target's" in forced.err
    now = stored(sqlite_url)
    for key in ("newer", "conflicting"):
        assert now[key].value == {"halted": False}
        assert now[key].updated_at > after[key].updated_at


def test_copy_tells_multi_host_urls_apart_by_their_hosts(tmp_path: Path) -> None:
    """Two multi-host URLs have no host and no port of their own: the database name alone made
    every pair of them "the same database". Any host in common does (either may connect to it);
    none in common does not, so this copy goes on to connect (and fails: nothing listens)."""
    same = cli(
        "copy",
        "--from",
        "postgresql://u@/state?host=127.0.0.1:1&host=127.0.0.1:2",
        "--to",
        "postgresql://u@/state?host=127.0.0.1:3&host=127.0.0.1:1",
        cwd=tmp_path,
    )
    one_line_error(same, 2, "the same database, 'state' on 127.0.0.1:1", "another --to")
    other = cli(
        "--timeout",
        "1",
        "copy",
        "--from",
        "postgresql://u@/state?host=127.0.0.1:1&host=127.0.0.1:2",
        "--to",
        "postgresql://u@/state?host=127.0.0.1:3&host=127.0.0.1:4",
        cwd=tmp_path,
    )
    one_line_error(other, 3, "failed on postgresql+asyncpg://u@/state?host=", "Connect call failed")


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("postgresql://u@/db?host=a:5432&host=b:5432", "postgresql://u@/db?host=b:5432", True),
        ("postgresql://u@/db?host=a:5432&host=b:5432", "postgresql://u@/db?host=c:5432", False),
        ("postgresql://u@/db?host=a:5432", "postgresql://u@a/db", True),  # the default port
        ("postgresql://u@a:5433/db", "postgresql://u@a/db", False),
        ("postgresql://u@/db?host=a:5432", "postgresql://u@/other?host=a:5432", False),
        ("postgresql://u@a/db", "mysql://u@a/db", False),
        ("sqlite:///x.db", "sqlite:///./x.db", True),
    ],
)
def test_same_database(first: str, second: str, same: bool) -> None:
    assert same_database(resolve_url(first), resolve_url(second)) is same
