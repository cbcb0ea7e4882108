"""Restart demo: a trading bot killed with SIGKILL mid-session comes back still halted, and a
second copy of it is refused at start.

Run it with ``make demo`` or ``python examples/restart_demo.py [--seed N] [--db URL]``.

The parent migrates a fresh SQLite database and starts the bot as a child process. The bot
first takes the lease on its keys (``restart-demo/``), then trades random fills, saves each
symbol's risk state after every realised trade and prints an ``ACK`` line only once
``store.save`` has returned. When a loss-streak breaker has tripped and other symbols are still
trading (or, if every symbol is halted, while the bot idles), the parent kills the bot with
SIGKILL and starts it again: the restarted bot waits for the killed one's lease to expire, takes
it over, and the parent checks that what it restored at boot is exactly the last state
acknowledged before the kill. Before the first bot trades, while it holds the lease, the parent
starts a second copy of it, which is refused at start and exits without loading or saving
anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Self, TypeVar

import rustrade_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from rustrade_store import JSONValue, Lease, LeaseLostError, StateStore

BOT = "restart-demo"
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
LOSS_ODDS = {"BTCUSDT": 0.4, "ETHUSDT": 0.35, "SOLUSDT": 0.75}
"""Chance that a round trip loses: SOLUSDT's breaker trips within a few rounds, others trade on."""
DRAWDOWN_CAP = 250.0
MAX_LOSS_STREAK = 3
SNAPSHOT_VERSION = 1
TICK = 0.02
"""Seconds between trades, so the session lasts long enough to be killed in the middle."""
MAX_TRADES = 1000
"""A bound on a first run that nobody kills."""
SILENCE_LIMIT = 30.0
"""Seconds the parent waits for a line from the bot, and the bot idles once all is halted."""
LEASE_TTL = 2.0
"""Seconds the bot's lease lives unless renewed: how long a killed bot still holds it, kept
short here so that the restart waits little (a live bot would keep the default, 30 s)."""
ANOTHER_COPY_EXIT = 3
"""The exit status of a copy of the bot refused at start because another copy holds the lease."""
OK_LINE = "OK: halted breaker and drawdown restored after SIGKILL"
LEASE_OK_LINE = "OK: a second copy of the bot was refused at start and wrote nothing"
SCRIPT = Path(__file__).resolve()

T = TypeVar("T", str, int, float, bool)


# -- risk state ------------------------------------------------------------------------------


def _object(value: JSONValue, name: str) -> Mapping[str, JSONValue]:
    """``value`` as a JSON object, or ValueError: a snapshot is used whole or not at all."""
    if not isinstance(value, dict):
        raise ValueError(f"{name} is {value!r:.60}, not a JSON object")
    return value


def _field(obj: Mapping[str, JSONValue], name: str, kind: type[T]) -> T:
    """``obj[name]`` if it has exactly type ``kind`` (so ``true`` is no int and ``1`` no float)."""
    item = obj.get(name)
    if not isinstance(item, kind) or type(item) is not kind:
        raise ValueError(f"snapshot field {name!r} is {item!r}, not a {kind.__name__}")
    return item


def utc_today() -> str:
    """The trading day, which ends at 00:00 UTC."""
    return datetime.now(UTC).date().isoformat()


