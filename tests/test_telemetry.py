"""The store's OpenTelemetry, read through the SDK's in-memory span exporter and metric reader on
every backend: one CLIENT span per store call with the database conventions' attributes, the
duration histogram with the conventions' buckets, the store's own instruments, and no key or
value in anything exported."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text

from rustrade_store import (
    BufferedStore,
    ClockSkewError,
    ConflictError,
    InMemoryStore,
    LeaseHeldError,
    LeaseLostError,
    Snapshot,
    SqlStore,
    StorageError,
)

from .proxy import TcpProxy

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import Span
    from sqlalchemy import URL

    from rustrade_store import JSONInput

BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
SYSTEMS = {
    "memory": "sqlite",
    "sqlite": "sqlite",
    "postgres": "postgresql",
    "mariadb": "mariadb",  # a mysql:// URL
    "mariadb_scheme": "mariadb",  # a mariadb:// URL
}
DEFAULT_PORTS = {"postgresql": 5432, "mariadb": 3306}
SECRET = "bot1/BTC-secret-key"
"""The key the tests write: no attribute, event or status may contain it, nor its value."""
VALUE = {"api_token": "value-that-must-not-leak"}


class Gate(SpanProcessor):
    """Hands finished spans to the exporter only while a test of this module records: the
    providers are global for the process, and other tests run after these in it."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.inner = SimpleSpanProcessor(exporter)
        self.open = False

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if self.open:
            self.inner.on_end(span)


class Telemetry:
    """What the store exported while one test ran."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.gate = Gate(self.exporter)
        delta = AggregationTemporality.DELTA
        self.reader = InMemoryMetricReader(preferred_temporality={Counter: delta, Histogram: delta})
        self.seen: list[Any] = []
        """Every data point collected since the test began."""

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        found = self.exporter.get_finished_spans()
        return [span for span in found if name is None or span.name == name]

    def collect(self) -> dict[str, list[Any]]:
        """The data points of each metric since the last collection (counters and histograms
        as deltas), by the metric's name."""
        data = self.reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for item in scope.metrics:
                    found.setdefault(item.name, []).extend(item.data.data_points)
        self.seen += [point for points in found.values() for point in points]
        return found

    def drain(self) -> None:
        self.reader.get_metrics_data()
        self.exporter.clear()
        self.seen = []


_TELEMETRY: list[Telemetry] = []


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """The SDK installed once for the process; each test sees only what it caused from here
    (so a test asks for it after its other fixtures)."""
    if not _TELEMETRY:
        made = Telemetry()
        provider = TracerProvider()
        provider.add_span_processor(made.gate)
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[made.reader]))
        _TELEMETRY.append(made)
    (current,) = _TELEMETRY
    current.drain()
    current.gate.open = True
    try:
        yield current
    finally:
        current.gate.open = False
        current.drain()


def expected_database(backend: str, url: URL) -> dict[str, Any]:
    """The conventions' attributes of the backend's database, as the test knows them."""
    expected: dict[str, Any] = {
        "db.system.name": SYSTEMS[backend],
        "db.collection.name": "snapshots",
    }
    if backend != "memory":
        expected["db.namespace"] = url.database
    if SYSTEMS[backend] != "sqlite":
        expected["server.address"] = url.host
        expected["server.port"] = url.port or DEFAULT_PORTS[SYSTEMS[backend]]
    return expected


def assert_nothing_secret(telemetry: Telemetry, *secrets: str) -> None:
    """No attribute, event or status of any span, nor any metric's attribute, holds a key or a
    value written."""
    seen: list[str] = []
    for span in telemetry.spans():
        seen += [str(item) for item in (span.attributes or {}).items()]
        seen += [f"{event.name} {event.attributes}" for event in span.events]
        seen.append(span.status.description or "")
        seen.append(span.name)
    telemetry.collect()
    seen += [str(point.attributes) for point in telemetry.seen]
    assert seen
    for secret in (SECRET, "bot1/", *secrets, "value-that-must-not-leak", "api_token"):
        assert not [text for text in seen if secret in text], secret


async def test_a_save_and_a_load_are_each_one_client_span_by_the_conventions(
    store: SqlStore, backend: str, store_url: URL, telemetry: Telemetry
) -> None:
    await store.save(SECRET, VALUE)
    assert await store.load(SECRET) == VALUE
    database = expected_database(backend, store_url)
    for operation in ("save", "load"):
        (span,) = telemetry.spans(f"{operation} snapshots")
        assert span.kind is trace.SpanKind.CLIENT
        assert dict(span.attributes or {}) == database | {"db.operation.name": operation}
        assert span.status.status_code is trace.StatusCode.UNSET
    durations = telemetry.collect()["db.client.operation.duration"]
    by_operation = {point.attributes["db.operation.name"]: point for point in durations}
    assert set(by_operation) == {"save", "load"}
    for point in durations:
        assert tuple(point.explicit_bounds) == BUCKETS
        assert point.count == 1
        assert 0 < point.sum < 60
        assert dict(point.attributes) == database | {
            "db.operation.name": point.attributes["db.operation.name"]
        }
    assert_nothing_secret(telemetry)


