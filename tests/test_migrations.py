"""Alembic: the command line and the API, every database, our own version table, no drift."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, make_url, text
from sqlalchemy.schema import CreateTable

from rustrade_store import SchemaError, SqlStore, downgrade, head_revision, upgrade
from rustrade_store.engine import ENV_VAR, create_engine, resolve_url
from rustrade_store.schema import VERSION_TABLE, metadata

if TYPE_CHECKING:
    from sqlalchemy import URL, Connection
    from sqlalchemy.ext.asyncio import AsyncEngine

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    """An empty, never migrated database of each kind."""
    if request.param == "sqlite":
        return resolve_url(f"sqlite:///{tmp_path / 'fresh.db'}")
    url: URL = request.getfixturevalue(f"fresh_{request.param}")
    return url


def alembic(*args: str, env: dict[str, str] | None = None) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout + completed.stderr


async def tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def test_command_line_upgrade_and_downgrade(empty_url: URL) -> None:
    url = empty_url.render_as_string(hide_password=False)
    alembic("-x", f"url={url}", "upgrade", "head")
    engine = create_engine(empty_url)
    try:
        assert await tables(engine) == {"snapshots", VERSION_TABLE}
        assert head_revision() in alembic("-x", f"url={url}", "current")
        alembic("downgrade", "base", env={ENV_VAR: url})
        assert await tables(engine) == {VERSION_TABLE}
    finally:
        await engine.dispose()


async def test_api_upgrade_and_downgrade(empty_url: URL) -> None:
    await upgrade(empty_url)
    async with SqlStore.from_url(empty_url) as store:
        await store.save("k", 1)
    await downgrade(empty_url, "base")
    with pytest.raises(SchemaError, match="alembic upgrade head"):
        async with SqlStore.from_url(empty_url) as store:
            await store.load("k")


def _compare(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "compare_type": True}
    )
    return list(compare_metadata(context, metadata))


async def test_migrated_schema_matches_the_package_metadata(empty_url: URL) -> None:
    await upgrade(empty_url)
    engine = create_engine(empty_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(_compare) == []
    finally:
        await engine.dispose()


async def test_version_table_lives_beside_an_applications_own(empty_url: URL) -> None:
    engine = create_engine(empty_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
            await connection.execute(text("INSERT INTO alembic_version VALUES ('app_0042')"))
        await upgrade(engine)
        async with engine.connect() as connection:
            app = await connection.execute(text("SELECT version_num FROM alembic_version"))
            assert app.scalar() == "app_0042"
            ours = await connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
            assert ours.scalar() == head_revision()
    finally:
        await engine.dispose()


async def test_never_migrated_database_says_how_to_migrate(empty_url: URL) -> None:
    async with SqlStore.from_url(empty_url) as store:
        with pytest.raises(SchemaError, match="alembic upgrade head"):
            await store.load("k")
        with pytest.raises(SchemaError):
            await store.save("k", 1)


async def test_unknown_revision_names_both_revisions(empty_url: URL) -> None:
    await upgrade(empty_url)
    engine = create_engine(empty_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0999'"))
        async with SqlStore(engine) as store:
            with pytest.raises(SchemaError, match=f"0999.*{head_revision()}"):
                await store.load("k")
        # This release's migrations can move it neither up nor down.
        for step in (upgrade(empty_url), downgrade(empty_url, "base")):
            with pytest.raises(SchemaError, match=f"0999.*{head_revision()}"):
                await step
    finally:
        await engine.dispose()


def test_offline_sql_is_generated_for_every_dialect() -> None:
    for url in ("sqlite:///x.db", "postgresql://u@h/db", "mysql://u@h/db", "mariadb://u@h/db"):
        script = alembic("-x", f"url={url}", "upgrade", "head", "--sql")
        assert "CREATE TABLE snapshots" in script
        assert VERSION_TABLE in script


@pytest.mark.parametrize(
    ("backend", "checked"), [("sqlite", True), ("mysql", True), ("postgresql", False)]
)
def test_package_metadata_declares_the_json_check_where_the_migration_does(
    backend: str, checked: bool
) -> None:
    dialect = make_url(f"{backend}://").get_dialect()()
    ddl = str(CreateTable(metadata.tables["snapshots"]).compile(dialect=dialect))
    assert ("CHECK (json_valid(value))" in ddl) is checked, ddl
