"""Structured logging: a request id on every line, JSON lines when ``Settings.log_json``.

The request id comes from the ``X-Request-ID`` header (when it is a short token) or is generated; it is kept in a
context variable, copied into worker threads by ``anyio.to_thread``, and added to every record by
:class:`RequestIdFilter`. Extra fields passed with ``logger.info(..., extra={"task_id": 3})`` appear as JSON keys.

Never log patient identifiers, secrets or request headers; log series by SeriesInstanceUID at debug level only.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final

request_id_var: ContextVar[str | None] = ContextVar("ctphase_request_id", default=None)

_SAFE_REQUEST_ID: Final[re.Pattern[str]] = re.compile(r"[A-Za-z0-9._\-]{1,64}")
_STANDARD_ATTRS: Final[frozenset[str]] = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime", "request_id"}
)
_HANDLER_NAME: Final[str] = "ctphase"


def new_request_id(incoming: str | None = None) -> str:
    """Return ``incoming`` when it is a safe short token (letters, digits, ``._-``), else a fresh uuid4 hex."""
    if incoming is not None and _SAFE_REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``"-"`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(*, json_lines: bool, level: str = "INFO") -> None:
    """Install one stderr handler on the root logger (idempotent: replaces the handler installed before).

    Args:
        json_lines: JSON objects instead of text lines.
        level: root level name (``"DEBUG"``, ``"INFO"``...).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        # ours from an earlier call, or the plain one logging.basicConfig installs (not pytest's capture handlers)
        if handler.get_name() == _HANDLER_NAME or type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RequestIdFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
