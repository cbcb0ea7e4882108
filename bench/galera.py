"""What a Galera cluster costs a save and a load: ``make bench-galera`` (not part of
``make bench``: it builds a three-node cluster, as root, with MariaDB, galera-4 and rsync).

Sequential ``save`` and ``load`` of about 300 bytes, p50 and p99, on:

- the shared plain MariaDB server (a database of this run's own);
- node 1 of a three-node cluster on this machine (tests/galera.py), through a single-host URL,
  with the store's ``wsrep_sync_wait=7``, and with ``wsrep_sync_wait=0`` (what the setting
  costs);
- the multi-host URL listing the three nodes (the store's ``async_creator``);
- a load through node 2 of what was just saved through node 1.

The configurations take turns call by call, so the machine's noise falls on all alike. Nothing
here fails on a figure.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rustrade_store import SqlStore, upgrade
from tests.galera import galera_cluster, missing
from tests.helpers import MARIADB_ADMIN_URL, new_mariadb_database

if TYPE_CHECKING:
    from sqlalchemy import URL

ROUNDS = 500
VALUE = {"position": 1.25, "orders": [{"id": f"order-{n}", "qty": n} for n in range(8)]}


def quantile_us(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1e6


async def measure(plain: URL, node: URL, other: URL, multi: str) -> dict[str, list[float]]:
    await upgrade(plain)
    await upgrade(node)
    sync_off = {"init_command": "SET time_zone = '+00:00', wsrep_sync_wait = 0"}
    stores = {
        "plain server": (SqlStore.from_url(plain), None),
        "galera node, wsrep_sync_wait=7": (SqlStore.from_url(node), None),
        "galera node, wsrep_sync_wait=0": (SqlStore.from_url(node, connect_args=sync_off), None),
        "multi-host URL": (SqlStore.from_url(multi), None),
        "save on node 1, load on node 2": (SqlStore.from_url(node), SqlStore.from_url(other)),
    }
    times: dict[str, list[float]] = {}
    try:
        for step in range(ROUNDS):
            for name, (saver, loader) in stores.items():
                key = f"bench/{name}/{step % 50}"
                began = time.perf_counter()
                await saver.save(key, VALUE)
                saved = time.perf_counter()
                await (loader or saver).load(key)
                loaded = time.perf_counter()
                times.setdefault(f"{name}: save", []).append(saved - began)
                times.setdefault(f"{name}: load", []).append(loaded - saved)
    finally:
        for saver, loader in stores.values():
            await saver.aclose()
            if loader is not None:
                await loader.aclose()
    return times


def main() -> None:
    reason = missing()
    if reason is not None:
        sys.exit(f"no Galera cluster can run here: {reason}")
    admin = SqlStore.from_url(MARIADB_ADMIN_URL).engine.url
    with new_mariadb_database(admin) as plain, galera_cluster() as cluster:
        first, second = cluster.nodes[:2]
        times = asyncio.run(
            measure(plain, cluster.url(first), cluster.url(second), cluster.multi_host_url())
        )
    print(f"Galera bench: {ROUNDS} sequential saves and loads each, about 300 bytes, p50 / p99")
    width = max(len(name) for name in times)
    for name, samples in times.items():
        print(
            f"  {name:<{width}}  {quantile_us(samples, 0.5):7.0f} us  "
            f"{quantile_us(samples, 0.99):7.0f} us  (mean {statistics.fmean(samples) * 1e6:.0f})"
        )


if __name__ == "__main__":
    main()
