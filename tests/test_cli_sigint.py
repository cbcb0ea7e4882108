"""Ctrl-C stops ``import`` and ``copy`` at once: SIGINT sent to the real command in the middle
of writing, on each database, rolls back, exits 130 and says so. "In the middle" is checked by
the data (nothing was written), not by a clock."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import subprocess
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

import pytest

from rustrade_store import ENV_VAR, RestoreReport, Snapshot, SqlStore, resolve_url, upgrade
from rustrade_store.cli.moving import interrupted_line
from rustrade_store.transfer import ExportWriter

from .commandline import COMMAND, T0, cli, ok
from .helpers import terminal_output

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import URL

LINES = 200_000


@pytest.fixture(scope="module")
def big_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of 200,000 snapshots (about 20 s of writing on any of the databases)."""
    path = tmp_path_factory.mktemp("sigint") / "big.jsonl"
    with path.open("wb") as out:
        writer = ExportWriter(out)
        for start in range(0, LINES, 1000):
            writer.write(
                [
                    Snapshot(f"bot{i % 10}/S{i:07d}", {"i": i, "halted": i % 7 == 0}, T0)
                    for i in range(start, start + 1000)
                ]
            )
        writer.close()
    return path


def interrupt_once_writing(args: list[str], env: dict[str, str], started: bytes) -> tuple[int, str]:
    """Run the command with stderr on a terminal (so that it shows progress), send SIGINT once
    the progress line shows ``started``, and return its exit code and stderr."""
    main_fd, terminal = pty.openpty()
    with subprocess.Popen(
        [COMMAND, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env={k: v for k, v in os.environ.items() if k != ENV_VAR} | env,
    ) as process:
        os.close(terminal)
        seen = b""
        while started not in seen:
            chunk = terminal_output(main_fd, 120)
            assert chunk, f"no progress within 120 s: {seen!r}"
            seen += chunk
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=120)
        while chunk := terminal_output(main_fd, 0.5):
            seen += chunk
    os.close(main_fd)
    return code, seen.decode("utf-8", "replace")


async def _count(url: URL) -> int:
    async with SqlStore.from_url(url) as store:
        return await store.count()


@pytest.mark.parametrize(
    "database",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_ctrl_c_stops_an_import_and_rolls_back(
    database: str, big_export: Path, request: pytest.FixtureRequest
) -> None:
    url: URL = request.getfixturevalue(
        "sqlite_url" if database == "sqlite" else f"fresh_{database}"
    )
    if database != "sqlite":
        asyncio.run(upgrade(url))
    env = {ENV_VAR: url.render_as_string(hide_password=False)}
    # "imported 1,000": the first batch is written inside the transaction.
    code, err = interrupt_once_writing(["import", str(big_export)], env, b"imported ")
    assert code == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("rustrade-store: interrupted: rolled back, nothing was written"), err
    assert "Traceback" not in err
    assert asyncio.run(_count(url)) == 0


def test_ctrl_c_stops_a_copy_and_rolls_back(tmp_path: Path) -> None:
    source = resolve_url(f"sqlite:///{tmp_path / 'source.db'}")
    target = resolve_url(f"sqlite:///{tmp_path / 'target.db'}")
    for url in (source, target):
        asyncio.run(upgrade(url))

    async def seed() -> None:
        async with SqlStore.from_url(source) as store:
            await store.restore(
                Snapshot(f"k{i:06d}", i, T0 + timedelta(microseconds=i)) for i in range(30_000)
            )

    asyncio.run(seed())
    code, err = interrupt_once_writing(
        ["copy", "--from", str(source), "--to", str(target)], {}, b"copied "
    )
    assert code == 130, err
    assert "interrupted: rolled back, nothing was written to" in err
    assert asyncio.run(_count(target)) == 0
    assert ok(cli("ls", "--keys", url=target, cwd=tmp_path)).out == ""


def test_the_interrupt_message_names_the_outcome() -> None:
    """Rolled back, committed, or unknown when Ctrl-C came while the COMMIT was in flight."""
    report = RestoreReport()
    said = {}
    states: tuple[Literal["writing", "rolled back", "committing", "committed"], ...] = (
        "writing",
        "rolled back",
        "committing",
        "committed",
    )
    for state in states:
        report.state = state
        said[state] = interrupted_line(report, "import", "db")
    assert (
        said["writing"]
        == said["rolled back"]
        == ("interrupted: rolled back, nothing was written to db")
    )
    assert said["committing"].startswith("interrupted while the COMMIT was in flight: unknown")
    assert said["committed"].startswith("interrupted after the commit: committed")