def grouped(found: dict[str, list[Any]]) -> dict[str, int]:
    """The group-commit counters of saves (cumulative), by ``calls`` and ``statements``."""
    counts = {}
    for name in ("calls", "statements"):
        points = found.get(f"rustrade_store.group_commit.{name}", [])
        counts[name] = sum(p.value for p in points if p.attributes["db.operation.name"] == "save")
    return counts


async def test_a_batch_is_named_batch_with_its_size_and_group_commit_is_counted(
    store: SqlStore, telemetry: Telemetry
) -> None:
    keys = [f"{SECRET}/{number}" for number in range(3)]
    await store.save_many(dict.fromkeys(keys, VALUE))
    await store.save_many(values=dict.fromkeys(keys[:2], VALUE))
    await store.save_many({})  # an empty batch is a batch, of size 0
    await store.save_many({SECRET: VALUE})  # one operation is no batch
    batches = telemetry.spans("BATCH save snapshots")
    assert [dict(span.attributes or {})["db.operation.batch.size"] for span in batches] == [3, 2, 0]
    assert {(span.attributes or {})["db.operation.name"] for span in batches} == {"BATCH save"}
    (single,) = telemetry.spans("save snapshots")
    assert "db.operation.batch.size" not in (single.attributes or {})
    before = grouped(telemetry.collect())
    await asyncio.gather(*(store.save(f"{SECRET}/{number}", number) for number in range(20)))
    after = grouped(telemetry.collect())
    calls, statements = (after[name] - before[name] for name in ("calls", "statements"))
    assert calls == 20  # each save in exactly one statement
    assert 1 <= statements <= 20
    assert len(telemetry.spans("save snapshots")) == 1 + 20
    assert_nothing_secret(telemetry, *keys)


async def test_a_conflict_and_an_ordering_refusal_are_counted_apart(
    store: SqlStore, telemetry: Telemetry
) -> None:
    await store.save(SECRET, VALUE)
    with pytest.raises(ConflictError):
        await store.save(SECRET, VALUE, if_absent=True)
    found = telemetry.collect()
    (conflict,) = found["rustrade_store.conflicts"]
    assert conflict.value == 1
    assert conflict.attributes["db.operation.name"] == "save"
    failed = [span for span in telemetry.spans("save snapshots") if span.status.is_ok is False]
    assert len(failed) == 1
    assert failed[0].attributes is not None
    assert failed[0].attributes["error.type"] == "ConflictError"
    assert "db.response.status_code" not in failed[0].attributes  # the database said nothing
    errors = [point.attributes.get("error.type") for point in found["db.client.operation.duration"]]
    assert sorted(map(str, errors)) == ["ConflictError", "None"]
    # A restore of an older snapshot keeps the newer stored one: refused by ordering, no error.
    older = Snapshot(SECRET, "older", datetime(2001, 1, 1, tzinfo=UTC))
    await store.restore([older])
    found = telemetry.collect()
    (ordering,) = found["rustrade_store.writes.refused"]
    assert ordering.value == 1
    assert ordering.attributes["rustrade_store.refusal.reason"] == "ordering"
    assert "rustrade_store.conflicts" not in found
    assert_nothing_secret(telemetry)


async def test_a_clock_skew_and_another_stores_lease_are_refusals_by_reason(
    store: SqlStore, backend: str, store_url: URL, telemetry: Telemetry
) -> None:
    ahead = datetime.now(UTC) + timedelta(hours=1)
    await store.restore([Snapshot(SECRET, "from the future", ahead)])
    with pytest.raises(ClockSkewError):
        await store.save(SECRET, VALUE)
    reasons = {"clock_skew": 1}
    if backend != "memory":  # a second store can reach the database
        async with SqlStore.from_url(store_url) as rival, rival.lease("bot1/"):
            with pytest.raises(LeaseHeldError):
                await store.save_many({SECRET: VALUE, f"{SECRET}/2": VALUE})
        reasons["lease_held"] = 1
    found = telemetry.collect()
    refused = {
        point.attributes["rustrade_store.refusal.reason"]: point.value
        for point in found["rustrade_store.writes.refused"]
    }
    assert refused == reasons
    errors = {(span.attributes or {}).get("error.type") for span in telemetry.spans()}
    expected = {"ClockSkewError"} if backend == "memory" else {"ClockSkewError", "LeaseHeldError"}
    assert errors - {None} == expected
    assert_nothing_secret(telemetry)


