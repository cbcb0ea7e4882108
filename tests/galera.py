"""Throwaway three-node Galera clusters (MariaDB 10.11, galera-4) for the ``galera`` tests.

Each node is a ``mariadbd`` started by the tests as root with ``--user=mysql``, on loopback
ports of its own (client, gcomm, IST, rsync SST), its files under
``/var/lib/rustrade_galera/<pid>_<token>/node<N>`` (reachable by ``mysql``: pytest's
``/tmp/pytest-of-root`` is mode 0700). The shared server on 3306 is never touched:

- each node gets its own ``--defaults-file``, as the first option, never ``--no-defaults``: the
  rsync state transfer reads the configuration again, and with ``--no-defaults`` it would read
  the system ``my.cnf`` (the shared server's socket, pid file, data directory and port);
- the client runs as ``mariadb --no-defaults -S <socket>``;
- leftovers of crashed runs are found by their ``--defaults-file`` path under :data:`ROOT`,
  never by the process name (the shared server is a ``mariadbd`` running as ``mysql`` too).

Only the first node is bootstrapped (``--wsrep-new-cluster``), once, on a fresh data
directory; the others join it by rsync SST. A node restarted after a SIGKILL first runs
``--wsrep-recover``, so that it rejoins by an incremental transfer (IST) from the position it
recovered rather than a full one. ``evs.suspect_timeout`` and ``evs.inactive_timeout`` are
lowered: with the defaults, a killed node stalled every write of the cluster for 6.2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import URL

from rustrade_store import upgrade

from .helpers import process_alive, server_port, unavailable

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = [
    "ROOT",
    "USER",
    "GaleraCluster",
    "GaleraError",
    "Node",
    "drop_leftovers",
    "galera_cluster",
    "missing",
    "running_cluster",
]

ROOT = Path("/var/lib/rustrade_galera")
"""Every run's nodes live under here, and nothing else does."""
_RUN = re.compile(r"^(\d+)_[0-9a-f]+$")
PROVIDER = Path("/usr/lib/galera/libgalera_smm.so")
USER = "root"
"""The database user of the tests: ``root@127.0.0.1``, with no password, made by
``mariadb-install-db``."""
COMMAND_TIMEOUT = 60.0
START_TIMEOUT = 90.0
"""Seconds a node may take to start and reach ``Synced`` (11-15 s here on a quiet machine)."""
_TOOLS = ("mariadbd", "mariadb", "mariadb-install-db", "rsync")
SYNCED = "4"
"""``wsrep_local_state`` of a node in sync with the cluster."""

EVS = {
    "evs.suspect_timeout": "PT1.5S",
    "evs.inactive_timeout": "PT3S",
    "evs.keepalive_period": "PT0.5S",
    "evs.inactive_check_period": "PT0.5S",
    "evs.install_timeout": "PT3S",
}
"""How fast the cluster gives up on a silent node: a write stalls that long after a node dies."""


class GaleraError(RuntimeError):
    """A node command failed; the message holds its output and the end of the node's log."""


def missing() -> str | None:
    """Why this machine cannot run the clusters, or None if it can."""
    if os.geteuid() != 0:
        return "the Galera nodes are started as root with --user=mysql"
    absent = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if not PROVIDER.exists():
        absent.append(str(PROVIDER))
    if absent:
        return f"Galera test cluster tools not found: {', '.join(absent)}"
    return None


def _tail(log: Path, lines: int = 30) -> str:
    if not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"--- the end of {log} ---\n" + "\n".join(text)


def _servers_under(directory: Path) -> list[int]:
    """Process ids of the ``mariadbd`` whose first argument is a ``--defaults-file`` under
    ``directory``: this module's nodes, never the shared server."""
    found = []
    wanted = f"--defaults-file={directory}/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(args) > 1 and args[1].decode(errors="replace").startswith(wanted):
            found.append(int(entry.name))
    return found


def drop_leftovers() -> list[str]:
    """Kill the nodes of runs whose process is gone and remove their files; return the runs."""
    if not ROOT.is_dir():
        return []
    dropped = []
    for run in sorted(ROOT.iterdir()):
        match = _RUN.match(run.name)
        if match is None or process_alive(int(match.group(1))):
            continue
        for pid in _servers_under(run):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(run, ignore_errors=True)
        dropped.append(run.name)
    return dropped


