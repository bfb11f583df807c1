"""A small in-memory Label Studio REST server for loop tests (real HTTP, so the SDK gateway and a Celery worker
subprocess talk to it exactly as they would to Label Studio).

It implements only what the loop uses, with Label Studio 1.23's shapes and traps: paginated ``/api/tasks/`` that
answers 404 past the last page, ``fields=all`` embedding annotations, ``POST /api/predictions/``, and
``PATCH /api/projects/{id}/`` refusing a ``model_version`` that names no existing prediction version (400).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_KEY = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeLabelStudio:
    """State of the fake server (thread-safe through ``lock``)."""

    label_config: str
    tasks: dict[int, dict[str, Any]] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    project_model_version: dict[int, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    requests: list[str] = field(default_factory=list)
    _next_annotation: int = 1000

    def add_task(self, project: int, task_id: int, data: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            task = {"id": task_id, "project": project, "data": data, "annotations": [], "is_labeled": False}
            self.tasks[task_id] = task
            return task

    def annotate(self, task_id: int, choice: str, *, was_cancelled: bool = False) -> dict[str, Any]:
        """Add an annotation (as a user in the UI would) and return it as a webhook would carry it."""
        with self.lock:
            self._next_annotation += 1
            annotation = {
                "id": self._next_annotation,
                "task": task_id,
                "project": self.tasks[task_id]["project"],
                "result": [
                    {
                        "from_name": "phase",
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": [choice]},
                    }
                ],
                "was_cancelled": was_cancelled,
                "completed_by": 1,
                "updated_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            }
            self.tasks[task_id]["annotations"].append(annotation)
            self.tasks[task_id]["is_labeled"] = not was_cancelled
            return annotation

    def delete_annotation(self, annotation_id: int) -> None:
        with self.lock:
            for task in self.tasks.values():
                task["annotations"] = [a for a in task["annotations"] if a["id"] != annotation_id]
                task["is_labeled"] = any(not a["was_cancelled"] for a in task["annotations"])

    def webhook(self, action: str, task_id: int, annotation: dict[str, Any]) -> dict[str, Any]:
        """The payload Label Studio posts for an annotation event."""
        with self.lock:
            task = self.tasks[task_id]
            return {
                "action": action,
                "annotation": dict(annotation),
                "task": {"id": task_id, "data": dict(task["data"]), "project": task["project"]},
                "project": {"id": task["project"], "label_config": self.label_config},
            }

    def predictions_for(self, task_id: int) -> list[dict[str, Any]]:
        with self.lock:
            return [p for p in self.predictions if p["task"] == task_id]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Token {API_KEY}":
            self._send(401, {"detail": "Authentication credentials were not provided."})
            return False
        return True

    def do_GET(self) -> None:
        state = self.server.state
        parts = urlsplit(self.path)
        state.requests.append(f"GET {parts.path}")
        if not self._authorized():
            return
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        segments = [s for s in parts.path.split("/") if s]
        with state.lock:
            if segments == ["api", "tasks"]:
                project = int(query["project"])
                tasks = [t for t in state.tasks.values() if t["project"] == project]
                size = int(query.get("page_size", 100))
                page = int(query.get("page", 1))
                chunk = tasks[(page - 1) * size : page * size]
                if page > 1 and not chunk:
                    self._send(404, {"detail": "Invalid page."})
                    return
                if query.get("fields") != "all":
                    chunk = [{k: v for k, v in t.items() if k != "annotations"} for t in chunk]
                self._send(200, {"tasks": chunk, "total": len(tasks), "total_annotations": 0, "total_predictions": 0})
                return
            if len(segments) == 3 and segments[:2] == ["api", "tasks"]:
                task = state.tasks.get(int(segments[2]))
                self._send(200, task) if task else self._send(404, {"detail": "Not found."})
                return
            if len(segments) == 3 and segments[:2] == ["api", "projects"]:
                project = int(segments[2])
                self._send(
                    200,
                    {
                        "id": project,
                        "title": f"project {project}",
                        "label_config": state.label_config,
                        "model_version": state.project_model_version.get(project, "ctphase"),
                    },
                )
                return
        self._send(404, {"detail": "Not found."})

    def do_POST(self) -> None:
        state = self.server.state
        parts = urlsplit(self.path)
        state.requests.append(f"POST {parts.path}")
        if not self._authorized():
            return
        body = self._body()
        if parts.path.rstrip("/") == "/api/predictions":
            with state.lock:
                if int(body["task"]) not in state.tasks:
                    self._send(400, {"task": ["Invalid pk"]})
                    return
                prediction = {**body, "id": len(state.predictions) + 1}
                state.predictions.append(prediction)
            self._send(201, prediction)
            return
        self._send(404, {"detail": "Not found."})

    def do_PATCH(self) -> None:
        state = self.server.state
        parts = urlsplit(self.path)
        state.requests.append(f"PATCH {parts.path}")
        if not self._authorized():
            return
        body = self._body()
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) == 3 and segments[:2] == ["api", "projects"]:
            project = int(segments[2])
            with state.lock:
                version = body.get("model_version")
                known = {p.get("model_version") for p in state.predictions} | {"ctphase"}
                if version is not None and version not in known:
                    self._send(400, {"model_version": [f"Model version doesn't exist: {version}"]})
                    return
                if version is not None:
                    state.project_model_version[project] = version
            self._send(200, {"id": project, "model_version": version})
            return
        self._send(404, {"detail": "Not found."})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: FakeLabelStudio) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


@contextmanager
def running(state: FakeLabelStudio) -> Iterator[FakeLabelStudio]:
    """Serve ``state`` on a free port of 127.0.0.1 (``state.url``) until the block exits."""
    server = _Server(state)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-label-studio", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