async def test_a_failure_carries_the_databases_own_code(
    store: SqlStore, backend: str, telemetry: Telemetry
) -> None:
    """SQLSTATE for PostgreSQL, the error number for MariaDB, the result code for SQLite: here
    for a table gone (renamed away, and back)."""
    await store.save(SECRET, VALUE)
    async with store.engine.begin() as connection:
        await connection.execute(text("ALTER TABLE snapshots RENAME TO snapshots_away"))
    try:
        with pytest.raises(StorageError):
            await store.load_snapshot(SECRET)
        with pytest.raises(StorageError):
            await store.save(SECRET, VALUE)  # a group commit's failure, handed to its caller
    finally:
        async with store.engine.begin() as connection:
            await connection.execute(text("ALTER TABLE snapshots_away RENAME TO snapshots"))
    code = {"postgresql": "42P01", "mariadb": "1146", "sqlite": "1"}[SYSTEMS[backend]]
    for operation in ("load_snapshot", "save"):
        (span,) = telemetry.spans(f"{operation} snapshots")[-1:]
        assert span.status.status_code is trace.StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["error.type"] == "StorageError"
        assert span.attributes["db.response.status_code"] == code
    failed = [
        point
        for point in telemetry.collect()["db.client.operation.duration"]
        if "error.type" in point.attributes
    ]
    assert [point.attributes["db.response.status_code"] for point in failed] == [code, code]
    assert_nothing_secret(telemetry)


async def test_a_lease_taken_renewed_and_lost_is_counted(
    store: SqlStore, telemetry: Telemetry
) -> None:
    lease = await store.lease("bot1/", ttl=30).acquire()
    await lease.renew()
    await store.break_lease("bot1/")
    with pytest.raises(LeaseLostError):
        await store.save(SECRET, VALUE)
    with pytest.raises(LeaseLostError):  # refused at once from now on: counted again
        await store.save(SECRET, VALUE)
    await lease.release()
    found = telemetry.collect()
    (taken,) = found["rustrade_store.lease.acquisitions"]
    assert taken.value == 1
    (lost,) = found["rustrade_store.lease.losses"]
    assert lost.value == 1
    (refused,) = found["rustrade_store.writes.refused"]
    assert (refused.attributes["rustrade_store.refusal.reason"], refused.value) == ("lease_lost", 2)
    (renewal,) = found["rustrade_store.lease.renewal.duration"]
    assert renewal.count == 1
    for name in ("acquire_lease", "renew_lease", "break_lease", "release_lease"):
        (span,) = telemetry.spans(f"{name} snapshots")
        assert span.kind is trace.SpanKind.CLIENT
    errors = {
        (span.attributes or {}).get("error.type") for span in telemetry.spans("save snapshots")
    }
    assert errors == {"LeaseLostError"}
    assert_nothing_secret(telemetry)


async def test_a_buffered_store_reports_its_pending_values_and_their_age(
    store: SqlStore, telemetry: Telemetry
) -> None:
    """The two instruments sum over every write-behind store of the process: what other tests
    left (unreferenced, values unwritten) is collected first, and counted as a baseline."""
    gc.collect()
    (before,) = telemetry.collect()["rustrade_store.buffered.pending"]
    buffered = BufferedStore(store, delay=3600, max_pending=1000)
    await buffered.save(SECRET, VALUE)
    await buffered.save(f"{SECRET}/2", VALUE)
    await asyncio.sleep(0.05)
    found = telemetry.collect()
    (pending,) = found["rustrade_store.buffered.pending"]
    (age,) = found["rustrade_store.buffered.oldest_age"]
    assert pending.value == before.value + 2
    assert age.value >= 0.05
    await buffered.flush()
    found = telemetry.collect()
    (pending,) = found["rustrade_store.buffered.pending"]
    (age,) = found["rustrade_store.buffered.oldest_age"]
    assert pending.value == before.value
    if before.value == 0:
        assert age.value == 0
    await buffered.aclose()
    assert_nothing_secret(telemetry)


