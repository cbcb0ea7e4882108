"""Running the installed ``rustrade-store`` command in tests, as an operator runs it: a
subprocess per command, or one on a terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rustrade_store import ENV_VAR, resolve_url

from .helpers import terminal_output

if TYPE_CHECKING:
    from sqlalchemy import URL

COMMAND = str(Path(sys.executable).with_name("rustrade-store"))


T0 = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


class Run:
    """One finished command: exit code, stdout, stderr."""

    __slots__ = ("code", "err", "out")

    def __init__(self, completed: subprocess.CompletedProcess[str]) -> None:
        self.code = completed.returncode
        self.out = completed.stdout
        self.err = completed.stderr

    def __repr__(self) -> str:
        return f"Run(code={self.code}, out={self.out!r}, err={self.err!r})"


def cli(
    *args: str,
    url: URL | str | None = None,
    stdin: str | None = None,
    cwd: Path,
    env: dict[str, str] | None = None,
) -> Run:
    """Run the installed command; ``env`` adds to the environment (without RUSTRADE_STORE_URL
    unless ``url`` gives it)."""
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR} | (env or {})
    if url is not None:
        env[ENV_VAR] = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    completed = subprocess.run(
        [COMMAND, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )
    return Run(completed)


def ok(run: Run) -> Run:
    assert run.code == 0, run
    return run


def one_line_error(run: Run, code: int, *words: str) -> None:
    """The command failed with ``code`` and exactly one stderr line containing ``words``."""
    assert run.code == code, run
    lines = run.err.splitlines()
    assert len(lines) == 1, run
    assert lines[0].startswith("rustrade-store"), run
    assert "Traceback" not in run.err
    for word in words:
        assert word in lines[0], run


def copy_cli(source: URL, target: URL, *extra: str, cwd: Path) -> Run:
    """``rustrade-store copy --from source --to target``, passwords included."""
    return cli(
        "copy",
        "--from",
        source.render_as_string(hide_password=False),
        "--to",
        target.render_as_string(hide_password=False),
        *extra,
        cwd=cwd,
    )


def on_terminal(
    *args: str,
    url: URL,
    cwd: Path,
    answer: str,
    env: dict[str, str] | None = None,
    program: str = COMMAND,
) -> tuple[int, str]:
    """Run the command (or ``program``) with a terminal for stdin, stdout and stderr, as a
    person does; type ``answer`` at its ``[y/N]`` prompt. Returns the exit code and everything
    it printed."""
    environment = {k: v for k, v in os.environ.items() if k != ENV_VAR} | (env or {})
    environment[ENV_VAR] = url.render_as_string(hide_password=False)
    main_fd, terminal = pty.openpty()
    with subprocess.Popen(
        [program, *args], stdin=terminal, stdout=terminal, stderr=terminal, cwd=cwd, env=environment
    ) as process:
        os.close(terminal)
        seen = b""
        answered = False
        while (chunk := terminal_output(main_fd, 60)) is not None:
            assert chunk, f"no output for 60 s: {seen!r}"
            seen += chunk
            if not answered and b"[y/N]" in seen:
                os.write(main_fd, answer.encode() + b"\n")
                answered = True
        code = process.wait(timeout=60)
    os.close(main_fd)
    return code, seen.decode("utf-8", "replace").replace("\r\n", "\n")


EMPTY_DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
"""The parameters of a module's ``empty_db`` fixture: see :func:`empty_database`."""


def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    """An empty database of the kind ``request.param`` names, never migrated (an SQLite file not
    yet created), for a fixture parametrized over :data:`EMPTY_DATABASES`."""
    if request.param == "sqlite":
        return resolve_url(f"sqlite:///{tmp_path / 'ops.db'}")
    url: URL = request.getfixturevalue("fresh_postgres")
    return url
