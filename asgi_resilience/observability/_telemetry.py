"""OpenTelemetry glue that is a true no-op without the ``otel`` extra or with telemetry off.

Every component takes ``telemetry: Telemetry | bool = True``. ``True`` means the process-wide
default (:func:`default_telemetry`), which records through the global OpenTelemetry providers when
the API is installed (themselves no-ops until an SDK is configured) and keeps in-process totals for
the live dashboard. ``False`` means :data:`NOOP`: no calls at all on the hot path beyond one method
call on an empty object.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from asgi_resilience.errors import ConfigurationError
from asgi_resilience.observability._names import METRICS

__all__ = ["NOOP", "Instrument", "Series", "Telemetry", "default_telemetry", "resolve_telemetry"]

Attributes = Mapping[str, str]

HISTORY_METRICS = frozenset({"asgi_resilience.circuit_breaker.transitions"})
"""Instruments whose recent ``add`` calls are kept with a wall-clock time (for the dashboard)."""
HISTORY_SIZE = 50
CARDINALITY_LIMIT = 2000
"""Attribute sets kept per instrument; later new sets are added to :data:`OVERFLOW` (the
OpenTelemetry SDK's default limit and overflow attribute), so 20,000 origins cannot grow the
dashboard's snapshot or the process without bound."""
OVERFLOW: tuple[tuple[str, str], ...] = (("otel.metric.overflow", "true"),)
LATENCY_BOUNDS: tuple[float, ...] = tuple(round(0.0001 * 2 ** (i / 2), 7) for i in range(40))
"""Upper bounds (seconds, 100 us to about 75 s, each sqrt(2) times the last) of the in-process histogram
buckets the dashboard reads percentiles from (the OpenTelemetry SDK keeps its own)."""
_DRAIN_EVERY = 256  # pending values an instrument keeps before it folds them into its totals


class Instrument:
    """One metric. ``add`` for counters and up-down counters, ``record`` for histograms and gauges.

    The hot path takes no lock: a call appends ``(series, value)`` to a deque (atomic) and the
    in-process totals fold the pending values in, in call order, under the lock, every
    :data:`_DRAIN_EVERY` calls and whenever they are read (:attr:`totals`, :attr:`buckets`).
    """

    __slots__ = ("_buckets", "_lock", "_observed", "_otel", "_pending", "_totals", "history", "kind", "name")

    def __init__(self, name: str, kind: str, otel: Any, *, history: int = 0) -> None:
        self.name = name
        self.kind = kind
        self._otel = otel
        self._lock = threading.Lock()
        # attribute tuple -> running total (counters), current value (gauges), [count, sum] (histograms)
        self._totals: dict[tuple[tuple[str, str], ...], Any] = {}
        self._pending: deque[tuple[tuple[tuple[str, str], ...], float]] = deque()
        # the most recent ``add`` calls as (unix time, attributes), for rare events such as transitions
        self.history: deque[tuple[float, dict[str, str]]] | None = deque(maxlen=history) if history else None
        # histograms: attribute tuple -> counts per LATENCY_BOUNDS bucket (the last one is "above")
        self._buckets: dict[tuple[tuple[str, str], ...], list[int]] = {}
        # observed series: attribute tuple -> (attributes, read the total the component keeps itself)
        self._observed: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], Callable[[], float]]] = {}

    @property
    def totals(self) -> dict[tuple[tuple[str, str], ...], Any]:
        """Series -> running total (counters), current value (gauges) or ``(count, sum)`` (histograms)."""
        with self._lock:
            self._drain()
        return self._totals

    @property
    def buckets(self) -> dict[tuple[tuple[str, str], ...], list[int]]:
        """Histograms: series -> counts per :data:`LATENCY_BOUNDS` bucket (the last one is "above")."""
        with self._lock:
            self._drain()
        return self._buckets

    def _drain(self) -> None:
        """Fold the pending values into the totals (lock held)."""
        pending, totals = self._pending, self._totals
        kind = self.kind
        while pending:
            key, value = pending.popleft()
            if key not in totals and len(totals) >= CARDINALITY_LIMIT:
                key = OVERFLOW
            if kind == "gauge":
                totals[key] = value
            elif kind == "histogram":
                count, total = totals.get(key, (0, 0.0))
                totals[key] = (count + 1, total + value)
                counts = self._buckets.get(key)
                if counts is None:
                    counts = self._buckets[key] = [0] * (len(LATENCY_BOUNDS) + 1)
                counts[bisect.bisect_left(LATENCY_BOUNDS, value)] += 1
            else:
                totals[key] = totals.get(key, 0) + value
        for key, (_, read) in self._observed.items():
            if key in totals or len(totals) < CARDINALITY_LIMIT:
                totals[key] = read()

    def _otel_attributes(self, key: tuple[tuple[str, str], ...], attributes: Attributes | None) -> Attributes | None:
        totals = self._totals  # read without the lock: at worst a few late series pass as themselves
        if len(totals) < CARDINALITY_LIMIT or key in totals:
            return attributes
        return dict(OVERFLOW)

    def bind(self, attributes: Attributes | None = None) -> Series:
        """This instrument with fixed ``attributes`` (a per-request hot path builds its key once)."""
        return Series(self, attributes)

    def observe(self, attributes: Attributes | None, read: Callable[[], float]) -> None:
        """Report ``read()`` as the value of the ``attributes`` series whenever the instrument is read.

        For the observable instruments of the table (``MetricSpec.observable``): the component keeps
        its own total (a hot path that only bumps an integer), and the in-process totals and
        OpenTelemetry (an asynchronous instrument's callback) read it when they collect. Observing the
        same attributes again replaces the earlier reader.
        """
        key = tuple(attributes.items()) if attributes else ()
        with self._lock:
            self._observed[key] = (dict(attributes) if attributes else {}, read)

    def observations(self, options: Any = None) -> list[Any]:
        """The OpenTelemetry callback of an observable instrument: one ``Observation`` per observed series."""
        from opentelemetry.metrics import Observation

        with self._lock:
            observed = list(self._observed.values())
        return [Observation(read(), attributes) for attributes, read in observed]

    def add(self, value: float, attributes: Attributes | None = None) -> None:
        # Unsorted on the hot path; snapshot() merges keys that differ only in order.
        key = tuple(attributes.items()) if attributes else ()
        pending = self._pending
        pending.append((key, value))
        if self.history is not None:
            self.history.append((time.time(), dict(key)))
        if len(pending) >= _DRAIN_EVERY:
            with self._lock:
                self._drain()
        otel = self._otel
        if otel is not None:
            if len(self._totals) >= CARDINALITY_LIMIT:
                attributes = self._otel_attributes(key, attributes)
            otel.add(value, attributes)

    def record(self, value: float, attributes: Attributes | None = None) -> None:
        key = tuple(attributes.items()) if attributes else ()
        pending = self._pending
        pending.append((key, value))
        if len(pending) >= _DRAIN_EVERY:
            with self._lock:
                self._drain()
        otel = self._otel
        if otel is not None:
            if len(self._totals) >= CARDINALITY_LIMIT:
                attributes = self._otel_attributes(key, attributes)
            (otel.set if self.kind == "gauge" else otel.record)(value, attributes)


