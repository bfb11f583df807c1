"""Training-job rows and the queues that run the loop's background work.

Job rows (``training_job``) are the state and the result of a job: a Celery message only carries the job id.

- :func:`request_training` inserts a ``queued`` row and relies on the partial unique index (one active job per
  project): a concurrent second trigger gets an ``IntegrityError`` and is told which job is already active. There is
  no check-then-insert. The row is committed *before* the id is enqueued, so a worker never sees an unknown id.
- :func:`fail_stale_jobs` turns a ``running`` job whose heartbeat stopped (a worker killed by SIGKILL, the OOM
  killer or a lost machine) into ``failed``. Celery is configured not to re-deliver such a message
  (``task_reject_on_worker_lost=False``); and if a broker re-delivers it anyway, the claim is a no-op because the
  job is no longer ``queued``. So a killed job ends ``failed`` exactly once, by design, and its project is free for
  the next trigger. The sweep runs periodically (Celery beat / the embedded loop), and before every new trigger.

Three interchangeable queues run the *same* service functions (``backend.retrain.run_job``,
``backend.prelabel.prelabel_tasks``, ``backend.reconcile.reconcile_project``):

- :class:`CeleryQueue` (``Settings.broker_url`` set) sends by task *name* (``send_task``), so ``backend`` never
  imports the ``worker`` package; ``worker/tasks.py`` registers thin tasks under these names.
- :class:`EmbeddedQueue` (no broker; ``ctphase serve``): two daemon threads, one per queue (``train``, ``predict``),
  plus a periodic maintenance thread (reconcile + sweep every ``Settings.reconcile_interval_s``).
- :class:`InlineQueue`: runs the work synchronously in the caller (CLI without a broker, tests, benchmarks).
"""

from __future__ import annotations

import logging
import queue as queue_module
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from backend.db import utcnow
from backend.errors import CtphaseError
from backend.tables import ACTIVE_JOB_STATUSES, Annotation, Champion, PredictionLog, TrainingJob

if TYPE_CHECKING:
    from backend.config import Settings
    from backend.loop import Loop

logger = logging.getLogger(__name__)

TRAIN_TASK: Final[str] = "ctphase.train"
"""Celery task name: run training job ``job_id`` (args: ``[job_id]``)."""
PRELABEL_TASK: Final[str] = "ctphase.prelabel"
"""Celery task name: pre-label tasks of a project (args: ``[project, task_ids or None]``)."""
RECONCILE_TASK: Final[str] = "ctphase.reconcile"
"""Celery task name: pull a project's annotations (args: ``[project]``)."""
MAINTENANCE_TASK: Final[str] = "ctphase.maintenance"
"""Celery task name: sweep stale jobs, re-enqueue orphaned ones, reconcile every known project (no args)."""

TRAIN_QUEUE: Final[str] = "train"
PREDICT_QUEUE: Final[str] = "predict"

JOB_DIR_NAME: Final[str] = ".jobs"


class JobNotFoundError(CtphaseError):
    """No training job with that id."""

    kind = "job_not_found"


class JobStateError(CtphaseError):
    """The job is not in a state that allows the operation (e.g. cancelling a finished job)."""

    kind = "job_state"


@dataclass(frozen=True)
class TrainingRequest:
    """Outcome of a trigger.

    Attributes:
        job_id: the new job, or the project's already active job (None if that one finished meanwhile).
        created: True when this call created the job.
    """

    job_id: int | None
    created: bool


class JobQueue(Protocol):
    """Where follow-up work of the loop goes."""

    def enqueue_training(self, job_id: int) -> None:
        """Run training job ``job_id`` (on the ``train`` queue)."""
        ...

    def enqueue_prelabel(self, project: str, task_ids: Sequence[int] | None) -> None:
        """Pre-label ``task_ids`` of ``project`` (None: every task not labeled yet), on the ``predict`` queue."""
        ...

    def enqueue_reconcile(self, project: str) -> None:
        """Pull the annotations of ``project`` from Label Studio and repair the table."""
        ...

    def start(self) -> None:
        """Start background threads, if the queue has any."""
        ...

    def close(self) -> None:
        """Stop background threads and release connections."""
        ...


