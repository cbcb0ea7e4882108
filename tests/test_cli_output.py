"""What the command prints never shows a password, and a password that is a common word does
not garble the rest."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from .commandline import cli, ok, one_line_error

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import URL


@pytest.mark.postgres
def test_errors_never_show_the_password(fresh_postgres: URL, tmp_path: Path) -> None:
    secret = "Pw-n0t-for-logs"
    url = fresh_postgres.set(password=secret).render_as_string(hide_password=False)
    down = fresh_postgres.set(password=secret, port=1).render_as_string(hide_password=False)
    runs = [
        cli("doctor", url=url, cwd=tmp_path),  # never migrated
        cli("upgrade", url=url, cwd=tmp_path),
        cli("doctor", url=url, cwd=tmp_path),
        cli("ls", url=url, cwd=tmp_path),
        cli("get", "missing", url=url, cwd=tmp_path),
        cli("--debug", "get", "k", url=down, cwd=tmp_path),
        cli("doctor", url=down, cwd=tmp_path),
        cli("copy", "--from", url, "--to", down, cwd=tmp_path),
    ]
    for run in runs:
        assert secret not in run.out + run.err, run
    assert "***" in runs[2].out
    one_line_error(runs[6], 3, "127.0.0.1:1")
    assert "Traceback" in runs[5].err  # --debug shows it, still without the password
    one_line_error(cli("ls", url="oracle://root@h/db", cwd=tmp_path), 2, "oracle")


@pytest.mark.postgres
def test_a_common_word_as_password_does_not_garble_the_output(
    postgres_url: URL, tmp_path: Path
) -> None:
    """The password is hidden where it stands as a word; "postgresql" stays readable."""
    url = postgres_url.set(password="postgres")
    report = ok(cli("doctor", url=url, cwd=tmp_path)).out
    assert re.search(r"^dialect: +postgresql$", report, re.MULTILINE), report
    assert ":postgres@" not in report
