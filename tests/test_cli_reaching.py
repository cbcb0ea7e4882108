"""Reaching the database from the command line: each way a connection fails is named, with
what to check and whether it was retried and for how long; an unknown host, a server speaking
another protocol and a missing database are reported at once, not after the retries; a
missing database gets the ``CREATE DATABASE`` for its backend, and a URL naming no database is
refused before connecting."""

from __future__ import annotations

import asyncio
import re
import secrets
import shlex
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from rustrade_store import create_engine

from .commandline import Run, cli, ok, one_line_error
from .helpers import server_port

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import URL

PATIENCE = "60"
"""The --timeout given where a failure must not wait for the retries: a run shorter than it
was not retried to its end."""


async def _as_admin(admin: URL, statement: str) -> None:
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


def timed(*args: str, cwd: Path) -> tuple[Run, float]:
    started = time.monotonic()
    run = cli(*args, cwd=cwd)
    return run, time.monotonic() - started


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_a_refused_connection_says_so_once_and_that_it_was_retried(
    scheme: str, tmp_path: Path
) -> None:
    """The store's message names the refusal and the retries; the command adds only the option
    (it said both twice, in the store's words and its own)."""
    port = server_port()
    url = f"{scheme}://u@127.0.0.1:{port}/state"
    run = cli("--timeout", "1", "--url", url, "ls", cwd=tmp_path)
    one_line_error(
        run,
        3,
        f"connection refused: is the server running on 127.0.0.1:{port}?",
        "; retried for ",
        " s (--timeout sets how long)",
    )
    assert run.err.count("refused") == run.err.count("retried") == 1, run


def test_an_unknown_host_is_not_retried(tmp_path: Path) -> None:
    url = "postgresql://u@no-such-host.invalid/state"
    run, took = timed("--timeout", PATIENCE, "--url", url, "get", "bot1/X", cwd=tmp_path)
    one_line_error(run, 3, "unknown host", "no-such-host.invalid:5432", "not retried")
    assert took < float(PATIENCE)


@pytest.mark.postgres
@pytest.mark.mariadb
def test_a_server_speaking_another_protocol_is_named(
    postgres_url: URL, mariadb_url: URL, tmp_path: Path
) -> None:
    """A PostgreSQL URL at the MariaDB port, and a MySQL URL at the PostgreSQL port."""
    at_mariadb = postgres_url.set(port=mariadb_url.port or 3306).render_as_string()
    run, took = timed("--timeout", PATIENCE, "--url", at_mariadb, "ls", cwd=tmp_path)
    one_line_error(run, 3, "did not answer as a PostgreSQL server", "not retried")
    assert took < float(PATIENCE)
    at_postgres = mariadb_url.set(port=postgres_url.port or 5432).render_as_string()
    run = cli("--timeout", "2", "--url", at_postgres, "ls", cwd=tmp_path)
    one_line_error(run, 3, "sent no MySQL greeting within 2 s", "is it a MySQL or MariaDB server")


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_a_missing_database_gets_its_create_database_command(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The statement printed creates it, and the upgrade printed then runs as printed."""
    admin: URL = request.getfixturevalue(f"{backend}_admin_url")
    name = f"rustrade_missing_{secrets.token_hex(4)}"
    given = admin.set(database=name).render_as_string(hide_password=False)
    run, took = timed("--timeout", PATIENCE, "--url", given, "ls", cwd=tmp_path)
    one_line_error(run, 3, f"database {name!r} does not exist", "CREATE DATABASE")
    assert took < float(PATIENCE)
    statement, upgrade = re.findall(r"`([^`]+)`", run.err)
    asyncio.run(_as_admin(admin, statement))
    try:
        ok(cli(*shlex.split(upgrade)[1:], cwd=tmp_path))
        assert ok(cli("--url", given, "ls", cwd=tmp_path)).out == ""
    finally:
        drop = f'DROP DATABASE "{name}" WITH (FORCE)' if backend == "postgres" else None
        asyncio.run(_as_admin(admin, drop or f"DROP DATABASE `{name}`"))


@pytest.mark.parametrize("url", ["postgresql://u@h:5432", "postgresql://u@h/", "mysql://u@h"])
def test_a_url_naming_no_database_is_refused(url: str, tmp_path: Path) -> None:
    """PostgreSQL would quietly use the database named after the user, or ``postgres``."""
    one_line_error(cli("--url", url, "upgrade", cwd=tmp_path), 2, "names no database", "/rustrade")


def test_a_missing_driver_is_a_configuration_error(tmp_path: Path) -> None:
    """It was "unexpected error: ModuleNotFoundError", exit 3."""
    program = (
        "import sys; sys.modules['asyncmy'] = None; from rustrade_store.cli import main; "
        "sys.exit(main(['--url', 'mysql://u@h/state', 'ls']))"
    )
    run = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert run.returncode == 2, run
    [line] = run.stderr.splitlines()
    assert "needs the asyncmy driver, which is not installed" in line
    assert "pip install 'rustrade-store[mysql]'" in line
    assert "unexpected" not in line
