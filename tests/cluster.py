"""Throwaway PostgreSQL 15 clusters for the failover tests: a primary and a streaming standby.

Built with Debian's postgresql-common as root (``initdb`` and ``pg_ctl`` refuse root;
``pg_createcluster`` and ``pg_ctlcluster`` switch to the ``postgres`` user themselves), on free
loopback ports, with data under ``/var/lib/postgresql/15/<name>`` (out of pytest's
``/tmp/pytest-of-root``, which ``postgres`` cannot enter). The shared server on 5432 is never
touched: every command names one of this module's clusters, and :func:`drop_cluster` refuses any
other name.

- The primary's ``pg_hba.conf`` trusts ``postgres`` on 127.0.0.1 for connections and replication
  (Debian's default there is scram). Its ``synchronous_standby_names`` goes in a file of its own
  configuration directory, ``/etc/postgresql/15/<name>/conf.d``: set with ``ALTER SYSTEM`` it
  would live in ``postgresql.auto.conf``, which ``pg_basebackup`` copies to the standby, whose
  every commit after promotion would then wait forever for a standby of its own.
- The standby is a cluster created the same way whose data directory is replaced by
  ``pg_basebackup``, run as ``postgres`` (``runuser``) so that its files are the server's; then
  ``standby.signal`` and a ``primary_conninfo`` naming it by ``application_name``.
- Clusters registered under ``/etc/postgresql`` outlive a crashed test, so each name carries the
  process id of its run (``rustrade_failover_<pid>_<token>_<role>``), :func:`replicated_pair`
  drops both in a ``finally``, and :func:`drop_leftovers` drops those of runs no longer alive.
- The primary runs with ``restart_after_crash = off``: crashed, it stays down as a failed-over
  primary does. :meth:`ReplicatedPair.stall_replication` holds its WAL sender, so that an
  asynchronous standby falls behind, as over a slow link.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import URL

from .helpers import process_alive

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

__all__ = [
    "NAME_PREFIX",
    "VERSION",
    "Cluster",
    "ClusterError",
    "Failover",
    "ReplicatedPair",
    "drop_cluster",
    "drop_leftovers",
    "missing",
    "replicated_pair",
]

VERSION = "15"
NAME_PREFIX = "rustrade_failover_"
"""Every cluster this module makes, and only those, has a name starting so."""
_NAME = re.compile(rf"^{NAME_PREFIX}(\d+)_[0-9a-f]+_(primary|standby)$")
USER = "postgres"
"""The server's owner, and the database user of the tests (trusted on 127.0.0.1)."""
CONF_ROOT = Path("/etc/postgresql") / VERSION
DATA_ROOT = Path("/var/lib/postgresql") / VERSION
LOG_ROOT = Path("/var/log/postgresql")
BIN = Path("/usr/lib/postgresql") / VERSION / "bin"
COMMAND_TIMEOUT = 60.0
"""Seconds any one command may take: far above what they need, so a stuck one fails the test."""
_TOOLS = ("pg_createcluster", "pg_ctlcluster", "pg_dropcluster", "psql", "runuser")


class ClusterError(RuntimeError):
    """A cluster command failed; the message holds its output and the end of the server log."""


def missing() -> str | None:
    """Why this machine cannot run the clusters, or None if it can."""
    if os.geteuid() != 0:
        return "the failover clusters are made as root (pg_createcluster, runuser)"
    absent = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if not (BIN / "pg_basebackup").exists():
        absent.append(str(BIN / "pg_basebackup"))
    if absent:
        return f"PostgreSQL {VERSION} cluster tools not found: {', '.join(absent)}"
    return None


def _run(*args: str, what: str, log: Path | None = None, ok: Sequence[int] = (0,)) -> str:
    """Run a command and return its output; raise :class:`ClusterError` if it exits with a
    status not in ``ok``."""
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{what}: {' '.join(args)} took over {COMMAND_TIMEOUT} s") from exc
    if done.returncode not in ok:
        raise ClusterError(
            f"{what}: {' '.join(args)} exited with {done.returncode}\n"
            f"{done.stdout}{done.stderr}{_tail(log)}"
        )
    return done.stdout


