"""Repairs that cannot overwrite a newer save: ``put --if-updated-at``, ``put --if-absent`` and
``edit``, run as the installed command, ``edit`` with ``EDITOR`` set to a small script."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rustrade_store import SqlStore

from .test_cli import COMMAND, Run, cli, ok, on_terminal, one_line_error

if TYPE_CHECKING:
    from sqlalchemy import URL

    from rustrade_store import Snapshot

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

    # Not confirmed (no terminal, no --yes): the diff is shown, nothing is written.
    unhalt = json.dumps({"halted": False, "loss_streak": 0})
    refused = edit(EDIT_SET=unhalt)
    assert refused.code == 2, refused
    assert '-  "halted": true' in refused.err
    assert '+  "halted": false' in refused.err
    assert "add --yes" in refused.err.splitlines()[-1]
    kept = Path(refused.err.split("the edit is in ")[1].split()[0])
    assert json.loads(kept.read_text())["halted"] is False  # the typing is not lost
    assert snapshot(sqlite_url, key) == read

    # An editor that changes nothing, or reformats only, writes nothing.
    assert ok(edit()).err.startswith("no change")
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

    missing = cli("edit", "bot9/none", url=sqlite_url, cwd=tmp_path, env={"EDITOR": "false"})
    one_line_error(missing, 1, "not found", "--if-absent")


def test_edit_asks_on_a_terminal(sqlite_url: URL, tmp_path: Path) -> None:
    key = "bot1/BTCUSDT"
    ok(cli("put", key, json.dumps(HALTED), url=sqlite_url, cwd=tmp_path))
    sed = {"EDITOR": 'sed -i \'s/"halted": true/"halted": false/\''}
    code, output = on_terminal("edit", key, url=sqlite_url, cwd=tmp_path, answer="y", env=sed)
    assert code == 0, output
    assert f"save this to '{key}'? [y/N]" in output
    assert '+  "halted": false' in output
    saved = snapshot(sqlite_url, key)
    assert saved is not None
    assert saved.value == HALTED | {"halted": False}