class Series:
    """One attribute set of an :class:`Instrument`: ``add``/``record`` without rebuilding the series key.

    The attributes are copied at binding: changing the caller's mapping later changes nothing.
    """

    __slots__ = ("_attributes", "_instrument", "_key")

    def __init__(self, instrument: Instrument, attributes: Attributes | None) -> None:
        self._instrument = instrument
        self._attributes = dict(attributes) if attributes else None
        self._key: tuple[tuple[str, str], ...] = tuple(self._attributes.items()) if self._attributes else ()

    def add(self, value: float) -> None:
        inst = self._instrument
        if inst.history is not None or inst._otel is not None and len(inst._totals) >= CARDINALITY_LIMIT:
            inst.add(value, self._attributes)  # the rare cases: keep the one general path
            return
        pending = inst._pending
        pending.append((self._key, value))
        if len(pending) >= _DRAIN_EVERY:
            with inst._lock:
                inst._drain()
        if inst._otel is not None:
            inst._otel.add(value, self._attributes)

    def record(self, value: float) -> None:
        self._instrument.record(value, self._attributes)


class _NoopSeries(Series):
    __slots__ = ()

    def add(self, value: float) -> None:
        return None

    def record(self, value: float) -> None:
        return None


class _NoopInstrument(Instrument):
    __slots__ = ()

    def bind(self, attributes: Attributes | None = None) -> Series:
        return _NoopSeries(self, attributes)

    def add(self, value: float, attributes: Attributes | None = None) -> None:
        return None

    def record(self, value: float, attributes: Attributes | None = None) -> None:
        return None

    def observe(self, attributes: Attributes | None, read: Callable[[], float]) -> None:
        return None


