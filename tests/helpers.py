"""What the tests share besides fixtures: the servers of a run, a skip that fails under CI,
databases made and dropped, a port for a server a test starts, the store each backend's users
get, a count of the connections a pool has lent, an event loop whose clock can skip ahead, and
the output of a command run on a terminal.

``make test`` runs the suite in pytest-xdist workers: each worker is a session of its own, so it
makes its own databases (named after its process id), and it takes ports for its servers from a
block of its own (:func:`server_port`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import select
import selectors
import socket
import threading
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

import asyncpg
import pytest
from sqlalchemy import delete, event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from rustrade_store import InMemoryStore, OutcomeUnknownError, SqlStore, StoreError
from rustrade_store._engine import DEFAULT_TIMEOUT, create_engine
from rustrade_store._schema import snapshots

from .proxy import TcpProxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

    from sqlalchemy import URL

    from .proxy import Link

__all__ = [
    "BACKENDS",
    "BACKENDS_AND_POSTGRES_18",
    "HANG_GUARD",
    "IN_CI",
    "MARIADB_ADMIN_URL",
    "POSTGRES_18",
    "POSTGRES_ADMIN_URL",
    "CheckoutCounter",
    "FastForwardLoop",
    "Proxied",
    "answer_withheld",
    "asyncpg_connection",
    "checked_out",
    "commit_request",
    "count_checkouts",
    "empty",
    "ended",
    "lease_state",
    "new_mariadb_database",
    "new_postgres_database",
    "open_store",
    "process_alive",
    "proxy_for",
    "refusing_values",
    "run_as_admin",
    "server_port",
    "stop_counting_checkouts",
    "terminal_output",
    "true_or_unknown",
    "unavailable",
    "unique_prefix",
]

HANG_GUARD = 120.0
"""Seconds after which a call counts as hung: far above any timeout of the store, so a slow
shared machine never fails a test, while a call that would wait for ever still does."""

IN_CI = os.environ.get("CI", "").lower() == "true"
"""Under ``CI=true`` a server that cannot be reached fails its tests instead of skipping them."""

POSTGRES_ADMIN_URL = os.environ.get(
    "RUSTRADE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MARIADB_ADMIN_URL = os.environ.get("RUSTRADE_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test")

BACKENDS = [
    "memory",
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
    pytest.param("mariadb_scheme", marks=pytest.mark.mariadb),
]
"""The backends of the ``backend`` fixture: every test of a store runs on each.
``mariadb_scheme`` is the MariaDB database reached through a ``mariadb://`` URL, which
SQLAlchemy gives a dialect of another name than ``mysql://``'s."""
POSTGRES_18 = pytest.param("postgres18", marks=pytest.mark.postgres18)
"""A PostgreSQL 18 server the run starts (``tests/postgres18.py``), beside the machine's 15:
a backend of the modules whose behaviour changes between server versions (the contract, write
ordering and compare-and-set, leases, migrations, faults), not of every test, to keep the
run's time."""
BACKENDS_AND_POSTGRES_18 = [*BACKENDS, POSTGRES_18]


def unavailable(what: str, exc: BaseException) -> NoReturn:
    """Skip locally, fail under CI: a missing server must never pass silently there."""
    message = f"{what} is unreachable: {type(exc).__name__}: {exc}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing server is a failure)", pytrace=False)
    pytest.skip(message)


# -- databases of their own ----------------------------------------------------------------


async def asyncpg_connection(url: URL) -> asyncpg.Connection:
    """A plain asyncpg connection to the PostgreSQL database of ``url``, outside any store."""
    return await asyncpg.connect(
        user=url.username,
        password=url.password,
        host=url.host,
        port=url.port,
        database=url.database,
        timeout=5,
    )


