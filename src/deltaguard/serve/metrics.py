"""Server metrics in the Prometheus text exposition format, and structured (JSON lines) logs.

Counters and histograms are labelled by tenant; the label value is always a registered tenant name
or ``-`` (requests that never reached a tenant), so callers cannot create unbounded label sets.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import defaultdict
from typing import Any, Callable

LATENCY_BUCKETS_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    escaped = (f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), " ")}"'
               for k, v in pairs)
    return "{" + ",".join(escaped) + "}"


class Metrics:
    """Thread-safe counters, gauges and latency histograms rendered as Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        self._help: dict[str, tuple[str, str]] = {}
        self._histograms: dict[tuple[tuple[str, str], ...], list[float]] = {}
        self._histogram_sums: dict[tuple[tuple[str, str], ...], tuple[float, int]] = {}
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.started = time.time()
        self._declare("deltaguard_requests_total", "counter", "Chat completion requests by tenant and outcome.")
        self._declare("deltaguard_tokens_total", "counter", "Prompt and completion tokens by tenant.")
        self._declare("deltaguard_errors_total", "counter", "Failed requests by tenant and error type.")
        self._declare("deltaguard_moderation_total", "counter", "Moderation decisions that fired, by tenant, stage and action.")

    def _declare(self, name: str, kind: str, help_text: str) -> None:
        self._help[name] = (kind, help_text)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + value

    def observe_latency(self, seconds: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            buckets = self._histograms.setdefault(key, [0.0] * len(LATENCY_BUCKETS_SECONDS))
            for i, bound in enumerate(LATENCY_BUCKETS_SECONDS):
                if seconds <= bound:
                    buckets[i] += 1
            total, count = self._histogram_sums.get(key, (0.0, 0))
            self._histogram_sums[key] = (total + seconds, count + 1)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._gauges[name] = (help_text, read)

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, (kind, help_text) in self._help.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                for key, value in sorted(self._counters.get(name, {}).items()):
                    lines.append(f"{name}{_labels(key)} {value:g}")
            name = "deltaguard_request_latency_seconds"
            lines += [f"# HELP {name} End-to-end chat completion latency by tenant.", f"# TYPE {name} histogram"]
            for key, buckets in sorted(self._histograms.items()):
                for bound, count in zip(LATENCY_BUCKETS_SECONDS, buckets):
                    lines.append(f"{name}_bucket{_labels(key + (('le', f'{bound:g}'),))} {count:g}")
                total, count = self._histogram_sums[key]
                lines.append(f"{name}_bucket{_labels(key + (('le', '+Inf'),))} {count}")
                lines.append(f"{name}_sum{_labels(key)} {total:.6f}")
                lines.append(f"{name}_count{_labels(key)} {count}")
        for name, (help_text, read) in self._gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read():g}"]
        return "\n".join(lines) + "\n"


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
