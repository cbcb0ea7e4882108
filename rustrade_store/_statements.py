"""Every SQL statement of the package, as SQLAlchemy Core over the one table: writes, reads,
leases, the command's counts, the migrations' version read. What differs per database (the
rows of a write, the upsert, the clock, how keys are bound) comes from the :mod:`._backends`
class each function is given."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Text,
    and_,
    bindparam,
    case,
    column,
    delete,
    false,
    func,
    not_,
    select,
    table,
    true,
    union_all,
    update,
)

from ._schema import snapshots, version_table
from .codec import BATCH_ROWS, LEASE_PREFIX, check_key

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, CompoundSelect, Delete, Insert, Select, Update
    from sqlalchemy.sql.expression import TableClause

    from ._backends import Backend

__all__ = [
    "IGNORE_LEASES",
    "count",
    "current_database",
    "delete_older",
    "fence",
    "galera_status",
    "lease_lock",
    "lease_read",
    "lease_renew",
    "lease_take",
    "leases",
    "page",
    "prefix_end",
    "reset_if_at",
    "seen",
    "server_now",
    "server_replication",
    "snapshot",
    "snapshots",
    "standbys",
    "stored",
    "update_if_at",
    "upsert",
    "upsert_if_absent",
    "value",
    "values",
]

IGNORE_LEASES = "*"
"""The ``mine`` of a write that ignores leases (an operator's forced repair); no lease row's
value is this text."""

_table = snapshots


def prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (code point order)."""
    chars = list(prefix)
    while chars:
        point = ord(chars.pop()) + 1
        if point == 0xD800:
            point = 0xE000
        if point <= 0x10FFFF:
            return "".join(chars) + chr(point)
    return None


def _under(prefix: str) -> list[ColumnElement[bool]]:
    """Keys that start with ``prefix``, lease rows never among them."""
    key = _table.c.key
    not_a_lease = not_(and_(key >= LEASE_PREFIX, key < prefix_end(LEASE_PREFIX)))
    if prefix == "":
        return [not_a_lease]
    check_key(prefix)
    end = prefix_end(prefix)
    return [key >= prefix, not_a_lease] if end is None else [key >= prefix, key < end]


def fence(
    backend: Backend, lease_key: ColumnElement[Any], mine: ColumnElement[Any]
) -> ColumnElement[bool]:
    """Whether a write under the lease row ``lease_key`` may apply: the row still holds
    ``mine`` (this store's lease), or, for a store holding none (``mine`` null), the row is
    there and not live; ``mine`` of :data:`IGNORE_LEASES`, or a key no lease covers
    (``lease_key`` null), writes regardless.

    The lease row is share-locked whatever it holds, so that a take-over waits for the write's
    transaction, and the write's answer can read the row as the write saw it. A row that is
    missing cannot be locked: the write is refused, and the row created (see
    :data:`~rustrade_store._outcome.Verdict.NO_LEASE_ROW`)."""
    lease = _table.alias("lease")

    def locked(column: ColumnElement[Any]) -> ColumnElement[Any]:
        found = select(column).where(lease.c.key == lease_key).with_for_update(read=True)
        return found.scalar_subquery()

    return case(
        (mine == IGNORE_LEASES, true()),
        (lease_key.is_(None), true()),
        (mine.is_(None), locked(lease.c.updated_at) <= backend.server_now()),
        else_=locked(backend.json_text(lease.c.value)) == mine,
    )


def _key_fence(backend: Backend) -> ColumnElement[bool]:
    """:func:`fence` of a single-key statement, its lease bound as ``lease_key`` and ``mine``."""
    return fence(backend, bindparam("lease_key", type_=Text), bindparam("mine", type_=Text))


def upsert(backend: Backend, guard: ColumnElement[bool] | None = None) -> Insert:
    """The one write of snapshots: the rows bound as ``rows`` (see
    :class:`~rustrade_store._backends.RowSource`), each applied only where its lease allows
    and over an older snapshot of its key (and where ``guard`` holds on the stored row)."""
    rows = backend.rows()
    chosen = (
        select(rows.key, rows.value, rows.updated_at)
        .select_from(rows.table)
        .where(fence(backend, rows.lease_key, rows.mine))
    )
    return backend.upsert(_table, chosen, guard)


def upsert_if_absent(backend: Backend) -> Insert:
    """:func:`upsert` of a key only if it is missing."""
    return upsert(backend, false())


def value(backend: Backend) -> Select[Any]:
    """The value of the key bound as ``key``."""
    return select(backend.json_text(_table.c.value)).where(_table.c.key == bindparam("key"))


def values(backend: Backend) -> Select[Any]:
    """Each stored key of those bound as ``keys``, with its value."""
    return select(_table.c.key, backend.json_text(_table.c.value)).where(
        backend.key_in(_table.c.key)
    )


def stored(backend: Backend) -> Select[Any]:
    """Each stored key of those bound as ``keys``, with its time and value."""
    value = backend.json_text(_table.c.value)
    return select(_table.c.key, _table.c.updated_at, value).where(backend.key_in(_table.c.key))


def snapshot(backend: Backend) -> Select[Any]:
    """The value and time of the key bound as ``key``."""
    value = backend.json_text(_table.c.value)
    return select(value, _table.c.updated_at).where(_table.c.key == bindparam("key"))


def delete_older(backend: Backend) -> Delete:
    """Delete the key bound as ``key`` if its stored time is before the one bound as ``before``
    and its lease allows (bound as ``lease_key`` and ``mine``)."""
    return delete(_table).where(
        _table.c.key == bindparam("key"),
        _table.c.updated_at < bindparam("before"),
        _key_fence(backend),
    )


def update_if_at(backend: Backend) -> Update:
    """Compare-and-set: write ``new_value`` at ``new_time`` over the key bound as ``at_key``
    only if it is stored at ``expected`` (and that is older) and its lease allows (bound as
    ``lease_key`` and ``mine``); a missing key stays missing."""
    return (
        update(_table)
        .where(
            _table.c.key == bindparam("at_key"),
            _table.c.updated_at == bindparam("expected"),
            _table.c.updated_at < bindparam("new_time"),
            _key_fence(backend),
        )
        .values(value=bindparam("new_value"), updated_at=bindparam("new_time"))
    )


def seen(backend: Backend) -> Select[Any]:
    """Each stored row of the keys bound as ``keys`` (snapshots and lease rows): its time, its
    text, and the database's clock."""
    value = backend.json_text(_table.c.value)
    return select(_table.c.key, _table.c.updated_at, value, backend.server_now()).where(
        backend.key_in(_table.c.key)
    )


def count(prefix: str) -> Select[Any]:
    """How many keys start with ``prefix``."""
    return select(func.count()).select_from(_table).where(*_under(prefix))


def page(backend: Backend, prefix: str, *, values: bool) -> Select[Any]:
    """Up to :data:`~.codec.BATCH_ROWS` keys (with their values and times) under ``prefix``, in key
    order, after the key bound as ``after``."""
    columns: list[ColumnElement[Any]] = [_table.c.key]
    if values:
        columns += [backend.json_text(_table.c.value), _table.c.updated_at]
    return (
        select(*columns)
        .where(*_under(prefix), _table.c.key > bindparam("after"))
        .order_by(_table.c.key)
        .limit(BATCH_ROWS)
    )


# -- leases --------------------------------------------------------------------------------


def lease_lock() -> Update:
    """Lock the lease row bound as ``row`` for the transaction (a no-op update; on SQLite, the
    write lock), so that no other store changes it between its read and its write."""
    return (
        update(_table)
        .where(_table.c.key == bindparam("row"))
        .values(updated_at=_table.c.updated_at)
    )


def lease_read(backend: Backend) -> Select[Any]:
    """The value and expiry of the lease row bound as ``row``."""
    value = backend.json_text(_table.c.value)
    return select(value, _table.c.updated_at).where(_table.c.key == bindparam("row"))


def lease_take() -> Update:
    """Write the lease row bound as ``row``: its value ``text``, its expiry ``until``."""
    return (
        update(_table)
        .where(_table.c.key == bindparam("row"))
        .values(value=bindparam("text"), updated_at=bindparam("until"))
    )


def lease_renew(backend: Backend) -> Update:
    """Move the expiry of the lease row bound as ``row`` to ``until``, if it still holds
    ``mine``."""
    value = backend.json_text(_table.c.value)
    return (
        update(_table)
        .where(_table.c.key == bindparam("row"), value == bindparam("mine"))
        .values(updated_at=bindparam("until"))
    )


def server_now(backend: Backend) -> Select[Any]:
    """The database server's clock (the host's, bound as ``now``, on SQLite)."""
    return select(backend.server_now())


def leases(backend: Backend) -> Select[Any]:
    """Every lease row in key order: key, value, expiry, and whether it is live."""
    value = backend.json_text(_table.c.value)
    live = _table.c.updated_at > backend.server_now()
    return (
        select(_table.c.key, value, _table.c.updated_at, live)
        .where(_table.c.key >= LEASE_PREFIX, _table.c.key < prefix_end(LEASE_PREFIX))
        .order_by(_table.c.key)
    )


def server_replication() -> Select[Any]:
    """PostgreSQL: what decides whether an acknowledged commit survives a failover, and which
    server answered: ``synchronous_standby_names``, whether it is in recovery, its address and
    port (null over a local socket)."""
    return select(
        func.current_setting("synchronous_standby_names"),
        func.pg_is_in_recovery(),
        func.host(func.inet_server_addr()),
        func.inet_server_port(),
    )


def standbys() -> Select[Any]:
    """PostgreSQL: each attached standby's ``application_name`` and ``sync_state``, by name
    (without pg_monitor, each WAL sender's row is there, its state null)."""
    view = table("pg_stat_replication", column("application_name"), column("sync_state"))
    return select(view.c.application_name, view.c.sync_state).order_by(view.c.application_name)


def reset_if_at(backend: Backend) -> Update:
    """Compare-and-set that may set the time back: write ``new_value`` at ``new_time`` over the
    key bound as ``at_key`` only if it is stored at exactly ``expected`` (earlier or later than
    ``new_time``) and its lease allows (bound as ``lease_key`` and ``mine``): the repair of a
    snapshot stamped by a clock that ran ahead, which every later save refuses."""
    return (
        update(_table)
        .where(
            _table.c.key == bindparam("at_key"),
            _table.c.updated_at == bindparam("expected"),
            _key_fence(backend),
        )
        .values(value=bindparam("new_value"), updated_at=bindparam("new_time"))
    )


_GALERA_STATUS = (
    "WSREP_CLUSTER_SIZE",
    "WSREP_CLUSTER_STATUS",
    "WSREP_LOCAL_STATE",
    "WSREP_LOCAL_STATE_COMMENT",
    "WSREP_READY",
)
_GALERA_VARIABLES = ("WSREP_ON", "WSREP_SYNC_WAIT", "TX_ISOLATION")


def _server_table(name: str) -> TableClause:
    return table(
        name, column("VARIABLE_NAME"), column("VARIABLE_VALUE"), schema="information_schema"
    )


def galera_status() -> CompoundSelect[Any]:
    """MariaDB: ``(name, value)`` rows of what says whether the server is a Galera node, in
    which cluster and state, and the session's ``wsrep_sync_wait`` and isolation (named
    ``tx_isolation`` on 10.11, where ``@@transaction_isolation`` raised 1193). A server without
    wsrep has no ``WSREP_`` status rows."""
    status = _server_table("GLOBAL_STATUS")
    session = _server_table("SESSION_VARIABLES")
    return union_all(
        select(status.c.VARIABLE_NAME, status.c.VARIABLE_VALUE).where(
            status.c.VARIABLE_NAME.in_(_GALERA_STATUS)
        ),
        select(session.c.VARIABLE_NAME, session.c.VARIABLE_VALUE).where(
            session.c.VARIABLE_NAME.in_(_GALERA_VARIABLES)
        ),
    )


def revision() -> Select[Any]:
    """The schema revision Alembic recorded (its version table's one row)."""
    return select(version_table.c.version_num)


def current_database() -> Select[Any]:
    """PostgreSQL's name of the database a connection is on."""
    return select(func.current_database())
