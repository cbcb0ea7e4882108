"""The store's OpenTelemetry: a CLIENT span and a duration per store call, by the stable database
semantic conventions, and the store's own instruments (see docs/telemetry.md).

Only ``opentelemetry-api`` is needed (the ``otel`` extra). Without it every decorator here
returns the function it decorates and every hook is a function that does nothing, so a store
without the extra runs the same code as before. No attribute ever holds a key or a value: they
are unbounded and may be sensitive.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Sized
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import make_url

from ._errors import (
    ClockSkewError,
    ConflictError,
    LeaseHeldError,
    LeaseLostError,
    OutcomeUnknownError,
    root_cause,
)

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
except ImportError:  # the extra is not installed: nothing below is called
    ENABLED = False
else:
    ENABLED = True

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from opentelemetry.metrics import CallbackOptions, Observation

__all__ = [
    "DURATION_BUCKETS",
    "ENABLED",
    "SCOPE",
    "Instruments",
    "active",
    "buffered_queue",
    "buffered_write",
    "group_commit",
    "lease_call",
    "lease_lost",
    "ordered",
    "retried",
    "status_code",
    "traced",
]

F = TypeVar("F", bound="Callable[..., Any]")

SCOPE = "rustrade_store"
"""The instrumentation scope of the tracer and the meter, and the prefix of the store's own
instruments."""

COLLECTION = "snapshots"
"""Every row the store reads or writes, leases included, is in this one table."""

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
"""The conventions' buckets for ``db.client.operation.duration``, in seconds."""

_SYSTEMS = {"postgresql": "postgresql", "mysql": "mariadb", "mariadb": "mariadb"}
_DEFAULT_PORTS = {"postgresql": 5432, "mariadb": 3306}
_REFUSALS = (
    (ClockSkewError, "clock_skew"),
    (LeaseHeldError, "lease_held"),
    (LeaseLostError, "lease_lost"),
)
"""The errors that are a write refused, and the reason each counts under."""


@functools.lru_cache(maxsize=256)
def _database(where: str) -> dict[str, Any]:
    """The conventions' attributes of the database at ``where`` (the URL, password masked)."""
    url = make_url(where)
    backend = url.get_backend_name()
    system = _SYSTEMS.get(backend, "sqlite")
    found: dict[str, Any] = {"db.system.name": system, "db.collection.name": COLLECTION}
    if url.database:
        found["db.namespace"] = url.database
    if system == "sqlite":
        return found
    host, port = url.host, url.port
    if not host:  # a multi-host URL: the first host, as the driver tries it first
        hosts = url.query.get("host", ())
        host, port = _host_port(hosts if isinstance(hosts, str) else next(iter(hosts), ""))
    if host:
        found["server.address"] = host
        found["server.port"] = port or _DEFAULT_PORTS[system]
    return found


def _host_port(text: str) -> tuple[str | None, int | None]:
    """``host:port`` as a multi-host URL lists them (SQLAlchemy requires every port there)."""
    name, _, number = text.rpartition(":") if ":" in text else (text, "", "")
    return name or None, int(number) if number.isdigit() else None


@functools.lru_cache(maxsize=1024)
def _operation(where: str, operation: str) -> tuple[str, dict[str, Any]]:
    """The span name and the attributes of ``operation`` on the database at ``where``."""
    return f"{operation} {COLLECTION}", _database(where) | {"db.operation.name": operation}


def status_code(system: str, exc: BaseException) -> str | None:
    """The database's own code for the driver error behind ``exc``: PostgreSQL's SQLSTATE,
    MariaDB's error number, SQLite's result code; read from the exception, never its text."""
    error: BaseException | None = exc
    for _ in range(8):  # the store's error, SQLAlchemy's, the driver's
        if error is None:
            return None
        cause = root_cause(error)
        if system == "postgresql":
            code = getattr(cause, "sqlstate", None)
            if isinstance(code, str) and code:
                return code
        elif system == "mariadb":
            if not isinstance(cause, OSError) and cause.args and type(cause.args[0]) is int:
                return str(cause.args[0])
        else:
            number = getattr(cause, "sqlite_errorcode", None)
            if isinstance(number, int):
                return str(number)
        error = error.__cause__
    return None


def _failure(attributes: Mapping[str, Any], exc: BaseException) -> dict[str, Any]:
    """``attributes`` with the conventions' ``error.type`` and ``db.response.status_code``."""
    failed = dict(attributes)
    failed["error.type"] = type(exc).__name__
    code = status_code(attributes["db.system.name"], exc)
    if code is not None:
        failed["db.response.status_code"] = code
    return failed