@pytest.mark.parametrize(
    ("url", "address", "port"),
    [
        ("postgresql://bot@/state?host=127.0.0.1:9&host=127.0.0.2:5432", "127.0.0.1", 9),
        ("postgresql://bot@127.0.0.1:9,127.0.0.2:5432/state", "127.0.0.1", 9),
        ("mysql://bot@127.0.0.1/state", "127.0.0.1", 3306),
    ],
)
async def test_a_multi_host_url_names_its_first_server(
    url: str, address: str, port: int, telemetry: Telemetry
) -> None:
    """The server a call goes to first, even when none answers (a port nothing listens on)."""
    async with SqlStore.from_url(url, timeout=0.5) as store:
        with pytest.raises(StorageError):
            await store.load(SECRET)
    (span,) = telemetry.spans("load snapshots")
    assert span.attributes is not None
    assert (span.attributes["server.address"], span.attributes["server.port"]) == (address, port)
    assert span.attributes["db.namespace"] == "state"
    assert span.attributes["error.type"] == "StorageError"


class HeldStore(InMemoryStore):
    """A real store whose ``save_many`` waits, once entered, until the test lets it go on."""

    __slots__ = ("entered", "go_on")

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.go_on = asyncio.Event()

    async def save_many(self, values: Mapping[str, JSONInput]) -> None:
        self.entered.set()
        await self.go_on.wait()
        await super().save_many(values)


async def test_the_oldest_age_after_a_write_counts_from_that_write(telemetry: Telemetry) -> None:
    """A value saved while a write runs is not in it: once the write is done, the age is
    counted from when it began, never less than that value's own age and never the age of
    the value written."""
    gc.collect()
    (before,) = telemetry.collect()["rustrade_store.buffered.pending"]
    inner = HeldStore()
    async with BufferedStore(inner, delay=3600) as buffered:
        await buffered.save("written", 1)
        first_saved = time.monotonic()
        await asyncio.sleep(0.1)
        write_began = time.monotonic()
        flushing = asyncio.create_task(buffered.flush())
        await inner.entered.wait()
        await buffered.save("saved meanwhile", 2)
        second_saved = time.monotonic()
        inner.go_on.set()
        await flushing
        at_least = time.monotonic() - second_saved
        found = telemetry.collect()
        at_most = time.monotonic() - write_began
        (pending,) = found["rustrade_store.buffered.pending"]
        (age,) = found["rustrade_store.buffered.oldest_age"]
        assert pending.value == before.value + 1
        if before.value == 0:
            assert at_least <= age.value <= at_most < time.monotonic() - first_saved


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def server_url(request: pytest.FixtureRequest) -> URL:
    """The run's database on each server reached over TCP."""
    url: URL = request.getfixturevalue(f"{request.param}_url")
    return url


async def test_a_retry_on_a_new_connection_is_inside_its_calls_one_span(
    server_url: URL, telemetry: Telemetry
) -> None:
    """The pooled connection reset under the store (TCP RST through a proxy): the save retries
    on a new connection, within one span, and the retry is counted with its reason."""
    url = server_url
    async with TcpProxy(url.host or "127.0.0.1", url.port or 0) as proxy:
        through = url.set(port=proxy.port)
        store = SqlStore.from_url(through, timeout=30)
        try:
            await store.save(SECRET, 1)
            telemetry.drain()
            proxy.reset()
            await store.save(SECRET, VALUE)
            assert await store.load(SECRET) == VALUE
        finally:
            await store.aclose()
    (retry,) = telemetry.collect()["rustrade_store.retries"]
    assert retry.value >= 1
    assert retry.attributes["rustrade_store.retry.reason"] == "lost connection"
    assert retry.attributes["server.port"] == proxy.port
    (span,) = telemetry.spans("save snapshots")
    assert span.status.status_code is trace.StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes["server.port"] == proxy.port
    assert_nothing_secret(telemetry)


def test_without_the_extra_the_store_runs_its_methods_undecorated(tmp_path: Path) -> None:
    """Without opentelemetry importable, no method is wrapped and no hook does anything: the
    store runs the code it ran before the extra existed."""
    code = """
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if the extra were not installed
from rustrade_store import BufferedStore, Lease, SqlStore, _telemetry
assert not _telemetry.ENABLED
methods = [SqlStore.save, SqlStore.load, SqlStore.save_many, Lease.acquire, Lease.renew]
methods += [BufferedStore._queue, BufferedStore._write_pending]
assert not [method for method in methods if hasattr(method, "__wrapped__")], methods
async def main():
    async with SqlStore.from_url("sqlite:///state.db") as store:
        await store.save("k", 1)
        assert await store.load("k") == 1
asyncio.run(__import__("rustrade_store").upgrade("sqlite:///state.db"))
asyncio.run(main())
assert not [name for name in sys.modules if name.startswith("opentelemetry.")]
"""
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
