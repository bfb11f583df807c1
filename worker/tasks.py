"""Thin Celery tasks: each takes ids and calls the backend service that the embedded mode calls too.

One :class:`backend.loop.Loop` per worker process, built lazily after the fork (a database pool must not be shared
across processes); its queue is the Celery queue, so a promotion's re-scoring goes back through the broker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from celery.signals import worker_process_shutdown

from backend.config import get_settings
from backend.jobs import MAINTENANCE_TASK, PRELABEL_TASK, RECONCILE_TASK, TRAIN_TASK, run_maintenance
from backend.loop import Loop, build_loop
from backend.prelabel import prelabel_tasks
from backend.reconcile import reconcile_project
from backend.retrain import run_job
from worker.app import app

logger = logging.getLogger(__name__)

_loop: Loop | None = None
_loop_lock = threading.Lock()


def worker_loop() -> Loop:
    """This process's loop (built on first use, in the child process)."""
    global _loop  # one loop per worker process, by design
    with _loop_lock:
        if _loop is None:
            _loop = build_loop(get_settings(), queue="celery")
        return _loop


def _close_loop(**_kwargs: Any) -> None:
    global _loop
    with _loop_lock:
        if _loop is not None:
            _loop.close()
            _loop = None


worker_process_shutdown.connect(_close_loop, weak=False)


def train(job_id: int) -> None:
    """Run training job ``job_id`` (a second delivery of the same id is a no-op)."""
    run_job(worker_loop(), int(job_id))


def prelabel(project: str, task_ids: Sequence[int] | None = None) -> None:
    """Pre-label (or re-score) tasks of ``project``; None: every task without a label."""
    ids = None if task_ids is None else tuple(int(t) for t in task_ids)
    prelabel_tasks(worker_loop(), project=str(project), task_ids=ids)


def reconcile(project: str) -> None:
    """Pull ``project``'s annotations from Label Studio and repair the annotation table."""
    reconcile_project(worker_loop(), project=str(project))


def maintenance() -> None:
    """Sweep stale jobs, re-enqueue orphaned ones and reconcile every known project."""
    logger.info("maintenance: %s", run_maintenance(worker_loop()))


train_task = app.task(name=TRAIN_TASK, ignore_result=True)(train)
prelabel_task = app.task(name=PRELABEL_TASK, ignore_result=True)(prelabel)
reconcile_task = app.task(name=RECONCILE_TASK, ignore_result=True)(reconcile)
maintenance_task = app.task(name=MAINTENANCE_TASK, ignore_result=True)(maintenance)