def _nothing(*_: object, **__: object) -> None:
    """A hook without the extra."""


def _as_is(function: F) -> F:
    return function


class Instruments:
    """The tracer and the instruments, from the given providers or, by default, the global
    ones (whichever the application sets, before or after the store is imported)."""

    __slots__ = (
        "acquired",
        "conflicts",
        "duration",
        "lost",
        "refused",
        "renewal",
        "retries",
        "tracer",
        "unknown",
    )

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)
        self.duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of database client operations.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        meter.create_observable_counter(
            f"{SCOPE}.group_commit.calls",
            callbacks=[_grouped_calls],
            unit="{operation}",
            description="Single-key calls written or read by group-commit statements.",
        )
        meter.create_observable_counter(
            f"{SCOPE}.group_commit.statements",
            callbacks=[_grouped_statements],
            unit="{statement}",
            description="Group-commit statements: calls / statements is the mean batch size.",
        )
        self.retries = meter.create_counter(
            f"{SCOPE}.retries",
            unit="{retry}",
            description="Attempts retried (lost connection, aborted transaction), by reason.",
        )
        self.conflicts = meter.create_counter(
            f"{SCOPE}.conflicts",
            unit="{write}",
            description="Compare-and-set writes refused: the stored snapshot was another.",
        )
        self.refused = meter.create_counter(
            f"{SCOPE}.writes.refused",
            unit="{write}",
            description="Writes refused by ordering (a newer save stays), clock skew or a lease.",
        )
        self.unknown = meter.create_counter(
            f"{SCOPE}.outcomes.unknown",
            unit="{write}",
            description="Writes whose answer was lost and whose retry could not tell it.",
        )
        self.acquired = meter.create_counter(
            f"{SCOPE}.lease.acquisitions", unit="{lease}", description="Leases taken."
        )
        self.lost = meter.create_counter(
            f"{SCOPE}.lease.losses",
            unit="{lease}",
            description="Leases lost while held: expired and taken, or broken.",
        )
        self.renewal = meter.create_histogram(
            f"{SCOPE}.lease.renewal.duration",
            unit="s",
            description="Duration of lease renewals.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        meter.create_observable_up_down_counter(
            f"{SCOPE}.buffered.pending",
            callbacks=[_pending],
            unit="{value}",
            description="Values saved to a BufferedStore and not yet durable in its inner store.",
        )
        meter.create_observable_gauge(
            f"{SCOPE}.buffered.oldest_age",
            callbacks=[_age],
            unit="s",
            description="Age of the oldest save not yet durable: the window a crash would lose.",
        )


def _count_refusal(attributes: Mapping[str, Any], exc: BaseException) -> None:
    """Count a write's error that is a refusal, a conflict or an unknown outcome."""
    if isinstance(exc, ConflictError):
        active.conflicts.add(1, attributes)
    elif isinstance(exc, OutcomeUnknownError):
        active.unknown.add(1, attributes)
    else:
        for kind, reason in _REFUSALS:
            if isinstance(exc, kind):
                active.refused.add(1, {**attributes, f"{SCOPE}.refusal.reason": reason})
                return


def _traced(operation: str, *, batch: bool = False, write: bool = False) -> Callable[[F], F]:
    """A CLIENT span and a ``db.client.operation.duration`` for each call of a store's (or a
    lease's) async method, retries and all. ``batch``: the method's first argument holds the
    operations, so the call is ``BATCH <operation>`` with ``db.operation.batch.size`` (one is a
    single operation). ``write``: its refusals are counted."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            where: str = self._executor.where
            size = _batch_size(args, kwargs) if batch else 1
            name, attributes = _operation(where, operation if size == 1 else f"BATCH {operation}")
            span = active.tracer.start_span(name, kind=trace.SpanKind.CLIENT, attributes=attributes)
            token = None
            if span.is_recording():
                if size != 1:
                    span.set_attribute("db.operation.batch.size", size)
                token = otel_context.attach(trace.set_span_in_context(span))
            started = time.perf_counter()
            try:
                result = await method(self, *args, **kwargs)
            except BaseException as exc:
                failed = _failure(attributes, exc)
                active.duration.record(time.perf_counter() - started, failed)
                if write:
                    _count_refusal(attributes, exc)
                if span.is_recording():
                    span.set_attributes({name: failed[name] for name in failed.keys() - attributes})
                    span.set_status(trace.StatusCode.ERROR)  # its message may name a key
                raise
            else:
                active.duration.record(time.perf_counter() - started, attributes)
                return result
            finally:
                if token is not None:
                    otel_context.detach(token)
                span.end()

        return cast("F", call)

    return decorate


def _batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """How many operations a batch call carries: the length of its first argument (one, a
    single operation, when it has none)."""
    operations = args[0] if args else next(iter(kwargs.values()), None)
    return len(operations) if isinstance(operations, Sized) else 1


def _lease_call(operation: str) -> Callable[[F], F]:
    """:func:`traced` for a lease's method, counting each lease taken and timing renewals."""

    def decorate(method: F) -> F:
        inner = _traced(operation)(method)

        @functools.wraps(method)
        async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            attributes = _database(self._executor.where)
            try:
                result = await inner(self, *args, **kwargs)
            finally:
                if operation == "renew_lease":
                    active.renewal.record(time.perf_counter() - started, attributes)
            if operation == "acquire_lease":
                active.acquired.add(1, attributes)
            return result

        return cast("F", call)

    return decorate


