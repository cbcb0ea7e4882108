"""The store's reads and its delete, as SQLAlchemy Core statements over the one table (the
upsert, which differs per dialect, is in :mod:`.dialects`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, func, select, update

from .codec import check_key
from .schema import snapshots

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, Delete, Select, Update

    from .dialects import DialectFacts

__all__ = [
    "PAGE_SIZE",
    "count",
    "delete_older",
    "page",
    "prefix_end",
    "snapshot",
    "stored",
    "times",
    "update_if_at",
    "value",
    "values",
]

PAGE_SIZE = 1000
"""Rows fetched per query when listing: listing streams, whatever the table's size."""

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
    if prefix == "":
        return []
    check_key(prefix)
    end = prefix_end(prefix)
    key = _table.c.key
    return [key >= prefix] if end is None else [key >= prefix, key < end]


def value(facts: DialectFacts) -> Select[Any]:
    """The value of the key bound as ``key``."""
    return select(facts.json_text(_table.c.value)).where(_table.c.key == bindparam("key"))


def values(facts: DialectFacts) -> Select[Any]:
    """Each stored key of those bound as ``keys``, with its value."""
    return select(_table.c.key, facts.json_text(_table.c.value)).where(facts.key_in(_table.c.key))


def times(facts: DialectFacts) -> Select[Any]:
    """Each stored key of those bound as ``keys``, with its time."""
    return select(_table.c.key, _table.c.updated_at).where(facts.key_in(_table.c.key))


def stored(facts: DialectFacts) -> Select[Any]:
    """Each stored key of those bound as ``keys``, with its time and value."""
    value = facts.json_text(_table.c.value)
    return select(_table.c.key, _table.c.updated_at, value).where(facts.key_in(_table.c.key))


def snapshot(facts: DialectFacts) -> Select[Any]:
    """The value and time of the key bound as ``key``."""
    value = facts.json_text(_table.c.value)
    return select(value, _table.c.updated_at).where(_table.c.key == bindparam("key"))


def delete_older() -> Delete:
    """Delete the key bound as ``key`` if its stored time is before the one bound as ``before``."""
    return delete(_table).where(
        _table.c.key == bindparam("key"), _table.c.updated_at < bindparam("before")
    )


def update_if_at() -> Update:
    """Compare-and-set: write ``new_value`` at ``new_time`` over the key bound as ``at_key``
    only if it is stored at ``expected`` (and that is older); a missing key stays missing."""
    return (
        update(_table)
        .where(
            _table.c.key == bindparam("at_key"),
            _table.c.updated_at == bindparam("expected"),
            _table.c.updated_at < bindparam("new_time"),
        )
        .values(value=bindparam("new_value"), updated_at=bindparam("new_time"))
    )


def count(prefix: str) -> Select[Any]:
    """How many keys start with ``prefix``."""
    return select(func.count()).select_from(_table).where(*_under(prefix))


def page(facts: DialectFacts, prefix: str, *, values: bool) -> Select[Any]:
    """Up to :data:`PAGE_SIZE` keys (with their values and times) under ``prefix``, in key
    order, after the key bound as ``after``."""
    columns: list[ColumnElement[Any]] = [_table.c.key]
    if values:
        columns += [facts.json_text(_table.c.value), _table.c.updated_at]
    return (
        select(*columns)
        .where(*_under(prefix), _table.c.key > bindparam("after"))
        .order_by(_table.c.key)
        .limit(PAGE_SIZE)
    )
