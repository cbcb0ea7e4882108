"""The command line itself: an example in every ``--help``, shell completion of commands,
options and keys, and a ``--version`` that loads no database library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rustrade_store.cli import main
from rustrade_store.cli.parser import COMMANDS

from .commandline import COMMAND, cli, ok

if TYPE_CHECKING:
    from sqlalchemy import URL


def test_every_command_has_an_example_in_its_help(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = ok(cli("ls", "--help", cwd=tmp_path)).out
    assert "example:\n  rustrade-store ls bot1/ --where '$.halted == true'" in shown
    assert 'path       := "$"' in shown  # the --where grammar
    names = [[command.name] for command in COMMANDS]
    names += [[command.name, action.name] for command in COMMANDS for action in command.actions]
    for name in names:
        with pytest.raises(SystemExit):
            main([*name, "--help"])
        shown = capsys.readouterr().out
        assert "example:\n  " in shown, name
        assert "rustrade-store" in shown.split("example:\n  ")[1].splitlines()[0]


def test_bash_completion_completes_commands_options_and_keys(
    sqlite_url: URL, tmp_path: Path
) -> None:
    ok(cli("put", "bot1/BTCUSDT", "1", url=sqlite_url, cwd=tmp_path))
    script = ok(cli("completion", "bash", cwd=tmp_path)).out
    (tmp_path / "completion.bash").write_text(script, encoding="utf-8")
    probe = """
source completion.bash
complete_line() {
    COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=()
    _rustrade_store
    echo "${COMPREPLY[*]}"
}
complete_line rustrade-store l
complete_line rustrade-store ls --wh
complete_line rustrade-store get bot1/B
complete_line rustrade-store completion z
complete_line rustrade-store lease b
complete_line rustrade-store lease break --y
"""
    env = os.environ | {
        "PATH": f"{Path(COMMAND).parent}:{os.environ['PATH']}",
        "RUSTRADE_STORE_URL": sqlite_url.render_as_string(hide_password=False),
    }
    completed = subprocess.run(
        ["bash", "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert completed.stdout.splitlines() == [
        "ls leases lease",
        "--where",
        "bot1/BTCUSDT",
        "zsh",
        "break",
        "--yes",
    ]
    zsh = ok(cli("completion", "zsh", cwd=tmp_path)).out
    assert zsh.startswith("autoload -U +X bashcompinit && bashcompinit\n")
    assert zsh.split("\n", 2)[2] == script.split("\n", 1)[1]  # the same function, loaded by zsh


def test_version_loads_no_database_library(tmp_path: Path) -> None:
    version = ok(cli("--version", cwd=tmp_path)).out
    assert version.startswith("rustrade-store ")
    code = (
        "import sys; from rustrade_store.cli import main; main(['--version']); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sqlalchemy', 'alembic', 'asyncpg', 'aiosqlite'))))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", f"import json; {code}"],
        capture_output=True,
        text=True,
        check=True,
    )
    first, loaded = completed.stdout.splitlines()
    assert first == version.strip()
    assert json.loads(loaded) == []
