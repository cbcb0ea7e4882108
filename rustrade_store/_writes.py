"""The store's writes of snapshots: each builds its statement, runs it through the executor, and
turns what its own transaction saw into the caller's answer (:func:`~._outcome.judge`).

A write is first sent as one statement. Rows it did not apply are written again in a
transaction that reads, under the locks that statement took, what refused them: the answer
never rests on a read made after those locks were let go.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import _clock, _statements, _telemetry
from ._errors import LeaseLostError, StorageError, StoreError
from ._executor import Attempt, Rejected
from ._outcome import LeaseRow, Seen, Stored, Verdict, judge, lease_text
from .codec import LEASE_PREFIX

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.ext.asyncio import AsyncConnection

    from ._executor import Executor
    from ._fencing import Fencing
    from ._outcome import Write

__all__ = ["UNHELD_SINCE", "Writes"]

UNHELD_SINCE = datetime(2000, 1, 1, tzinfo=UTC)
"""The expiry of a lease row created for serialisation alone, before any store held it."""

Answer = StoreError | Verdict
_AGAIN = (Verdict.NO_LEASE_ROW, Verdict.AGAIN)


class _NoLeaseRow(StorageError):
    """An all-or-none write found a prefix's lease row missing, or changed while it ran: roll
    back, create the row, write again."""


class Writes:
    """Saves (single, batched, compare-and-set, all-or-none), deletes and restores' rows."""

    __slots__ = (
        "_delete",
        "_executor",
        "_fencing",
        "_new_lease",
        "_reset_if_at",
        "_seen",
        "_update_if_at",
        "_upsert",
        "_upsert_if_absent",
        "_where",
    )

    def __init__(self, executor: Executor, fencing: Fencing) -> None:
        backend = executor.backend
        self._executor = executor
        self._fencing = fencing
        self._where = executor.where
        self._upsert = _statements.upsert(backend)
        self._upsert_if_absent = _statements.upsert_if_absent(backend)
        self._update_if_at = _statements.update_if_at(backend)
        self._reset_if_at = _statements.reset_if_at(backend)
        self._delete = _statements.delete_older(backend)
        self._seen = _statements.seen(backend)
        self._new_lease = backend.insert_new(_statements.snapshots)

    # -- single saves, batched -------------------------------------------------------------

    async def save(self, row: dict[str, Any]) -> None:
        """Write one row, batched with concurrent saves; raise what refused it, if an error."""
        write = self._fencing.write("save", row)
        await self._executor.queued("save", write.key, write, self._save_batch)

    async def _save_batch(self, writes: list[Write], deadline: float) -> list[StoreError | None]:
        """Each write's answer. Writes of one key are collapsed to the latest; if the database
        rejects that one, the earlier ones are written on their own, so that no caller's fate
        depends on another caller's row."""
        _telemetry.group_commit(self._where, "save", len(writes))
        answers: dict[int, StoreError | None] = {}
        pending = list(range(len(writes)))
        while pending:
            latest: dict[str, int] = {}
            for index in pending:
                held = latest.get(writes[index].key)
                if held is None or _clock.supersedes(writes[index].sent, writes[held].sent):
                    latest[writes[index].key] = index
            group = sorted((writes[i] for i in latest.values()), key=lambda write: write.key)
            outcome, rejected = await self._save_group(group, deadline)
            later = []
            for index in pending:
                key = writes[index].key
                if index != latest[key] and key in rejected:
                    later.append(index)
                else:
                    answers[index] = outcome[key]
            pending = later
        return [answers[index] for index in range(len(writes))]

    async def _save_group(
        self, writes: list[Write], deadline: float
    ) -> tuple[dict[str, StoreError | None], set[str]]:
        """Write ``writes`` as one statement: each key's error, if refused by one, and the keys
        whose row the database rejected. A rejected statement is written again by halves, down
        to the row at fault, so that its rejection reaches only its caller."""
        try:
            answers = await self._write(writes, Attempt(), deadline)
        except Rejected as rejected:
            if len(writes) == 1:
                return {writes[0].key: rejected.error}, {writes[0].key}
            half = len(writes) // 2
            first, first_rejected = await self._save_group(writes[:half], deadline)
            second, second_rejected = await self._save_group(writes[half:], deadline)
            return first | second, first_rejected | second_rejected
        return {key: _error(answer) for key, answer in answers.items()}, set()

    async def _write(
        self, writes: list[Write], attempt: Attempt, deadline: float | None = None
    ) -> dict[str, Answer]:
        """Each write's answer: sent as one statement, the refused ones settled in a
        transaction."""
        action = writes[0].action
        key = writes[0].key if len(writes) == 1 else None

        async def send(connection: AsyncConnection) -> set[str]:
            return await self._apply(connection, writes)

        applied = await self._executor.run(
            action, key, send, attempt=attempt, deadline=deadline, rejected=True
        )
        answers: dict[str, Answer] = {w.key: Verdict.APPLIED for w in writes if w.key in applied}
        refused = [write for write in writes if write.key not in applied]
        if refused:
            answers |= await self._settle(refused, attempt, deadline)
        return answers

    # -- compare-and-set, all-or-none, delete ----------------------------------------------

    async def save_if(
        self, row: dict[str, Any], expected: datetime | None, *, reset: bool = False
    ) -> None:
        """Write one row only if its key is stored at ``expected`` (or, with ``None``, absent);
        else raise :class:`~rustrade_store.ConflictError` naming what is stored. With
        ``reset``, the row's time may be earlier than ``expected`` (a repair)."""
        if expected is None:
            write = self._fencing.write("save", row, "absent")
        else:
            write = self._fencing.write("save", row, "reset" if reset else "at", expected)
        try:
            answer = (await self._write([write], Attempt()))[write.key]
        except Rejected as rejected:
            raise rejected.error from rejected.__cause__
        if isinstance(answer, StoreError):
            raise answer

    async def save_all(self, action: str, rows: list[dict[str, Any]]) -> None:
        """Write ``rows`` in one transaction, all or none: the first refusal that is an error
        is raised, and nothing is written."""
        writes = [self._fencing.write(action, row) for row in rows]
        attempt = Attempt()

        async def work(connection: AsyncConnection) -> None:
            await self.write_in(connection, writes, attempt)

        for _ in range(2):
            try:
                return await self._executor.run(
                    action, None, work, transaction=True, attempt=attempt
                )
            except _NoLeaseRow:
                await self._create_lease_rows(writes)
        await self._executor.run(action, None, work, transaction=True, attempt=attempt)

    async def write_in(
        self, connection: AsyncConnection, writes: Sequence[Write], attempt: Attempt
    ) -> None:
        """Write ``writes`` on ``connection``, inside the caller's transaction; raise the first
        refusal that is an error, so that the transaction writes none."""
        applied = await self._apply(connection, writes)
        refused = [write for write in writes if write.key not in applied]
        answers = await self._judge(connection, refused, attempt)
        for write in refused:
            answer = answers[write.key]
            if answer in _AGAIN:
                raise _NoLeaseRow(
                    f"{write.action} {write.key!r} on {self._where}: its lease row was created "
                    "or expired while it ran; nothing was written: write it again"
                )
            self._lost(write, answer)
            if isinstance(answer, StoreError):
                raise answer

    async def restore_in(
        self, connection: AsyncConnection, rows: list[dict[str, Any]], attempt: Attempt
    ) -> None:
        """Write a restore's ``rows`` (their own times) inside its transaction, all or none;
        the lease rows its writes need are created first, in the same transaction, since a
        stream of batches cannot be replayed."""
        writes = [self._fencing.write("restore", row) for row in rows]
        for lease_key in _unheld_lease_keys(writes):
            prefix = lease_key.removeprefix(LEASE_PREFIX)
            row = {"key": lease_key, "value": unheld_text(prefix), "updated_at": UNHELD_SINCE}
            await self._executor.execute(connection, self._new_lease, row)
        await self.write_in(connection, writes, attempt)

    async def delete(self, key: str, before: datetime) -> bool:
        """Delete ``key`` if it was saved before ``before`` and its lease allows; return whether
        this call removed it."""
        row = {"key": key, "value": "", "updated_at": before}
        write = self._fencing.write("delete", row, "delete")
        attempt = Attempt()

        async def work(connection: AsyncConnection) -> Answer:
            params = {"key": key, "before": before} | self._fencing.params(write)
            (count,) = (await self._executor.execute(connection, self._delete, params))[0]
            if count:
                return Verdict.APPLIED
            seen = await self._read(connection, [write])
            return judge(
                write,
                seen[key],
                maybe_applied=attempt.maybe_applied,
                where=self._where,
                wall=_clock.horizon(),
            )

        for _ in range(3):
            answer = await self._executor.run(
                "delete", key, work, transaction=True, attempt=attempt
            )
            if answer not in _AGAIN:
                break
            if answer is Verdict.NO_LEASE_ROW:
                await self._create_lease_rows([write])
        else:
            answer = _unsettled(write, self._where)
        self._lost(write, answer)
        if isinstance(answer, StoreError):
            raise answer
        return answer is Verdict.APPLIED

    # -- the statements and what their transaction saw ---------------------------------------

    async def _apply(self, connection: AsyncConnection, writes: Sequence[Write]) -> set[str]:
        """Send ``writes``' statement; the keys it applied."""
        execute = self._executor.execute
        if writes and writes[0].condition in ("at", "reset"):
            (write,) = writes
            update = self._reset_if_at if write.condition == "reset" else self._update_if_at
            params = {
                "at_key": write.key,
                "new_value": write.text,
                "new_time": write.sent,
                "expected": write.expected,
            } | self._fencing.params(write)
            (count,) = (await execute(connection, update, params))[0]
            return {write.key} if count == 1 else set()
        statement = self._upsert
        if writes and writes[0].condition == "absent":
            statement = self._upsert_if_absent
        sent = {write.key: write.sent for write in writes}
        applied: set[str] = set()
        for part in self._parts(writes):
            rows = await execute(connection, statement, self._fencing.rows(part))
            applied.update(key for key, when in rows if sent.get(key) == when)
        return applied

    async def _settle(
        self, writes: list[Write], attempt: Attempt, deadline: float | None
    ) -> dict[str, Answer]:
        """Write the refused ``writes`` again in a transaction that reads what refused them;
        a prefix with no lease row gets one, and its writes are tried once more."""
        answers: dict[str, Answer] = {}
        left = writes
        for _ in range(3):
            answers |= await self._settle_once(left, attempt, deadline)
            left = [write for write in left if answers[write.key] in _AGAIN]
            if not left:
                break
            await self._create_lease_rows(
                [write for write in left if answers[write.key] is Verdict.NO_LEASE_ROW]
            )
        for write in left:
            answers[write.key] = _unsettled(write, self._where)
        for write in writes:
            self._lost(write, answers[write.key])
        return answers

    async def _settle_once(
        self, writes: list[Write], attempt: Attempt, deadline: float | None
    ) -> dict[str, Answer]:
        async def work(connection: AsyncConnection) -> dict[str, Answer]:
            applied = await self._apply(connection, writes)
            refused = [write for write in writes if write.key not in applied]
            judged = await self._judge(connection, refused, attempt)
            return {key: Verdict.APPLIED for key in applied} | judged

        return await self._executor.run(
            writes[0].action,
            writes[0].key if len(writes) == 1 else None,
            work,
            transaction=True,
            attempt=attempt,
            deadline=deadline,
            rejected=True,
        )

    async def _judge(
        self, connection: AsyncConnection, refused: Sequence[Write], attempt: Attempt
    ) -> dict[str, Answer]:
        if not refused:
            return {}
        seen = await self._read(connection, refused)
        wall = _clock.horizon()
        return {
            write.key: judge(
                write,
                seen[write.key],
                maybe_applied=attempt.maybe_applied,
                where=self._where,
                wall=wall,
            )
            for write in refused
        }

    async def _read(self, connection: AsyncConnection, writes: Sequence[Write]) -> dict[str, Seen]:
        """What the transaction sees of each write's key and lease row."""
        lease_keys = {write.lease_key for write in writes if write.lease_key is not None}
        keys = sorted({write.key for write in writes} | lease_keys)
        params = {"keys": self._executor.backend.keys_param(keys)} | self._fencing.now()
        rows = {
            key: (when, text, now)
            for key, when, text, now in await self._executor.execute(connection, self._seen, params)
        }
        seen = {}
        for write in writes:
            stored = rows.get(write.key)
            lease = rows.get(write.lease_key or "")
            seen[write.key] = Seen(
                None if stored is None else Stored(stored[0], stored[1]),
                None if lease is None else LeaseRow(lease[1], lease[0], lease[2]),
            )
        return seen

    async def _create_lease_rows(self, writes: Sequence[Write]) -> None:
        """Create, unheld, the lease rows of ``writes``' prefixes that have none."""
        lease_keys = _unheld_lease_keys(writes)

        async def work(connection: AsyncConnection) -> None:
            for lease_key in lease_keys:
                prefix = lease_key.removeprefix(LEASE_PREFIX)
                row = {"key": lease_key, "value": unheld_text(prefix), "updated_at": UNHELD_SINCE}
                await self._executor.execute(connection, self._new_lease, row)

        await self._executor.run("create lease row", None, work)

    def _lost(self, write: Write, answer: Answer) -> None:
        """A write that found this store's lease gone: every later write under it fails."""
        _telemetry.ordered(
            self._where, write.action, answer is Verdict.SUPERSEDED and write.condition != "delete"
        )
        if isinstance(answer, LeaseLostError) and write.lease_key is not None:
            self._fencing.lose(write.lease_key, answer)

    def _parts(self, writes: Sequence[Write]) -> Sequence[Sequence[Write]]:
        """``writes`` in statements of at most ``max_statement_bytes`` of values, one write at
        least. A value's size is bounded from above by four times its length: a quote is
        escaped in the JSON of the rows, then again by the driver, and a character takes up to
        four bytes."""
        limit = self._executor.backend.max_statement_bytes
        if limit is None:
            return [writes]
        parts: list[list[Write]] = [[]]
        size = 0
        for write in writes:
            bound = len(write.text) * 4
            if parts[-1] and size + bound > limit:
                parts.append([])
                size = 0
            parts[-1].append(write)
            size += bound
        return parts


def _unheld_lease_keys(writes: Sequence[Write]) -> list[str]:
    """The lease rows that fence ``writes`` of a store holding no lease on them."""
    return sorted(
        {
            write.lease_key
            for write in writes
            if write.lease_key is not None and write.mine is None and not write.ignore_leases
        }
    )


def _unsettled(write: Write, where: str) -> StorageError:
    return StorageError(
        f"{write.action} {write.key!r} on {where}: its prefix's lease row changed each time it "
        f"was written (is another program deleting rows of the form {LEASE_PREFIX}...?); "
        "nothing was written"
    )


def _error(answer: Answer) -> StoreError | None:
    return answer if isinstance(answer, StoreError) else None


def unheld_text(prefix: str) -> str:
    """The value of a lease row that no store has held yet (token 0)."""
    return lease_text({"prefix": prefix, "token": 0})
