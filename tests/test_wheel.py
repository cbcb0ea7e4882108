"""The built wheel, installed alone in a fresh virtual environment, migrates and runs every
command outside the repository: the migration scripts really ship inside the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rustrade_store import head_revision

if TYPE_CHECKING:
    from sqlalchemy import URL

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str | Path, cwd: Path, stdin: str | None = None, code: int = 0) -> str:
    # Nothing of this checkout may leak in: no PYTHONPATH, no active virtual environment.
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "VIRTUAL_ENV", "RUSTRADE_STORE_URL", "PYTHONHOME")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    completed = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == code, (command, completed.stdout, completed.stderr)
    return completed.stdout + completed.stderr


@pytest.mark.postgres
def test_the_wheel_works_from_a_fresh_virtualenv(tmp_path: Path, fresh_postgres: URL) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--wheel", "--outdir", dist, ROOT, cwd=ROOT)
    (wheel,) = dist.glob("rustrade_store-*.whl")
    venv = tmp_path / "venv"
    # A new interpreter environment: the test's own has the package installed editable.
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", wheel, cwd=tmp_path)

    outside = tmp_path / "ops"
    outside.mkdir()
    where = run(
        python,
        "-c",
        "import rustrade_store, rustrade_store._migrate as m; "
        "print(rustrade_store.__file__); print(m.script_location())",
        cwd=outside,
    ).split()
    site = venv.resolve()
    assert all(Path(path).resolve().is_relative_to(site) for path in where), where

    command = venv / "bin" / "rustrade-store"
    sqlite = "sqlite:///state.db"
    postgres = fresh_postgres.render_as_string(hide_password=False)
    head = head_revision()
    for url in (sqlite, postgres):

        def store(*args: str, code: int = 0, stdin: str | None = None, url: str = url) -> str:
            return run(command, "--url", url, *args, cwd=outside, code=code, stdin=stdin)

        assert "upgrade" in store("current", code=3)  # no SQLite file yet; no PostgreSQL schema
        assert f"{head} (head)" in store("upgrade")
        assert store("current").startswith(f"{head} (head)")
        store("put", "bot1/BTCUSDT", '{"realised": -112.5, "halted": true}')
        store("put", "bot1/ETHUSDT", "-", stdin="null")
        assert json.loads(store("get", "bot1/BTCUSDT", "--compact").splitlines()[0]) == {
            "realised": -112.5,
            "halted": True,
        }
        assert store("ls", "--keys", "bot1/").splitlines()[:2] == ["bot1/BTCUSDT", "bot1/ETHUSDT"]
        assert "status:" in store("doctor")
        store("export", "backup.jsonl", "--yes")  # the second pass replaces the first file
        assert "2 snapshot(s), all valid" in store("import", "--dry-run", "backup.jsonl")
        store("rm", "bot1/ETHUSDT", "--yes")
        store("get", "bot1/ETHUSDT", code=1)
        store("import", "backup.jsonl")
        assert store("get", "bot1/ETHUSDT").startswith("null")
        if url == postgres:  # PostgreSQL -> SQLite, and the target must exist and be migrated
            to = "sqlite:///copy.db"
            missing = run(command, "copy", "--from", url, "--to", to, cwd=outside, code=3)
            assert "no SQLite database" in missing
            run(command, "--url", to, "upgrade", cwd=outside)
            assert "verified" in run(command, "copy", "--from", url, "--to", to, cwd=outside)
            assert run(command, "--url", to, "ls", "--keys", cwd=outside).startswith("bot1/BTC")
        store("downgrade", "base", code=2)  # it would drop two snapshots
        store("downgrade", "base", "--yes")
        assert "never migrated" in store("current", code=3)
    assert not list(outside.glob("alembic*"))
