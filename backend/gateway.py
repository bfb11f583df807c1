"""What the active-learning loop needs from Label Studio, as a typed Protocol, plus the wire parsing it shares.

``backend`` may not import ``plugin`` and ``plugin/client.py`` is the only module that imports ``label_studio_sdk``;
yet the loop (running in the API process in embedded mode, or in a Celery worker) has to read annotations and write
predictions. So the loop codes against :class:`LabelStudioGateway`, and the concrete SDK-backed implementation is
found at run time through the ``ctphase.gateways`` entry point (``label_studio = plugin.client:create_gateway`` in
pyproject.toml) -- the same mechanism that lets ``plugin`` add ``ctphase ls`` without ``backend`` importing it.
Tests pass a fake gateway directly.

Payload parsing (:func:`parse_annotation`, :func:`parse_task`) lives here because webhooks (``backend.annotations``)
and the reconciliation pull (through the gateway) deliver the same Label Studio objects.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from backend.errors import CtphaseError
from backend.labelconfig import choice_to_phase

if TYPE_CHECKING:
    from backend.config import Settings

logger = logging.getLogger(__name__)

GATEWAY_ENTRY_POINT_GROUP: Final[str] = "ctphase.gateways"
GATEWAY_ENTRY_POINT_NAME: Final[str] = "label_studio"
PHASE_CONTROL: Final[str] = "phase"
"""``name`` of the Choices control that carries the phase in ``plugin/label_config.xml``."""


class GatewayError(CtphaseError):
    """Label Studio could not be reached or answered an error (the message names the operation)."""

    kind = "label_studio_gateway"


class MalformedPayloadError(CtphaseError):
    """A Label Studio object lacks a field the loop needs (e.g. an annotation without an id)."""

    kind = "malformed_payload"


@dataclass(frozen=True)
class LsTask:
    """A Label Studio task as the loop sees it.

    Attributes:
        id: Label Studio task id.
        project: Label Studio project id, as text.
        data: the task data as imported (``series``, ``series_uid``, ``study_uid``, ...).
        is_labeled: Label Studio considers the task done (it has a completed annotation).
    """

    id: int
    project: str
    data: Mapping[str, Any]
    is_labeled: bool = False


@dataclass(frozen=True)
class LsAnnotation:
    """A Label Studio annotation, flattened with its task.

    Attributes:
        id: Label Studio annotation id (the upsert key).
        project: Label Studio project id, as text.
        task_id: the annotated task.
        task_data: that task's data (the series reference and optional uids).
        choice: the value picked in the ``phase`` Choices control ("Arterial"), None when nothing was picked.
        was_cancelled: the annotator skipped the task (the annotation does not count as a label).
        completed_by: Label Studio user id of the annotator, as text.
        updated_at: Label Studio's last-modified time (orders re-delivered and out-of-order events).
    """

    id: int
    project: str
    task_id: int
    task_data: Mapping[str, Any] = field(default_factory=dict)
    choice: str | None = None
    was_cancelled: bool = False
    completed_by: str | None = None
    updated_at: datetime | None = None


@runtime_checkable
class LabelStudioGateway(Protocol):
    """The Label Studio operations the loop uses (implemented with the SDK in ``plugin/client.py``)."""

    def iter_annotations(self, project: str) -> Iterator[LsAnnotation]:
        """Yield every current annotation of ``project`` (cancelled ones included; deleted ones are absent)."""
        ...

    def iter_tasks(self, project: str) -> Iterator[LsTask]:
        """Yield every task of ``project``."""
        ...

    def get_task(self, task_id: int) -> LsTask:
        """Return one task by id."""
        ...

    def get_label_config(self, project: str) -> str:
        """Return the project's label config XML (to find the phase control and its choice strings)."""
        ...

    def create_prediction(
        self, *, task_id: int, result: Sequence[Mapping[str, Any]], score: float, model_version: str
    ) -> None:
        """Attach a prediction (Label Studio result items, review score, model version) to a task."""
        ...

    def set_project_model_version(self, project: str, model_version: str) -> None:
        """Point the project's ``model_version`` at ours so ``tasks:predictions_score`` ordering uses our scores."""
        ...


