"""Save times: wall-clock UTC, strictly increasing within the process."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

__all__ = ["horizon", "next_save_time", "now", "supersedes"]

_TICK = timedelta(microseconds=1)
_lock = threading.Lock()
_last = datetime.min.replace(tzinfo=UTC)


def now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


def next_save_time() -> datetime:
    """The wall clock, or one microsecond past the last time handed out if the clock is not
    ahead of it (a clock stepped back, or two saves in one microsecond): the databases keep
    microseconds, so every save of the process gets a time no other save of it has."""
    global _last
    with _lock:
        _last = max(now(), _last + _TICK)
        return _last


def horizon() -> datetime:
    """The latest time this process knows of: the wall clock, or the last save time handed
    out if that is ahead (a clock stepped back). A stored time past it is another writer's
    clock running ahead."""
    with _lock:
        return max(now(), _last)


def supersedes(new: datetime, held: datetime) -> bool:
    """Whether, in one list of saves of a key, the save at ``new`` (later in the list) takes the
    place of the one at ``held``: the latest save time wins, and on a tie the later in the list,
    as a dict keeps its last item."""
    return held <= new
