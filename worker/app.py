"""The Celery application: Redis broker, no result backend, settings chosen for long, idempotent jobs.

Start a worker with ``ctphase jobs worker`` (or ``celery -A worker.app:app worker -Q train,predict``); GPU machines
serve the ``train`` queue with one process per GPU, CPU machines the ``predict`` queue. The periodic maintenance
(stale-job sweep, re-enqueue of orphaned jobs, reconciliation) runs under Celery beat: ``ctphase jobs worker --beat``
on exactly one machine, or a separate ``celery -A worker.app:app beat``.

Tasks carry ids only; the ``training_job`` row is the job's state and result. Task names and queues are defined in
``backend.jobs`` because the API sends by name (``send_task``) and never imports this package.
"""

from __future__ import annotations

from typing import Any, Final

from celery import Celery

from backend.config import Settings, get_settings
from backend.jobs import MAINTENANCE_TASK, PREDICT_QUEUE, PRELABEL_TASK, RECONCILE_TASK, TRAIN_QUEUE, TRAIN_TASK

SOFT_LIMIT_GRACE_S: Final[float] = 120.0
"""Seconds between the soft time limit (the job records itself failed) and the hard kill."""
VISIBILITY_MARGIN_S: Final[float] = 3600.0
"""Extra seconds on top of the longest job before Redis re-delivers an unacknowledged message."""


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for ``settings`` (each with the reason it is set)."""
    hard_limit = settings.job_time_limit_s + SOFT_LIMIT_GRACE_S
    return {
        # No result backend: the database row (training_job, prediction_log) is the result. Nothing polls Celery.
        "result_backend": None,
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        # Acknowledge after the task function returns, so a message survives a broker/worker hiccup before the job
        # starts. Safe because every task is idempotent: the training claim is a conditional UPDATE (a second
        # delivery of a running or finished job is a no-op) and pre-labeling skips tasks already predicted by the
        # champion.
        "task_acks_late": True,
        # ...but never re-queue the message of a child killed by SIGKILL / the OOM killer: re-running a job that
        # just exhausted memory would kill the next worker too. Its job row stops beating and the periodic sweep
        # (backend.jobs.fail_stale_jobs) marks it failed; a later trigger creates a fresh job.
        "task_reject_on_worker_lost": False,
        "task_acks_on_failure_or_timeout": True,
        # One message at a time per process: a long training job must not hold a second message hostage in its
        # prefetch buffer while other workers are idle.
        "worker_prefetch_multiplier": 1,
        # Redis re-delivers a message not acknowledged within the visibility timeout. With late acks a training
        # message stays unacknowledged for the whole job, so the timeout must exceed the longest job, or a second
        # worker would start the same message mid-training (harmless thanks to the claim, but wasteful).
        "broker_transport_options": {"visibility_timeout": int(hard_limit + VISIBILITY_MARGIN_S)},
        # Time limits (prefork pool): the soft limit raises inside the task so the job records itself failed and
        # cleans its scratch folder; the hard limit kills a task stuck in native code.
        "task_soft_time_limit": settings.job_time_limit_s,
        "task_time_limit": hard_limit,
        # Two queues (created on first use): "train" for GPU workers (concurrency 1 per GPU), "predict" for
        # pre-labeling, reconciliation and maintenance (CPU, any concurrency). Workers pick theirs with -Q.
        "task_create_missing_queues": True,
        "task_default_queue": PREDICT_QUEUE,
        "task_routes": {
            TRAIN_TASK: {"queue": TRAIN_QUEUE},
            PRELABEL_TASK: {"queue": PREDICT_QUEUE},
            RECONCILE_TASK: {"queue": PREDICT_QUEUE},
            MAINTENANCE_TASK: {"queue": PREDICT_QUEUE},
        },
        # A lost broker connection does not cancel a running training job: if its message is re-delivered, the
        # claim makes the second delivery a no-op, while cancelling would throw away hours of GPU time.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_retry_on_startup": True,
        # JSON only: messages carry ids and small lists, never pickles.
        "task_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        # Our logging setup (backend.logging) stays in charge of the root logger.
        "worker_hijack_root_logger": False,
        # Periodic maintenance under Celery beat.
        "beat_schedule": {
            "ctphase-maintenance": {
                "task": MAINTENANCE_TASK,
                "schedule": settings.reconcile_interval_s,
                "options": {"queue": PREDICT_QUEUE, "expires": settings.reconcile_interval_s},
            }
        },
    }


def create_app(settings: Settings) -> Celery:
    """Build the Celery application for ``settings``.

    Raises:
        ValueError: ``settings.broker_url`` is not set (the embedded mode needs no worker).
    """
    if settings.broker_url is None:
        raise ValueError(
            "the Celery worker needs CTPHASE_BROKER_URL (e.g. redis://127.0.0.1:6379/0); without a broker "
            "`ctphase serve` runs the same jobs in-process"
        )
    app = Celery("ctphase", broker=settings.broker_url, include=["worker.tasks"], set_as_current=True)
    app.conf.update(celery_config(settings))
    return app


app: Celery = create_app(get_settings())