@dataclass(slots=True)
class SessionPnl:
    """Realised PnL of one UTC day; the session halts once its losses reach the drawdown cap."""

    day: str
    realised: float = 0.0
    trades: int = 0
    drawdown_cap: float = DRAWDOWN_CAP

    @property
    def halted(self) -> bool:
        """True once the day's losses have used the whole drawdown cap."""
        return self.realised <= -self.drawdown_cap

    @property
    def cap_used(self) -> float:
        """Share of the drawdown cap the day's losses have used, from 0 to 1."""
        return min(max(-self.realised, 0.0) / self.drawdown_cap, 1.0)

    def roll(self, day: str) -> None:
        """Start a fresh session on a new UTC day: the cap is daily."""
        if day != self.day:
            self.day, self.realised, self.trades = day, 0.0, 0

    def record(self, net: float) -> None:
        """Book one round trip's net PnL, rounded to the cent so it saves as a plain decimal."""
        self.realised = round(self.realised + net, 2)
        self.trades += 1

    def to_snapshot(self) -> dict[str, JSONValue]:
        """The session as JSON."""
        return {
            "day": self.day,
            "realised": self.realised,
            "trades": self.trades,
            "drawdown_cap": self.drawdown_cap,
        }

    @classmethod
    def from_snapshot(cls, value: JSONValue) -> Self:
        """The session saved by :meth:`to_snapshot`."""
        obj = _object(value, "session")
        return cls(
            day=_field(obj, "day", str),
            realised=_field(obj, "realised", float),
            trades=_field(obj, "trades", int),
            drawdown_cap=_field(obj, "drawdown_cap", float),
        )


@dataclass(slots=True)
class CircuitBreaker:
    """Halts a symbol after ``max_losses`` losing trades in a row, until an operator resets it."""

    max_losses: int = MAX_LOSS_STREAK
    loss_streak: int = 0
    halted: bool = False

    def record(self, net: float) -> bool:
        """Count one trade's result; return True if this trade tripped the breaker."""
        self.loss_streak = self.loss_streak + 1 if net < 0 else 0
        tripped = not self.halted and self.loss_streak >= self.max_losses
        self.halted = self.halted or tripped
        return tripped

    def to_snapshot(self) -> dict[str, JSONValue]:
        """The breaker as JSON."""
        return {
            "max_losses": self.max_losses,
            "loss_streak": self.loss_streak,
            "halted": self.halted,
        }

    @classmethod
    def from_snapshot(cls, value: JSONValue) -> Self:
        """The breaker saved by :meth:`to_snapshot`."""
        obj = _object(value, "breaker")
        return cls(
            max_losses=_field(obj, "max_losses", int),
            loss_streak=_field(obj, "loss_streak", int),
            halted=_field(obj, "halted", bool),
        )


@dataclass(slots=True)
class SymbolState:
    """Everything the bot must remember about one symbol across restarts."""

    symbol: str
    session: SessionPnl
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)

    @property
    def key(self) -> str:
        """The store key: stable for the lifetime of a ``(bot, symbol)`` pair."""
        return f"{BOT}/{self.symbol}"

    def refusal(self) -> str | None:
        """Why an order on this symbol must be refused, or None if it may trade."""
        if self.breaker.halted:
            return f"breaker halted ({self.breaker.loss_streak} losses in a row)"
        if self.session.halted:
            return f"daily drawdown cap used ({self.session.realised:+.2f} USDT)"
        return None

    def to_snapshot(self) -> dict[str, JSONValue]:
        """A versioned JSON document, so a later bot can read or migrate what this one wrote."""
        return {
            "version": SNAPSHOT_VERSION,
            "symbol": self.symbol,
            "session": self.session.to_snapshot(),
            "breaker": self.breaker.to_snapshot(),
        }

    @classmethod
    def from_snapshot(cls, value: JSONValue) -> Self:
        """The state saved by :meth:`to_snapshot`; ValueError for any other version or shape."""
        obj = _object(value, "snapshot")
        version = obj.get("version")
        if type(version) is not int or version != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {version!r} is not {SNAPSHOT_VERSION}")
        return cls(
            symbol=_field(obj, "symbol", str),
            session=SessionPnl.from_snapshot(obj.get("session")),
            breaker=CircuitBreaker.from_snapshot(obj.get("breaker")),
        )


def describe(state: SymbolState) -> str:
    """One line on a symbol's risk state, for people."""
    if state.breaker.halted:
        status = "HALTED (breaker)"
    elif state.session.halted:
        status = "HALTED (cap)"
    else:
        status = "trading"
    session = state.session
    return (
        f"{status:<16}  loss streak {state.breaker.loss_streak}  "
        f"PnL {session.realised:+8.2f} USDT = {session.cap_used:4.0%} of cap  "
        f"{session.trades} trades"
    )


# -- the bot (child process) -----------------------------------------------------------------


