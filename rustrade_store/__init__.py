"""rustrade-store: durable state snapshots for rustrade bots, over one async SQLAlchemy store."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .buffered import BufferedStore
from .codec import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    MAX_KEY_LENGTH,
    MAX_VALUE_BYTES,
    JSONInput,
    JSONValue,
)
from .engine import DEFAULT_URL, ENV_VAR, create_engine, resolve_url
from .errors import (
    ClockSkewError,
    ConfigurationError,
    ConflictError,
    InvalidKeyError,
    InvalidValueError,
    KeyTypeError,
    LeaseError,
    LeaseHeldError,
    LeaseLostError,
    SchemaError,
    StorageError,
    StoreError,
    ValueTypeError,
)
from .lease import Lease
from .memory import InMemoryStore
from .migrate import downgrade, head_revision, upgrade
from .restore import RestoreReport
from .sql import SqlStore
from .store import Snapshot, StateStore

try:
    __version__ = version("rustrade-store")
except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
    __version__ = "0+unknown"

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
    "RestoreReport",
    "SchemaError",
    "Snapshot",
    "SqlStore",
    "StateStore",
    "StorageError",
    "StoreError",
    "ValueTypeError",
    "__version__",
    "create_engine",
    "downgrade",
    "head_revision",
    "resolve_url",
    "upgrade",
]
