"""The contract suite through PgBouncer in transaction pooling mode (Debian's ``pgbouncer``).

The test starts its own PgBouncer on a free loopback port (of its xdist worker's own block) in
front of the local server, with a generated configuration, and reaches it with the URL option the
README documents. PgBouncer refuses to run as root: as root the test runs it with ``-u postgres``.
A machine without pgbouncer skips these tests locally and fails them under ``CI=true``
(``make test`` installs it where it can).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import delete, event

from rustrade_store import SqlStore, StorageError, downgrade, resolve_url, upgrade
from rustrade_store._backends import backend_for
from rustrade_store._schema import snapshots
from rustrade_store.testing import StateStoreContract

from .helpers import asyncpg_connection, server_port, unavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from sqlalchemy import URL

pytestmark = pytest.mark.postgres

POOLER_QUERY = {"prepared_statement_cache_size": "0"}
"""The URL option for PgBouncer's transaction pooling, as the README documents it."""


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on {port}: {log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def pgbouncer(postgres_url: URL) -> Iterator[URL]:
    """A PgBouncer in transaction mode in front of the run's database; yields its URL."""
    binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if binary is None:
        unavailable("pgbouncer", FileNotFoundError("no pgbouncer on PATH or in /usr/sbin"))
        raise AssertionError("unreachable")  # pragma: no cover - unavailable() never returns
    workdir = Path(tempfile.mkdtemp(prefix="rustrade-pgbouncer-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # PgBouncer refuses root; its files must be the postgres user's
        user = pwd.getpwnam("postgres")
        os.chown(workdir, user.pw_uid, user.pw_gid)
        run_as = ["-u", "postgres"]
    workdir.chmod(0o755)
    port = server_port()  # a port of this xdist worker's own
    log = workdir / "pgbouncer.log"
    users = workdir / "userlist.txt"
    users.write_text(f'"{postgres_url.username}" ""\n')
    config = workdir / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={postgres_url.host} port={postgres_url.port or 5432}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {users}\n"
        "pool_mode = transaction\n"
        "default_pool_size = 4\n"
        "max_client_conn = 200\n"
        f"logfile = {log}\n"
        f"pidfile = {workdir / 'pgbouncer.pid'}\n"
    )
    for path in (users, config):
        path.chmod(0o644)
    process = subprocess.Popen([binary, *run_as, str(config)], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, process, log)
        yield postgres_url.set(port=port, query=POOLER_QUERY)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - pgbouncer stops on SIGTERM
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


class TestThroughPgBouncer(StateStoreContract):
    """Every contract test, through PgBouncer in transaction mode."""

    @pytest.fixture
    async def store(self, pgbouncer: URL) -> AsyncIterator[SqlStore]:
        opened = SqlStore.from_url(pgbouncer)
        async with opened.engine.begin() as connection:
            await connection.execute(delete(snapshots))
        try:
            yield opened
        finally:
            await opened.aclose()


def test_pooler_url_gets_statement_names_unique_across_clients() -> None:
    url = resolve_url("postgresql://u@h/db").set(query=POOLER_QUERY)
    name_func = backend_for(url).engine_options(1.0)["connect_args"]["prepared_statement_name_func"]
    assert name_func() != name_func()
    plain = backend_for(url.set(query={})).engine_options(1.0)["connect_args"]
    assert "prepared_statement_name_func" not in plain


async def test_many_connections_share_few_server_connections(pgbouncer: URL) -> None:
    """Two stores with pools larger than PgBouncer's pool: prepared statement names from
    different clients meet on the same server connections, and nothing collides."""
    async with SqlStore.from_url(pgbouncer) as first, SqlStore.from_url(pgbouncer) as second:
        await asyncio.gather(
            *(first.save(f"bouncer/a{index}", index) for index in range(40)),
            *(second.save(f"bouncer/b{index}", -index) for index in range(40)),
        )
        loaded = await asyncio.gather(
            first.load_many(f"bouncer/b{index}" for index in range(40)),
            second.load_many(f"bouncer/a{index}" for index in range(40)),
        )
        assert list(loaded[0].values()) == [-index for index in range(40)]
        assert list(loaded[1].values()) == list(range(40))
        for index in range(40):
            await first.delete(f"bouncer/a{index}")
            await first.delete(f"bouncer/b{index}")


async def test_a_server_that_takes_no_writes_counts_as_a_lost_connection_behind_pgbouncer(
    pgbouncer: URL, fresh_postgres: URL, postgres_admin_url: URL
) -> None:
    """Behind PgBouncer too, a server answering read-only (a standby after a failover) counts
    as a lost connection: the store throws its connections away and retries until its
    deadline, rather than failing at once."""
    await upgrade(fresh_postgres)
    admin = await asyncpg_connection(postgres_admin_url)
    store = SqlStore.from_url(pgbouncer.set(database=fresh_postgres.database), timeout=1.0)
    invalidated: list[object] = []
    event.listen(store.engine.sync_engine.pool, "invalidate", lambda *_: invalidated.append(_))
    try:
        await admin.execute(
            f'ALTER DATABASE "{fresh_postgres.database}" SET default_transaction_read_only = on'
        )
        with pytest.raises(StorageError, match="read-only"):
            await store.save("k", "on a standby")
        assert invalidated, "the read-only server was not taken for a lost connection"
    finally:
        await admin.close()
        await store.aclose()


async def test_a_database_migrates_through_pgbouncer(pgbouncer: URL, fresh_postgres: URL) -> None:
    """The migration's lock is transaction-scoped (pg_advisory_xact_lock), which transaction
    pooling keeps on one server connection: upgrades through the pooler work, and leave no
    lock behind on a server connection that other clients share next."""
    url = pgbouncer.set(database=fresh_postgres.database)
    await upgrade(url)
    await downgrade(url, "base")
    await upgrade(url, wait=2)
    async with SqlStore.from_url(url) as store:
        await store.save("bot1/k", 1)
        assert await store.load("bot1/k") == 1
