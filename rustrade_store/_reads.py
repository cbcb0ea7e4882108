"""The store's reads of snapshots: a single load, batched with concurrent ones (group commit),
and a read of many keys as one consistent snapshot."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _statements, _telemetry

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ._executor import Executor

__all__ = ["Reads"]


class Reads:
    """Loads: each builds its statement, runs it through the executor, and returns JSON text."""

    __slots__ = ("_backend", "_executor", "_select_value", "_select_values")

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._backend = executor.backend
        self._select_value = _statements.value(self._backend)
        self._select_values = _statements.values(self._backend)

    async def load(self, key: str) -> str | None:
        """The stored JSON text of ``key``, batched with concurrent loads."""
        text: str | None = await self._executor.queued("load", key, key, self._load_batch)
        return text

    async def load_keys(self, keys: list[str], deadline: float | None = None) -> dict[str, str]:
        """``{key: JSON text}`` of the stored keys among ``keys``, as one consistent snapshot:
        one statement, or, where a statement may name fewer keys, one transaction."""
        step = self._backend.max_keys_per_query
        chunks = [keys] if step is None else [keys[i : i + step] for i in range(0, len(keys), step)]

        async def work(connection: AsyncConnection) -> dict[str, str]:
            found: dict[str, str] = {}
            for chunk in chunks:
                params = {"keys": self._backend.keys_param(chunk)}
                found.update((await connection.execute(self._select_values, params)).all())
            return found

        several = len(chunks) > 1
        return await self._executor.run(
            "load_many",
            None,
            work,
            transaction=several,
            isolation=self._backend.snapshot_isolation if several else None,
            deadline=deadline,
        )

    async def _load_batch(self, keys: list[str], deadline: float) -> list[str | None]:
        _telemetry.group_commit(self._executor.where, "load", len(keys))
        if len(set(keys)) == 1:

            async def one(connection: AsyncConnection) -> list[str]:
                return list((await connection.execute(self._select_value, {"key": keys[0]})).all())

            rows = await self._executor.run("load", keys[0], one, deadline=deadline)
            text = rows[0][0] if rows else None
            return [text] * len(keys)
        found = await self.load_keys(list(dict.fromkeys(keys)), deadline)
        return [found.get(key) for key in keys]