async def _postgres_admin(admin: URL, statement: str) -> None:
    connection = await asyncpg_connection(admin)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def new_postgres_database(admin: URL) -> Iterator[URL]:
    """A PostgreSQL database of its own, dropped on exit; skips (fails under CI) if unreachable."""
    name = f"rustrade_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        asyncio.run(_postgres_admin(admin, f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        unavailable(f"PostgreSQL at {admin.render_as_string()}", exc)
    try:
        yield admin.set(database=name)
    finally:
        asyncio.run(_postgres_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _mariadb_admin(admin: URL, statement: str) -> None:
    engine = create_engine(admin, poolclass=NullPool, timeout=5)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@contextlib.contextmanager
def new_mariadb_database(admin: URL) -> Iterator[URL]:
    """A MariaDB database of its own, dropped on exit; skips (fails under CI) if unreachable."""
    name = f"rustrade_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        asyncio.run(_mariadb_admin(admin, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    except (OSError, SQLAlchemyError, ImportError, TimeoutError) as exc:
        unavailable(f"MariaDB at {admin.render_as_string()}", exc)
    try:
        yield admin.set(database=name)
    finally:
        asyncio.run(_mariadb_admin(admin, f"DROP DATABASE IF EXISTS `{name}`"))


def run_as_admin(admin: URL, statement: str) -> None:
    """Run one statement on the server of the admin URL ``admin`` (PostgreSQL or MariaDB),
    outside any transaction: what an operator types at psql or mariadb."""
    if admin.get_backend_name() == "postgresql":
        asyncio.run(_postgres_admin(admin, statement))
    else:
        asyncio.run(_mariadb_admin(admin, statement))


# -- ports ---------------------------------------------------------------------------------

_PORTS = range(20000, 30000)
"""Where :func:`server_port` looks: below Linux's ephemeral range (32768-60999), from which the
kernel gives ``bind`` to port 0 and the local ends of client connections."""


def process_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def server_port() -> int:
    """A loopback port that is free now, for a server a test starts (PgBouncer, PostgreSQL 18).

    A port probed with ``bind`` to port 0 and closed again could go to another xdist worker's
    probe before this worker's server binds it; so each worker looks only in its own block of
    :data:`_PORTS` (``PYTEST_XDIST_WORKER`` of ``PYTEST_XDIST_WORKER_COUNT``), from a random
    start, and takes the first port that a ``bind`` accepts."""
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % workers
    size = len(_PORTS) // workers
    block = _PORTS[worker * size : (worker + 1) * size]
    start = random.randrange(len(block))
    for index in range(len(block)):
        port = block[(start + index) % len(block)]
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise OSError(f"no free loopback port in {block}")


# -- terminals -------------------------------------------------------------------------------


def terminal_output(fd: int, timeout: float) -> bytes | None:
    """What a command wrote next to the terminal whose other end is ``fd``: ``b""`` if nothing
    came within ``timeout`` seconds, ``None`` once the command has closed the terminal."""
    if not select.select([fd], [], [], timeout)[0]:
        return b""
    try:
        chunk = os.read(fd, 4096)
    except OSError:  # EIO: the command exited and closed the terminal
        return None
    return chunk or None


# -- stores --------------------------------------------------------------------------------


def open_store(backend: str, url: URL, timeout: float = DEFAULT_TIMEOUT) -> SqlStore:
    """The store each backend's users get: ``InMemoryStore()`` or ``SqlStore.from_url``."""
    if backend == "memory":
        return InMemoryStore(timeout=timeout)
    return SqlStore.from_url(url, timeout=timeout)


async def empty(store: SqlStore) -> None:
    """Delete every row of the store's table, lease rows included."""
    async with store.engine.begin() as connection:
        await connection.execute(delete(snapshots))


class CheckoutCounter:
    """Counts the connections a pool has lent and not had back, through the pool's own events
    (``StaticPool`` keeps no count of its own)."""

    __slots__ = ("outstanding",)

    def __init__(self, store: SqlStore) -> None:
        self.outstanding = 0
        pool = store.engine.sync_engine.pool
        event.listen(pool, "checkout", self.lent)
        event.listen(pool, "checkin", self.returned)

    def lent(self, *_: object) -> None:
        self.outstanding += 1

    def returned(self, *_: object) -> None:
        self.outstanding -= 1


_COUNTERS: dict[int, CheckoutCounter] = {}
"""The checkout counter of each store being counted, by ``id``."""


def count_checkouts(store: SqlStore) -> None:
    """Start counting the connections ``store``'s pool lends (see :func:`checked_out`)."""
    _COUNTERS[id(store)] = CheckoutCounter(store)


def checked_out(store: SqlStore) -> int:
    """Connections ``store``'s pool has lent and not had back since :func:`count_checkouts`."""
    return _COUNTERS[id(store)].outstanding


def stop_counting_checkouts(store: SqlStore) -> int:
    """Stop counting for ``store``; return the connections still lent out."""
    return _COUNTERS.pop(id(store)).outstanding


# -- time ----------------------------------------------------------------------------------


class _SkippingSelector(selectors.DefaultSelector):
    """Waits for I/O as usual, except that while its loop fast-forwards a wait for a timer ends
    at once and moves the loop's clock on by its length."""

    def __init__(self, loop: FastForwardLoop) -> None:
        super().__init__()
        self.loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self.loop.skipping and timeout is not None and timeout > 0:
            self.loop.skipped += timeout
            timeout = 0
        return super().select(timeout)


class FastForwardLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock can skip ahead: inside :meth:`fast_forward`, hours of sleeps and
    timeouts pass in a moment, in their order. Only for code that waits on timers alone there:
    a reply from a thread or a socket would arrive after timers that in real time come later.
    Run a coroutine on it with ``asyncio.Runner(loop_factory=FastForwardLoop)``."""

    def __init__(self) -> None:
        self.skipped = 0.0
        """Seconds the clock has skipped."""
        self.skipping = False
        super().__init__(_SkippingSelector(self))

    def time(self) -> float:
        return super().time() + self.skipped

    @contextlib.contextmanager
    def fast_forward(self) -> Iterator[None]:
        """Skip every wait for a timer until the block ends."""
        self.skipping = True
        try:
            yield
        finally:
            self.skipping = False


# -- faults --------------------------------------------------------------------------------


def proxy_for(url: URL) -> TcpProxy:
    """A :class:`~tests.proxy.TcpProxy` (not started) to the server of ``url``."""
    default_port = 5432 if url.get_backend_name() == "postgresql" else 3306
    return TcpProxy(url.host or "127.0.0.1", url.port or default_port)


def commit_request(url: URL) -> bytes:
    """The bytes of a COMMIT as the store's driver sends it to the server of ``url``, and no
    other request (``BEGIN ... READ COMMITTED`` is not one): asyncpg's ``COMMIT;``, or
    asyncmy's ``COM_QUERY`` packet (command byte 3) of ``COMMIT``."""
    return b"COMMIT;" if url.get_backend_name() == "postgresql" else b"\x03COMMIT"


class Proxied(NamedTuple):
    """Store ``a`` through ``proxy``, store ``b`` straight to the server, a prefix whose lease
    row exists, and the bytes of a COMMIT (:func:`commit_request`)."""

    a: SqlStore
    b: SqlStore
    proxy: TcpProxy
    prefix: str
    commit: bytes


def true_or_unknown(answer: object, expected: object = None) -> bool:
    """Whether a write's answer is ``expected`` (what it did) or that its outcome is unknown."""
    return answer == expected or isinstance(answer, OutcomeUnknownError)


async def answer_withheld(
    links: Sequence[Link],
    after: Sequence[bytes],
    writing: asyncio.Future[Any],
    committed: Callable[[], Awaitable[bool]],
) -> None:
    """Withhold, on ``links``, the answer to the request that completes ``after`` (see
    :meth:`~tests.proxy.Link.withhold_answers`); return once it was withheld and ``committed()``
    holds, with ``writing`` still waiting for that answer."""
    for link in links:
        link.withhold_answers(after=after)
    async with asyncio.timeout(HANG_GUARD):
        while not (any(link.triggered for link in links) and await committed()):
            if writing.done():
                ended = writing.exception() or writing.result()
                raise AssertionError(
                    f"the call ended ({ended!r}) before the proxy withheld its answer to "
                    f"{after}: has the way it writes changed?"
                )
            await asyncio.sleep(0.01)


_REFUSING = {
    "sqlite": (
        [
            "CREATE TRIGGER refuse_marked BEFORE INSERT ON snapshots "
            "WHEN instr(NEW.value, '{marker}') > 0 BEGIN SELECT RAISE(ABORT, 'value refused'); END"
        ],
        ["DROP TRIGGER refuse_marked"],
    ),
    "postgresql": (
        [
            "CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF strpos(NEW.value::text, '{marker}') > 0 THEN RAISE EXCEPTION 'value refused'; "
            "END IF; RETURN NEW; END $$",
            "CREATE TRIGGER refuse_marked BEFORE INSERT ON snapshots FOR EACH ROW "
            "EXECUTE FUNCTION refuse_marked()",
        ],
        ["DROP TRIGGER refuse_marked ON snapshots", "DROP FUNCTION refuse_marked()"],
    ),
    "mysql": (
        [
            "CREATE TRIGGER refuse_marked BEFORE INSERT ON snapshots FOR EACH ROW "
            "BEGIN IF LOCATE('{marker}', NEW.value) > 0 THEN "
            "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'value refused'; END IF; END"
        ],
        ["DROP TRIGGER refuse_marked"],
    ),
}


@contextlib.asynccontextmanager
async def refusing_values(store: SqlStore, marker: str) -> AsyncIterator[None]:
    """While open, the database itself (a trigger, not Python) refuses every row written to
    ``store``'s table whose value's text contains ``marker`` (letters only)."""
    assert marker.isalpha(), marker
    backend = store.engine.url.get_backend_name()
    creates, drops = _REFUSING["mysql" if backend == "mariadb" else backend]
    await store.is_empty()  # an in-memory database gets its schema at first use
    async with store.engine.begin() as connection:
        for statement in creates:
            await connection.exec_driver_sql(statement.replace("{marker}", marker))
    try:
        yield
    finally:
        async with store.engine.begin() as connection:
            for statement in drops:
                await connection.exec_driver_sql(statement)


# -- leases --------------------------------------------------------------------------------


def unique_prefix() -> str:
    """A lease prefix of its own: the server databases are shared by the whole run."""
    return f"p{secrets.token_hex(4)}/"


async def ended(call: Awaitable[Any]) -> Any:
    """What ``call`` returned, or the :class:`StoreError` it raised (within HANG_GUARD)."""
    try:
        return await asyncio.wait_for(call, HANG_GUARD)
    except StoreError as exc:
        return exc


def _take_and_vanish(url: URL, prefix: str) -> None:
    """Take the lease on ``prefix`` with a short ttl in a store of another event loop, then end
    that loop without releasing it: the lease expires."""

    async def run() -> None:
        holder = SqlStore.from_url(url)
        await holder.lease(prefix, ttl=0.2).acquire()
        await holder.engine.dispose()  # its renewer is cancelled when the loop ends

    thread = threading.Thread(target=asyncio.run, args=(run(),))
    thread.start()
    thread.join(HANG_GUARD)
    assert not thread.is_alive()


async def lease_state(store: SqlStore, url: URL, prefix: str, state: str) -> None:
    """Leave the lease on ``prefix`` released, expired, or never taken (no lease row)."""
    if state == "released":
        async with store.lease(prefix):
            pass
    elif state == "expired":
        await asyncio.to_thread(_take_and_vanish, url, prefix)
        async with asyncio.timeout(HANG_GUARD):
            while True:
                live = [info.live for info in await store.leases() if info.prefix == prefix]
                if live == [False]:
                    break
                await asyncio.sleep(0.05)