def emit(line: str) -> None:
    """Print one line at once: the parent acts on each line as it arrives."""
    print(line, flush=True)


def fill(rng: random.Random, symbol: str) -> float:
    """A simulated round trip's net PnL in USDT: losses come more often and run larger."""
    if rng.random() < LOSS_ODDS[symbol]:
        return -round(rng.uniform(20.0, 65.0), 2)
    return round(rng.uniform(10.0, 40.0), 2)


async def boot(store: StateStore) -> dict[str, SymbolState]:
    """Load each ``(bot, symbol)`` snapshot once, as the framework does at startup."""
    states = {}
    for symbol in SYMBOLS:
        key = f"{BOT}/{symbol}"
        value = await store.load(key)
        emit(f"RESTORED {key} {json.dumps(value)}")
        fresh = SymbolState(symbol, SessionPnl(utc_today()))
        states[symbol] = fresh if value is None else SymbolState.from_snapshot(value)
    return states


async def place_order(store: StateStore, state: SymbolState, rng: random.Random) -> bool:
    """Trade once unless a risk gate refuses; acknowledge the trade only once it is saved."""
    state.session.roll(utc_today())
    reason = state.refusal()
    if reason is not None:
        emit(f"REFUSED {state.key} {reason}")
        emit(f"{state.symbol} order refused: {reason}")
        return False
    net = fill(rng, state.symbol)
    state.session.record(net)
    tripped = state.breaker.record(net)
    snapshot = state.to_snapshot()
    text = json.dumps(snapshot)
    emit(f"SAVING {state.key} {text}")
    await store.save(state.key, snapshot)
    emit(f"ACK {state.key} {text}")
    if tripped:
        emit(
            f"{state.symbol} breaker TRIPPED on {state.breaker.loss_streak} losses in a row "
            f"(PnL {state.session.realised:+.2f} USDT): {state.symbol} halted"
        )
    return True


async def take_lease(store: rustrade_store.SqlStore, wait: float, lost: asyncio.Event) -> Lease:
    """Take the bot's lease before loading anything, so that one copy of the bot at a time
    writes its keys; wait up to ``wait`` seconds for another holder to release it or to expire.
    Raise LeaseHeldError, naming the other copy, if it still holds it."""

    def on_lost(error: LeaseLostError) -> None:
        emit(f"lease lost, trading stops: {error}")
        lost.set()

    lease = store.lease(f"{BOT}/", ttl=LEASE_TTL, on_lost=on_lost)
    try:
        await lease.acquire()
    except rustrade_store.LeaseHeldError as exc:
        emit(f"LEASE_HELD {exc.holder.get('pid')}")
        if wait <= 0:
            raise
        emit(
            f"lease on {BOT}/ still held by pid {exc.holder.get('pid')} until "
            f"{exc.until:%H:%M:%S.%f} unless renewed: waiting for it"
        )
        await lease.acquire(wait=wait)
    emit(
        f"lease on {BOT}/ taken: token {lease.token}, ttl {LEASE_TTL:.0f} s, renewed every "
        f"{LEASE_TTL / 3:.1f} s"
    )
    emit(f"LEASE {lease.token}")
    return lease


async def trade(
    store: StateStore, states: dict[str, SymbolState], seed: int, lost: asyncio.Event
) -> None:
    """Trade the symbols in turn, skipping halted ones, until killed or the lease is lost; idle
    once all are halted."""
    rng = random.Random(seed)
    for symbol in itertools.islice(itertools.cycle(SYMBOLS), MAX_TRADES):
        if lost.is_set():
            return
        if all(state.refusal() is not None for state in states.values()):
            emit("IDLE")
            emit("every symbol is halted: idling, as a live bot waits for the next day")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), SILENCE_LIMIT)
            return
        if states[symbol].refusal() is None:
            await place_order(store, states[symbol], rng)
            await asyncio.sleep(TICK)
    emit(f"session over: {MAX_TRADES} trades")


