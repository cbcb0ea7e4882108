"""The ``rustrade-store`` command, run as the operator runs it: a subprocess per command."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import pty
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from rustrade_store import Snapshot, SqlStore, head_revision
from rustrade_store.cli import main
from rustrade_store.codec import encode
from rustrade_store.engine import ENV_VAR, create_engine, resolve_url
from rustrade_store.schema import VERSION_TABLE
from rustrade_store.testing import EXACT_VALUES, assert_same_json
from rustrade_store.transfer import format_line

from .helpers import terminal_output

if TYPE_CHECKING:
    from sqlalchemy import URL

COMMAND = str(Path(sys.executable).with_name("rustrade-store"))
T0 = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


class Run:
    """One finished command: exit code, stdout, stderr."""

    __slots__ = ("code", "err", "out")

    def __init__(self, completed: subprocess.CompletedProcess[str]) -> None:
        self.code = completed.returncode
        self.out = completed.stdout
        self.err = completed.stderr

    def __repr__(self) -> str:
        return f"Run(code={self.code}, out={self.out!r}, err={self.err!r})"


def cli(
    *args: str,
    url: URL | str | None = None,
    stdin: str | None = None,
    cwd: Path,
    env: dict[str, str] | None = None,
) -> Run:
    """Run the installed command; ``env`` adds to the environment (without RUSTRADE_STORE_URL
    unless ``url`` gives it)."""
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR} | (env or {})
    if url is not None:
        env[ENV_VAR] = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    completed = subprocess.run(
        [COMMAND, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )
    return Run(completed)


def ok(run: Run) -> Run:
    assert run.code == 0, run
    return run


def one_line_error(run: Run, code: int, *words: str) -> None:
    """The command failed with ``code`` and exactly one stderr line containing ``words``."""
    assert run.code == code, run
    lines = run.err.splitlines()
    assert len(lines) == 1, run
    assert lines[0].startswith("rustrade-store"), run
    assert "Traceback" not in run.err
    for word in words:
        assert word in lines[0], run


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    """An empty database of each kind, never migrated (an SQLite file not yet created)."""
    if request.param == "sqlite":
        return resolve_url(f"sqlite:///{tmp_path / 'ops.db'}")
    url: URL = request.getfixturevalue("fresh_postgres")
    return url


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


def test_operator_session(empty_db: URL, tmp_path: Path) -> None:
    """Migrate, then look, repair and remove, the way an operator does at 3 a.m."""
    first = cli("get", "bot1/BTCUSDT", url=empty_db, cwd=tmp_path)
    assert first.code == 3, first
    assert "upgrade" in first.err
    assert ok(cli("upgrade", url=empty_db, cwd=tmp_path)).err.count("0001 (head)") == 1
    assert ok(cli("current", url=empty_db, cwd=tmp_path)).out == f"{head_revision()} (head)\n"

    state = '{"realised": -112.5, "loss_streak": 3, "halted": true}'
    ok(cli("put", "bot1/BTCUSDT", state, url=empty_db, cwd=tmp_path))
    ok(cli("put", "bot1/a_b", "-", stdin="[1, 2.0]\n", url=empty_db, cwd=tmp_path))
    as_text = empty_db.render_as_string(hide_password=False)
    ok(cli("put", "bot1/axb", "null", "--url", as_text, cwd=tmp_path))  # options after too
    got = ok(cli("get", "bot1/BTCUSDT", url=empty_db, cwd=tmp_path))
    assert json.loads(got.out) == json.loads(state)
    compact = ok(cli("get", "bot1/a_b", "--compact", url=empty_db, cwd=tmp_path))
    assert compact.out == "[1,2.0]\n"
    assert ok(cli("get", "bot1/axb", url=empty_db, cwd=tmp_path)).out == "null\n"

    # Refused input changes nothing and says what is wrong, in one line.
    for bad, words in [  # the rest of the strict parsing: test_transfer.py, in process
        ("-Infinity", "-Infinity is not JSON"),
        ('{"halted": true, "halted": false}', "appears twice"),
        ("halted", "quoted"),
    ]:
        run = cli("put", "bot1/BTCUSDT", "--", bad, url=empty_db, cwd=tmp_path)
        one_line_error(run, 2, words)
    one_line_error(cli("put", "", "1", url=empty_db, cwd=tmp_path), 2, "empty")
    one_line_error(cli("get", "bot9/none", url=empty_db, cwd=tmp_path), 1, "'bot9/none' not found")
    one_line_error(cli("rm", "bot9/none", url=empty_db, cwd=tmp_path), 1, "not found")
    one_line_error(cli("get", url=empty_db, cwd=tmp_path), 2, "KEY")
    one_line_error(cli("frobnicate", url=empty_db, cwd=tmp_path), 2, "unknown command", "ls")

    listing = ok(cli("ls", "bot1/", url=empty_db, cwd=tmp_path)).out.splitlines()
    assert [line.split()[0] for line in listing] == ["bot1/BTCUSDT", "bot1/a_b", "bot1/axb"]
    assert listing[0].split()[-1] == "49"  # bytes of the stored JSON text
    assert listing[2].endswith("  4")  # size in bytes of the JSON text "null"
    keys = ok(cli("ls", "--keys", "bot1/a_", url=empty_db, cwd=tmp_path)).out
    assert keys == "bot1/a_b\n"  # the prefix is literal: _ is not a wildcard

    ok(cli("rm", "bot1/a_b", "--yes", url=empty_db, cwd=tmp_path))
    report = ok(cli("doctor", url=empty_db, cwd=tmp_path)).out.splitlines()
    doctor = {label.strip(): value.strip() for label, value in (x.split(":", 1) for x in report)}
    assert doctor["schema revision"] == f"{head_revision()} (head)"
    assert doctor["dialect"] == empty_db.get_backend_name()
    assert doctor["driver"] == empty_db.get_driver_name()
    assert doctor["server version"][0].isdigit()
    assert doctor["snapshots"] == "2"
    assert doctor["status"] == "ok"
    if empty_db.get_backend_name() == "sqlite":
        assert (doctor["journal_mode"], doctor["synchronous"]) == ("wal", "FULL")
    else:
        assert doctor["synchronous_commit"] == "on"

    for target in ("base", "-1"):  # from the first revision, -1 is base too
        refused = cli("downgrade", target, url=empty_db, cwd=tmp_path)
        one_line_error(refused, 2, "2 snapshot(s)", "--yes")
    assert ok(cli("get", "bot1/BTCUSDT", url=empty_db, cwd=tmp_path)).out
    ok(cli("downgrade", "base", "--yes", url=empty_db, cwd=tmp_path))
    gone = cli("current", url=empty_db, cwd=tmp_path)
    assert gone.code == 3
    assert gone.out.startswith("none")


def copy_cli(source: URL, target: URL, *extra: str, cwd: Path) -> Run:
    """``rustrade-store copy --from source --to target``, passwords included."""
    return cli(
        "copy",
        "--from",
        source.render_as_string(hide_password=False),
        "--to",
        target.render_as_string(hide_password=False),
        *extra,
        cwd=cwd,
    )


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


@pytest.mark.postgres
def test_errors_never_show_the_password(fresh_postgres: URL, tmp_path: Path) -> None:
    secret = "Pw-n0t-for-logs"
    url = fresh_postgres.set(password=secret).render_as_string(hide_password=False)
    down = fresh_postgres.set(password=secret, port=1).render_as_string(hide_password=False)
    runs = [
        cli("doctor", url=url, cwd=tmp_path),  # never migrated
        cli("upgrade", url=url, cwd=tmp_path),
        cli("doctor", url=url, cwd=tmp_path),
        cli("ls", url=url, cwd=tmp_path),
        cli("get", "missing", url=url, cwd=tmp_path),
        cli("--debug", "get", "k", url=down, cwd=tmp_path),
        cli("doctor", url=down, cwd=tmp_path),
        cli("copy", "--from", url, "--to", down, cwd=tmp_path),
    ]
    for run in runs:
        assert secret not in run.out + run.err, run
    assert "***" in runs[2].out
    one_line_error(runs[6], 3, "127.0.0.1:1")
    assert "Traceback" in runs[5].err  # --debug shows it, still without the password
    one_line_error(cli("ls", url="oracle://root@h/db", cwd=tmp_path), 2, "oracle")


def test_version_skew_is_reported_by_doctor_current_and_every_command(tmp_path: Path) -> None:
    url = resolve_url(f"sqlite:///{tmp_path / 'newer.db'}")
    ok(cli("upgrade", url=url, cwd=tmp_path))

    async def from_the_future() -> None:
        engine = create_engine(url)
        async with engine.begin() as connection:
            await connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0999'"))
        await engine.dispose()

    asyncio.run(from_the_future())
    head = head_revision()
    for args in (["doctor"], ["current"], ["get", "k"], ["upgrade"]):
        run = cli(*args, url=url, cwd=tmp_path)
        one_line_error(run, 3, "0999", head)
    assert "0999: unknown to rustrade-store" in cli("doctor", url=url, cwd=tmp_path).out
    missing = cli("ls", url=f"sqlite:///{tmp_path / 'typo.db'}", cwd=tmp_path)
    one_line_error(missing, 3, "no SQLite database", "upgrade")
    assert not (tmp_path / "typo.db").exists()


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


@pytest.mark.postgres
def test_a_common_word_as_password_does_not_garble_the_output(
    postgres_url: URL, tmp_path: Path
) -> None:
    """The password is hidden where it stands as a word; "postgresql" stays readable."""
    url = postgres_url.set(password="postgres")
    report = ok(cli("doctor", url=url, cwd=tmp_path)).out
    assert re.search(r"^dialect: +postgresql$", report, re.MULTILINE), report
    assert ":postgres@" not in report


def on_terminal(
    *args: str,
    url: URL,
    cwd: Path,
    answer: str,
    env: dict[str, str] | None = None,
    program: str = COMMAND,
) -> tuple[int, str]:
    """Run the command (or ``program``) with a terminal for stdin, stdout and stderr, as a
    person does; type ``answer`` at its ``[y/N]`` prompt. Returns the exit code and everything
    it printed."""
    environment = {k: v for k, v in os.environ.items() if k != ENV_VAR} | (env or {})
    environment[ENV_VAR] = url.render_as_string(hide_password=False)
    main_fd, terminal = pty.openpty()
    with subprocess.Popen(
        [program, *args], stdin=terminal, stdout=terminal, stderr=terminal, cwd=cwd, env=environment
    ) as process:
        os.close(terminal)
        seen = b""
        answered = False
        while (chunk := terminal_output(main_fd, 60)) is not None:
            assert chunk, f"no output for 60 s: {seen!r}"
            seen += chunk
            if not answered and b"[y/N]" in seen:
                os.write(main_fd, answer.encode() + b"\n")
                answered = True
        code = process.wait(timeout=60)
    os.close(main_fd)
    return code, seen.decode("utf-8", "replace").replace("\r\n", "\n")
