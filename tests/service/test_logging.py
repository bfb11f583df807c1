"""Structured logs: JSON lines with the request id and extra fields; text lines carry the request id too."""

from __future__ import annotations

import json
import logging

from backend.logging import JsonFormatter, RequestIdFilter, new_request_id, request_id_var


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("ctphase.test", logging.WARNING, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    RequestIdFilter().filter(record)
    return record


def test_json_line_has_request_id_and_extras() -> None:
    token = request_id_var.set("req-42")
    try:
        line = JsonFormatter().format(_record("task %s failed", task_id=7, error_kind="path_not_allowed"))
    finally:
        request_id_var.reset(token)
    payload = json.loads(line)
    assert payload["request_id"] == "req-42"
    assert payload["level"] == "WARNING"
    assert payload["task_id"] == 7
    assert payload["error_kind"] == "path_not_allowed"
    assert payload["logger"] == "ctphase.test"


def test_outside_a_request() -> None:
    assert _record("x").request_id == "-"  # type: ignore[attr-defined]


def test_request_ids_are_sanitised() -> None:
    assert new_request_id("abc.DEF-1_2") == "abc.DEF-1_2"
    assert len(new_request_id("has space")) == 32
    assert len(new_request_id("x" * 65)) == 32
    assert new_request_id(None) != new_request_id(None)