def load_gateway(settings: Settings) -> LabelStudioGateway | None:
    """Return the installed Label Studio gateway for ``settings``, or None when Label Studio is not configured.

    Raises:
        GatewayError: Label Studio is configured but no gateway is installed (the ``plugin`` package is missing).
    """
    if settings.label_studio_url is None or settings.label_studio_api_key is None:
        logger.info("label_studio_url / label_studio_api_key not set: pre-labeling and reconciliation are off")
        return None
    found = [ep for ep in entry_points(group=GATEWAY_ENTRY_POINT_GROUP) if ep.name == GATEWAY_ENTRY_POINT_NAME]
    if not found:
        raise GatewayError(
            f"no '{GATEWAY_ENTRY_POINT_NAME}' entry point in group '{GATEWAY_ENTRY_POINT_GROUP}': "
            "install the ctphase package with its plugin (pip install -e .)"
        )
    factory = found[0].load()
    gateway = factory(settings)
    if not isinstance(gateway, LabelStudioGateway):
        raise GatewayError(f"{found[0].value} returned {type(gateway).__name__}, not a LabelStudioGateway")
    return gateway


def choice_from_result(result: Any) -> str | None:
    """Return the phase choice picked in a Label Studio ``result`` list.

    Prefers a value that names a phase (whatever the control is called), then any value of the ``phase`` control,
    then the first Choices value at all (which the caller stores with an unknown phase). None when nothing was picked.
    """
    if not isinstance(result, list):
        return None
    values: list[tuple[bool, bool, str]] = []
    for item in result:
        if not isinstance(item, dict) or item.get("type") != "choices":
            continue
        value = item.get("value")
        choices = value.get("choices") if isinstance(value, dict) else None
        if isinstance(choices, list) and choices and isinstance(choices[0], str):
            named = choice_to_phase(choices[0]) is not None
            values.append((not named, item.get("from_name") != PHASE_CONTROL, choices[0]))
    return min(values)[2] if values else None


def parse_time(value: Any) -> datetime | None:
    """Parse a Label Studio ISO 8601 timestamp ("2024-05-01T12:00:00.123Z"); naive values are taken as UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value.strip():
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            logger.warning("unparseable Label Studio timestamp %r ignored", value)
            return None
    else:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _as_id(value: Any, what: str) -> int:
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise MalformedPayloadError(f"{what} id missing or not an integer: {value!r}")
    try:
        return int(value)
    except ValueError:
        raise MalformedPayloadError(f"{what} id is not an integer: {value!r}") from None


def _user(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("id", value.get("email"))
    return None if value is None else str(value)


def parse_task(task: Mapping[str, Any], *, project: str | None = None) -> LsTask:
    """Build an :class:`LsTask` from a Label Studio task object (webhook payload or API answer).

    Raises:
        MalformedPayloadError: no task id, or no project either in the object or as ``project``.
    """
    task_project = project if project is not None else task.get("project")
    if task_project is None:
        raise MalformedPayloadError(f"task {task.get('id')!r} names no project")
    data = task.get("data")
    return LsTask(
        id=_as_id(task.get("id"), "task"),
        project=str(_as_id(task_project, "project")),
        data=dict(data) if isinstance(data, dict) else {},
        is_labeled=bool(task.get("is_labeled", False)),
    )


def parse_annotation(
    annotation: Mapping[str, Any], *, task: Mapping[str, Any] | None = None, project: str | None = None
) -> LsAnnotation:
    """Build an :class:`LsAnnotation` from a Label Studio annotation and its task.

    Args:
        annotation: the annotation object (``id``, ``result``, ``task``, ``completed_by``, ``updated_at``,
            ``was_cancelled``, optionally ``project``).
        task: its task object when the payload carries it separately (webhooks); else ``annotation["task"]``
            may be an id or a task object.
        project: project id when neither object names it.

    Raises:
        MalformedPayloadError: the annotation, its task or its project cannot be identified.
    """
    task_obj: Mapping[str, Any] = task if task is not None else {}
    raw_task = annotation.get("task")
    if not task_obj and isinstance(raw_task, dict):
        task_obj = raw_task
    task_id = _as_id(task_obj.get("id", raw_task) if task_obj else raw_task, "task")
    project_value = project if project is not None else annotation.get("project", task_obj.get("project"))
    if project_value is None:
        raise MalformedPayloadError(f"annotation {annotation.get('id')!r} names no project")
    data = task_obj.get("data")
    return LsAnnotation(
        id=_as_id(annotation.get("id"), "annotation"),
        project=str(_as_id(project_value, "project")),
        task_id=task_id,
        task_data=dict(data) if isinstance(data, dict) else {},
        choice=choice_from_result(annotation.get("result")),
        was_cancelled=bool(annotation.get("was_cancelled", False)),
        completed_by=_user(annotation.get("completed_by")),
        updated_at=parse_time(annotation.get("updated_at")),
    )
