"""Looking at state: ``ls --json``, ``get`` of several keys or a prefix as JSON Lines, ``doctor
--json``, and ``ls --where`` finding halted bots without exporting everything."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from rustrade_store import JSONValue, Snapshot, SqlStore, head_revision
from rustrade_store._condition import compile_condition
from rustrade_store._lines import format_line

from .commandline import T0, cli, ok, one_line_error

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import URL

BOTS = [
    Snapshot("bot1/BTCUSDT", {"halted": True, "loss_streak": 3, "realised": -112.5}, T0),
    Snapshot("bot1/ETHUSDT", {"halted": False, "loss_streak": 0}, T0 + timedelta(seconds=1)),
    Snapshot("bot2/SOLUSDT", {"halted": True, "loss_streak": 5, "note": "née"}, T0),
    Snapshot("bot2/XRPUSDT", None, T0),
]


async def _seed(url: URL) -> None:
    async with SqlStore.from_url(url) as store:
        await store.restore(BOTS)


def test_ls_get_and_doctor_print_json(sqlite_url: URL, tmp_path: Path) -> None:
    asyncio.run(_seed(sqlite_url))

    def run(*args: str) -> str:
        return ok(cli(*args, url=sqlite_url, cwd=tmp_path)).out

    table = run("ls", "bot1/").splitlines()
    assert table[0].split() == ["bot1/BTCUSDT", "2026-03-04T05:06:07.123456+00:00", "49"]
    listed = [json.loads(line) for line in run("ls", "--json").splitlines()]
    assert listed[0] == {
        "key": "bot1/BTCUSDT",
        "updated_at": "2026-03-04T05:06:07.123456+00:00",
        "size": 49,
    }
    assert [item["key"] for item in listed] == [bot.key for bot in BOTS]
    compact = json.dumps(BOTS[2].value, separators=(",", ":"), ensure_ascii=False)
    assert listed[2]["size"] == len(compact.encode("utf-8"))  # bytes, not characters
    with_values = run("ls", "--json", "--values", "bot2/").splitlines()
    assert [json.loads(line)["value"] for line in with_values] == [BOTS[2].value, None]
    assert with_values[0] == (  # compact, UTF-8, the value's text as stored
        '{"key":"bot2/SOLUSDT","updated_at":"2026-03-04T05:06:07.123456+00:00","size":45,'
        '"value":{"halted":true,"loss_streak":5,"note":"née"}}'
    )

    # Halted bots, found without exporting everything.
    assert run("ls", "--keys", "--where", "$.halted == true") == "bot1/BTCUSDT\nbot2/SOLUSDT\n"
    found = run("ls", "--json", "--where", "$.loss_streak >= 3 and $.realised < 0").splitlines()
    assert [json.loads(line)["key"] for line in found] == ["bot1/BTCUSDT"]

    # get: one value as JSON, several keys or a prefix as JSON Lines (the export's form).
    assert json.loads(run("get", "bot1/BTCUSDT")) == BOTS[0].value
    assert run("get", "bot2/SOLUSDT", "bot1/BTCUSDT") == format_line(BOTS[2]) + format_line(BOTS[0])
    assert run("get", "--prefix", "bot2/") == format_line(BOTS[2]) + format_line(BOTS[3])
    assert run("get", "--json", "bot2/XRPUSDT") == format_line(BOTS[3])
    partly = cli("get", "bot1/ETHUSDT", "bot9/none", url=sqlite_url, cwd=tmp_path)
    assert partly.out == format_line(BOTS[1])
    one_line_error(partly, 1, "'bot9/none' not found")

    doctor = json.loads(run("doctor", "--json"))
    assert doctor["status"] == "ok"
    assert doctor["problem"] is None
    assert doctor["schema"] == {
        "revision": head_revision(),
        "head": head_revision(),
        "state": "current",
    }
    assert doctor["snapshots"] == len(BOTS)
    assert doctor["settings"] == {"journal_mode": "wal", "synchronous": "FULL"}
    assert doctor["dialect"] == "sqlite"


def test_a_bad_where_is_a_usage_error(tmp_path: Path) -> None:
    """Refused before any database is opened (none exists here), with the column at fault."""
    run = cli("ls", "--where", "$.halted = true", url="sqlite:///none.db", cwd=tmp_path)
    one_line_error(run, 2, "--where", "unexpected '=' (equality is ==) at column 10", "--help")
    deep = "(" * 300 + "$.halted" + ")" * 300  # was "unexpected error: RecursionError"
    run = cli("ls", "--where", deep, url="sqlite:///none.db", cwd=tmp_path)
    one_line_error(run, 2, "--where: nested deeper than 100 levels", "--help")
    run = cli("ls", "--where", "not " * 999 + "$.halted", url="sqlite:///none.db", cwd=tmp_path)
    one_line_error(run, 2, "--where: nested deeper than 100 levels", "--help")


def test_a_condition_nested_as_deep_as_allowed_holds() -> None:
    condition = compile_condition("not (" * 50 + "$.halted" + ")" * 50)
    assert condition({"halted": True}) is True  # an even number of nots
    assert condition({"halted": False}) is False


@pytest.mark.parametrize(
    ("where", "words"),
    [
        ("halted == true", "expected a path starting with '\\$'"),
        ("$.halted == yes", "expected a JSON literal .* at column 13"),
        ("$.halted ==", "at the end"),
        ("$.a == 1e999", "out of the range of a float at column 8"),
        ("($.a", "expected '\\)'"),
        ("$.a and", "at the end"),
        ("$[1.5]", "expected an index or a JSON string"),
        ("$.", "expected a member name"),
    ],
)
def test_bad_conditions_name_the_column(where: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        compile_condition(where)


VALUE: JSONValue = {
    "halted": True,
    "loss_streak": 3,
    "pnl": -1.5,
    "name": "x",
    "n": None,
    "z": 0,
    "legs": [{"side": "buy"}, {"side": "sell"}],
    "loss-streak": 7,
}


@pytest.mark.parametrize(
    ("condition", "holds"),
    [
        ("$.halted == true", True),
        ("$.halted", True),
        ("$.n", False),  # a bare path: exists, and neither false nor null
        ("$.z", True),
        ("$.missing", False),
        ("not $.missing", True),
        ("$.missing != 1", False),  # a comparison on a missing path is false
        ("$.loss_streak == 3.0", True),
        ("$.halted == 1", False),  # true is not 1
        ("$.pnl < 0 and $.loss_streak >= 3", True),
        ('$.pnl > 0 or $.name == "x"', True),
        ("not ($.pnl > 0 or $.halted)", False),
        ("$.name < 1", False),  # a string and a number do not compare
        ('$.legs[-1].side == "sell"', True),
        ('$.legs[0]["side"] == "buy"', True),
        ('$["loss-streak"] == 7', True),
        ("$.legs[5]", False),
        ("$ != null", True),
        ("$.legs == [1]", None),  # only scalars are literals
    ],
)
def test_where_conditions(condition: str, holds: bool | None) -> None:
    if holds is None:
        with pytest.raises(ValueError, match="expected a JSON literal"):
            compile_condition(condition)
    else:
        assert compile_condition(condition)(VALUE) is holds


def test_keys_that_would_look_alike_are_shown_apart(sqlite_url: URL, tmp_path: Path) -> None:
    """`" bot1/BTCUSDT"` was listed as `bot1/BTCUSDT`: ls quotes a key that a space at either
    end, a character that prints as nothing, or a leading quote would disguise."""
    keys = ["bot1/BTCUSDT", " bot1/BTCUSDT", "bot1/BTCUSDT ", "bot1/\u00a0BTC", "bot1/\u200bBTC"]
    keys += ['"bot1/BTCUSDT"', "bot1/a\tb", "bot1/é"]
    for key in keys:
        ok(cli("put", "--", key, "1", url=sqlite_url, cwd=tmp_path))
    shown = [
        line.split("  ")[0] for line in ok(cli("ls", url=sqlite_url, cwd=tmp_path)).out.splitlines()
    ]
    assert len(set(shown)) == len(keys)
    assert sorted(shown) == sorted(
        [
            "bot1/BTCUSDT",
            '" bot1/BTCUSDT"',
            '"bot1/BTCUSDT "',
            '"bot1/\\u00a0BTC"',
            '"bot1/\\u200bBTC"',
            '"\\"bot1/BTCUSDT\\""',
            '"bot1/a\\tb"',
            "bot1/é",
        ]
    )
    # --keys piped is for programs: the keys exactly as stored, one a line.
    assert sorted(
        ok(cli("ls", "--keys", url=sqlite_url, cwd=tmp_path)).out.split("\n")[:-1]
    ) == sorted(keys)
