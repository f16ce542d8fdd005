"""Structured logs: JSON lines on the stderr of the moment, even after the original stream is closed."""

from __future__ import annotations

import io
import json
import logging
import sys

from deltaguard.serve.metrics import CurrentStderrHandler, JsonFormatter, configure_json_logging


def test_json_lines_follow_the_current_stderr(monkeypatch):
    logger = logging.getLogger("deltaguard")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        logger.handlers = []
        configure_json_logging()
        configure_json_logging()  # idempotent: one handler
        assert [type(h) for h in logger.handlers] == [CurrentStderrHandler]
        first = io.StringIO()
        monkeypatch.setattr(sys, "stderr", first)
        logging.getLogger("deltaguard.serve.test").info("hello", extra={"tenant": "alpha"})
        first.close()                       # the stream the handler first saw is gone
        second = io.StringIO()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("deltaguard.serve.test").warning("again")
        entry = json.loads(second.getvalue().strip())
        assert entry["event"] == "again" and entry["level"] == "warning"
    finally:
        logger.handlers, logger.level, logger.propagate = saved


def test_formatter_keeps_extra_fields():
    record = logging.makeLogRecord({"msg": "served", "levelname": "INFO", "name": "x", "tenant": "beta", "tokens": 7})
    entry = json.loads(JsonFormatter().format(record))
    assert entry["tenant"] == "beta" and entry["tokens"] == 7 and entry["event"] == "served"
