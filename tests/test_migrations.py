"""Alembic: the command line and the API, every database, our own version table, no drift."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import URL, event, inspect, make_url, text
from sqlalchemy.schema import CreateTable

from rustrade_store import (
    ENV_VAR,
    InMemoryStore,
    SchemaError,
    SqlStore,
    create_engine,
    downgrade,
    head_revision,
    resolve_url,
    upgrade,
)
from rustrade_store._migrate import schema_status
from rustrade_store._schema import VERSION_TABLE, metadata

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncEngine

ROOT = Path(__file__).resolve().parent.parent

HANG_GUARD = 120.0
"""Seconds after which a wait that would otherwise hang fails the test: a guard, not a measure."""


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
    with pytest.raises(
        SchemaError, match="no rustrade-store schema: create it with `rustrade-store --url"
    ):
        async with SqlStore.from_url(empty_url) as store:
            await store.load("k")


def test_an_upgrade_prints_nothing(empty_url: URL) -> None:
    """Through a ``mariadb://`` URL, MariaDB printed ``Name
    'rustrade_store_alembic_version_pkc' ignored for PRIMARY key`` at every first upgrade
    (env.py looked for the dialect named "mysql" only). The driver prints it through C's
    buffered stdout, seen only when the process exits: hence a process of its own."""
    code = "import asyncio, sys, rustrade_store; asyncio.run(rustrade_store.upgrade(sys.argv[1]))"
    url = empty_url.render_as_string(hide_password=False)
    completed = subprocess.run(
        [sys.executable, "-c", code, url], capture_output=True, text=True, timeout=120, check=False
    )
    assert (completed.returncode, completed.stdout, completed.stderr) == (0, "", "")


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


def run_as_printed(command: str, cwd: Path) -> int:
    """Run a command the package printed, as a shell would, without RUSTRADE_STORE_URL."""
    args = shlex.split(command)
    completed = subprocess.run(
        [str(Path(sys.executable).with_name(args[0])), *args[1:]],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k != ENV_VAR},
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.returncode


async def test_never_migrated_database_says_how_to_migrate(empty_url: URL, tmp_path: Path) -> None:
    """The hint is a command that works as printed from where the user is: the database's own
    URL (an upgrade without it would migrate another one), never ``alembic upgrade head``
    (there is no alembic.ini where the wheel is installed)."""
    async with SqlStore.from_url(empty_url) as store:
        with pytest.raises(SchemaError) as caught:
            await store.load("k")
        with pytest.raises(SchemaError):
            await store.save("k", 1)
    message = str(caught.value)
    assert "alembic" not in message
    assert "or from Python `await rustrade_store.upgrade(url)` with the same URL" in message
    command = re.search(r"`(rustrade-store [^`]+)`", message)
    assert command is not None, message
    elsewhere = tmp_path / "elsewhere"  # not the repository: no alembic.ini, no state file
    elsewhere.mkdir()
    assert await asyncio.to_thread(run_as_printed, command.group(1), elsewhere) == 0
    async with SqlStore.from_url(empty_url) as store:
        await store.save("k", 1)
        assert await store.load("k") == 1


@pytest.mark.postgres
async def test_the_hint_for_a_url_with_a_password_says_it_is_masked(fresh_postgres: URL) -> None:
    url = fresh_postgres.set(password="s3cret")
    async with SqlStore.from_url(url) as store:
        with pytest.raises(SchemaError) as caught:
            await store.load("k")
    message = str(caught.value)
    assert "s3cret" not in message
    assert ":***@" in message
    assert "(with the password where the URL shows ***)" in message


@pytest.mark.postgres
async def test_a_postgres_url_naming_no_database_says_so(fresh_postgres: URL) -> None:
    """Without a database name the server picks the user's default (``postgres``): the hint
    invited creating the table there."""
    no_database = URL.create(
        fresh_postgres.drivername,
        username=fresh_postgres.username,
        host=fresh_postgres.host,
        port=fresh_postgres.port,
    )
    async with SqlStore.from_url(no_database) as store:
        with pytest.raises(SchemaError, match="names no database, so the server chose its default"):
            await store.load("k")


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


async def test_schema_status_is_what_the_store_checks(empty_url: URL) -> None:
    engine = create_engine(empty_url)
    head = head_revision()

    async def check() -> tuple[str | None, str, str, str]:
        async with engine.connect() as connection:
            status = await schema_status(connection)
            named = await schema_status(connection, "the bot's database")
        assert named.message.startswith("the bot's database ")
        async with SqlStore(engine) as store:
            if status.state == "current":
                await store.load("k")
            else:  # the store raises the very message, naming the database by its URL
                with pytest.raises(SchemaError) as raised:
                    await store.load("k")
                assert str(raised.value) == status.message
        assert status.message.startswith(engine.url.render_as_string(hide_password=True))
        return status.current, status.head, status.state, status.message

    try:
        current, _, state, message = await check()
        assert (current, state) == (None, "missing")
        assert "`rustrade-store --url " in message
        assert " upgrade`" in message
        await upgrade(engine)
        assert (await check())[:3] == (head, head, "current")
        async with engine.begin() as connection:
            await connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0999'"))
        current, _, state, message = await check()
        assert (current, state) == ("0999", "ahead-unknown")
        assert f"0999, which this release does not know (its newest is {head})" in message
        async with engine.begin() as connection:
            await connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '{head}'"))
        await downgrade(engine, "base")
        assert (await check())[:3] == (None, head, "missing")
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


# -- migrations at once in one process ------------------------------------------------------


async def assert_at_head(url: URL) -> None:
    """The database holds exactly the package's tables, at this release's head revision."""
    engine = create_engine(url)
    try:
        assert await tables(engine) == {"snapshots", VERSION_TABLE}
        async with engine.connect() as connection:
            ours = await connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
            assert ours.scalars().all() == [head_revision()]
    finally:
        await engine.dispose()


def sqlite_files(tmp_path: Path, *names: str) -> list[URL]:
    return [resolve_url(f"sqlite:///{tmp_path / name}") for name in names]


def test_in_memory_stores_first_used_at_once_each_get_their_schema() -> None:
    async def use_at_once() -> None:
        async with contextlib.AsyncExitStack() as stack:
            stores = [await stack.enter_async_context(InMemoryStore()) for _ in range(4)]
            await asyncio.gather(*(store.save("k", n) for n, store in enumerate(stores)))
            for n, store in enumerate(stores):
                await store.save("again", n)
                assert [await store.load("k"), await store.count()] == [n, 2]

    # Twice, each in its own event loop: nothing may stay bound to the first.
    asyncio.run(use_at_once())
    asyncio.run(use_at_once())


async def test_upgrades_and_downgrades_at_once_each_change_their_own_database(
    empty_url: URL, tmp_path: Path
) -> None:
    urls = [empty_url, *sqlite_files(tmp_path, "a.db", "b.db")]
    await asyncio.gather(*(upgrade(url) for url in urls))
    for url in urls:
        await assert_at_head(url)
    await asyncio.gather(*(downgrade(url, "base") for url in urls))
    for url in urls:
        engine = create_engine(url)
        try:
            assert await tables(engine) == {VERSION_TABLE}
        finally:
            await engine.dispose()


class _Signal(logging.Handler):
    def __init__(self, signal: threading.Event) -> None:
        super().__init__(logging.DEBUG)
        self.signal = signal

    def emit(self, record: logging.LogRecord) -> None:
        if "waiting" in record.getMessage():
            self.signal.set()


@pytest.fixture
def lock_wait(caplog: pytest.LogCaptureFixture) -> Iterator[threading.Event]:
    """Set when a migration starts waiting for another one in this process to finish."""
    caplog.set_level(logging.DEBUG, logger="rustrade_store.migrate")
    signal = threading.Event()
    handler = _Signal(signal)
    logger = logging.getLogger("rustrade_store.migrate")
    logger.addHandler(handler)
    try:
        yield signal
    finally:
        logger.removeHandler(handler)


@contextlib.contextmanager
def migration_under_way(url: URL) -> Iterator[None]:
    """An upgrade of ``url`` in its own thread and event loop, held inside its CREATE TABLE for
    the duration of the block; it must then finish without error."""
    inside = threading.Event()
    resume = threading.Event()
    failures: list[BaseException] = []

    def hold(_connection: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith("CREATE TABLE"):
            inside.set()
            assert resume.wait(HANG_GUARD), "the held migration was never resumed"

    async def migrate() -> None:
        engine = create_engine(url)
        event.listen(engine.sync_engine, "before_cursor_execute", hold)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    def run() -> None:
        try:
            asyncio.run(migrate())
        except BaseException as exc:
            failures.append(exc)
            inside.set()

    thread = threading.Thread(target=run, name="held migration")
    thread.start()
    try:
        assert inside.wait(HANG_GUARD)
        assert not failures, failures
        yield
    finally:
        resume.set()
        thread.join()
    assert not failures, failures


def start_upgrade(url: URL, lock_wait: threading.Event) -> asyncio.Task[None]:
    """An upgrade of ``url`` as a task; ``lock_wait`` is set when it waits, or else ends."""
    task = asyncio.create_task(upgrade(url))
    task.add_done_callback(lambda _: lock_wait.set())  # a wait that never comes fails fast
    return task


def test_a_migration_in_another_thread_waits_for_the_one_under_way(
    tmp_path: Path, lock_wait: threading.Event
) -> None:
    first, second = sqlite_files(tmp_path, "first.db", "second.db")
    failures: list[BaseException] = []
    finished = threading.Event()

    def run_second() -> None:
        try:
            asyncio.run(upgrade(second))
        except BaseException as exc:
            failures.append(exc)
        finally:
            finished.set()
            lock_wait.set()  # never wait forever for a wait that will not come

    thread = threading.Thread(target=run_second, name="second migration")
    with migration_under_way(first):
        thread.start()
        assert lock_wait.wait(HANG_GUARD)
        finished_while_first_held = finished.is_set()
    thread.join()
    assert not failures, failures
    assert not finished_while_first_held
    for url in (first, second):
        asyncio.run(assert_at_head(url))


def test_waiting_for_a_migration_leaves_the_event_loop_free(
    tmp_path: Path, sqlite_url: URL, lock_wait: threading.Event
) -> None:
    first, second = sqlite_files(tmp_path, "first.db", "second.db")

    async def wait_and_work() -> asyncio.Task[None]:
        waiting = start_upgrade(second, lock_wait)
        assert await asyncio.to_thread(lock_wait.wait, HANG_GUARD)
        # Unrelated work in this loop goes on while the upgrade waits for the other loop's.
        async with SqlStore.from_url(sqlite_url) as store:
            await store.save("k", 1)
            assert await store.load("k") == 1
        assert not waiting.done()
        return waiting

    async def main() -> None:
        with migration_under_way(first):
            waiting = await wait_and_work()
        await waiting

    asyncio.run(main())
    for url in (first, second):
        asyncio.run(assert_at_head(url))


def test_a_cancelled_wait_leaves_the_lock_to_the_next_migration(
    tmp_path: Path, lock_wait: threading.Event
) -> None:
    first, second = sqlite_files(tmp_path, "first.db", "second.db")

    async def give_up_waiting() -> None:
        waiting = start_upgrade(second, lock_wait)
        assert await asyncio.to_thread(lock_wait.wait, HANG_GUARD)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    with migration_under_way(first):
        asyncio.run(give_up_waiting())
    # The abandoned wait gets the lock when the first migration ends, and must hand it on.
    asyncio.run(asyncio.wait_for(upgrade(second), HANG_GUARD))
    for url in (first, second):
        asyncio.run(assert_at_head(url))
