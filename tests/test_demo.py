"""The restart demo end to end: a bot killed with SIGKILL comes back still halted, and a second
copy of it is refused at start."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import rustrade_store

if TYPE_CHECKING:
    from rustrade_store import JSONValue

DEMO = Path(__file__).resolve().parents[1] / "examples" / "restart_demo.py"
OK_LINE = "OK: halted breaker and drawdown restored after SIGKILL"
LEASE_OK_LINE = "OK: a second copy of the bot was refused at start and wrote nothing"


def _member(value: JSONValue, name: str) -> JSONValue:
    """``value[name]`` if ``value`` is a JSON object, else None."""
    return value.get(name) if isinstance(value, dict) else None


@pytest.mark.parametrize("seed", [7, 366])
async def test_demo_restores_halted_breaker_after_sigkill(tmp_path: Path, seed: int) -> None:
    """Seed 7 kills the bot while others trade; seed 366 trips all three and kills it idle."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, str(DEMO), "--db", url, "--seed", str(seed)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = out.decode()
    assert proc.returncode == 0, output + err.decode()
    assert OK_LINE in output.splitlines(), output
    assert LEASE_OK_LINE in output.splitlines(), output

    # The second copy was told who holds the lease: the first bot, by its pid.
    first = re.search(r"^1\. First run \(pid (\d+)\)", output, re.MULTILINE)
    assert first is not None, output
    assert re.search(rf"^  copy\| refused at start: .* pid {first[1]} ", output, re.MULTILINE)
    assert "parent: the second copy exited with status 3" in output

    async with rustrade_store.SqlStore.from_url(url) as store:
        snapshots = [snapshot async for snapshot in store.snapshots("restart-demo/")]
        (lease,) = await store.leases()
    # Taken by the first run, then by the restart, which released it on its clean exit.
    assert (lease.prefix, lease.token, lease.live) == ("restart-demo/", 2, False)
    assert len(snapshots) == 3
    halted = [
        snapshot
        for snapshot in snapshots
        if _member(_member(snapshot.value, "breaker"), "halted") is True
    ]
    assert halted, [snapshot.value for snapshot in snapshots]
    for snapshot in halted:
        symbol = snapshot.key.removeprefix("restart-demo/")
        realised = _member(_member(snapshot.value, "session"), "realised")
        assert isinstance(realised, float)
        assert f"restored {symbol}: HALTED (breaker)" in output
        assert f"PnL {realised:+8.2f} USDT" in output
        assert f"{symbol} order refused: breaker halted" in output
    drawdowns = [_member(_member(snapshot.value, "session"), "realised") for snapshot in halted]
    assert any(isinstance(pnl, float) and pnl < 0 for pnl in drawdowns), drawdowns