def _tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"--- the end of {log} ---\n" + "\n".join(text)


def _free_port(*taken: int) -> int:
    """A loopback port free now, none of ``taken``."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port not in taken:
            return port


@dataclass(frozen=True, slots=True)
class Cluster:
    """One cluster of postgresql-common, by name and port."""

    name: str
    port: int

    @property
    def conf_dir(self) -> Path:
        return CONF_ROOT / self.name

    @property
    def data_dir(self) -> Path:
        return DATA_ROOT / self.name

    @property
    def log_file(self) -> Path:
        return LOG_ROOT / f"postgresql-{VERSION}-{self.name}.log"

    def create(self, settings: Mapping[str, str]) -> None:
        """Register the cluster (not started, never started at boot) with ``settings`` in its
        ``conf.d`` and ``postgres`` trusted on 127.0.0.1, for connections and replication."""
        _run(
            "pg_createcluster",
            "--start-conf=manual",
            f"--port={self.port}",
            f"--datadir={self.data_dir}",
            f"--logfile={self.log_file}",
            VERSION,
            self.name,
            what=f"create cluster {self.name}",
        )
        self.configure(settings)
        hba = self.conf_dir / "pg_hba.conf"
        trusted = (
            f"host all {USER} 127.0.0.1/32 trust\nhost replication {USER} 127.0.0.1/32 trust\n"
        )
        # The first matching line wins: these go before Debian's scram lines.
        hba.write_text(trusted + hba.read_text())

    def configure(self, settings: Mapping[str, str]) -> None:
        """Write ``settings`` to the cluster's own file in ``conf.d`` (read at the next start)."""
        lines = [f"{name} = '{value}'" for name, value in settings.items()]
        path = self.conf_dir / "conf.d" / "rustrade-failover.conf"
        path.write_text("\n".join(lines) + "\n")
        shutil.chown(path, USER, USER)

    def start(self) -> None:
        """Start the server and wait until it accepts connections (read-only ones on a standby)."""
        self._ctl("start")

    def reload(self) -> None:
        """Have the server read its configuration files again."""
        self._ctl("reload")

    def stop(self, mode: str = "fast", *, gone_already: bool = False) -> None:
        """Stop the server and wait until it is gone; ``gone_already``: it may have exited."""
        self._ctl("stop", "--mode", mode, not_running_ok=gone_already)

    def promote(self) -> None:
        """Promote a standby and wait until it accepts writes."""
        self._ctl("promote")

    def _ctl(self, action: str, *options: str, not_running_ok: bool = False) -> None:
        _run(
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            *options,
            VERSION,
            self.name,
            action,
            what=f"{action} cluster {self.name}",
            log=self.log_file,
            ok=(0, 2) if not_running_ok else (0,),  # 2: the server is not running
        )

    def query(self, sql: str, database: str = "postgres") -> str:
        """The result of ``sql`` as psql's unaligned text (one row a line)."""
        return _run(
            "psql",
            "--no-psqlrc",
            "--no-align",
            "--tuples-only",
            "--quiet",
            "--set=ON_ERROR_STOP=1",
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--username={USER}",
            f"--dbname={database}",
            f"--command={sql}",
            what=f"query cluster {self.name}",
            log=self.log_file,
        ).strip()

    def replace_data_by_basebackup(self, primary: Cluster) -> None:
        """Replace the data directory with a copy of ``primary``'s, made as ``postgres`` (files
        made as root would stop the server from starting), and mark it a standby."""
        # Emptied, not removed: the directory is postgres's (mode 0700), its parent root's.
        for entry in self.data_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        _run(
            "runuser",
            "-u",
            USER,
            "--",
            str(BIN / "pg_basebackup"),
            "--host=127.0.0.1",
            f"--port={primary.port}",
            f"--username={USER}",
            f"--pgdata={self.data_dir}",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--no-password",
            what=f"copy {primary.name} into {self.name}",
            log=primary.log_file,
        )
        marker = self.data_dir / "standby.signal"
        marker.touch()
        shutil.chown(marker, USER, USER)

    def drop(self) -> None:
        """Stop and unregister the cluster, and remove its files; never another one's."""
        drop_cluster(self.name)