async def run_bot(url: str, phase: str, seed: int) -> int:
    """The bot: take the lease, boot from the store, then trade (first run) or show what
    survived (restart). A copy refused the lease exits at once, having written nothing."""
    lost = asyncio.Event()
    async with rustrade_store.SqlStore.from_url(url) as store:
        try:
            await take_lease(store, LEASE_TTL * 5 if phase == "restart" else 0.0, lost)
        except rustrade_store.LeaseHeldError as exc:
            emit(f"refused at start: {exc}")
            emit("another copy of this bot is running: exiting without loading or saving anything")
            return ANOTHER_COPY_EXIT
        if phase == "first":
            # The parent starts a second copy now, then lets this one trade: the kill still
            # lands mid-session.
            await asyncio.to_thread(sys.stdin.readline)
        states = await boot(store)
        if phase == "first":
            if all(state.session.trades == 0 for state in states.values()):
                emit("boot: no saved state, every symbol starts fresh")
            await trade(store, states, seed, lost)
        else:
            for state in states.values():
                emit(f"restored {state.symbol}: {describe(state)}")
            rng = random.Random(seed)
            for state in states.values():
                if state.refusal() is not None:
                    await place_order(store, state, rng)
        await store.flush()
    emit("clean shutdown: store flushed and closed")
    return 0


# -- the parent ------------------------------------------------------------------------------


class DemoFailure(Exception):
    """The demo could not show what it set out to show."""


def canonical(text: str) -> str:
    """JSON text in one form, so equal documents compare equal and ``1`` differs from ``1.0``."""
    return json.dumps(json.loads(text), sort_keys=True)


def parse_state(key: str, text: str) -> SymbolState:
    """The state in a line the bot printed, or DemoFailure naming the key."""
    try:
        return SymbolState.from_snapshot(json.loads(text))
    except ValueError as exc:
        raise DemoFailure(f"the bot printed an unreadable snapshot for {key}: {exc}") from None


@dataclass(slots=True)
class Ledger:
    """What the parent learnt from one run of the bot, from its machine-readable lines."""

    acks: int = 0
    acked: dict[str, str] = field(default_factory=dict)
    acked_at: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, str] = field(default_factory=dict)
    restored: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    tripped_at: dict[str, int] = field(default_factory=dict)
    trading_after_trip: set[str] = field(default_factory=set)
    idle: bool = False
    pid: int = 0
    lease_token: int | None = None
    held_by: str | None = None
    """The pid a refused lease named as its holder."""

    @property
    def kill_due(self) -> bool:
        """A breaker has tripped and the bot trades on (or idles with every symbol halted)."""
        return bool(self.tripped_at) and (bool(self.trading_after_trip) or self.idle)

    def take(self, line: str) -> str | None:
        """Record a machine line and return None, or return a line meant for people."""
        tag, _, rest = line.partition(" ")
        key, _, text = rest.partition(" ")
        if tag == "SAVING":
            self.in_flight[key] = canonical(text)
        elif tag == "ACK":
            self.in_flight.pop(key, None)
            self.acks += 1
            self.acked[key] = canonical(text)
            self.acked_at[key] = self.acks
            state = parse_state(key, text)
            if state.breaker.halted and key not in self.tripped_at:
                self.tripped_at[key] = self.acks
            elif self.tripped_at and state.refusal() is None:
                self.trading_after_trip.add(state.symbol)
        elif tag == "RESTORED":
            self.restored[key] = canonical(text)
        elif tag == "REFUSED":
            self.refused[key] = text
        elif line == "IDLE":
            self.idle = True
        elif tag == "LEASE":
            self.lease_token = int(rest)
        elif tag == "LEASE_HELD":
            self.held_by = rest
        else:
            return line
        return None


