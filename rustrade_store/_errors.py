"""Every error the package raises, under one base class, and the one translation of a driver's
error into :class:`StorageError`."""

from __future__ import annotations

import errno
import shlex
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime

__all__ = [
    "BadFileError",
    "ClockSkewError",
    "ConfigurationError",
    "ConflictError",
    "CopyMismatchError",
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
    "TargetNotEmptyError",
    "ValueTypeError",
    "causes",
    "connection_hint",
    "describe",
    "root_cause",
    "storage_error",
    "upgrade_hint",
]


class StoreError(Exception):
    """Base class of every rustrade-store error."""


class StorageError(StoreError):
    """The backend failed: I/O, a lost connection, a corrupt stored blob.

    The counterpart of the Rust contract's ``Error::Storage``.
    """

    retried_for: float | None = None
    """Seconds the call went on retrying a lost connection before it failed; ``None`` if it
    was not retried."""


class ClockSkewError(StorageError):
    """A write refused because the stored snapshot's time is later than the writer's own clock.

    Writes are ordered by their save times, so a writer whose clock is behind another's cannot
    replace what that writer saved until its clock passes the stored time.
    """


class OutcomeUnknownError(StorageError):
    """A write whose answer was lost (the connection dropped during or after its COMMIT), and
    whose retry could not tell whether that attempt applied: it may or may not be stored.

    Never raised where the store can tell: a retry that finds its own earlier attempt stored
    reports it as applied. Load the key (or the lease) to see what is there before redoing it.
    """


class ConflictError(StoreError):
    """A conditional write refused because the stored snapshot is not the one it was based on
    (or, for an only-if-absent write, because the key exists). Nothing was written.

    ``stored_at`` is the stored snapshot's ``updated_at``, or ``None`` if the key is missing.
    """

    def __init__(self, message: str, stored_at: datetime | None) -> None:
        super().__init__(message)
        self.stored_at = stored_at


class SchemaError(StorageError):
    """The database has no rustrade-store schema, or one at a revision this release cannot use."""


class ConfigurationError(StoreError, ValueError):
    """A database URL or a setting the store cannot use, refused before connecting; the message
    says what to give instead."""


class InvalidKeyError(StoreError, ValueError):
    """A key that is a str but not a usable key (empty, too long, NUL, lone surrogate)."""


class KeyTypeError(StoreError, TypeError):
    """A key that is not a str."""


class InvalidValueError(StoreError, ValueError):
    """A value of JSON types that JSON still cannot hold (NaN, a cycle, too deep, too large)."""


class ValueTypeError(StoreError, TypeError):
    """A value containing a type JSON has no form for (bytes, set, datetime, non-str dict key)."""


class BadFileError(InvalidValueError):
    """An import file with bad lines; each was reported, nothing was written."""


class TargetNotEmptyError(StoreError, ValueError):
    """``copy`` into a database that already holds snapshots, without ``merge``."""


class CopyMismatchError(StorageError):
    """After a copy, the target does not hold exactly what the source holds."""


def root_cause(exc: BaseException) -> BaseException:
    """The driver's exception behind a SQLAlchemy one, else ``exc`` itself.

    SQLAlchemy's own text adds the SQL and its parameters, which may hold whole values.
    """
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def describe(exc: BaseException) -> str:
    """The message of ``exc``'s root cause, or its type name when it has none."""
    cause = root_cause(exc)
    return str(cause).strip() or type(cause).__name__


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the driver's error behind it, and every error each was raised from or during,
    once each: where a connection's failure shows its kind (an ``OSError`` inside a driver's)."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        error = pending.pop(0)
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        orig = getattr(error, "orig", None)
        for nested in (orig, error.__cause__, error.__context__):
            if isinstance(nested, BaseException):
                pending.append(nested)


_REFUSED = frozenset({errno.ECONNREFUSED})
_NO_ROUTE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN})


def connection_hint(exc: BaseException, address: str) -> str:
    """What kind of connection failure ``exc`` is and what to check, for the server at
    ``address`` (``host:port``, or several): recognised by exception type and errno, never by
    message text; ``""`` if it is none of them."""
    for error in causes(exc):
        if isinstance(error, socket.gaierror):
            return f"(unknown host: the host name of {address} does not resolve; check it)"
        code = error.errno if isinstance(error, OSError) else None
        if isinstance(error, ConnectionRefusedError) or code in _REFUSED:
            return f"(connection refused: is the server running on {address}?)"
        if code in _NO_ROUTE:
            return f"(no route to {address}: check the host and the network between)"
    return ""


def storage_error(
    action: str,
    key: str | None,
    where: str,
    exc: BaseException,
    hint: str = "",
    *,
    timed_out: bool = False,
    retried_for: float | None = None,
) -> StorageError:
    """The :class:`StorageError` for a driver's error, to raise ``from exc``.

    One message for the store, the migrations and the CLI: ``<action> [<key>] failed on
    <where>: <cause>[ <hint>][; retried for <n> s]``, ``where`` being the URL with its password
    masked. A timeout (a ``TimeoutError``, or ``timed_out`` for one the driver reports
    otherwise) reads ``timed out waiting for the database (<cause>)``. ``hint`` says what the
    database's message leaves out (:meth:`._backends.Backend.failure_hint`); ``retried_for``
    is how long the call went on retrying a lost connection, when it did.
    """
    cause = root_cause(exc)
    detail = describe(cause)
    if timed_out or isinstance(cause, TimeoutError):
        detail = f"timed out waiting for the database ({detail})"
    if hint:
        detail = f"{detail} {hint}"
    if retried_for is not None:
        detail = f"{detail}; retried for {retried_for:.1f} s"
    subject = action if key is None else f"{action} {key!r}"
    error = StorageError(f"{subject} failed on {where}: {detail}")
    error.retried_for = retried_for
    error.__cause__ = exc  # also where it is handed to a caller rather than raised (group commit)
    return error


def upgrade_hint(url_text: str) -> str:
    """How to migrate the database at ``url_text`` (its URL as shown: password masked), as
    commands that work as printed wherever the package is installed: from a shell, or from
    the caller's Python. The one wording of it, for the store, the migrations and the CLI."""
    command = f"rustrade-store --url {shlex.quote(url_text)} upgrade"
    if "***" in url_text:
        command += "` (with the password where the URL shows ***)"
    else:
        command += "`"
    return f"`{command}, or from Python `await rustrade_store.upgrade(url)` with the same URL"


class LeaseError(StoreError):
    """A write or a lease refused because of a lease on the key's prefix. Nothing was written."""


class LeaseHeldError(LeaseError):
    """Another store holds a live lease on the prefix: its holder is named in the message and
    in ``holder`` (host, pid, id, since) and ``until``."""

    def __init__(self, message: str, holder: dict[str, object], until: datetime) -> None:
        super().__init__(message)
        self.holder = holder
        self.until = until


class LeaseLostError(LeaseError):
    """This store's lease on the prefix is gone (it expired and another store took it, or it
    was broken): no write under the prefix applies any more."""
