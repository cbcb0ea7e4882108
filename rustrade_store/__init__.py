"""rustrade-store: durable state snapshots for rustrade bots, over one async SQLAlchemy store.

Every name below is imported at its first use (PEP 562), so that a module that needs none of
them, such as the command's ``--version``, starts without loading SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._buffered import BufferedStore
    from ._engine import DEFAULT_URL, ENV_VAR, create_engine, resolve_url
    from ._errors import (
        ClockSkewError,
        ConfigurationError,
        ConflictError,
        InvalidKeyError,
        InvalidValueError,
        KeyTypeError,
        LeaseError,
        LeaseHeldError,
        LeaseLostError,
        OutcomeUnknownError,
        SchemaError,
        StorageError,
        StoreError,
        ValueTypeError,
    )
    from ._lease import Lease
    from ._memory import InMemoryStore
    from ._migrate import downgrade, head_revision, upgrade
    from ._restore import RestoreReport
    from ._sql import SqlStore
    from ._store import Snapshot, StateStore
    from ._sync import SyncBufferedStore, SyncStore
    from ._sync_lease import SyncLease
    from .codec import (
        MAX_DEPTH,
        MAX_INT_DIGITS,
        MAX_KEY_LENGTH,
        MAX_VALUE_BYTES,
        JSONInput,
        JSONValue,
    )

    __version__: str

__all__ = [
    "DEFAULT_URL",
    "ENV_VAR",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_KEY_LENGTH",
    "MAX_VALUE_BYTES",
    "BufferedStore",
    "ClockSkewError",
    "ConfigurationError",
    "ConflictError",
    "InMemoryStore",
    "InvalidKeyError",
    "InvalidValueError",
    "JSONInput",
    "JSONValue",
    "KeyTypeError",
    "Lease",
    "LeaseError",
    "LeaseHeldError",
    "LeaseLostError",
    "OutcomeUnknownError",
    "RestoreReport",
    "SchemaError",
    "Snapshot",
    "SqlStore",
    "StateStore",
    "StorageError",
    "StoreError",
    "SyncBufferedStore",
    "SyncLease",
    "SyncStore",
    "ValueTypeError",
    "__version__",
    "create_engine",
    "downgrade",
    "head_revision",
    "resolve_url",
    "upgrade",
]

_HOMES = {
    "_buffered": ("BufferedStore",),
    "codec": (
        "MAX_DEPTH",
        "MAX_INT_DIGITS",
        "MAX_KEY_LENGTH",
        "MAX_VALUE_BYTES",
        "JSONInput",
        "JSONValue",
    ),
    "_engine": ("DEFAULT_URL", "ENV_VAR", "create_engine", "resolve_url"),
    "_errors": (
        "ClockSkewError",
        "ConfigurationError",
        "ConflictError",
        "InvalidKeyError",
        "InvalidValueError",
        "KeyTypeError",
        "LeaseError",
        "LeaseHeldError",
        "LeaseLostError",
        "OutcomeUnknownError",
        "SchemaError",
        "StorageError",
        "StoreError",
        "ValueTypeError",
    ),
    "_lease": ("Lease",),
    "_memory": ("InMemoryStore",),
    "_migrate": ("downgrade", "head_revision", "upgrade"),
    "_restore": ("RestoreReport",),
    "_sql": ("SqlStore",),
    "_store": ("Snapshot", "StateStore"),
    "_sync": ("SyncBufferedStore", "SyncStore"),
    "_sync_lease": ("SyncLease",),
}
"""The module each name of the API lives in, as imported above for type checkers."""

_HOME = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rustrade-store")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "0+unknown"
