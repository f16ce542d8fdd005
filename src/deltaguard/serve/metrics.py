"""Server metrics through ``prometheus_client`` (one registry per server), and structured (JSON lines) logs.

Counters and histograms are labelled by tenant; the label value is always a registered tenant name
or ``-`` (requests that never reached a tenant), so callers cannot create unbounded label sets. Each
``Metrics`` has its own ``CollectorRegistry`` — several servers in one process (tests, embedding) never
share or collide — holding the request metrics, live engine gauges and the process/platform/GC collectors.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, GCCollector, Histogram, PlatformCollector, ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

# name → (kind, help, label names, buckets); label names in alphabetical order, as the exposition shows them
_DECLARED: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...]]] = {
    "deltaguard_requests_total": ("counter", "Completion requests by tenant and outcome.", ("status", "tenant"), ()),
    "deltaguard_tokens_total": ("counter", "Prompt and completion tokens by tenant.", ("kind", "tenant"), ()),
    "deltaguard_errors_total": ("counter", "Failed requests by tenant and error type.", ("tenant", "type"), ()),
    "deltaguard_moderation_total": ("counter", "Moderation decisions that fired, by tenant, stage and action.",
                                    ("action", "stage", "tenant"), ()),
    "deltaguard_request_latency_seconds": ("histogram", "End-to-end completion latency of successful requests.",
                                           ("tenant",), LATENCY_BUCKETS_SECONDS),
    "deltaguard_time_to_first_token_seconds": ("histogram", "Time from a request's arrival to its first generated "
                                               "token.", ("tenant",), TTFT_BUCKETS_SECONDS),
    "deltaguard_request_generated_tokens": ("histogram", "Tokens generated per successful request.", ("tenant",),
                                            TOKEN_BUCKETS),
}


class _LiveValues(Collector):
    """Gauges and counters read from the server at scrape time (queue length, tenants, decode steps)."""

    def __init__(self) -> None:
        self.reads: dict[str, tuple[str, str, Callable[[], float]]] = {}

    def collect(self) -> Iterator[Any]:
        for name, (kind, help_text, read) in list(self.reads.items()):
            if kind == "counter":
                yield CounterMetricFamily(name.removesuffix("_total"), help_text, value=float(read()))
            else:
                yield GaugeMetricFamily(name, help_text, value=float(read()))


class Metrics:
    """Per-server Prometheus metrics: labelled counters and histograms, live gauges, process collectors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.started = time.time()
        self._metrics: dict[str, Any] = {}
        for name, (kind, help_text, labels, buckets) in _DECLARED.items():
            if kind == "counter":
                self._metrics[name] = Counter(name, help_text, labels, registry=self.registry)
            else:
                self._metrics[name] = Histogram(name, help_text, labels, buckets=buckets, registry=self.registry)
        self._live = _LiveValues()
        self.registry.register(self._live)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        self._metrics[name].labels(**labels).inc(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._metrics[name].labels(**labels).observe(value)

    def observe_latency(self, seconds: float, **labels: str) -> None:
        self.observe("deltaguard_request_latency_seconds", seconds, **labels)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A gauge whose value is read at scrape time."""
        self._live.reads[name] = ("gauge", help_text, read)

    def counter(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A counter (``name`` ends in ``_total``) whose value is read at scrape time."""
        self._live.reads[name] = ("counter", help_text, read)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when it was never set): counters by their ``_total`` name, histograms by
        ``_count`` / ``_sum``."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)

    content_type = CONTENT_TYPE_LATEST


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event and the record's structured fields."""

    _RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(entry, default=str, ensure_ascii=False)


class CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes to whatever ``sys.stderr`` is when a record is emitted.

    A plain ``StreamHandler`` keeps the stderr of the moment it was made; when that stream is later
    replaced and closed (a test runner's capture, a daemonising wrapper), every log call would
    print "Logging error: I/O operation on closed file" instead.
    """

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_json_logging(level: int = logging.INFO) -> None:
    """Send deltaguard's logs to stderr as JSON lines (idempotent)."""
    logger = logging.getLogger("deltaguard")
    if any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        return
    handler = CurrentStderrHandler()
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
