"""Changing state by hand: ``put --if-updated-at``, ``put --if-absent`` and ``edit`` cannot
overwrite a newer save (``edit`` with ``EDITOR`` set to a small script); hints for the likely
mistakes; ``rm`` and ``export`` over a file need confirming."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rustrade_store import ClockSkewError, Snapshot, SqlStore

from .commandline import COMMAND, Run, cli, ok, on_terminal, one_line_error

if TYPE_CHECKING:
    from sqlalchemy import URL

    from rustrade_store import JSONValue

HALTED = {"realised": -112.5, "loss_streak": 3, "halted": True}


EDITOR = f"""\
#!{sys.executable}
# A scripted editor: merges $EDIT_SET (JSON) into the file, or writes $EDIT_TEXT as it is;
# runs $EDIT_RACE meanwhile (a bot saving while the operator edits).
import json, os, subprocess, sys

path = sys.argv[1]
if "EDIT_TEXT" in os.environ:
    text = os.environ["EDIT_TEXT"]
else:
    value = json.load(open(path))
    value.update(json.loads(os.environ.get("EDIT_SET", "{{}}")))
    text = json.dumps(value, indent=4)
open(path, "w").write(text)
if "EDIT_RACE" in os.environ:
    subprocess.run(os.environ["EDIT_RACE"], shell=True, check=True)
"""


async def _snapshot(url: URL, key: str) -> Snapshot | None:
    async with SqlStore.from_url(url) as store:
        return await store.load_snapshot(key)


def snapshot(url: URL, key: str) -> Snapshot | None:
    return asyncio.run(_snapshot(url, key))


def stored_time(url: URL, key: str) -> str:
    """The key's updated_at exactly as ``ls --json`` prints it."""
    line = ok(cli("ls", "--json", key, url=url, cwd=Path.cwd())).out.splitlines()[0]
    when: str = json.loads(line)["updated_at"]
    return when


def test_put_if_updated_at_and_if_absent_write_only_over_what_was_read(
    sqlite_url: URL, tmp_path: Path
) -> None:
    key, state = "bot1/BTCUSDT", json.dumps(HALTED)
    ok(cli("put", key, state, "--if-absent", url=sqlite_url, cwd=tmp_path))
    again = cli("put", key, "{}", "--if-absent", url=sqlite_url, cwd=tmp_path)
    one_line_error(again, 4, "the key exists", "nothing was written")

    read = stored_time(sqlite_url, key)
    unhalted = json.dumps(HALTED | {"halted": False})
    ok(cli("put", key, unhalted, "--if-updated-at", read, url=sqlite_url, cwd=tmp_path))
    # The same token again is stale now: refused, naming the time stored since.
    now = stored_time(sqlite_url, key)
    stale = cli("put", key, state, "--if-updated-at", read, url=sqlite_url, cwd=tmp_path)
    one_line_error(stale, 4, f"saved again at {now}", "othing was written")
    current = snapshot(sqlite_url, key)
    assert current is not None
    assert current.value == HALTED | {"halted": False}

    for token, words in [
        ("yesterday", "not ISO 8601"),
        ("2026-11-26T12:22:53", "no time zone"),
        ("0001-01-01T00:00:00+01:00", "out of range"),
    ]:
        refused = cli("put", key, "{}", "--if-updated-at", token, url=sqlite_url, cwd=tmp_path)
        one_line_error(refused, 2, "--if-updated-at", words, "exactly as")
    both = cli("put", key, "{}", "--if-absent", "--if-updated-at", now, cwd=tmp_path)
    one_line_error(both, 2, "not allowed with")
    assert snapshot(sqlite_url, key) == current


