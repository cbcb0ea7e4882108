"""The command line on replicated PostgreSQL: ``doctor`` reports the settings that decide whether
a failover keeps acknowledged saves, whether a synchronous standby is attached, and every host of
a multi-host URL; ``copy`` tells two multi-host URLs apart by their hosts."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import URL, text

from rustrade_store.cli.doctor import Replication, replication_report
from rustrade_store.cli.moving import same_database
from rustrade_store.cli.opening import hosts_of
from rustrade_store.engine import create_engine, resolve_url
from rustrade_store.migrate import upgrade

from .test_cli import cli, ok, one_line_error

if TYPE_CHECKING:
    from pathlib import Path

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
def test_doctor_warns_when_commits_are_acknowledged_before_a_standby_has_them(
    postgres_url: URL, tmp_path: Path
) -> None:
    """The shared server has no standby: the warning, worded for managed databases too, every
    host of a multi-host URL named, and the one that answered."""
    url = _multi_host(postgres_url)
    served = f"{postgres_url.host}:{postgres_url.port or 5432}"
    report = ok(cli("doctor", url=url, cwd=tmp_path)).out
    fields = [line.split(":", 1) for line in report.splitlines()]
    doctor = {label.strip(): value.strip() for label, value in fields}
    assert doctor["hosts"] == f"{NOBODY}, {served}"
    assert doctor["connected to"] == served
    assert doctor["synchronous_standby_names"] == "(empty)"
    assert doctor["standbys"] == "none attached"
    assert "commits are acknowledged before any standby has them" in doctor["warning"]
    assert "a failover can lose acknowledged saves" in doctor["warning"]
    assert UNLESS in doctor["warning"]
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
    assert len(as_json["warnings"]) == 1
    assert UNLESS in as_json["warnings"][0]
    assert as_json["status"] == "ok"


async def _commit_locally(url: URL) -> None:
    """Make the database's sessions acknowledge commits before any standby has them."""
    await upgrade(url)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(
                text(f'ALTER DATABASE "{url.database}" SET synchronous_commit = local')
            )
    finally:
        await engine.dispose()


@pytest.mark.postgres
def test_doctor_warns_of_synchronous_commit_local(fresh_postgres: URL, tmp_path: Path) -> None:
    """What counts is what the store's sessions run with, set here for one database."""
    asyncio.run(_commit_locally(fresh_postgres))
    report = json.loads(ok(cli("doctor", "--json", url=fresh_postgres, cwd=tmp_path)).out)
    assert report["settings"]["synchronous_commit"] == "local"
    [warning] = report["warnings"]
    assert "(synchronous_standby_names is empty and synchronous_commit = local)" in warning


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
    _, _, [standby] = replication_report(Replication("", True, []), "on", user="u")
    assert "standby in recovery and takes no writes" in standby


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


def test_hosts_of_lists_every_host_with_its_port() -> None:
    multi = resolve_url("postgresql://u@/db?host=a:5433&host=b&target_session_attrs=read-write")
    assert hosts_of(multi) == ["a:5433", "b:5432"]
    assert hosts_of(resolve_url("mysql://u@m/db")) == ["m:3306"]
    assert hosts_of(resolve_url("sqlite:///x.db")) == []
