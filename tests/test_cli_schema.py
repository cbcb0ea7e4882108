"""The schema commands and ``doctor``: a MariaDB upgrade prints no server warning, version
skew is reported by ``doctor``, ``current`` and every command, ``doctor --json`` reports a
problem with exit 3, and on PostgreSQL ``doctor`` reports what decides whether a failover keeps
acknowledged saves and every host of a multi-host URL."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import URL, text

from rustrade_store import SqlStore, create_engine, head_revision, resolve_url, upgrade
from rustrade_store._schema import VERSION_TABLE
from rustrade_store.cli.doctor import Replication, replication_report
from rustrade_store.cli.opening import hosts_of

from .commandline import cli, ok, one_line_error

if TYPE_CHECKING:
    from pathlib import Path

MIGRATION_LOCK = "CONCAT('rustrade_store migrations', ' ', SHA1(DATABASE()))"
"""The name of MariaDB's migration lock on the connection's database (docs/operations.md)."""


@pytest.mark.mariadb
def test_a_mariadb_upgrade_prints_no_server_warning(fresh_mariadb: URL, tmp_path: Path) -> None:
    """MariaDB warned "Name 'rustrade_store_alembic_version_pkc' ignored for PRIMARY key"."""
    run = ok(cli("upgrade", url=fresh_mariadb, cwd=tmp_path))
    assert run.err.splitlines() == [
        f"{fresh_mariadb.render_as_string()}: schema revision 0001 (head)"
    ]


@pytest.mark.mariadb
async def test_upgrade_waits_for_another_migration_as_long_as_its_timeout(
    fresh_mariadb: URL, tmp_path: Path
) -> None:
    """``--timeout`` bounds the wait for another process's migration lock too (MariaDB's
    GET_LOCK): it waited the library's default instead, under a read timeout of 3 s that cut
    it off as a server not answering."""
    engine = create_engine(fresh_mariadb)
    try:
        async with engine.connect() as other:  # another process's migration, under way
            held = await other.scalar(text(f"SELECT GET_LOCK({MIGRATION_LOCK}, 0)"))
            assert held == 1
            run = await asyncio.to_thread(
                cli, "--timeout", "3", "upgrade", url=fresh_mariadb, cwd=tmp_path
            )
    finally:
        await engine.dispose()
    one_line_error(run, 3, "another process's migration", "held its lock for 2 s")


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


def test_doctor_json_reports_a_problem_with_exit_3(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'never.db'}"
    (tmp_path / "never.db").touch()
    run = cli("doctor", "--json", url=url, cwd=tmp_path)
    assert run.code == 3, run
    report = json.loads(run.out)
    assert report["status"] == "error"
    assert report["schema"]["state"] == "missing"
    assert "upgrade" in report["problem"]


UNLESS = "unless your provider replicates storage synchronously"


NOBODY = "127.0.0.1:1"
"""A host where nothing listens: refused at once, so asyncpg tries the next."""


def _multi_host(url: URL, first: str = NOBODY) -> URL:
    """``url`` in the multi-host form, ``first`` listed before its own host."""
    hosts = [first, f"{url.host}:{url.port or 5432}"]
    return URL.create(
        url.drivername, url.username, url.password, database=url.database, query={"host": hosts}
    )


@pytest.mark.postgres
def test_doctor_on_a_single_server_names_every_host_and_warns_of_no_failover(
    postgres_url: URL, tmp_path: Path
) -> None:
    """The shared server has no standby, and none named: no failover, so no warning that one
    can lose saves (it warned; the warning itself is tested on the verdict below). Every host
    of a multi-host URL named, and the one that answered."""
    url = _multi_host(postgres_url)
    served = f"{postgres_url.host}:{postgres_url.port or 5432}"
    report = ok(cli("doctor", url=url, cwd=tmp_path)).out
    fields = [line.split(":", 1) for line in report.splitlines()]
    doctor = {label.strip(): value.strip() for label, value in fields}
    assert doctor["hosts"] == f"{NOBODY}, {served}"
    assert doctor["connected to"] == served
    assert doctor["synchronous_standby_names"] == "(empty)"
    assert doctor["standbys"] == "none attached"
    assert "warning" not in doctor
    assert doctor["status"] == "ok"

    as_json = json.loads(ok(cli("doctor", "--json", url=url, cwd=tmp_path)).out)
    assert as_json["hosts"] == [NOBODY, served]
    assert as_json["connected_to"] == served
    assert as_json["settings"]["synchronous_standby_names"] == ""
    assert as_json["replication"] == {
        "in_recovery": False,
        "standbys": [],
        "synchronous_standby_attached": False,
    }
    assert as_json["warnings"] == []
    assert as_json["status"] == "ok"


async def _commit(url: URL, setting: str) -> None:
    """Make the database's sessions run with ``synchronous_commit = setting``."""
    await upgrade(url)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(
                text(f'ALTER DATABASE "{url.database}" SET synchronous_commit = {setting}')
            )
    finally:
        await engine.dispose()


