"""An operator's session, command by command: every command run as the installed program on
each kind of database, from an unmigrated one to a downgrade to base."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from rustrade_store import head_revision

from .commandline import EMPTY_DATABASES, cli, empty_database, ok, one_line_error

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import URL


@pytest.fixture(params=EMPTY_DATABASES)
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    """An empty database of each kind, never migrated."""
    return empty_database(request, tmp_path)


def test_operator_session(empty_db: URL, tmp_path: Path) -> None:
    """Migrate, then look, repair and remove, the way an operator does at 3 a.m."""
    first = cli("get", "bot1/BTCUSDT", url=empty_db, cwd=tmp_path)
    assert first.code == 3, first
    assert "upgrade" in first.err
    assert ok(cli("upgrade", url=empty_db, cwd=tmp_path)).err.count("0001 (head)") == 1
    assert ok(cli("current", url=empty_db, cwd=tmp_path)).out == f"{head_revision()} (head)\n"

    state = '{"realised": -112.5, "loss_streak": 3, "halted": true}'
    ok(cli("put", "bot1/BTCUSDT", state, url=empty_db, cwd=tmp_path))
    ok(cli("put", "bot1/a_b", "-", stdin="[1, 2.0]\n", url=empty_db, cwd=tmp_path))
    as_text = empty_db.render_as_string(hide_password=False)
    ok(cli("put", "bot1/axb", "null", "--url", as_text, cwd=tmp_path))  # options after too
    got = ok(cli("get", "bot1/BTCUSDT", url=empty_db, cwd=tmp_path))
    assert json.loads(got.out) == json.loads(state)
    compact = ok(cli("get", "bot1/a_b", "--compact", url=empty_db, cwd=tmp_path))
    assert compact.out == "[1,2.0]\n"
    assert ok(cli("get", "bot1/axb", url=empty_db, cwd=tmp_path)).out == "null\n"

    # Refused input changes nothing and says what is wrong, in one line.
    for bad, words in [  # the rest of the strict parsing: test_transfer.py, in process
        ("-Infinity", "-Infinity is not JSON"),
        ('{"halted": true, "halted": false}', "appears twice"),
        ("halted", "quoted"),
    ]:
        run = cli("put", "bot1/BTCUSDT", "--", bad, url=empty_db, cwd=tmp_path)
        one_line_error(run, 2, words)
    one_line_error(cli("put", "", "1", url=empty_db, cwd=tmp_path), 2, "empty")
    one_line_error(cli("get", "bot9/none", url=empty_db, cwd=tmp_path), 1, "'bot9/none' not found")
    one_line_error(cli("rm", "bot9/none", url=empty_db, cwd=tmp_path), 1, "not found")
    one_line_error(cli("get", url=empty_db, cwd=tmp_path), 2, "KEY")
    one_line_error(cli("frobnicate", url=empty_db, cwd=tmp_path), 2, "unknown command", "ls")

    listing = ok(cli("ls", "bot1/", url=empty_db, cwd=tmp_path)).out.splitlines()
    assert [line.split()[0] for line in listing] == ["bot1/BTCUSDT", "bot1/a_b", "bot1/axb"]
    assert listing[0].split()[-1] == "49"  # bytes of the stored JSON text
    assert listing[2].endswith("  4")  # size in bytes of the JSON text "null"
    keys = ok(cli("ls", "--keys", "bot1/a_", url=empty_db, cwd=tmp_path)).out
    assert keys == "bot1/a_b\n"  # the prefix is literal: _ is not a wildcard

    ok(cli("rm", "bot1/a_b", "--yes", url=empty_db, cwd=tmp_path))
    report = ok(cli("doctor", url=empty_db, cwd=tmp_path)).out.splitlines()
    doctor = {label.strip(): value.strip() for label, value in (x.split(":", 1) for x in report)}
    assert doctor["schema revision"] == f"{head_revision()} (head)"
    assert doctor["dialect"] == empty_db.get_backend_name()
    assert doctor["driver"] == empty_db.get_driver_name()
    assert doctor["server version"][0].isdigit()
    assert doctor["snapshots"] == "2"
    assert doctor["status"] == "ok"
    if empty_db.get_backend_name() == "sqlite":
        assert (doctor["journal_mode"], doctor["synchronous"]) == ("wal", "FULL")
    else:
        assert doctor["synchronous_commit"] == "on"

    for target in ("base", "-1"):  # from the first revision, -1 is base too
        refused = cli("downgrade", target, url=empty_db, cwd=tmp_path)
        one_line_error(refused, 2, "2 snapshot(s)", "--yes")
    assert ok(cli("get", "bot1/BTCUSDT", url=empty_db, cwd=tmp_path)).out
    ok(cli("downgrade", "base", "--yes", url=empty_db, cwd=tmp_path))
    gone = cli("current", url=empty_db, cwd=tmp_path)
    assert gone.code == 3
    assert gone.out.startswith("none")
