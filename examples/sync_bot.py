"""A plain synchronous bot on ``SyncStore``: no asyncio in sight.

Run it with ``python examples/sync_bot.py [--db URL] [--seconds N] [--ttl N] [--wait N]``.

It takes the lease on its keys (``sync-bot/``), loads its risk state, then trades random fills
for ``--seconds``, saving the state after each one, while the store's own thread renews the
lease. A second copy started meanwhile is refused at start (exit status 3). A copy that was
frozen past its ttl while another took over hears of it in ``on_lost``, which runs in a thread
of its own, and stops trading (exit status 4).

Every line it prints starts with a word a test can wait on: ``HELD <token> <pid>``,
``REFUSED <message>``, ``ON_LOST <message>``, ``FENCED <message>`` (a save refused) and
``DONE <saves> <token> <first expiry> <last expiry>``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time

from rustrade_store import LeaseHeldError, LeaseLostError, SyncStore

PREFIX = "sync-bot/"
KEY = "sync-bot/BTCUSDT"
ANOTHER_COPY_EXIT = 3
LOST_EXIT = 4


def say(line: str) -> None:
    print(line, flush=True)


def run(url: str | None, seconds: float, ttl: float, wait: float, tick: float) -> int:
    stopped = threading.Event()

    def on_lost(error: LeaseLostError) -> None:
        """Runs in a thread of its own: the bot's loop sees the event and stops trading."""
        say(f"ON_LOST {error}")
        stopped.set()

    with SyncStore.from_url(url) as store:
        lease = store.lease(PREFIX, ttl=ttl, wait=wait, on_lost=on_lost)
        try:
            lease.acquire()
        except LeaseHeldError as exc:
            say(f"REFUSED {exc}")
            return ANOTHER_COPY_EXIT
        with lease:
            say(f"HELD {lease.token} {os.getpid()}")
            first_expiry = lease.expires_at
            loaded = store.load(KEY)
            state = loaded if isinstance(loaded, dict) else {"realised": 0.0, "trades": 0}
            saves = 0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not stopped.is_set():
                pnl = state.get("realised", 0.0)
                trades = state.get("trades", 0)
                state = {
                    "realised": (pnl if isinstance(pnl, float) else 0.0) + random.uniform(-5, 5),
                    "trades": (trades if isinstance(trades, int) else 0) + 1,
                    "pid": os.getpid(),
                }
                try:
                    store.save(KEY, state)
                except LeaseLostError as exc:
                    say(f"FENCED {exc}")
                    break
                saves += 1
                time.sleep(tick)
            if stopped.is_set() or not lease.held:
                return LOST_EXIT
            last_expiry = lease.expires_at
            assert first_expiry is not None
            assert last_expiry is not None
            say(f"DONE {saves} {lease.token} {first_expiry.isoformat()} {last_expiry.isoformat()}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--db", default=None, help="database URL (default: RUSTRADE_STORE_URL)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to trade")
    parser.add_argument("--ttl", type=float, default=5.0, help="the lease's ttl in seconds")
    parser.add_argument("--wait", type=float, default=0.0, help="wait this long for the lease")
    parser.add_argument("--tick", type=float, default=0.05, help="seconds between trades")
    arguments = parser.parse_args()
    return run(arguments.db, arguments.seconds, arguments.ttl, arguments.wait, arguments.tick)


if __name__ == "__main__":
    sys.exit(main())
