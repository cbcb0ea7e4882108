"""The process the crash loop kills: saves counters for ever, printing each one once it is saved.

``python crash_child.py URL START [KEYS]`` saves ``{"seq": n, ...}`` for n = START, START+1, ...
under keys ``crash/0`` .. ``crash/{KEYS-1}`` (every third step a ``save_many`` of three keys),
and prints ``key n`` for each only after the call returned: a printed line is an acknowledged
save, which must survive the SIGKILL that ends this process.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

from rustrade_store import SqlStore

if TYPE_CHECKING:
    from rustrade_store.codec import JSONValue


def value(seq: int) -> JSONValue:
    return {"seq": seq, "halted": seq % 2 == 0, "pnl": [seq * 0.5, -seq], "pad": "x" * (seq % 97)}


async def main(url: str, start: int, keys: int) -> None:
    store = SqlStore.from_url(url)
    out = sys.stdout
    seq = start
    while True:
        if seq % 3 == 0:
            batch = {f"crash/{(seq + offset) % keys}": value(seq + offset) for offset in range(3)}
            await store.save_many(batch)
            out.write("".join(f"{key} {seq + offset}\n" for offset, key in enumerate(batch)))
            seq += 3
        else:
            key = f"crash/{seq % keys}"
            await store.save(key, value(seq))
            out.write(f"{key} {seq}\n")
            seq += 1
        out.flush()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 10))
