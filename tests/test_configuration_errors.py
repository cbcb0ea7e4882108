"""Usage errors are usage errors: a URL or a setting the store cannot use is refused before
connecting, by the library with a :class:`ConfigurationError` (a ``ValueError``) and by the
command with exit code 2, each message saying what to give instead; and what managed PostgreSQL
providers hand out (``?sslmode=require``) works as given."""

from __future__ import annotations

import math
import re
import shlex
from typing import TYPE_CHECKING

import pytest

from rustrade_store import (
    ConfigurationError,
    InMemoryStore,
    SqlStore,
    StorageError,
    create_engine,
    resolve_url,
    upgrade,
)

from .commandline import cli, ok, one_line_error

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import URL

SSL_MODES = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

# -- ?sslmode= -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", SSL_MODES)
def test_sslmode_becomes_asyncpgs_ssl(mode: str) -> None:
    url = resolve_url(f"postgresql://u@h/db?sslmode={mode}&application_name=bot")
    assert dict(url.query) == {"ssl": mode, "application_name": "bot"}


def test_an_unknown_or_contradicted_sslmode_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="sslmode='required' is not one of disable, "):
        SqlStore.from_url("postgresql://u@h/db?sslmode=required")
    with pytest.raises(ConfigurationError, match="sslmode=require and ssl=disable disagree"):
        resolve_url("postgresql://u@h/db?sslmode=require&ssl=disable")


@pytest.mark.postgres
async def test_sslmode_disable_connects_and_require_fails_as_a_storage_error(
    postgres_url: URL,
) -> None:
    """The local server offers no TLS: ``disable`` and ``prefer`` connect (the migrations too),
    ``require`` fails as the database's refusal, not as a TypeError about the argument."""
    for mode in ("disable", "prefer"):
        given = postgres_url.update_query_dict({"sslmode": mode})
        await upgrade(given)
        async with SqlStore.from_url(given) as store:
            await store.save("tls/k", mode)
            assert await store.load("tls/k") == mode
            assert await store.delete("tls/k")
    required = postgres_url.update_query_dict({"sslmode": "require"})
    async with SqlStore.from_url(required) as store:
        with pytest.raises(StorageError, match=r"load 'tls/k' failed on .*\?ssl=require: .*SSL"):
            await store.load("tls/k")


@pytest.mark.postgres
def test_the_command_takes_sslmode(postgres_url: URL, tmp_path: Path) -> None:
    base = postgres_url.render_as_string(hide_password=False)
    report = ok(cli("doctor", url=f"{base}?sslmode=disable", cwd=tmp_path)).out
    assert "ssl=disable" in report
    one_line_error(cli("doctor", url=f"{base}?sslmode=require", cwd=tmp_path), 3, "SSL")
    one_line_error(cli("ls", url=f"{base}?sslmode=on", cwd=tmp_path), 2, "sslmode='on'")


# -- timeout ---------------------------------------------------------------------------------

BAD_TIMEOUTS = [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, 1e9]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_a_timeout_out_of_range_is_refused_by_value(timeout: float) -> None:
    for make in (SqlStore.from_url, create_engine):
        with pytest.raises(ConfigurationError) as caught:
            make("sqlite:///state.db", timeout=timeout)
        assert isinstance(caught.value, ValueError)
        message = str(caught.value)
        assert f"timeout {timeout!r} is out of range" in message
        assert "greater than 0 and at most 86,400" in message


@pytest.mark.parametrize("given", ["0", "-1", "nan", "inf"])
def test_the_command_refuses_a_timeout_out_of_range(given: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    ok(cli("upgrade", url=url, cwd=tmp_path))
    for args in (("--timeout", given, "ls"), ("ls", f"--timeout={given}")):
        run = cli(*args, url=url, cwd=tmp_path)
        one_line_error(run, 2, "argument --timeout: timeout ", given, "greater than 0")


# -- sqlite://relative/path ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "fixed"),
    [
        ("sqlite://state.db", "sqlite:///state.db"),
        ("sqlite://data/state.db", "sqlite:///data/state.db"),
        ("sqlite+aiosqlite://data/state.db?mode=ro&uri=true", "sqlite+aiosqlite:///data/state.db?"),
    ],
)
def test_an_sqlite_url_with_a_host_names_the_three_slash_form(given: str, fixed: str) -> None:
    with pytest.raises(ConfigurationError, match=f"use {re.escape(fixed)}"):
        SqlStore.from_url(given)


def test_the_commands_the_tool_suggests_for_an_sqlite_path_run_as_given(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    refused = cli("--url", "sqlite://data/state.db", "ls", cwd=tmp_path)
    one_line_error(refused, 2, "use sqlite:///data/state.db (three slashes")
    found = re.search(r" use (\S+)", refused.err)
    assert found is not None
    fixed = found.group(1)
    missing = cli("--url", fixed, "ls", cwd=tmp_path)
    one_line_error(missing, 3, "upgrade")
    suggested = re.search(r"`(rustrade-store [^`]+)`", missing.err)
    assert suggested is not None
    ok(cli(*shlex.split(suggested.group(1))[1:], cwd=tmp_path))
    assert (tmp_path / "data" / "state.db").is_file()
    assert ok(cli("--url", fixed, "ls", cwd=tmp_path)).out == ""


# -- a URL that names no file ------------------------------------------------------------------

MEMORY_URLS = ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite+aiosqlite://"]


@pytest.mark.parametrize("given", MEMORY_URLS)
async def test_a_url_naming_no_file_is_refused_naming_the_in_memory_store(given: str) -> None:
    """An empty path (``sqlite:///$DB`` with DB unset) made a store that saved, listed nothing
    and restored nothing at the next start."""
    with pytest.raises(ConfigurationError, match=r"names no SQLite file.*InMemoryStore\(\)"):
        SqlStore.from_url(given)
    with pytest.raises(ConfigurationError, match=r"names no SQLite file.*InMemoryStore\(\)"):
        await upgrade(given)


@pytest.mark.parametrize("given", MEMORY_URLS)
@pytest.mark.parametrize("command", [("put", "bot1/X", "1"), ("upgrade",), ("doctor",)])
def test_the_command_refuses_a_url_naming_no_file(
    given: str, command: tuple[str, ...], tmp_path: Path
) -> None:
    """``upgrade`` and ``doctor`` too: ``upgrade`` printed a revision and exited 0."""
    run = cli("--url", given, *command, cwd=tmp_path)
    one_line_error(run, 2, "names no SQLite file", "InMemoryStore()")


async def test_the_in_memory_store_is_the_way_to_ask_for_memory() -> None:
    async with InMemoryStore() as store:
        await store.save("bot1/X", 1)
        assert await store.load("bot1/X") == 1


# -- a driver not installed --------------------------------------------------------------------


def test_the_command_reports_a_missing_mysql_driver_as_a_usage_error(tmp_path: Path) -> None:
    """It was "unexpected error: ModuleNotFoundError", exit 3: the fix is an install."""
    hidden = tmp_path / "hide"
    (hidden / "asyncmy").mkdir(parents=True)
    (hidden / "asyncmy" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'asyncmy'\", name='asyncmy')\n"
    )
    run = cli(
        "--url",
        "mysql://trader:s3cret@127.0.0.1/db",
        "ls",
        cwd=tmp_path,
        env={"PYTHONPATH": str(hidden)},
    )
    one_line_error(run, 2, "asyncmy driver, which is not installed", "rustrade-store[mysql]")
    assert "s3cret" not in run.err