# --- job rows ---------------------------------------------------------------------------------------------------


def job_work_dir(settings: Settings, job_id: int) -> Path:
    """Scratch folder of a job under the model store (removed when the job ends, whatever the outcome)."""
    return settings.model_store / JOB_DIR_NAME / f"job-{job_id}"


def remove_work_dir(settings: Settings, job_id: int) -> None:
    """Delete a job's scratch folder (partial checkpoints of a failed or killed job)."""
    shutil.rmtree(job_work_dir(settings, job_id), ignore_errors=True)


def count_labels(loop: Loop, project: str) -> int:
    """Number of annotations of ``project`` that count as labels (a phase, not cancelled, not deleted)."""
    with loop.sessions() as session:
        stmt = select(func.count()).select_from(Annotation).where(*usable_label_filter(project))
        return int(session.scalar(stmt) or 0)


def usable_label_filter(project: str) -> tuple[Any, ...]:
    """SQL conditions of an annotation that counts as a training label."""
    return (
        Annotation.project == project,
        Annotation.phase.is_not(None),
        Annotation.was_cancelled.is_(False),
        Annotation.deleted.is_(False),
    )


def request_training(
    loop: Loop, *, project: str, trigger: str, requested_by: str | None = None, enqueue: bool = True
) -> TrainingRequest:
    """Create a queued training job for ``project`` unless one is already active, then enqueue it.

    Safe under concurrency: the partial unique index admits one active job per project; the loser of a race gets
    the winner's id back.

    Args:
        loop: the loop.
        project: Label Studio project id.
        trigger: why (``start_training``, ``n_labels``, ``api``, ``cli``).
        requested_by: who (user id, "admin", ...).
        enqueue: send the new job to the queue after commit (False for callers that run it themselves).
    """
    fail_stale_jobs(loop, project=project)
    n_labels = count_labels(loop, project)
    now = utcnow()
    job = TrainingJob(
        project=project,
        status="queued",
        trigger=trigger,
        requested_by=requested_by,
        n_labels=n_labels,
        created_at=now,
        heartbeat_at=now,  # for a queued job: when it was last enqueued
        attempts=0,
        cancel_requested=False,
    )
    with loop.sessions() as session:
        session.add(job)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            active = active_job_id(loop, project)
            if active is None:
                raise
            logger.info("project %s: training trigger %r ignored, job %d is active", project, trigger, active)
            return TrainingRequest(job_id=active, created=False)
        job_id = job.id
    logger.info("project %s: training job %d queued (trigger %s, %d labels)", project, job_id, trigger, n_labels)
    if enqueue:
        safe_enqueue(lambda: loop.queue.enqueue_training(job_id), f"training job {job_id}")
    return TrainingRequest(job_id=job_id, created=True)


def safe_enqueue(send: Callable[[], None], what: str) -> None:
    """Enqueue; a broker outage is logged, not raised (the maintenance sweep re-enqueues queued jobs)."""
    try:
        send()
    except Exception:
        logger.exception("could not enqueue %s; the periodic maintenance will retry", what)


def active_job_id(loop: Loop, project: str) -> int | None:
    """The id of the project's queued or running job, if any."""
    with loop.sessions() as session:
        stmt = select(TrainingJob.id).where(TrainingJob.project == project, TrainingJob.status.in_(ACTIVE_JOB_STATUSES))
        return session.scalar(stmt)


def get_job(loop: Loop, job_id: int) -> TrainingJob:
    """Return one job row (detached, readable after the session closes).

    Raises:
        JobNotFoundError: no such job.
    """
    with loop.sessions() as session:
        job = session.get(TrainingJob, job_id)
        if job is None:
            raise JobNotFoundError(f"training job {job_id} does not exist")
        return job