def _lease_lost(method: F) -> F:
    """Count each loss of a held lease (the method the fence calls when it finds one)."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        active.lost.add(1, _database(self._executor.where))
        return method(self, *args, **kwargs)

    return cast("F", call)


def _retried(where: str, reason: str) -> None:
    active.retries.add(1, {**_database(where), f"{SCOPE}.retry.reason": reason})


_grouped: dict[tuple[str, str], list[int]] = {}
"""Calls and statements of group commit by database and operation, summed here and read by the
observable counters at each collection: a statement costs an addition, not a measurement."""


def _group_commit(where: str, operation: str, size: int) -> None:
    counts = _grouped.get((where, operation))
    if counts is None:
        counts = _grouped[where, operation] = [0, 0]
    counts[0] += size
    counts[1] += 1


def _grouped_observations(index: int) -> Iterable[Observation]:
    for (where, operation), counts in list(_grouped.items()):
        yield metrics.Observation(counts[index], _operation(where, operation)[1])


def _grouped_calls(_: CallbackOptions) -> Iterable[Observation]:
    return _grouped_observations(0)


def _grouped_statements(_: CallbackOptions) -> Iterable[Observation]:
    return _grouped_observations(1)


def _ordered(where: str, action: str, superseded: bool) -> None:
    """Count a write refused because a newer save of its key stays (no error: the call
    succeeds)."""
    if superseded:
        attributes = _operation(where, action)[1]
        active.refused.add(1, {**attributes, f"{SCOPE}.refusal.reason": "ordering"})


# -- BufferedStore ----------------------------------------------------------------------------

_oldest: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
"""Each write-behind store holding values not yet durable, and when the oldest was saved (at
most: values left after a write were saved after that write began)."""


def _buffered_queue(method: F) -> F:
    """Note when a write-behind store's first value not yet durable was queued."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        if self.pending and self not in _oldest:
            _oldest[self] = time.monotonic()
        return result

    return cast("F", call)


def _buffered_write(method: F) -> F:
    """After a write-behind store's write: what is still pending was saved after it began."""

    @functools.wraps(method)
    async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.monotonic()
        try:
            result = await method(self, *args, **kwargs)
        except BaseException:
            if not self.pending:
                _oldest.pop(self, None)
            raise
        if self.pending:
            _oldest[self] = began
        else:
            _oldest.pop(self, None)
        return result

    return cast("F", call)


def _pending(_: CallbackOptions) -> Iterable[Observation]:
    yield metrics.Observation(sum(store.pending for store in list(_oldest)))


def _age(_: CallbackOptions) -> Iterable[Observation]:
    now = time.monotonic()
    ages = [now - since for store, since in list(_oldest.items()) if store.pending]
    yield metrics.Observation(max(ages, default=0.0))


active: Instruments
"""What the store records with: the global providers' (a benchmark swaps in others)."""
if ENABLED:
    active = Instruments()


def traced(operation: str, *, batch: bool = False, write: bool = False) -> Callable[[F], F]:
    """See :func:`_traced`; without the extra, the method as it is."""
    return _traced(operation, batch=batch, write=write) if ENABLED else _as_is


def lease_call(operation: str) -> Callable[[F], F]:
    """See :func:`_lease_call`; without the extra, the method as it is."""
    return _lease_call(operation) if ENABLED else _as_is


def lease_lost(method: F) -> F:
    return _lease_lost(method) if ENABLED else method


def buffered_queue(method: F) -> F:
    return _buffered_queue(method) if ENABLED else method


def buffered_write(method: F) -> F:
    return _buffered_write(method) if ENABLED else method


retried = _retried if ENABLED else _nothing
group_commit = _group_commit if ENABLED else _nothing
ordered = _ordered if ENABLED else _nothing