def drop_cluster(name: str) -> None:
    """``pg_dropcluster --stop``, then whatever of the cluster a half-made one left behind."""
    if not _NAME.match(name):
        raise ValueError(f"refusing to drop {name!r}: not a cluster of this module")
    errors = []
    if (CONF_ROOT / name).exists():
        try:
            _run("pg_dropcluster", "--stop", VERSION, name, what=f"drop cluster {name}")
        except ClusterError as exc:
            errors.append(str(exc))
    for leftover in (CONF_ROOT / name, DATA_ROOT / name):
        shutil.rmtree(leftover, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (LOG_ROOT / f"postgresql-{VERSION}-{name}.log").unlink()
    if (CONF_ROOT / name).exists() or (DATA_ROOT / name).exists():
        raise ClusterError(
            f"cluster {name} is still there after dropping it:\n" + "\n".join(errors)
        )


def drop_leftovers() -> list[str]:
    """Drop the clusters of runs that are no longer alive (a crashed or killed test); return
    their names. Clusters of a run still going are left alone."""
    names = {
        path.name for root in (CONF_ROOT, DATA_ROOT) if root.is_dir() for path in root.iterdir()
    }
    dropped = []
    for name in sorted(names):
        found = _NAME.match(name)
        if found and not process_alive(int(found.group(1))):
            drop_cluster(name)
            dropped.append(name)
    return dropped


@dataclass(frozen=True, slots=True)
class Failover:
    """When the primary went away and the standby took over (``time.monotonic``)."""

    stopping: float
    """Just before the primary was told to stop."""
    stopped: float
    """The primary's stop command returned: it is gone."""
    promoted: float
    """The standby's promote command returned: it accepts writes."""

    @property
    def took(self) -> float:
        """Seconds from the stop command to the end of the promotion."""
        return self.promoted - self.stopping


@dataclass(slots=True)
class ReplicatedPair:
    """A primary and its standby, replicating synchronously or not, with a database of ours."""

    primary: Cluster
    standby: Cluster
    synchronous: bool
    database: str
    stalled: int | None = None
    """The process id of the primary's WAL sender while :meth:`stall_replication` holds it."""

    def url(self, *clusters: Cluster, read_write: bool = True) -> URL:
        """The multi-host URL in SQLAlchemy's form for asyncpg, of ``clusters`` (default: the
        primary, then the standby); ``read_write`` adds ``target_session_attrs=read-write``, so
        that a host answering read-only is passed over."""
        hosts = clusters or (self.primary, self.standby)
        query: dict[str, str | Sequence[str]] = {
            "host": [f"127.0.0.1:{cluster.port}" for cluster in hosts]
        }
        if read_write:
            query["target_session_attrs"] = "read-write"
        return URL.create("postgresql+asyncpg", username=USER, database=self.database, query=query)

    def direct_url(self, cluster: Cluster) -> URL:
        """A single-host URL of ``cluster``."""
        return URL.create(
            "postgresql+asyncpg",
            username=USER,
            host="127.0.0.1",
            port=cluster.port,
            database=self.database,
        )

    def settings(self) -> dict[str, str]:
        """The replication settings the primary reports."""
        rows = self.primary.query(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('synchronous_commit', 'synchronous_standby_names')"
        )
        return dict(line.split("|", 1) for line in rows.splitlines())

    def wait_for_replication(self, wanted: str | None = None, timeout: float = 60.0) -> None:
        """Wait until the standby streams from the primary with ``sync_state`` ``wanted``
        (default: ``sync`` if the pair is synchronous, else ``async``)."""
        wanted = wanted or ("sync" if self.synchronous else "async")
        sql = (
            "SELECT sync_state FROM pg_stat_replication "
            f"WHERE application_name = '{self.standby.name}' AND state = 'streaming'"
        )
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.primary.query(sql)
            if state == wanted:
                return
            time.sleep(0.1)
        raise ClusterError(
            f"{self.standby.name} is not a {wanted} standby of {self.primary.name} after "
            f"{timeout} s (pg_stat_replication.sync_state: {state or 'no row'})\n"
            f"{_tail(self.standby.log_file)}"
        )

    def stall_replication(self) -> None:
        """Suspend the primary's WAL sender (SIGSTOP), as a slow link would hold it: commits go
        on (an asynchronous pair's only), the standby falls behind. :meth:`failover` kills the
        sender, so what it held never reaches the standby."""
        pid = self.primary.query(
            f"SELECT pid FROM pg_stat_replication WHERE application_name = '{self.standby.name}'"
        )
        if not pid:
            raise ClusterError(f"{self.primary.name} has no WAL sender for {self.standby.name}")
        self.stalled = int(pid)
        os.kill(self.stalled, signal.SIGSTOP)

    def failover(self, pause: float = 0.0) -> Failover:
        """Stop the primary in ``immediate`` mode (no shutdown checkpoint, no goodbye to the
        standby: as a crash), wait ``pause`` seconds (a failover manager's time to decide),
        then promote the standby."""
        stopping = time.monotonic()
        if self.stalled is not None:
            # Killed, not resumed, which would send what it holds: a crash of the primary, which
            # then ends every session and exits (restart_after_crash is off).
            os.kill(self.stalled, signal.SIGKILL)
            self.stalled = None
        self.primary.stop("immediate", gone_already=True)
        stopped = time.monotonic()
        time.sleep(pause)
        self.standby.promote()
        return Failover(stopping, stopped, time.monotonic())

    def drop(self) -> None:
        """Drop both clusters, the standby even if the primary fails to go."""
        if self.stalled is not None:  # a stopped WAL sender would hold up the primary's stop
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.stalled, signal.SIGKILL)
            self.stalled = None
        try:
            self.primary.drop()
        finally:
            self.standby.drop()