def list_jobs(loop: Loop, *, project: str | None = None, limit: int = 20) -> list[TrainingJob]:
    """Most recent jobs first, optionally of one project."""
    with loop.sessions() as session:
        stmt = select(TrainingJob).order_by(TrainingJob.id.desc()).limit(max(1, limit))
        if project is not None:
            stmt = stmt.where(TrainingJob.project == project)
        return list(session.scalars(stmt))


def cancel_job(loop: Loop, job_id: int) -> TrainingJob:
    """Ask a job to stop: a queued job is cancelled at once, a running one at its next check (between batches).

    Raises:
        JobNotFoundError: no such job.
        JobStateError: the job already finished.
    """
    now = utcnow()
    with loop.sessions() as session:
        queued = session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.status == "queued")
            .values(status="cancelled", cancel_requested=True, finished_at=now, decision="cancelled before start")
        )
        changed = bool(queued.rowcount)  # type: ignore[attr-defined]
        if not changed:
            running = session.execute(
                update(TrainingJob)
                .where(TrainingJob.id == job_id, TrainingJob.status == "running")
                .values(cancel_requested=True)
            )
            changed = bool(running.rowcount)  # type: ignore[attr-defined]
        session.commit()
    job = get_job(loop, job_id)
    if not changed:
        raise JobStateError(f"training job {job_id} already finished ({job.status}); nothing to cancel")
    return job


def fail_stale_jobs(loop: Loop, *, project: str | None = None, now: datetime | None = None) -> list[int]:
    """Mark ``running`` jobs whose heartbeat is older than ``Settings.job_heartbeat_timeout_s`` as failed.

    Each update is conditional on the job still being running with that stale heartbeat, so a racing worker that
    just beat is left alone. The scratch folder of every failed job is removed.

    Args:
        loop: the loop.
        project: only this project (None: all).
        now: the current time (tests pass a later time instead of sleeping).

    Returns:
        Ids of the jobs this call failed.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=loop.settings.job_heartbeat_timeout_s)
    stale = (
        TrainingJob.status == "running",
        func.coalesce(TrainingJob.heartbeat_at, TrainingJob.started_at, TrainingJob.created_at) < cutoff,
    )
    failed: list[int] = []
    with loop.sessions() as session:
        stmt = select(TrainingJob.id, TrainingJob.heartbeat_at).where(*stale)
        if project is not None:
            stmt = stmt.where(TrainingJob.project == project)
        for job_id, beat in session.execute(stmt).all():
            last = beat.isoformat(timespec="seconds") if beat is not None else "never"
            result = session.execute(
                update(TrainingJob)
                .where(TrainingJob.id == job_id, *stale)
                .values(
                    status="failed",
                    finished_at=now,
                    error=f"worker lost: no heartbeat since {last} "
                    f"(timeout {loop.settings.job_heartbeat_timeout_s:g} s; killed, out of memory or machine lost)",
                    decision="kept champion (job failed)",
                )
            )
            if result.rowcount:  # type: ignore[attr-defined]
                failed.append(int(job_id))
        session.commit()
    for job_id in failed:
        remove_work_dir(loop.settings, job_id)
        logger.warning("training job %d failed: worker lost (no heartbeat since the cutoff %s)", job_id, cutoff)
    return failed


def requeue_orphaned_jobs(loop: Loop, *, older_than_s: float, now: datetime | None = None) -> list[int]:
    """Re-enqueue queued jobs last enqueued more than ``older_than_s`` ago (a lost message or a restart).

    A duplicate delivery is harmless: the claim is conditional, so only one delivery runs the job.

    Returns:
        Ids of the re-enqueued jobs.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=older_than_s)
    with loop.sessions() as session:
        stmt = select(TrainingJob.id).where(
            TrainingJob.status == "queued",
            func.coalesce(TrainingJob.heartbeat_at, TrainingJob.created_at) <= cutoff,
        )
        ids = [int(i) for i in session.scalars(stmt)]
        if ids:
            session.execute(update(TrainingJob).where(TrainingJob.id.in_(ids)).values(heartbeat_at=now))
            session.commit()
    for job_id in ids:
        logger.info("re-enqueueing queued training job %d", job_id)
        safe_enqueue(partial(loop.queue.enqueue_training, job_id), f"training job {job_id}")
    return ids


