"""Run the package's Alembic migrations from code."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from . import _statements
from ._backends import backend_for
from ._engine import (
    DEFAULT_TIMEOUT,
    check_timeout,
    create_engine,
    masked,
    refuse_memory_url,
    resolve_url,
)
from ._errors import SchemaError, root_cause, storage_error, upgrade_hint
from ._schema import VERSION_TABLE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy import URL, Connection
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "SchemaState",
    "SchemaStatus",
    "check_revision",
    "downgrade",
    "head_revision",
    "known_revision",
    "refuse_unknown_revision",
    "schema_status",
    "script_location",
    "upgrade",
    "upgrade_connection",
]

logger = logging.getLogger("rustrade_store.migrate")

_ALEMBIC = threading.Lock()
"""Held while an Alembic command runs: its ``context`` and ``op`` are process-wide globals, so
two at once (two event loops, or two tasks of one) would run on each other's connection. A
thread lock, since an asyncio lock belongs to one event loop."""


class _Wait:
    """One wait for :data:`_ALEMBIC` in a thread of its own, off the event loop (a busy default
    executor would hold up the loop's other work), handed over exactly once: to the waiting
    task, or back to the lock if that task has given up."""

    __slots__ = ("_guard", "_loop", "_state", "done")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._guard = threading.Lock()
        self._loop = loop
        self._state = "waiting"  # then "held" (by the task) or "abandoned"
        self.done: asyncio.Future[None] = loop.create_future()

    def start(self) -> asyncio.Future[None]:
        """Start the thread; the future is done when the task holds the lock."""
        thread = threading.Thread(target=self._take, name="rustrade-store migration", daemon=True)
        thread.start()
        return self.done

    def _take(self) -> None:
        """In the thread: take the lock, then hand it to the task if it still wants it."""
        _ALEMBIC.acquire()
        with self._guard:
            if self._state == "abandoned":
                _ALEMBIC.release()
                return
            self._state = "held"
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop closed meanwhile: no task is left to release it
            self.abandon()

    def _wake(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def abandon(self) -> None:
        """The task gave up (cancelled): release the lock if it was already taken for it."""
        with self._guard:
            held = self._state == "held"
            self._state = "abandoned"
        if held:
            _ALEMBIC.release()


@contextlib.asynccontextmanager
async def _alembic_turn() -> AsyncIterator[None]:
    """Hold :data:`_ALEMBIC` for the block, waiting for it without blocking the event loop."""
    if not _ALEMBIC.acquire(blocking=False):
        logger.debug("waiting for another rustrade-store migration in this process to finish")
        wait = _Wait(asyncio.get_running_loop())
        try:
            await wait.start()
        except BaseException:
            wait.abandon()
            raise
    try:
        yield
    finally:
        _ALEMBIC.release()


def script_location() -> Path:
    """The migration scripts, which ship inside the package."""
    return Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    """An Alembic configuration for the package's migrations, without an ini file."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(script_location()))
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest schema revision this release knows."""
    head = _scripts().get_current_head()
    if head is None:  # pragma: no cover - the package always ships a migration
        raise SchemaError("rustrade-store has no migrations")
    return head


def known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of this release's migrations."""
    return any(script.revision == revision for script in _scripts().walk_revisions())


def _run_command(connection: Connection, name: str, revision: str) -> None:
    from alembic import command

    refuse_unknown_revision(connection)
    config = alembic_config()
    config.attributes["connection"] = connection
    getattr(command, name)(config, revision)


@contextlib.asynccontextmanager
async def _migration_lock(engine: AsyncEngine, wait: float) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction, holding the database's migration lock, so that
    migrations of one database by any number of processes run one after another; each finds
    the schema where the one before left it, waiting for the lock up to ``wait`` seconds."""
    async with (
        engine.connect() as connection,
        backend_for(engine.url).migration_lock(connection, wait),
    ):
        yield connection


async def _run(
    target: str | URL | AsyncEngine | None, name: str, revision: str, wait: float
) -> None:
    if isinstance(target, AsyncEngine):
        engine = target
    else:
        url = resolve_url(target)
        refuse_memory_url(url, f"{name}()")
        engine = create_engine(url, timeout=wait)
    try:
        async with _migration_lock(engine, wait) as connection, _alembic_turn():
            await connection.run_sync(_run_command, name, revision)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        hint = backend_for(engine.url).failure_hint(True, root_cause(exc))
        raise storage_error(f"{name} to {revision}", None, masked(engine.url), exc, hint) from exc
    finally:
        if engine is not target:
            await engine.dispose()


async def upgrade_connection(connection: AsyncConnection, revision: str = "head") -> None:
    """Migrate through a connection the caller holds (an in-memory database has only one)."""
    async with _alembic_turn():
        await connection.run_sync(_run_command, "upgrade", revision)


async def upgrade(
    target: str | URL | AsyncEngine | None = None,
    revision: str = "head",
    *,
    wait: float = DEFAULT_TIMEOUT,
) -> None:
    """Migrate the database at ``target`` (a URL or an engine) up to ``revision``.

    The same migrations as ``alembic upgrade``; a URL of ``None`` resolves as the store does.
    Any number of processes may upgrade one database at once: each waits for the one under
    way, then finds the schema at head. ``wait`` bounds, in seconds, that wait and each of the
    connection's (an engine given keeps its own timeouts). A URL of a database in
    memory is refused (:class:`~rustrade_store.ConfigurationError`): it would vanish at once.
    """
    await _run(target, "upgrade", revision, check_timeout(wait))


async def downgrade(
    target: str | URL | AsyncEngine | None, revision: str, *, wait: float = DEFAULT_TIMEOUT
) -> None:
    """Migrate the database at ``target`` down to ``revision`` (``"base"`` drops the table)."""
    await _run(target, "downgrade", revision, check_timeout(wait))


# -- the schema's revision ------------------------------------------------------------------

SchemaState = Literal["missing", "behind", "current", "ahead-unknown"]


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """Where a database's schema stands against this release's migrations."""

    current: str | None
    """The database's revision, or ``None`` if it was never migrated."""
    head: str
    """This release's newest revision."""
    state: SchemaState
    """``"current"``: at ``head``. ``"missing"``: never migrated. ``"behind"``: at an older
    revision of this release. ``"ahead-unknown"``: at a revision this release does not know (a
    newer release migrated it), which its migrations can move neither up nor down."""
    message: str
    """One sentence naming the database and its state, and what to do unless it is current."""


def _read_revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    return connection.execute(_statements.revision()).scalar()


def _status(
    connection: Connection, where: str | None = None, url_text: str | None = None
) -> SchemaStatus:
    url = connection.engine.url
    where = masked(url) if where is None else where
    how = upgrade_hint(masked(url) if url_text is None else url_text)
    current = _read_revision(connection)
    head = head_revision()
    state: SchemaState
    if current == head:
        state, message = "current", f"{where} is at schema revision {head}, this release's head"
    elif current is None:
        state, message = "missing", f"{where} has no rustrade-store schema: create it with {how}"
        if url.get_backend_name() == "postgresql" and not url.database:
            message = (
                f"{where} names no database, so the server chose its default, "
                f"{connection.execute(_statements.current_database()).scalar()!r}, "
                "which has no rustrade-store schema: name the database in the URL "
                "(postgresql://user@host/dbname), then migrate it"
            )
    elif known_revision(current):
        state = "behind"
        message = (
            f"{where} is at schema revision {current}, older than this release's {head}: "
            f"migrate it with {how}"
        )
    else:
        state = "ahead-unknown"
        message = (
            f"{where} is at schema revision {current}, which this release does not know "
            f"(its newest is {head}): a newer rustrade-store migrated it; use that release, "
            "or upgrade the package"
        )
    return SchemaStatus(current, head, state, message)


async def schema_status(
    connection: AsyncConnection, where: str | None = None, *, url_text: str | None = None
) -> SchemaStatus:
    """The database's revision against this release's head; ``where`` names the database in
    the message (default: its URL, password masked), ``url_text`` is the URL its upgrade
    command gives (default: the connection's, password masked; the CLI gives its ``--url``)."""
    return await connection.run_sync(_status, where, url_text)


async def check_revision(
    connection: AsyncConnection, where: str, *, url_text: str | None = None
) -> None:
    """Raise :class:`SchemaError` unless the database is at this release's head revision
    (``url_text`` as for :func:`schema_status`)."""
    status = await schema_status(connection, where, url_text=url_text)
    if status.state != "current":
        raise SchemaError(status.message)


def refuse_unknown_revision(connection: Connection) -> None:
    """Raise :class:`SchemaError` if a newer release migrated the database: this release's
    migrations cannot move it up or down."""
    status = _status(connection)
    if status.state == "ahead-unknown":
        raise SchemaError(status.message)