@dataclass(slots=True)
class Node:
    """One Galera node: its ports, its files, its server process once started."""

    number: int
    directory: Path
    port: int
    gcomm: int
    ist: int
    sst: int
    cluster_address: str = ""
    name: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def defaults_file(self) -> Path:
        return self.directory / "my.cnf"

    @property
    def socket(self) -> Path:
        return self.directory / "mysqld.sock"

    @property
    def log_file(self) -> Path:
        return self.directory / "error.log"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    def write_config(self, cluster_name: str) -> None:
        options = {
            "gmcast.listen_addr": f"tcp://127.0.0.1:{self.gcomm}",
            "ist.recv_addr": f"127.0.0.1:{self.ist}",
            "gcache.size": "16M",
            **EVS,
        }
        settings = {
            "datadir": self.data_dir,
            "socket": self.socket,
            "pid-file": self.directory / "mysqld.pid",
            "port": self.port,
            "bind-address": "127.0.0.1",
            "log-error": self.log_file,
            # Not /tmp: the shared server and the other nodes keep their temporary tables there.
            "tmpdir": self.directory / "tmp",
            "skip-name-resolve": "ON",
            "innodb_buffer_pool_size": "32M",
            "innodb_log_file_size": "16M",
            "performance_schema": "OFF",
            "binlog_format": "ROW",
            "default_storage_engine": "InnoDB",
            "innodb_autoinc_lock_mode": "2",
            "wsrep_on": "ON",
            "wsrep_provider": PROVIDER,
            "wsrep_cluster_name": cluster_name,
            "wsrep_cluster_address": self.cluster_address,
            "wsrep_node_name": self.name,
            "wsrep_node_address": f"127.0.0.1:{self.gcomm}",
            "wsrep_node_incoming_address": f"127.0.0.1:{self.port}",
            "wsrep_sst_method": "rsync",
            "wsrep_sst_receive_address": f"127.0.0.1:{self.sst}",
            "wsrep_provider_options": '"' + ";".join(f"{k}={v}" for k, v in options.items()) + '"',
        }
        self.directory.mkdir(parents=True)
        self.data_dir.mkdir()
        (self.directory / "tmp").mkdir()
        lines = ["[mysqld]", *(f"{name}={value}" for name, value in settings.items())]
        self.defaults_file.write_text("\n".join(lines) + "\n")
        _chown_tree(self.directory)

    def _server_args(self, *extra: str) -> list[str]:
        # --defaults-file first: the rsync SST script reads the same configuration again.
        return ["mariadbd", f"--defaults-file={self.defaults_file}", "--user=mysql", *extra]

    def start(self, *extra: str) -> None:
        """Start the server (``extra`` options after ours); :meth:`wait_synced` waits for it."""
        if self.process is not None and self.process.poll() is None:
            raise GaleraError(f"{self.name} is running already")
        out = (self.directory / "stdout.log").open("ab")
        self.process = subprocess.Popen(
            self._server_args(*extra), stdout=out, stderr=subprocess.STDOUT
        )
        out.close()

    def kill(self) -> None:
        """SIGKILL the server, as a crash, and reap it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(COMMAND_TIMEOUT)
        self.process = None

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM) and wait until it has gone."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def recover_position(self) -> str:
        """``--wsrep-recover``: the last committed position (``uuid:seqno``) of a stopped
        node's data, which a restart then names so that it rejoins by IST."""
        before = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        _run(*self._server_args("--wsrep-recover"), what=f"recover {self.name}", log=self.log_file)
        after = self.log_file.read_text(errors="replace")[len(before) :]
        found = re.findall(r"WSREP: Recovered position: (\S+:-?\d+)", after)
        if not found:
            raise GaleraError(f"{self.name}: --wsrep-recover gave no position\n{after[-2000:]}")
        position: str = found[-1]
        return position

    def restart(self) -> None:
        """Start a stopped or killed node again, from its recovered position, and wait until
        it is synced (never with ``--wsrep-new-cluster``: that would split the cluster)."""
        if self.running:
            raise GaleraError(f"{self.name} is running")
        position = self.recover_position()
        self.start(f"--wsrep-start-position={position}")
        self.wait_synced()

    def query(self, sql: str, *, timeout: float = COMMAND_TIMEOUT) -> list[list[str]]:
        """Rows of ``sql`` run as root over the node's socket, each a list of columns."""
        out = _run(
            "mariadb",
            "--no-defaults",
            "-S",
            str(self.socket),
            "-u",
            "root",
            "--batch",
            "--skip-column-names",
            "-e",
            sql,
            what=f"query {self.name}",
            log=self.log_file,
            timeout=timeout,
        )
        return [line.split("\t") for line in out.splitlines()]

    def status(self) -> dict[str, str]:
        """The node's ``wsrep_%`` status variables."""
        return dict(
            (row[0], row[1] if len(row) > 1 else "")
            for row in self.query("SHOW GLOBAL STATUS LIKE 'wsrep%'")
        )

    def wait_synced(self, size: int | None = None, timeout: float = START_TIMEOUT) -> None:
        """Wait until the node answers, is synced and (``size``) sees that many nodes."""
        deadline = time.monotonic() + timeout
        state: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise GaleraError(
                    f"{self.name} exited with {self.process.returncode}\n{_tail(self.log_file)}"
                )
            with contextlib.suppress(GaleraError, subprocess.TimeoutExpired):
                state = self.status()
                if state.get("wsrep_local_state") == SYNCED and (
                    size is None or state.get("wsrep_cluster_size") == str(size)
                ):
                    return
            time.sleep(0.2)
        summary = {k: state.get(k) for k in ("wsrep_local_state_comment", "wsrep_cluster_size")}
        raise GaleraError(
            f"{self.name} not synced after {timeout} s ({summary})\n{_tail(self.log_file)}"
        )

    def wait_outside_primary(self, timeout: float = COMMAND_TIMEOUT) -> None:
        """Wait until the node says it is outside the primary component (isolated)."""
        deadline = time.monotonic() + timeout
        while self.status().get("wsrep_cluster_status") == "Primary":
            if time.monotonic() > deadline:
                raise GaleraError(f"{self.name} still in the primary component after {timeout} s")
            time.sleep(0.05)

    def isolate(self, on: bool) -> None:
        """Cut the node off from the others' group communication (``gmcast.isolate``), or let
        it back: a network partition, with its clients still connected."""
        self.query(f"SET GLOBAL wsrep_provider_options = 'gmcast.isolate={int(on)}'")


