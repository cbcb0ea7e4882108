"""The README's repair recipe runs as written: in bash, on a terminal, with an editor that makes
the change the recipe describes."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rustrade_store import ENV_VAR, ClockSkewError, Snapshot, SqlStore

from .commandline import COMMAND, T0, on_terminal

if TYPE_CHECKING:
    from sqlalchemy import URL

    from rustrade_store import JSONValue

README = Path(__file__).resolve().parent.parent / "README.md"
HALTED: JSONValue = {"realised": -112.5, "loss_streak": 3, "halted": True}
RUNNING: JSONValue = {"realised": 12.0, "loss_streak": 0, "halted": False}


def recipe() -> str:
    """The shell block of the README's "Command line" section that uses ``edit``."""
    section = README.read_text(encoding="utf-8").split("## Command line", 1)[1].split("\n## ")[0]
    blocks = [b for b in re.findall(r"```sh\n(.*?)```", section, re.DOTALL) if " edit " in b]
    assert len(blocks) == 1, blocks
    block: str = blocks[0]
    return block


def test_the_readme_repair_recipe_runs_as_written(sqlite_url: URL, tmp_path: Path) -> None:
    text = recipe()
    assert "Stop the bot first" in text  # before anything is changed
    assert text.index("Stop the bot") < text.index("rustrade-store edit")

    async def seed() -> None:
        async with SqlStore.from_url(sqlite_url) as store:
            await store.restore(
                [Snapshot("bot1/BTCUSDT", HALTED, T0), Snapshot("bot1/ETHUSDT", RUNNING, T0)]
            )

    asyncio.run(seed())
    # The editor does what step 3 says: "halted": false and "loss_streak": 0.
    editor = 'sed -i -e \'s/"halted": true/"halted": false/\' ' + (
        '-e \'s/"loss_streak": 3/"loss_streak": 0/\''
    )
    env = {"EDITOR": editor, "PATH": f"{Path(COMMAND).parent}:{os.environ['PATH']}"}
    code, said = on_terminal(
        "-euo",
        "pipefail",
        "-c",
        text,
        url=sqlite_url,
        cwd=tmp_path,
        answer="y",
        env=env,
        program="bash",
    )
    assert code == 0, said
    assert said.index("bot1/BTCUSDT  2026-03-04T05:06:07.123456+00:00") < said.index("[y/N]")
    assert "bot1/ETHUSDT" not in said.split('"halted": true')[0]  # ls found the halted one only
    assert '+  "halted": false' in said
    assert "saved 'bot1/BTCUSDT'" in said

    async def stored() -> Snapshot | None:
        async with SqlStore.from_url(sqlite_url) as store:
            return await store.load_snapshot("bot1/BTCUSDT")

    repaired = asyncio.run(stored())
    assert repaired is not None
    assert repaired.value == {"realised": -112.5, "loss_streak": 0, "halted": False}


def test_the_readme_future_time_recipe_runs_as_written(sqlite_url: URL, tmp_path: Path) -> None:
    """From the stuck bot (every save refused: the stored time is in 2030) to the repaired one,
    the README's commands run as written in between."""
    section = README.read_text(encoding="utf-8").split("## Command line", 1)[1].split("\n## ")[0]
    [text] = [b for b in re.findall(r"```sh\n(.*?)```", section, re.DOTALL) if "--reset-time" in b]
    future = datetime(2030, 1, 1, tzinfo=UTC)

    async def stuck() -> None:
        async with SqlStore.from_url(sqlite_url) as store:
            await store.restore([Snapshot("bot1/BTCUSDT", RUNNING, future)])
            with pytest.raises(ClockSkewError):
                await store.save("bot1/BTCUSDT", HALTED)

    asyncio.run(stuck())
    env = os.environ | {
        "PATH": f"{Path(COMMAND).parent}:{os.environ['PATH']}",
        ENV_VAR: sqlite_url.render_as_string(hide_password=False),
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", text],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done
    assert "2030-01-01T00:00:00.000000+00:00" in done.stdout  # what ls printed

    async def saves_again() -> Snapshot | None:
        async with SqlStore.from_url(sqlite_url) as store:
            await store.save("bot1/BTCUSDT", HALTED)
            return await store.load_snapshot("bot1/BTCUSDT")

    repaired = asyncio.run(saves_again())
    assert repaired is not None
    assert repaired.value == HALTED
    assert repaired.updated_at < future
