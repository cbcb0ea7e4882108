"""One of the concurrent writer processes: ``python writer_child.py URL WRITER SAVES TASKS``.

Each of TASKS tasks saves SAVES/TASKS times, alternating between keys shared by every writer and
keys of its own, with a load now and then. On success it prints, as JSON, the last value each
task wrote to each key; any error ends the process with a traceback and exit status 1.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING

from rustrade_store import SqlStore

if TYPE_CHECKING:
    from rustrade_store.codec import JSONValue

SHARED_KEYS = 4


async def main(url: str, writer: int, saves: int, tasks: int) -> None:
    last: dict[str, dict[str, JSONValue]] = {}  # key -> {task: the last value it wrote there}

    async with SqlStore.from_url(url) as store:

        async def task(number: int) -> None:
            me = f"{writer}.{number}"
            for step in range(saves // tasks):
                key = f"shared/{step // 2 % SHARED_KEYS}" if step % 2 else f"own/{me}/{step % 5}"
                value: JSONValue = {"by": me, "step": step}
                await store.save(key, value)
                last.setdefault(key, {})[me] = value
                if step % 5 == 4:
                    await store.load(f"shared/{step % SHARED_KEYS}")

        await asyncio.gather(*(task(number) for number in range(tasks)))
    print(json.dumps({key: list(by_task.values()) for key, by_task in last.items()}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
