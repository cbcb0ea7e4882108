"""The test run's own servers: PostgreSQL 18 outlives no run, and the run names what it tested."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from . import postgres18, servers
from .helpers import asyncpg_connection

if TYPE_CHECKING:
    from sqlalchemy import URL

ROOT = Path(__file__).resolve().parent.parent
CRASHING_RUN = """
import os, signal
from tests import postgres18
server = postgres18.start()
print(server.home, server.port, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


async def select_one(url: URL) -> object:
    connection = await asyncpg_connection(url)
    try:
        return await connection.fetchval("SELECT 1")
    finally:
        await connection.close()


def answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.postgres18
def test_a_killed_runs_server_is_stopped_by_the_next_run(postgres18_admin_url: URL) -> None:
    """A run killed before its teardown leaves its server running; the next run stops it and
    removes its directory, and leaves the servers of runs still going alone (this run's, the
    system's on 5432)."""
    system_server = answers(5432)
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert crashed.returncode == -9, crashed.stderr
    home, port = crashed.stdout.split()
    assert answers(int(port)), "the killed run's server is not running"

    assert Path(home) in postgres18.stop_leftovers()
    assert not answers(int(port))
    assert not Path(home).exists()
    assert asyncio.run(select_one(postgres18_admin_url)) == 1
    assert answers(5432) == system_server


def test_the_servers_line_names_each_version_once_in_order() -> None:
    seen = {
        ("SQLite", (3, 40, 1)),
        ("PostgreSQL", (18, 6)),
        ("MariaDB", (10, 11, 19)),
        ("PostgreSQL", (15, 20)),
        ("SQLite", (3, 40, 1)),
    }
    assert servers.line(seen) == (
        "servers: PostgreSQL 15.20, PostgreSQL 18.6, MariaDB 10.11.19, SQLite 3.40.1"
    )