class Telemetry:
    """Instruments (from the published table) and span helpers for one set of components.

    Args:
        meter_provider: an OpenTelemetry ``MeterProvider``; the global one when None.
        enabled: False gives the same object as :data:`NOOP`.

    Layers never create spans: they add events and attributes to the current span, which is the
    server span of ``opentelemetry-instrumentation-asgi`` (``resilient(app, tracing=True)`` puts it
    outermost) or of any other instrumentation that runs outside the stack.
    """

    def __init__(self, *, meter_provider: Any = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.meter_provider: Any = meter_provider
        self._instruments: dict[str, Instrument] = {}
        self._snapshots: dict[str, Callable[[], Any]] = {}
        self._lock = threading.Lock()
        self._meter: Any = None
        self._trace: Any = None
        if enabled:
            try:
                from opentelemetry import metrics, trace
            except ImportError:
                pass
            else:
                provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
                self._meter = provider.get_meter("asgi_resilience")
                self._trace = trace

    def instrument(self, name: str) -> Instrument:
        """The instrument called ``name`` in the metric table (created once)."""
        found = self._instruments.get(name)
        if found is not None:
            return found
        spec = METRICS.get(name)
        if spec is None:
            raise ConfigurationError(f"{name!r} is not in the published metric table (observability/_names.py)")
        if not self.enabled:
            # nothing is kept: a disabled Telemetry (NOOP is shared by every component) stays empty
            return _NoopInstrument(name, spec.kind, None)
        with self._lock:
            found = self._instruments.get(name)
            if found is None:
                otel = None
                if self._meter is not None and not spec.observable:
                    create = {
                        "counter": self._meter.create_counter,
                        "up_down_counter": self._meter.create_up_down_counter,
                        "histogram": self._meter.create_histogram,
                        "gauge": self._meter.create_gauge,
                    }[spec.kind]
                    otel = create(spec.name, unit=spec.unit, description=spec.description)
                found = Instrument(name, spec.kind, otel, history=HISTORY_SIZE if name in HISTORY_METRICS else 0)
                if self._meter is not None and spec.observable:
                    observable = {
                        "counter": self._meter.create_observable_counter,
                        "up_down_counter": self._meter.create_observable_up_down_counter,
                        "gauge": self._meter.create_observable_gauge,
                    }[spec.kind]
                    observable(spec.name, callbacks=[found.observations], unit=spec.unit, description=spec.description)
                self._instruments[name] = found
        return found

    def span_event(self, name: str, attributes: Attributes | None = None) -> None:
        """Add an event to the current (server) span, if one is recording. Never creates a span."""
        if self._trace is None:
            return
        span = self._trace.get_current_span()
        if span.is_recording():
            span.add_event(name, attributes=dict(attributes or {}))

    def span_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Set attributes on the current (server) span, if one is recording."""
        if self._trace is None:
            return
        span = self._trace.get_current_span()
        if span.is_recording():
            span.set_attributes(dict(attributes))

    def register_snapshot(self, name: str, provider: Callable[[], Any]) -> None:
        """Let the dashboard read a component's live state (``provider()`` returns JSON-able data)."""
        if self.enabled:
            self._snapshots[name] = provider

    def sample(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], Any]:
        """Every instrument's current values, keyed by (name, sorted attributes); safe from any thread.

        Counters give their total, gauges and up-down counters their value, histograms
        ``(count, sum, bucket counts)``. The dashboard's history keeps these every interval.
        """
        out: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        for name, inst in list(self._instruments.items()):
            with inst._lock:
                inst._drain()
                items = list(inst._totals.items())
                buckets = {key: list(counts) for key, counts in inst._buckets.items()}
            for key, value in items:
                canonical = (name, tuple(sorted(key)))
                if inst.kind == "histogram":
                    counts = buckets.get(key, [])
                    previous = out.get(canonical)
                    if previous is not None:  # the same attributes recorded in another order
                        value = (previous[0] + value[0], previous[1] + value[1])
                        counts = [a + b for a, b in zip(previous[2], counts, strict=True)]
                    out[canonical] = (value[0], value[1], counts)
                elif inst.kind == "gauge" or canonical not in out:
                    out[canonical] = value
                else:
                    out[canonical] += value
        return out

    def snapshot(self) -> dict[str, Any]:
        """Totals of every instrument plus every registered component snapshot (JSON-able)."""
        metrics: dict[str, Any] = {}
        events: dict[str, Any] = {}
        for name, inst in list(self._instruments.items()):
            with inst._lock:
                inst._drain()
                items = list(inst._totals.items())
                recent = list(inst.history) if inst.history is not None else None
            metrics[name] = _merge(inst.kind, items)
            if recent is not None:
                events[name] = [{"time": when, "attributes": attributes} for when, attributes in recent]
        components: dict[str, Any] = {}
        for name, provider in list(self._snapshots.items()):
            try:
                components[name] = provider()
            except Exception as exc:  # a broken provider must not break the dashboard
                components[name] = {"error": type(exc).__name__}
        return {"metrics": metrics, "components": components, "events": events}


def _merge(kind: str, items: list[tuple[tuple[tuple[str, str], ...], Any]]) -> list[dict[str, Any]]:
    merged: dict[tuple[tuple[str, str], ...], Any] = {}
    for key, value in items:
        canonical = tuple(sorted(key))
        if canonical not in merged or kind == "gauge":
            merged[canonical] = value
        elif kind == "histogram":
            count, total = merged[canonical]
            merged[canonical] = (count + value[0], total + value[1])
        else:
            merged[canonical] += value
    return [{"attributes": dict(key), "value": value} for key, value in merged.items()]


NOOP = Telemetry(enabled=False)
_default: Telemetry | None = None


def default_telemetry() -> Telemetry:
    """The process-wide telemetry used by components created with ``telemetry=True``."""
    global _default
    if _default is None:
        _default = Telemetry()
    return _default


def resolve_telemetry(telemetry: Telemetry | bool) -> Telemetry:
    """``True`` -> the default, ``False`` -> :data:`NOOP`, an instance as is."""
    if telemetry is True:
        return default_telemetry()
    if telemetry is False:
        return NOOP
    if isinstance(telemetry, Telemetry):
        return telemetry
    raise ConfigurationError(f"telemetry must be True, False or a Telemetry instance, got {telemetry!r}")