def _chown_tree(path: Path) -> None:
    for entry in [path, *path.rglob("*")]:
        shutil.chown(entry, "mysql", "mysql")


def _run(
    *args: str,
    what: str,
    log: Path | None = None,
    ok: Sequence[int] = (0,),
    timeout: float = COMMAND_TIMEOUT,
) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode not in ok:
        tail = _tail(log) if log is not None else ""
        raise GaleraError(
            f"{what}: {' '.join(args)} exited with {done.returncode}\n"
            f"{done.stdout}{done.stderr}{tail}"
        )
    return done.stdout


@dataclass(slots=True)
class GaleraCluster:
    """Three running nodes and a database of ours on them."""

    directory: Path
    nodes: list[Node]
    database: str
    started: dict[str, float] = field(default_factory=dict)

    def url(self, node: Node, scheme: str = "mysql") -> URL:
        """A single-host URL of ``node``."""
        return URL.create(
            scheme, username=USER, host="127.0.0.1", port=node.port, database=self.database
        )

    def multi_host_url(self, *nodes: Node, scheme: str = "mysql") -> str:
        """``mysql://root@h1:p1,h2:p2,h3:p3/db`` of ``nodes`` (default: all, in order)."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in nodes or self.nodes)
        return f"{scheme}://{USER}@{hosts}/{self.database}"

    def running(self) -> list[Node]:
        return [node for node in self.nodes if node.running]

    def wait_synced(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every running node is synced in one cluster of all of them."""
        running = self.running()
        for node in running:
            node.wait_synced(len(running), timeout)

    def drop(self) -> None:
        """Kill every node (a clean stop takes 5-6 s each, and the files go anyway) and
        remove the files."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()
        for pid in _servers_under(self.directory):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.directory, ignore_errors=True)


def _ports(count: int) -> list[int]:
    taken: list[int] = []
    while len(taken) < count:
        port = server_port()
        if port not in taken:
            taken.append(port)
    return taken


@contextlib.contextmanager
def galera_cluster(size: int = 3, database: str = "rustrade") -> Iterator[GaleraCluster]:
    """A running cluster of ``size`` synced nodes with ``database``, dropped on exit whatever
    happens."""
    token = f"{os.getpid()}_{secrets.token_hex(4)}"
    directory = ROOT / token
    ROOT.mkdir(exist_ok=True)
    ROOT.chmod(0o755)
    ports = _ports(4 * size)
    nodes = []
    for n in range(size):
        port, gcomm, ist, sst = ports[4 * n : 4 * n + 4]
        nodes.append(Node(n + 1, directory / f"node{n + 1}", port, gcomm, ist, sst))
    address = "gcomm://" + ",".join(f"127.0.0.1:{node.gcomm}" for node in nodes)
    cluster = GaleraCluster(directory, nodes, database)
    try:
        for node in nodes:
            node.cluster_address = address
            node.name = f"node{node.number}"
            node.write_config(f"rustrade_{token}")
        first = nodes[0]
        _run(
            "mariadb-install-db",
            f"--defaults-file={first.defaults_file}",
            "--user=mysql",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            what="initialise the first node",
        )
        began = time.monotonic()
        first.start("--wsrep-new-cluster")
        first.wait_synced(1)
        first.query(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
        for node in nodes[1:]:
            node.start()
        cluster.wait_synced()
        cluster.started["cold start"] = time.monotonic() - began
        yield cluster
    finally:
        cluster.drop()


def running_cluster() -> Iterator[GaleraCluster]:
    """A migrated three-node cluster for a test module (its fixture yields from this); skip
    (fail under CI) where none can run. Nodes left by crashed runs go first."""
    reason = missing()
    if reason is not None:
        unavailable("a Galera cluster", RuntimeError(reason))
    for run in drop_leftovers():
        print(f"\nremoved the Galera nodes of an earlier run, {run}")
    with galera_cluster() as made:
        print(f"\nGalera cluster up in {made.started['cold start']:.1f} s")
        asyncio.run(upgrade(made.url(made.nodes[0])))
        yield made
