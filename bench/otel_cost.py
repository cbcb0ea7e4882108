"""What the ``otel`` extra costs a save and a load, for ``bench.py``: the p50 of each without the
extra, with the API and no SDK, and with the SDK (a ``BatchSpanProcessor``, a ``MeterProvider``).

The three take turns call by call on one store in one process, each on keys of its own and each
first in turn, so the machine's noise (and the garbage one leaves for the next) falls on all
alike. Without the extra, the store's methods are not wrapped and its
hooks do nothing: here the methods' unwrapped originals are called with the hooks switched off,
which is the code a store runs without ``opentelemetry-api``. The API and the SDK take turns
through the set of instruments the store records with (``_telemetry.active``), since a global
provider, once set, cannot be unset.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from rustrade_store import SqlStore, _telemetry

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["TARGETS", "VARIANTS", "measure"]

NONE, API, SDK = "without the extra", "API, no SDK", "SDK, batch processor"
VARIANTS = (NONE, API, SDK)
TARGETS = {API: 1.02, SDK: 1.10}
"""The most each may cost, as a multiple of the p50 without the extra."""
HOOKS = ("retried", "group_commit", "ordered")
"""The hooks inside the executor and the fence, which do nothing without the extra."""


class Discard(SpanExporter):
    """An exporter that drops what it is given: the cost of sending spans is the collector's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@contextlib.contextmanager
def hooks_off() -> Iterator[None]:
    saved = {name: getattr(_telemetry, name) for name in HOOKS}
    for name in HOOKS:
        setattr(_telemetry, name, _telemetry._nothing)
    try:
        yield
    finally:
        for name, hook in saved.items():
            setattr(_telemetry, name, hook)


async def measure(store: SqlStore, count: int, warmup: int) -> dict[str, dict[str, list[int]]]:
    """Latencies (ns) of ``count`` saves and loads of each variant, by operation then variant."""
    api = _telemetry.active
    tracer_provider = TracerProvider()
    processor = BatchSpanProcessor(Discard())
    tracer_provider.add_span_processor(processor)
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    sdk = _telemetry.Instruments(tracer_provider, meter_provider)
    save: Any = SqlStore.save
    load: Any = SqlStore.load
    plain = {"save": save.__wrapped__, "load": load.__wrapped__}
    traced = {"save": save, "load": load}
    value = {"halted": False, "realised": -112.5, "orders": list(range(40))}
    found: dict[str, dict[str, list[int]]] = {}
    clock = time.perf_counter_ns
    try:
        for operation in ("save", "load"):
            spent: dict[str, list[int]] = {variant: [] for variant in VARIANTS}
            for index in range(warmup + count):
                turn = index % len(VARIANTS)  # each goes first, and follows each, as often
                for variant in VARIANTS[turn:] + VARIANTS[:turn]:
                    key = f"otel/{variant}/{index % 100}"
                    arguments = (key, value) if operation == "save" else (key,)
                    _telemetry.active = sdk if variant == SDK else api
                    if variant == NONE:
                        with hooks_off():
                            before = clock()
                            await plain[operation](store, *arguments)
                            after = clock()
                    else:
                        before = clock()
                        await traced[operation](store, *arguments)
                        after = clock()
                    if index >= warmup:
                        spent[variant].append(after - before)
            found[operation] = spent
    finally:
        _telemetry.active = api
        tracer_provider.shutdown()
        meter_provider.shutdown()
    return found
