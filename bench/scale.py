"""Export, import and copy a million snapshots with the `rustrade-store` command; print the
wall time and the peak resident memory of each run (each command is its own process, so its
peak RSS, read from wait4(), is all it used).

    python bench/scale.py [--count N] [--postgres ADMIN_URL]

PostgreSQL comes from --postgres, else RUSTRADE_TEST_POSTGRES_URL, else the local server; the
script creates its databases and drops them at the end. Files go to a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from rustrade_store._engine import resolve_url
from rustrade_store._store import Snapshot
from rustrade_store.transfer import ExportWriter

if TYPE_CHECKING:
    from rustrade_store.codec import JSONValue

COMMAND = str(Path(sys.executable).with_name("rustrade-store"))
DEFAULT_ADMIN = os.environ.get(
    "RUSTRADE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def generate(path: Path, count: int) -> None:
    """``count`` snapshots in key order, shaped like a bot's risk state (~150 bytes a line),
    written as an export is (with its trailer, which import checks)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with path.open("wb") as out:
        writer = ExportWriter(out)
        batch: list[Snapshot] = []
        for i in range(count):
            value: JSONValue = {
                "realised": round((i % 997) * -0.25, 2),
                "loss_streak": i % 5,
                "halted": i % 11 == 0,
                "day": "2026-01-01",
            }
            key = f"bot{i // 10_000:04d}/SYM{i:07d}"
            batch.append(Snapshot(key, value, start + timedelta(microseconds=i)))
            if len(batch) == 1000:
                writer.write(batch)
                batch.clear()
        writer.write(batch)
        writer.close()


def measure(label: str, *args: str, count: int) -> tuple[str, float, float]:
    """Run one command; return (label, seconds, peak RSS in MiB)."""
    started = time.perf_counter()
    with subprocess.Popen(
        [COMMAND, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as process:
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        assert process.stderr is not None
        err = process.stderr.read().decode()
    if process.returncode != 0:
        raise SystemExit(f"{label} failed ({process.returncode}): {err.strip()}")
    rss = usage.ru_maxrss / 1024  # KiB on Linux
    rate = f"{count / elapsed:>9,.0f}/s" if count else " " * 11
    print(f"{label:<36} {elapsed:>8.1f} s {rate} {rss:>8.1f} MiB", flush=True)
    return label, elapsed, rss


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


async def admin(url: str, statement: str) -> None:
    parsed = resolve_url(url)
    connection = await asyncpg.connect(
        user=parsed.username,
        password=parsed.password,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
    )
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--postgres", default=DEFAULT_ADMIN, metavar="ADMIN_URL")
    options = parser.parse_args()
    n = options.count
    work = Path(tempfile.mkdtemp(prefix="rustrade-scale-"))
    tag = secrets.token_hex(3)
    pg_names = [f"rustrade_scale_{tag}_a", f"rustrade_scale_{tag}_b"]
    base = resolve_url(options.postgres)
    pg_a, pg_b = (base.set(database=name).render_as_string(False) for name in pg_names)
    lite_a, lite_b = f"sqlite:///{work / 'a.db'}", f"sqlite:///{work / 'b.db'}"
    source = work / "snapshots.jsonl"
    try:
        started = time.perf_counter()
        generate(source, n)
        size = source.stat().st_size / 2**20
        print(
            f"{n:,} snapshots, {size:,.0f} MiB of JSON Lines, made in "
            f"{time.perf_counter() - started:.0f} s"
        )
        for name in pg_names:
            asyncio.run(admin(options.postgres, f'CREATE DATABASE "{name}"'))
        for url in (lite_a, lite_b, pg_a, pg_b):
            subprocess.run([COMMAND, "--url", url, "upgrade"], check=True, capture_output=True)
        print(f"{'step':<36} {'time':>10} {'rate':>11} {'peak RSS':>12}")
        measure("baseline: doctor (SQLite)", "--url", lite_a, "doctor", count=0)
        runs = [
            ("import file -> SQLite", ["--url", lite_a, "import", str(source)]),
            ("export SQLite -> file", ["--url", lite_a, "export", str(work / "lite.jsonl")]),
            ("import file -> PostgreSQL", ["--url", pg_a, "import", str(source)]),
            ("export PostgreSQL -> file", ["--url", pg_a, "export", str(work / "pg.jsonl")]),
            ("copy SQLite -> PostgreSQL (+verify)", ["copy", "--from", lite_a, "--to", pg_b]),
            ("copy PostgreSQL -> SQLite (+verify)", ["copy", "--from", pg_a, "--to", lite_b]),
        ]
        for label, args in runs:
            measure(label, *args, count=n)
        expected = digest(source)
        same = all(digest(work / name) == expected for name in ("lite.jsonl", "pg.jsonl"))
        print("exports identical to the imported file:", "yes" if same else "NO")
        if not same:
            raise SystemExit(1)
    finally:
        for name in pg_names:
            asyncio.run(admin(options.postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
