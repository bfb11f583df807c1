"""Label Studio events -> idempotent annotation upserts -> maybe a training job or pre-labeling.

Label Studio delivers webhooks once, with a 1 s timeout, possibly twice (a user re-saving) and in any order across
annotations. So every write here is an idempotent upsert keyed by Label Studio's annotation id::

    INSERT INTO annotation ... ON CONFLICT (ls_annotation_id) DO UPDATE SET ...
    WHERE annotation.ls_updated_at IS NULL OR excluded.ls_updated_at >= annotation.ls_updated_at

(the same statement on PostgreSQL and SQLite): a re-delivered event rewrites identical values, and an older event
arriving after a newer one changes nothing. Deletions are tombstones (``deleted = true``) that no later-arriving
create/update event can undo (Label Studio never reuses an annotation id); a deletion that arrives before its
annotation leaves a tombstone the late create fills in but does not revive. Cancelled (skipped) and deleted
annotations do not count as labels; a choice that names no phase is stored with ``phase = NULL`` and a warning.

``backend.reconcile`` repairs what a missed webhook lost, through the same upsert.

Handled actions: ``ANNOTATION_CREATED``, ``ANNOTATION_UPDATED``, ``ANNOTATIONS_DELETED``, ``START_TRAINING`` (the
"Start training" button), ``TASKS_CREATED`` (pre-label new tasks in the background). Anything else is ignored.
After a label lands, a training job is requested once ``Settings.retrain_after_n_labels`` labels have accumulated
since the project's previous job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from backend.db import utcnow
from backend.gateway import LsAnnotation, MalformedPayloadError, parse_annotation, parse_task
from backend.jobs import count_labels, request_training
from backend.labelconfig import choice_to_phase
from backend.tables import Annotation, TrainingJob

if TYPE_CHECKING:
    from backend.config import Settings
    from backend.loop import Loop

logger = logging.getLogger(__name__)

ANNOTATION_ACTIONS: Final[frozenset[str]] = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED"})
DELETE_ACTION: Final[str] = "ANNOTATIONS_DELETED"
TRAIN_ACTION: Final[str] = "START_TRAINING"
TASKS_ACTION: Final[str] = "TASKS_CREATED"
SERIES_UID_KEY: Final[str] = "series_uid"
STUDY_UID_KEY: Final[str] = "study_uid"


@dataclass(frozen=True)
class EventOutcome:
    """What :func:`handle_event` did (for logs, metrics and tests).

    Attributes:
        action: the event's ``action``.
        status: ``stored``, ``deleted``, ``training_requested``, ``prelabel_enqueued``, ``ignored`` or ``malformed``.
        detail: numbers and ids (annotation ids, job id, ...).
    """

    action: str
    status: str
    detail: dict[str, Any] = field(default_factory=dict)


def handle_event(loop: Loop, payload: Mapping[str, Any]) -> EventOutcome:
    """Process one Label Studio webhook payload (quick: a few statements; heavy work is enqueued).

    Never raises for bad input: a malformed payload is logged and reported as ``malformed``.

    Args:
        loop: the loop (settings, sessions, queue).
        payload: the JSON body Label Studio posted to ``/webhook``.
    """
    action = str(payload.get("action") or "")
    try:
        if action in ANNOTATION_ACTIONS:
            return _on_annotation(loop, action, payload)
        if action == DELETE_ACTION:
            return _on_deleted(loop, payload)
        if action == TRAIN_ACTION:
            project = _project_id(payload)
            request = request_training(loop, project=project, trigger="start_training", requested_by="label_studio")
            return EventOutcome(action, "training_requested", {"job_id": request.job_id, "created": request.created})
        if action == TASKS_ACTION:
            return _on_tasks_created(loop, payload)
    except MalformedPayloadError as error:
        logger.warning("webhook %s ignored: %s", action or "(no action)", error)
        return EventOutcome(action, "malformed", {"error": str(error)})
    return EventOutcome(action, "ignored")


def _project_id(payload: Mapping[str, Any]) -> str:
    project = payload.get("project")
    if isinstance(project, Mapping):
        project = project.get("id")
    if project is None or isinstance(project, bool) or not str(project).strip():
        raise MalformedPayloadError("payload names no project")
    text = str(project).strip().split(".", 1)[0]
    if not text.isdigit():
        raise MalformedPayloadError(f"project id {project!r} is not a Label Studio project id")
    return text


def _on_annotation(loop: Loop, action: str, payload: Mapping[str, Any]) -> EventOutcome:
    annotation = payload.get("annotation")
    if not isinstance(annotation, Mapping):
        raise MalformedPayloadError(f"{action} without an 'annotation' object")
    task = payload.get("task")
    project = _project_id(payload) if payload.get("project") is not None else None
    parsed = parse_annotation(annotation, task=task if isinstance(task, Mapping) else None, project=project)
    with loop.sessions() as session:
        changed = upsert_annotations(session, [parsed], settings=loop.settings)
        session.commit()
    request = maybe_request_training(loop, project=parsed.project)
    detail: dict[str, Any] = {"annotation_id": parsed.id, "changed": changed}
    if request is not None:
        detail["job_id"] = request
    return EventOutcome(action, "stored", detail)


def _on_deleted(loop: Loop, payload: Mapping[str, Any]) -> EventOutcome:
    project = _project_id(payload)
    items = payload.get("annotations")
    if not isinstance(items, list):
        raise MalformedPayloadError(f"{DELETE_ACTION} without an 'annotations' list")
    ids = sorted({int(item["id"]) for item in items if isinstance(item, Mapping) and _is_int(item.get("id"))})
    with loop.sessions() as session:
        n = mark_deleted(session, project=project, annotation_ids=ids)
        session.commit()
    return EventOutcome(DELETE_ACTION, "deleted", {"annotation_ids": ids, "tombstones_created": n})


def _is_int(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.isdigit())


def _on_tasks_created(loop: Loop, payload: Mapping[str, Any]) -> EventOutcome:
    tasks = payload.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise MalformedPayloadError(f"{TASKS_ACTION} without a 'tasks' list")
    project = _project_id(payload) if payload.get("project") is not None else None
    parsed = [parse_task(task, project=project) for task in tasks if isinstance(task, Mapping)]
    if not parsed:
        raise MalformedPayloadError(f"{TASKS_ACTION}: no task objects")
    by_project: dict[str, list[int]] = {}
    for task in parsed:
        by_project.setdefault(task.project, []).append(task.id)
    if loop.gateway is None:
        logger.info("%d new tasks not pre-labeled: Label Studio access is not configured", len(parsed))
        return EventOutcome(TASKS_ACTION, "ignored", {"reason": "label_studio_url/api_key not set"})
    for task_project, ids in by_project.items():
        loop.queue.enqueue_prelabel(task_project, ids)
    return EventOutcome(TASKS_ACTION, "prelabel_enqueued", {"tasks": sum(len(v) for v in by_project.values())})


# --- upserts --------------------------------------------------------------------------------------------------


def annotation_row(parsed: LsAnnotation, *, settings: Settings, received_at: datetime) -> dict[str, Any]:
    """Column values of the ``annotation`` row for a parsed annotation (phase None for an unknown choice)."""
    phase = choice_to_phase(parsed.choice) if parsed.choice is not None else None
    if parsed.choice is not None and phase is None:
        logger.warning(
            "annotation %d of project %s: choice %r names no phase (expected one of Non-contrast, Arterial, "
            "Venous, Others); stored without a phase, it will not be used for training",
            parsed.id,
            parsed.project,
            parsed.choice,
        )
    data = parsed.task_data
    series_ref = data.get(settings.series_data_key)
    return {
        "ls_annotation_id": parsed.id,
        "project": parsed.project,
        "task_id": parsed.task_id,
        "series_ref": series_ref if isinstance(series_ref, str) else "",
        "series_instance_uid": _text(data.get(SERIES_UID_KEY)),
        "study_instance_uid": _text(data.get(STUDY_UID_KEY)),
        "phase": phase,
        "was_cancelled": parsed.was_cancelled,
        "deleted": False,
        "completed_by": parsed.completed_by,
        "ls_updated_at": parsed.updated_at,
        "received_at": received_at,
    }


def _text(value: Any) -> str | None:
    return str(value)[:128] if isinstance(value, str | int) and str(value).strip() else None


def upsert_annotations(
    session: Session,
    annotations: Iterable[LsAnnotation],
    *,
    settings: Settings,
) -> int:
    """Insert or update annotation rows; an event older than the stored row changes nothing.

    Args:
        session: open session (the caller commits).
        annotations: parsed annotations.
        settings: for the series data key.

    Returns:
        Number of rows inserted or updated.
    """
    received_at = utcnow()
    rows = [annotation_row(a, settings=settings, received_at=received_at) for a in annotations]
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(Annotation)
    # Never rewritten: the key, the tombstone flag (deletion is final, ids are never reused) and the first receipt.
    updated = [c for c in rows[0] if c not in ("ls_annotation_id", "deleted", "received_at")]
    table = Annotation.__table__
    newer = or_(
        table.c.ls_updated_at.is_(None),
        stmt.excluded.ls_updated_at >= table.c.ls_updated_at,
    )
    upsert = stmt.on_conflict_do_update(
        index_elements=[table.c.ls_annotation_id],
        set_={column: stmt.excluded[column] for column in updated},
        where=newer,
    ).returning(table.c.ls_annotation_id)  # one row per insert or applied update (rowcount is unreliable)
    changed = 0
    for start in range(0, len(rows), 500):
        changed += len(session.execute(upsert, rows[start : start + 500]).all())
    return changed


def mark_deleted(session: Session, *, project: str, annotation_ids: Sequence[int]) -> int:
    """Mark annotations deleted; ids not seen yet get a tombstone a late create cannot revive.

    Returns:
        Number of tombstones created.
    """
    if not annotation_ids:
        return 0
    session.execute(update(Annotation).where(Annotation.ls_annotation_id.in_(annotation_ids)).values(deleted=True))
    known = set(
        session.scalars(select(Annotation.ls_annotation_id).where(Annotation.ls_annotation_id.in_(annotation_ids)))
    )
    missing = [i for i in annotation_ids if i not in known]
    if missing:
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        now = utcnow()
        tombstones = [
            {
                "ls_annotation_id": i,
                "project": project,
                "task_id": -1,
                "series_ref": "",
                "deleted": True,
                "was_cancelled": False,
                "received_at": now,
            }
            for i in missing
        ]
        session.execute(insert(Annotation).on_conflict_do_nothing(index_elements=["ls_annotation_id"]), tombstones)
    return len(missing)


# --- automatic retraining -------------------------------------------------------------------------------------


def labels_since_last_job(loop: Loop, project: str) -> tuple[int, int]:
    """(usable labels now, usable labels when the project's latest job was created; 0 if none)."""
    total = count_labels(loop, project)
    with loop.sessions() as session:
        stmt = select(TrainingJob.n_labels).where(TrainingJob.project == project).order_by(TrainingJob.id.desc())
        previous = session.scalars(stmt.limit(1)).first()
    return total, int(previous or 0)


def maybe_request_training(loop: Loop, *, project: str) -> int | None:
    """Request a job when ``Settings.retrain_after_n_labels`` labels arrived since the previous job.

    Returns:
        The new job's id, or None when no job was created.
    """
    total, previous = labels_since_last_job(loop, project)
    if total - previous < loop.settings.retrain_after_n_labels:
        return None
    request = request_training(loop, project=project, trigger="n_labels", requested_by="auto")
    return request.job_id if request.created else None
