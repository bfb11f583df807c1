"""Background pre-labeling and re-scoring: predict tasks and write the predictions into Label Studio.

Importing tasks never calls ``/predict``, and a Data Manager "retrieve predictions" on a large selection sends
everything in one request with a 100 s timeout. So new tasks (``TASKS_CREATED``), a promotion (re-score everything
not yet labeled) and the admin command ``ctphase jobs prelabel`` all come here, on the ``predict`` queue:

1. pick the tasks (the given ids, or every task of the project Label Studio does not consider labeled);
2. skip tasks that already have a logged, error-free prediction by the serving version (idempotent: a re-delivered
   message or a second run writes nothing twice);
3. predict in small batches with the same :class:`backend.inference.InferenceService` as ``/predict`` (same champion,
   same review score, same ``prediction_log`` rows);
4. write each prediction through the gateway (``result``, ``score``, ``model_version``);
5. point the project's ``model_version`` at the serving version: Label Studio's ``tasks:predictions_score``
   ordering only averages predictions of the project's ``model_version``, and it does not follow retrains.

A task whose series cannot be read gets an empty result with score 0 (it comes first in review, as with
``/predict``); its log row carries the error, so a later run retries it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import select, update

from backend.db import utcnow
from backend.gateway import GatewayError, LsTask
from backend.labelconfig import PhaseTarget, phase_target
from backend.schemas import ChoicesResult, ChoicesValue
from backend.tables import PredictionLog

if TYPE_CHECKING:
    from backend.gateway import LabelStudioGateway
    from backend.inference import TaskOutcome
    from backend.loop import Loop

logger = logging.getLogger(__name__)

BATCH_SIZE: Final[int] = 8
"""Tasks predicted per batch (reading overlaps the network inside a batch; small keeps cancellation prompt)."""


@dataclass
class PrelabelReport:
    """What one pre-labeling run did.

    Attributes:
        project: Label Studio project id.
        model_version: the version that predicted (champion label or the metadata prior).
        considered: tasks selected.
        already_predicted: skipped because the serving version already predicted them.
        written: predictions written to Label Studio.
        failed: tasks whose series could not be read (written with an empty result and score 0).
        skipped: why nothing was done, else None.
    """

    project: str
    model_version: str | None = None
    considered: int = 0
    already_predicted: int = 0
    written: int = 0
    failed: int = 0
    skipped: str | None = None
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def prelabel_tasks(loop: Loop, *, project: str, task_ids: Sequence[int] | None = None) -> PrelabelReport:
    """Predict tasks of ``project`` and write the predictions into Label Studio (see the module docstring).

    Args:
        loop: the loop (gateway, sessions, inference).
        project: Label Studio project id.
        task_ids: these tasks (labeled or not); None: every task not labeled yet.

    Raises:
        backend.gateway.GatewayError: Label Studio could not be read or written (the log rows of the batch that
            failed are marked, so the next run retries those tasks).
    """
    report = PrelabelReport(project=project)
    gateway = loop.gateway
    if gateway is None:
        report.skipped = "label_studio_url/api_key not set"
        logger.info("pre-labeling of project %s skipped: Label Studio access is not configured", project)
        return report
    service = loop.inference()
    label = service.serving_label(project=project)
    report.model_version = label
    tasks = _select_tasks(gateway, project=project, task_ids=task_ids)
    report.considered = len(tasks)
    done = predicted_task_ids(loop, project=project, model_version=label, task_ids=[t.id for t in tasks])
    todo = [t for t in tasks if t.id not in done]
    report.already_predicted = len(tasks) - len(todo)
    if todo:
        target = phase_target(gateway.get_label_config(project))
        for batch in _batches(todo, BATCH_SIZE):
            if loop.stopping.is_set():
                report.skipped = "stopped by shutdown"
                break
            _predict_batch(loop, gateway, batch, project=project, target=target, report=report)
    if report.written or report.already_predicted:
        # Also when nothing was written here: Label Studio may have fetched the predictions itself through
        # /predict (e.g. when a task is opened or read with predictions shown), and the project's model_version
        # must still name the serving version or the score ordering ignores them.
        gateway.set_project_model_version(project, label)
    logger.info("pre-labeling of project %s: %s", project, report.as_dict())
    return report


def _select_tasks(gateway: LabelStudioGateway, *, project: str, task_ids: Sequence[int] | None) -> list[LsTask]:
    if task_ids is not None:
        return [gateway.get_task(task_id) for task_id in dict.fromkeys(task_ids)]
    return [task for task in gateway.iter_tasks(project) if not task.is_labeled]


def _batches(items: Sequence[LsTask], size: int) -> Iterable[list[LsTask]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def predicted_task_ids(loop: Loop, *, project: str, model_version: str, task_ids: Sequence[int]) -> set[int]:
    """Tasks among ``task_ids`` with an error-free logged prediction by ``model_version``."""
    found: set[int] = set()
    with loop.sessions() as session:
        for start in range(0, len(task_ids), 500):
            chunk = list(task_ids[start : start + 500])
            stmt = select(PredictionLog.task_id).where(
                PredictionLog.project == project,
                PredictionLog.model_version == model_version,
                PredictionLog.error.is_(None),
                PredictionLog.task_id.in_(chunk),
            )
            found.update(int(t) for t in session.scalars(stmt) if t is not None)
    return found


def prediction_result(outcome: TaskOutcome, target: PhaseTarget) -> list[dict[str, Any]]:
    """Label Studio result items of one outcome (empty when there is no phase)."""
    if outcome.phase is None:
        return []
    item = ChoicesResult(
        from_name=target.from_name,
        to_name=target.to_name,
        value=ChoicesValue(choices=[target.choice_for(outcome.phase)]),
    )
    return [item.model_dump()]


def _predict_batch(
    loop: Loop,
    gateway: LabelStudioGateway,
    batch: list[LsTask],
    *,
    project: str,
    target: PhaseTarget,
    report: PrelabelReport,
) -> None:
    started = utcnow()
    outcomes = loop.inference().predict([{"id": t.id, "data": dict(t.data)} for t in batch], project=project)
    try:
        for task, outcome in zip(batch, outcomes, strict=True):
            gateway.create_prediction(
                task_id=task.id,
                result=prediction_result(outcome, target),
                score=outcome.score,
                model_version=outcome.model_version,
            )
            report.written += 1
            if outcome.error is not None:
                report.failed += 1
                report.errors.append(f"task {task.id}: {outcome.error}")
    except GatewayError as error:
        _unmark_batch(loop, project=project, task_ids=[t.id for t in batch], since=started, error=error)
        raise


def _unmark_batch(loop: Loop, *, project: str, task_ids: list[int], since: Any, error: GatewayError) -> None:
    """Flag the batch's fresh log rows so :func:`predicted_task_ids` does not skip tasks Label Studio never got."""
    with loop.sessions() as session:
        session.execute(
            update(PredictionLog)
            .where(
                PredictionLog.project == project,
                PredictionLog.task_id.in_(task_ids),
                PredictionLog.created_at >= since,
                PredictionLog.error.is_(None),
            )
            .values(error=f"label_studio_write: {str(error)[:300]}")
        )
        session.commit()