def known_projects(loop: Loop) -> list[str]:
    """Label Studio projects the loop has seen (annotations, predictions, jobs or a champion of their own)."""
    default = loop.settings.default_project
    with loop.sessions() as session:
        projects: set[str] = set()
        for column in (Annotation.project, PredictionLog.project, TrainingJob.project, Champion.project):
            projects.update(session.scalars(select(column).distinct()))
    return sorted(p for p in projects if p != default and p.isdigit())


def run_maintenance(loop: Loop) -> dict[str, Any]:
    """The periodic step: fail stale jobs, re-enqueue orphaned queued jobs, reconcile every known project."""
    from backend.reconcile import reconcile_project

    failed = fail_stale_jobs(loop)
    requeued = requeue_orphaned_jobs(loop, older_than_s=loop.settings.job_time_limit_s)
    reconciled: dict[str, Any] = {}
    if loop.gateway is not None:
        for project in known_projects(loop):
            try:
                reconciled[project] = reconcile_project(loop, project=project).as_dict()
            except Exception:
                logger.exception("reconciliation of project %s failed; will retry next round", project)
    return {"failed_jobs": failed, "requeued_jobs": requeued, "reconciled": reconciled}


def job_summary(job: TrainingJob) -> dict[str, Any]:
    """JSON-ready view of a job row (API, CLI)."""
    return {
        "id": job.id,
        "project": job.project,
        "status": job.status,
        "trigger": job.trigger,
        "requested_by": job.requested_by,
        "n_labels": job.n_labels,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "heartbeat_at": job.heartbeat_at,
        "attempts": job.attempts,
        "worker": job.worker,
        "progress": job.progress,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "candidate_version_id": job.candidate_version_id,
        "decision": job.decision,
    }


# --- queues -----------------------------------------------------------------------------------------------------


def _run_training(loop: Loop, job_id: int) -> None:
    from backend.retrain import run_job

    run_job(loop, job_id)


def _run_prelabel(loop: Loop, project: str, task_ids: Sequence[int] | None) -> None:
    from backend.prelabel import prelabel_tasks

    prelabel_tasks(loop, project=project, task_ids=task_ids)


def _run_reconcile(loop: Loop, project: str) -> None:
    from backend.reconcile import reconcile_project

    reconcile_project(loop, project=project)


class InlineQueue:
    """Runs follow-up work synchronously in the calling thread (CLI without a broker, tests, benchmarks)."""

    def __init__(self, loop: Loop) -> None:
        self._loop = loop

    def enqueue_training(self, job_id: int) -> None:
        """Run the job now."""
        _run_training(self._loop, job_id)

    def enqueue_prelabel(self, project: str, task_ids: Sequence[int] | None) -> None:
        """Pre-label now."""
        _run_prelabel(self._loop, project, task_ids)

    def enqueue_reconcile(self, project: str) -> None:
        """Reconcile now."""
        _run_reconcile(self._loop, project)

    def start(self) -> None:
        """Nothing to start."""

    def close(self) -> None:
        """Nothing to stop."""


_STOP: Final[object] = object()