@contextlib.contextmanager
def replicated_pair(*, synchronous: bool, database: str = "rustrade") -> Iterator[ReplicatedPair]:
    """A running primary with ``database`` and a standby streaming from it (synchronous or
    not), both dropped on exit whatever happens."""
    token = f"{os.getpid()}_{secrets.token_hex(4)}"
    primary = Cluster(f"{NAME_PREFIX}{token}_primary", _free_port())
    standby = Cluster(f"{NAME_PREFIX}{token}_standby", _free_port(primary.port))
    pair = ReplicatedPair(primary, standby, synchronous, database)
    primary_settings = {
        "listen_addresses": "127.0.0.1",
        "synchronous_commit": "on",
        "restart_after_crash": "off",  # a crashed primary stays down, as a failed-over one
    }
    try:
        # Synchronous only once the standby streams: until then every commit (CREATE DATABASE
        # too) would wait for it.
        primary.create(primary_settings | {"synchronous_standby_names": ""})
        primary.start()
        primary.query(f'CREATE DATABASE "{database}"')
        standby.create({"listen_addresses": "127.0.0.1"})
        standby.replace_data_by_basebackup(primary)
        standby.configure(
            {
                "listen_addresses": "127.0.0.1",
                "primary_conninfo": (
                    f"host=127.0.0.1 port={primary.port} user={USER} "
                    f"application_name={standby.name}"
                ),
            }
        )
        standby.start()
        if synchronous:
            pair.wait_for_replication("async")
            primary.configure(primary_settings | {"synchronous_standby_names": f'"{standby.name}"'})
            primary.reload()
        pair.wait_for_replication()
        yield pair
    finally:
        pair.drop()