@pytest.mark.postgres
def test_doctor_reads_synchronous_commit_as_the_store_runs_with_it(
    fresh_postgres: URL, tmp_path: Path
) -> None:
    """What counts is what the store's sessions run with, set here for one database: ``local``
    on a single server loses nothing, ``off`` can lose saves in a crash."""
    asyncio.run(_commit(fresh_postgres, "local"))
    report = json.loads(ok(cli("doctor", "--json", url=fresh_postgres, cwd=tmp_path)).out)
    assert report["settings"]["synchronous_commit"] == "local"
    assert report["warnings"] == []
    asyncio.run(_commit(fresh_postgres, "off"))
    report = json.loads(ok(cli("doctor", "--json", url=fresh_postgres, cwd=tmp_path)).out)
    [warning] = report["warnings"]
    assert "synchronous_commit = off" in warning
    assert "a crash of the server can lose acknowledged saves" in warning


def test_replication_report_says_what_it_cannot_see() -> None:
    """The verdicts on standbys this machine's server cannot show (a pair of clusters costs
    about 14 s to build; the failover tests build one, see the docs)."""
    sync = [("s1", "sync"), ("s2", "potential")]
    assert replication_report(Replication("FIRST 1 (s1, s2)", False, sync), "on", user="u") == (
        "s1 (sync), s2 (potential)",
        True,
        [],
    )
    # Without pg_monitor every WAL sender's row is there, its sync_state null: unknown.
    found, attached, warnings = replication_report(
        Replication("s1", False, [("s1", None)]), "on", user="trader"
    )
    assert attached is None
    assert warnings == []
    assert found == "s1 (sync_state hidden from this role: GRANT pg_monitor TO trader shows it)"
    # Named but not attached: commits wait (no loss, but every save times out).
    found, attached, warnings = replication_report(
        Replication("s1", False, [("s2", "async")]), "remote_apply", user="u"
    )
    assert attached is False
    [waiting] = warnings
    assert "no synchronous standby is attached (standbys: s2 (async))" in waiting
    # A standby set and attached, but commits acknowledged locally all the same.
    _, attached, [early] = replication_report(
        Replication("s1", False, [("s1", "sync")]), "off", user="u"
    )
    assert attached is True
    assert "(synchronous_commit = off)" in early
    assert UNLESS not in early
    # Standbys attached but none named: commits are acknowledged before any has them.
    found, attached, [early] = replication_report(
        Replication("", False, [("s1", "async")]), "local", user="u"
    )
    assert "(synchronous_standby_names is empty and synchronous_commit = local)" in early
    assert "a failover can lose acknowledged saves" in early
    assert UNLESS in early
    # A single server, none named: no failover to fear.
    assert replication_report(Replication("", False, []), "on", user="u") == (
        "none attached",
        False,
        [],
    )
    _, _, [standby] = replication_report(Replication("", True, []), "on", user="u")
    assert "standby in recovery and takes no writes" in standby


def test_hosts_of_lists_every_host_with_its_port() -> None:
    multi = resolve_url("postgresql://u@/db?host=a:5433&host=b&target_session_attrs=read-write")
    assert hosts_of(multi) == ["a:5433", "b:5432"]
    assert hosts_of(resolve_url("mysql://u@m/db")) == ["m:3306"]
    assert hosts_of(resolve_url("sqlite:///x.db")) == []


@pytest.mark.postgres
def test_the_no_schema_hint_is_a_command_that_works_as_printed(
    fresh_postgres: URL, tmp_path: Path
) -> None:
    """The hint kept no ``--url``: run literally, it upgraded another database (the default
    SQLite file here). It names the URL the command was given, and runs as printed."""
    given = fresh_postgres.render_as_string(hide_password=False)
    refused = cli("--url", given, "ls", cwd=tmp_path)
    one_line_error(
        refused, 3, "no rustrade-store schema", f"`rustrade-store --url {given} upgrade`"
    )
    found = re.search(r"from here: `([^`]+)`", refused.err)
    assert found is not None
    ok(cli(*shlex.split(found[1])[1:], cwd=tmp_path))
    assert not (tmp_path / "rustrade_state.db").exists()
    assert ok(cli("--url", given, "ls", cwd=tmp_path)).out == ""


def test_the_no_schema_hint_from_the_environment_needs_no_url(tmp_path: Path) -> None:
    """With the URL in $RUSTRADE_STORE_URL, the plain command upgrades the same database."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    ok(cli("upgrade", url=url, cwd=tmp_path))
    ok(cli("downgrade", "base", url=url, cwd=tmp_path))
    refused = cli("doctor", url=url, cwd=tmp_path)
    assert refused.code == 3, refused
    assert "(from here: `rustrade-store upgrade`)" in refused.err.splitlines()[-1]
    ok(cli("upgrade", url=url, cwd=tmp_path))
    assert ok(cli("current", url=url, cwd=tmp_path)).out.endswith("(head)\n")


async def _one_key_and_one_lease(url: URL) -> None:
    async with SqlStore.from_url(url) as store, store.lease("bot1/"):
        await store.save("bot1/BTCUSDT", {"halted": False})


def test_doctor_and_downgrade_count_snapshots_not_lease_rows(
    sqlite_url: URL, tmp_path: Path
) -> None:
    """One key and one lease were counted as two snapshots."""
    asyncio.run(_one_key_and_one_lease(sqlite_url))
    report = json.loads(ok(cli("doctor", "--json", url=sqlite_url, cwd=tmp_path)).out)
    assert report["snapshots"] == 1
    assert re.search(r"^snapshots: +1$", ok(cli("doctor", url=sqlite_url, cwd=tmp_path)).out, re.M)
    refused = cli("downgrade", "base", url=sqlite_url, cwd=tmp_path)
    one_line_error(refused, 2, "with its 1 snapshot(s)", "--yes")