def test_edit_shows_the_diff_and_saves_only_over_what_it_read(
    sqlite_url: URL, tmp_path: Path
) -> None:
    key = "bot1/BTCUSDT"
    editor = tmp_path / "editor.py"
    editor.write_text(EDITOR, encoding="utf-8")
    editor.chmod(0o755)
    ok(cli("put", key, json.dumps(HALTED), url=sqlite_url, cwd=tmp_path))
    read = snapshot(sqlite_url, key)
    assert read is not None

    def edit(*extra: str, **env: str) -> Run:
        environment = {"EDITOR": str(editor)} | env
        return cli("edit", key, *extra, url=sqlite_url, cwd=tmp_path, env=environment)

    # No terminal and no --yes: refused before the editor opens (vi printed screens of escape
    # codes, then "Vim: Error reading input"), naming --yes.
    unhalt = json.dumps({"halted": False, "loss_streak": 0})
    marker = tmp_path / "editor-ran"
    refused = cli("edit", key, url=sqlite_url, cwd=tmp_path, env={"EDITOR": f"touch {marker}"})
    one_line_error(refused, 2, "no terminal", "add --yes", "nothing was opened")
    assert not marker.exists()
    assert snapshot(sqlite_url, key) == read

    # An editor that changes nothing, or reformats only, writes nothing.
    assert ok(edit("--yes")).err.startswith("no change")
    assert snapshot(sqlite_url, key) == read

    # Invalid JSON: refused by the strict decoder, nothing written.
    broken = edit("--yes", EDIT_TEXT='{"halted": false, "halted": true}')
    one_line_error(broken, 2, "appears twice", "nothing was written", "--if-updated-at")
    assert snapshot(sqlite_url, key) == read

    # The bot saves while the editor is open: the edit is refused and says what changed.
    bot = HALTED | {"realised": -130.0, "loss_streak": 4}
    raced = edit("--yes", EDIT_SET=unhalt, EDIT_RACE=f"{COMMAND} put {key} '{json.dumps(bot)}'")
    assert raced.code == 4, raced
    assert "was saved again while you edited it" in raced.err
    assert '-  "loss_streak": 3,' in raced.err
    assert '+  "loss_streak": 4,' in raced.err
    assert "nothing was written" in raced.err.splitlines()[-1]
    now = snapshot(sqlite_url, key)
    assert now is not None
    assert now.value == bot

    # Confirmed with --yes over an unchanged snapshot: saved, at a later time.
    saved = ok(edit("--yes", EDIT_SET=unhalt))
    assert saved.err.splitlines()[-1].startswith(f"saved '{key}'")
    after = snapshot(sqlite_url, key)
    assert after is not None
    assert after.value == bot | {"halted": False, "loss_streak": 0}
    assert after.updated_at > now.updated_at

    missing = cli(
        "edit", "bot9/none", "--yes", url=sqlite_url, cwd=tmp_path, env={"EDITOR": "false"}
    )
    one_line_error(missing, 1, "not found", "--if-absent")


def test_edit_asks_on_a_terminal(sqlite_url: URL, tmp_path: Path) -> None:
    key = "bot1/BTCUSDT"
    ok(cli("put", key, json.dumps(HALTED), url=sqlite_url, cwd=tmp_path))
    sed = {"EDITOR": 'sed -i \'s/"halted": true/"halted": false/\''}
    code, output = on_terminal("edit", key, url=sqlite_url, cwd=tmp_path, answer="n", env=sed)
    assert code == 2, output
    assert "not confirmed; nothing was changed" in output
    assert snapshot(sqlite_url, key) is not None
    code, output = on_terminal("edit", key, url=sqlite_url, cwd=tmp_path, answer="y", env=sed)
    assert code == 0, output
    assert f"save this to '{key}'? [y/N]" in output
    assert '+  "halted": false' in output
    saved = snapshot(sqlite_url, key)
    assert saved is not None
    assert saved.value == HALTED | {"halted": False}


def test_hints_for_likely_mistakes(sqlite_url: URL, tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"halted": false}', encoding="utf-8")
    one_line_error(
        cli("put", "bot1/BTCUSDT", "state.json", url=sqlite_url, cwd=tmp_path),
        2,
        "not a file name",
        "rustrade-store put bot1/BTCUSDT - < state.json",
    )
    one_line_error(
        cli("put", "bot1/BTCUSDT", "-", stdin="", url=sqlite_url, cwd=tmp_path), 2, "stdin is empty"
    )
    one_line_error(cli("gte", "bot1/BTCUSDT", cwd=tmp_path), 2, "unknown command 'gte'", "'get'")
    assert ok(cli("ls", "--keys", url=sqlite_url, cwd=tmp_path)).out == ""


def test_rm_and_export_over_a_file_need_confirming(sqlite_url: URL, tmp_path: Path) -> None:
    for key in ("bot1/A", "bot1/B", "bot1/C"):
        ok(cli("put", key, "1", url=sqlite_url, cwd=tmp_path))
    # No terminal and no --yes: refused, saying how.
    one_line_error(cli("rm", "bot1/A", url=sqlite_url, cwd=tmp_path), 2, "for good", "--yes")
    (tmp_path / "backup.jsonl").write_text("precious\n", encoding="utf-8")
    refused = cli("export", "backup.jsonl", url=sqlite_url, cwd=tmp_path)
    one_line_error(refused, 2, "backup.jsonl, which exists", "--yes")
    assert (tmp_path / "backup.jsonl").read_text(encoding="utf-8") == "precious\n"

    ok(cli("rm", "bot1/A", "--yes", url=sqlite_url, cwd=tmp_path))
    ok(cli("export", "backup.jsonl", "--yes", url=sqlite_url, cwd=tmp_path))
    assert (tmp_path / "backup.jsonl").read_text(encoding="utf-8").count("\n") == 3

    # On a terminal, the person answers.
    code, said = on_terminal("rm", "bot1/B", url=sqlite_url, cwd=tmp_path, answer="n")
    assert code == 2, said
    assert "remove 'bot1/B' (saved at " in said
    assert "not confirmed" in said
    code, said = on_terminal("rm", "bot1/B", url=sqlite_url, cwd=tmp_path, answer="y")
    assert code == 0, said
    assert ok(cli("ls", "--keys", url=sqlite_url, cwd=tmp_path)).out == "bot1/C\n"