@contextlib.asynccontextmanager
async def bot_process(url: str, phase: str, seed: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """The bot as a child process with its stdout piped to us, never left running behind us."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        *("--role", "bot", "--db", url, "--phase", phase, "--seed", str(seed)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def read_line(proc: asyncio.subprocess.Process) -> str | None:
    """The bot's next stdout line, None at its end; a bot silent too long is a failure."""
    if proc.stdout is None:
        raise DemoFailure("the bot's stdout is not piped")
    try:
        raw = await asyncio.wait_for(proc.stdout.readline(), SILENCE_LIMIT)
    except TimeoutError:
        raise DemoFailure(f"the bot printed nothing for {SILENCE_LIMIT:.0f} s") from None
    return raw.decode().rstrip("\n") if raw else None


def relay(ledger: Ledger, line: str, who: str = "bot") -> None:
    """Show the bot's lines for people; keep its machine lines for the check."""
    text = ledger.take(line)
    if text is not None:
        print(f"  {who}| {text}")


@dataclass(slots=True)
class SecondCopy:
    """What a second copy of the bot, started while the first runs, did."""

    pid: int
    status: int
    ledger: Ledger


async def first_run(url: str, seed: int) -> tuple[Ledger, SecondCopy]:
    """Run the bot: once it holds the lease, start a second copy, which must be refused at
    start, then let the first trade until a breaker has tripped and others trade on, and
    SIGKILL it."""
    ledger = Ledger()
    moment = copy = None
    async with bot_process(url, "first", seed) as proc:
        ledger.pid = proc.pid
        print(
            f"\n1. First run (pid {proc.pid}): the bot takes the lease on {BOT}/, then trades "
            f"{', '.join(SYMBOLS)}, saving after each trade"
        )
        while (line := await read_line(proc)) is not None:
            relay(ledger, line)
            if ledger.lease_token is not None and copy is None:
                copy = await second_copy(url, seed)
                print(f"\n   parent: the first bot (pid {proc.pid}) trades")
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            if ledger.kill_due:
                os.kill(proc.pid, signal.SIGKILL)
                trading = ", ".join(sorted(ledger.trading_after_trip))
                moment = f"after ACK #{ledger.acks}, " + (
                    f"{trading} still trading" if trading else "the bot idling, all symbols halted"
                )
                break
        while (line := await read_line(proc)) is not None:
            relay(ledger, line)
        status = await proc.wait()
    if moment is None or copy is None or status != -signal.SIGKILL:
        raise DemoFailure(f"the bot ended on its own (exit status {status}) before the kill")
    print(
        f"\n3. Parent: SIGKILL the first bot {moment}; exit status {status}, no shutdown, no flush"
    )
    print("   last acknowledged state of each symbol before the kill:")
    for key, text in ledger.acked.items():
        print(f"     {key.split('/')[1]}  {describe(parse_state(key, text))}")
    return ledger, copy


async def second_copy(url: str, seed: int) -> SecondCopy:
    """Start the same bot again while the first holds the lease; it must exit at start without
    loading or saving anything."""
    ledger = Ledger()
    async with bot_process(url, "first", seed) as proc:
        print(
            f"\n2. A second copy of the bot starts (pid {proc.pid}) while the first holds the "
            "lease, as a rolling deploy or an operator on another host would start it"
        )
        while (line := await read_line(proc)) is not None:
            relay(ledger, line, "copy")
        status = await proc.wait()
    print(f"   parent: the second copy exited with status {status}")
    return SecondCopy(proc.pid, status, ledger)


async def restart(url: str, seed: int) -> Ledger:
    """Start the bot again; it takes the killed bot's lease over once that has expired,
    restores its state, tries the halted symbols and exits."""
    ledger = Ledger()
    async with bot_process(url, "restart", seed) as proc:
        print(
            f"\n4. Restart (pid {proc.pid}): the bot takes the lease over once the killed "
            "bot's has expired, and loads each (bot, symbol) snapshot once"
        )
        while (line := await read_line(proc)) is not None:
            relay(ledger, line)
        status = await proc.wait()
    if status != 0:
        raise DemoFailure(f"the restarted bot failed (exit status {status})")
    return ledger


def check_lease(first: Ledger, copy: SecondCopy, after: Ledger) -> list[str]:
    """The second copy was refused at start, naming the first bot, and wrote nothing; the
    restart took the lease over from the killed bot with the next fencing token."""
    print("\n6. Check: one bot, one writer")
    problems = []
    if copy.status != ANOTHER_COPY_EXIT or copy.ledger.held_by != str(first.pid):
        problems.append(
            f"the second copy was not refused at start naming pid {first.pid} (exit status "
            f"{copy.status}, lease held by {copy.ledger.held_by})"
        )
    elif copy.ledger.restored or copy.ledger.acks or copy.ledger.lease_token is not None:
        problems.append("the second copy took the lease, loaded or saved")
    else:
        print(f"   the second copy was refused at start, named pid {first.pid}, wrote nothing")
    if first.lease_token is None or after.lease_token != first.lease_token + 1:
        problems.append(
            f"the restart's lease token {after.lease_token} does not follow the first run's "
            f"{first.lease_token}"
        )
    else:
        print(
            f"   the restart took the lease over with token {after.lease_token} (the killed "
            f"bot's was {first.lease_token})"
        )
    return problems


def check(before: Ledger, after: Ledger) -> list[str]:
    """Compare each restored snapshot with the last one acknowledged before the kill."""
    print("\n5. Check: restored snapshot vs the last save acknowledged before the kill")
    problems = []
    for symbol in SYMBOLS:
        key = f"{BOT}/{symbol}"
        expected = before.acked.get(key, "null")
        restored = after.restored.get(key)
        if restored is None:
            problems.append(f"the restarted bot did not load {key}")
        elif restored == expected:
            print(f"   {symbol}  identical to ACK #{before.acked_at.get(key, 0)}")
        elif restored == before.in_flight.get(key):
            print(f"   {symbol}  identical to the save in flight at the kill (never ACKed)")
        else:
            problems.append(f"{key} restored as {restored}, but the last ACK was {expected}")
    for key in before.tripped_at:
        if key not in after.refused:
            problems.append(
                f"{key} tripped before the kill, but the restarted bot did not refuse it"
            )
    if not before.tripped_at:
        problems.append("no breaker tripped before the kill")
    return problems


async def run_demo(url: str, seed: int) -> int:
    """The whole demo on ``url``: migrate, run, start a second copy, kill, restart, check.
    Returns the exit code."""
    print(f"rustrade-store restart demo (seed {seed})")
    await rustrade_store.upgrade(url)
    async with rustrade_store.SqlStore.from_url(url) as store:
        print(f"store {store.url}, schema at {rustrade_store.head_revision()}")
        if await store.count(f"{BOT}/"):
            print(f"FAIL: {store.url} already holds {BOT} state; give a fresh --db")
            return 1
    print(
        f"risk limits per symbol: daily drawdown cap {DRAWDOWN_CAP:.0f} USDT, "
        f"breaker halts after {MAX_LOSS_STREAK} losses in a row"
    )
    try:
        before, copy = await first_run(url, seed)
        after = await restart(url, seed)
        problems = check(before, after) + check_lease(before, copy, after)
    except DemoFailure as exc:
        problems = [str(exc)]
    for problem in problems:
        print(f"FAIL: {problem}")
    if problems:
        return 1
    print(OK_LINE)
    print(LEASE_OK_LINE)
    return 0


def sqlite_url(db: str) -> str:
    """A database URL from ``--db``: a URL as given, a file path as an SQLite URL."""
    return db if "://" in db else f"sqlite:///{Path(db).resolve()}"


def main() -> int:
    """Parse the command line and play the parent (default) or the bot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db", help="database URL or SQLite file (default: a temporary file)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the simulated fills")
    parser.add_argument("--role", choices=("demo", "bot"), default="demo", help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=("first", "restart"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "bot":
        if args.db is None or args.phase is None:
            parser.error("--role bot needs --db and --phase")
        return asyncio.run(run_bot(args.db, args.phase, args.seed))
    if args.db is not None:
        return asyncio.run(run_demo(sqlite_url(args.db), args.seed))
    with tempfile.TemporaryDirectory(prefix="rustrade-demo-") as tmp:
        return asyncio.run(run_demo(sqlite_url(str(Path(tmp) / "restart_demo.db")), args.seed))


if __name__ == "__main__":
    sys.exit(main())
