"""A bot author's typed code passes ``mypy --strict`` without casts: the store's inputs are typed
as ``JSONInput`` (``Mapping``/``Sequence`` based), its outputs stay ``JSONValue``.

The bot file is written out and checked by mypy in a subprocess, as the author's CI would. Its
``# type: ignore[...]`` lines are what must stay refused: under ``--strict`` an ignore that
silences nothing is itself an error, so the run passes only if each of them is still an error.
Not refusable by the type: ``bytes``, tuples and non-``dict`` mappings fit ``Sequence`` and
``Mapping``; the store refuses them at run time (``rustrade_store.testing.BAD_VALUES``).
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

BOT = """\
from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TypedDict, assert_type

from rustrade_store import (
    BufferedStore,
    InMemoryStore,
    JSONInput,
    JSONValue,
    LeaseLostError,
    Snapshot,
    SqlStore,
    StateStore,
    SyncBufferedStore,
    SyncStore,
)


class Position(TypedDict):
    qty: float
    avg_price: float


async def persist(store: StateStore) -> None:
    prices: dict[str, float] = {"BTCUSDT": 64250.5}
    closes: list[float] = [64000.0, 64250.5]
    position: Position = {"qty": 0.125, "avg_price": 64250.5}
    inferred = {"symbol": "BTCUSDT", "qty": 3, "halted": False}
    assert_type(inferred, dict[str, object])
    history: dict[str, list[float]] = {"BTCUSDT": closes}
    for value in (prices, closes, position, inferred, history):
        await store.save("bot/state", value)
    await store.save_many({"a": prices, "b": closes, "c": position, "d": inferred, "e": history})
    by_symbol: dict[str, dict[str, float]] = {"bot/prices": prices}
    await store.save_many(by_symbol)
    loaded = await store.load("bot/state")
    assert_type(loaded, JSONValue)
    await store.save("bot/copy", loaded)
    given: JSONInput = position
    await store.save("bot/given", given)


async def concrete(store: SqlStore, buffered: BufferedStore) -> None:
    prices: dict[str, float] = {"BTCUSDT": 64250.5}
    await store.save("bot/prices", prices, if_absent=True)
    await buffered.save("bot/prices", prices)
    await buffered.save_many({"bot/prices": prices})


async def refused(store: StateStore) -> None:
    await store.save("k", {64250.5})  # type: ignore[arg-type]
    await store.save("k", {1: 64250.5})  # type: ignore[dict-item]
    await store.save("k", datetime.now(UTC))  # type: ignore[arg-type]
    await store.save_many({"k": {0.5}})  # type: ignore[dict-item]
    wrong: dict[str, float] = await store.load("k")  # type: ignore[assignment]
    del wrong


def synchronous(store: SyncStore) -> None:
    prices: dict[str, float] = {"BTCUSDT": 64250.5}
    position: Position = {"qty": 0.125, "avg_price": 64250.5}

    def on_lost(error: LeaseLostError) -> None:
        store.save("alerts/lost", {"error": str(error)})

    with store.lease("bot/", ttl=30, on_lost=on_lost) as lease:
        assert_type(lease.token, int)
        store.save("bot/prices", prices)
        store.save("bot/position", position, if_absent=True)
        store.save_many({"bot/a": prices, "bot/b": position})
        loaded = store.load("bot/prices")
        assert_type(loaded, JSONValue)
        snapshot = store.load_snapshot("bot/prices")
        assert_type(snapshot, Snapshot | None)
        keys: list[str] = list(store.keys("bot/"))
        assert_type(store.count("bot/"), int)
        del keys
    wrong: dict[str, float] = store.load("k")  # type: ignore[assignment]
    del wrong
    with SyncBufferedStore(store) as buffered:
        buffered.save("bot/prices", prices)
        buffered.flush()


async def main() -> None:
    synchronous(SyncStore.from_url("sqlite://"))
    async with InMemoryStore() as store:
        await persist(store)
    async with BufferedStore(InMemoryStore()) as buffered:
        await persist(buffered)


if __name__ == "__main__":
    asyncio.run(main())
"""


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_typed_bot_code_passes_mypy_strict_and_runs(tmp_path: Path) -> None:
    (tmp_path / "bot.py").write_text(BOT, encoding="utf-8")
    checked = run(tmp_path, "-m", "mypy", "--strict", "--no-incremental", "bot.py")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Success: no issues found in 1 source file" in checked.stdout
    ran = run(tmp_path, "bot.py")  # and the store takes every one of those values
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == ""