FUTURE = "2030-01-01T00:00:00.000000+00:00"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        url: URL = request.getfixturevalue("sqlite_url")
        return url
    url = request.getfixturevalue(f"fresh_{request.param}")
    ok(cli("upgrade", url=url, cwd=tmp_path))
    return url


async def _bot_saves(url: URL, value: JSONValue) -> str:
    """A bot's save of bot1/BTCUSDT: ``"saved"``, or the name of the error that refused it."""
    async with SqlStore.from_url(url) as store:
        try:
            await store.save("bot1/BTCUSDT", value)
        except ClockSkewError:
            return "ClockSkewError"
        return "saved"


def _value(url: URL) -> JSONValue:
    found = snapshot(url, "bot1/BTCUSDT")
    assert found is not None
    return found.value


def test_a_key_stamped_in_the_future_is_refused_by_import_and_repaired_by_put(
    any_db: URL, tmp_path: Path
) -> None:
    """A snapshot from a clock that ran ahead: every later save of its key failed, and no
    command could change or remove it. Import refuses such times, naming the way out; once one
    is stored, the error names ``put --reset-time``, which writes the value back at the time
    now, after which the bot's saves and ``rm`` apply again."""
    assert asyncio.run(_bot_saves(any_db, {"n": 1})) == "saved"
    line = {"key": "bot1/BTCUSDT", "value": {"n": 99}, "updated_at": "2030-01-01T00:00:00+00:00"}
    (tmp_path / "ahead.jsonl").write_text(json.dumps(line) + "\n", encoding="utf-8")
    refused = cli("import", "--no-trailer-check", "ahead.jsonl", url=any_db, cwd=tmp_path)
    assert refused.code == 2, refused
    assert "later than the database server's clock plus 60 s" in refused.err
    assert "--allow-future-times" in refused.err
    assert _value(any_db) == {"n": 1}

    # Told otherwise (as a save from a host whose clock ran ahead does): the key is stuck.
    imported = ["import", "--no-trailer-check", "--allow-future-times", "ahead.jsonl"]
    ok(cli(*imported, url=any_db, cwd=tmp_path))
    assert stored_time(any_db, "bot1/BTCUSDT") == FUTURE
    assert asyncio.run(_bot_saves(any_db, {"n": 2})) == "ClockSkewError"
    stuck = cli("put", "bot1/BTCUSDT", '{"n": 3}', "--force", url=any_db, cwd=tmp_path)
    one_line_error(stuck, 3, "synchronise the clocks", "--reset-time")

    # The repair: exactly that stored time, its value written back at the time now.
    reset = ["put", "bot1/BTCUSDT", "-", "--if-updated-at", FUTURE, "--reset-time"]
    one_line_error(cli(*reset[:4], "--reset-time", url=any_db, cwd=tmp_path), 2, "--if-updated-at")
    wrong = [*reset[:4], "2030-01-01T00:00:00.000001+00:00", "--reset-time"]
    one_line_error(cli(*wrong, stdin='{"n": 4}', url=any_db, cwd=tmp_path), 4, "saved again at")
    done = ok(cli(*reset, stdin='{"n": 5}', url=any_db, cwd=tmp_path))
    assert "its time set back from 2030-01-01T00:00:00.000000+00:00" in done.err
    repaired = snapshot(any_db, "bot1/BTCUSDT")
    assert repaired is not None
    assert repaired.value == {"n": 5}
    assert repaired.updated_at < datetime.now(UTC) + timedelta(minutes=1)

    assert asyncio.run(_bot_saves(any_db, {"n": 6})) == "saved"
    assert _value(any_db) == {"n": 6}
    ok(cli("rm", "bot1/BTCUSDT", "--yes", url=any_db, cwd=tmp_path))
    assert snapshot(any_db, "bot1/BTCUSDT") is None