class _Lane:
    """One daemon thread draining a FIFO of callables (the embedded stand-in for one Celery queue)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._items: queue_module.Queue[Callable[[], None] | object] = queue_module.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"ctphase-{self.name}", daemon=True)
            self._thread.start()

    def put(self, work: Callable[[], None]) -> None:
        self._items.put(work)

    def _run(self) -> None:
        while True:
            work = self._items.get()
            if work is _STOP:
                return
            try:
                work()  # type: ignore[operator]
            except Exception:
                logger.exception("background %s work failed", self.name)

    def stop(self, timeout_s: float) -> None:
        self._items.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)


class EmbeddedQueue:
    """Background threads in the API process when there is no broker (``ctphase serve`` out of the box).

    One lane per Celery queue (``train``: one job at a time; ``predict``: pre-labeling and reconciliation) and a
    maintenance thread that runs :func:`run_maintenance` every ``Settings.reconcile_interval_s``. On start it
    fails jobs left ``running`` by a previous process (after the heartbeat timeout) and re-enqueues queued ones.
    Work enqueued before :meth:`start` waits in the lanes until the threads start.
    """

    def __init__(self, loop: Loop) -> None:
        self._loop = loop
        self._train = _Lane(TRAIN_QUEUE)
        self._predict = _Lane(PREDICT_QUEUE)
        self._maintenance: threading.Thread | None = None

    def enqueue_training(self, job_id: int) -> None:
        """Queue the job on the train lane."""
        self._train.put(lambda: _run_training(self._loop, job_id))

    def enqueue_prelabel(self, project: str, task_ids: Sequence[int] | None) -> None:
        """Queue pre-labeling on the predict lane."""
        ids = None if task_ids is None else tuple(task_ids)
        self._predict.put(lambda: _run_prelabel(self._loop, project, ids))

    def enqueue_reconcile(self, project: str) -> None:
        """Queue a reconciliation on the predict lane."""
        self._predict.put(lambda: _run_reconcile(self._loop, project))

    def start(self) -> None:
        """Start the lanes and the maintenance thread (idempotent)."""
        self._train.start()
        self._predict.start()
        if self._maintenance is None:
            requeue_orphaned_jobs(self._loop, older_than_s=0.0)
            self._maintenance = threading.Thread(target=self._maintain, name="ctphase-maintenance", daemon=True)
            self._maintenance.start()

    def _maintain(self) -> None:
        interval = self._loop.settings.reconcile_interval_s
        while not self._loop.stopping.wait(interval):
            try:
                run_maintenance(self._loop)
            except Exception:
                logger.exception("periodic maintenance failed; retrying in %.0f s", interval)

    def close(self) -> None:
        """Ask running work to stop (``Loop.stopping``) and wait briefly for the threads."""
        self._loop.stopping.set()
        self._predict.stop(timeout_s=5.0)
        self._train.stop(timeout_s=30.0)
        if self._maintenance is not None:
            self._maintenance.join(timeout=5.0)


class CeleryQueue:
    """Sends work to the Celery broker by task name; ``worker/tasks.py`` runs it (``send_task``, no import)."""

    def __init__(self, settings: Settings) -> None:
        from celery import Celery

        if settings.broker_url is None:
            raise ValueError("CeleryQueue needs Settings.broker_url (e.g. redis://127.0.0.1:6379/0)")
        self._app = Celery("ctphase-producer", broker=settings.broker_url, set_as_current=False)
        self._app.conf.update(
            # Fail fast when Redis is down: the caller (often a webhook with a 1 s budget) logs it and the
            # maintenance sweep re-enqueues queued jobs later.
            broker_connection_timeout=2.0,
            task_publish_retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
        )

    def _send(self, name: str, args: list[Any], queue: str) -> None:
        self._app.send_task(name, args=args, queue=queue, routing_key=queue)

    def enqueue_training(self, job_id: int) -> None:
        """Send ``ctphase.train(job_id)`` to the ``train`` queue."""
        self._send(TRAIN_TASK, [job_id], TRAIN_QUEUE)

    def enqueue_prelabel(self, project: str, task_ids: Sequence[int] | None) -> None:
        """Send ``ctphase.prelabel(project, task_ids)`` to the ``predict`` queue."""
        self._send(PRELABEL_TASK, [project, None if task_ids is None else list(task_ids)], PREDICT_QUEUE)

    def enqueue_reconcile(self, project: str) -> None:
        """Send ``ctphase.reconcile(project)`` to the ``predict`` queue."""
        self._send(RECONCILE_TASK, [project], PREDICT_QUEUE)

    def start(self) -> None:
        """Nothing to start (the worker is a separate process)."""

    def close(self) -> None:
        """Release the broker connection pool."""
        self._app.close()
