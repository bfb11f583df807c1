"""``ctphase jobs ...``: training jobs, pre-labeling, reconciliation and the Celery worker.

With ``CTPHASE_BROKER_URL`` set, ``train``/``prelabel``/``reconcile`` enqueue onto Redis for a ``ctphase jobs worker``
to run. Without a broker (the embedded default) they run the same service functions here, in the foreground.
``ctphase jobs worker`` replaces this process with a Celery worker (``celery -A worker.app:app worker``); it is
started by command name so ``backend`` never imports the ``worker`` package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backend.loop import Loop
    from backend.tables import TrainingJob

_FINISHED = ("succeeded", "failed", "cancelled")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ctphase jobs train|cancel|status|list|prelabel|reconcile|sweep|worker``."""
    jobs = subparsers.add_parser("jobs", help="training jobs, pre-labeling and the background worker")
    sub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)

    train = sub.add_parser("train", help="create a training job for a project (at most one active per project)")
    train.add_argument("--project", required=True, help="Label Studio project id")
    train.add_argument("--by", default="cli", help="who asked (stored on the job row)")
    train.add_argument("--wait", action="store_true", help="with a broker: poll until the job finishes")
    train.set_defaults(func=_train)

    cancel = sub.add_parser("cancel", help="ask a queued or running job to stop")
    cancel.add_argument("job_id", type=int)
    cancel.set_defaults(func=_cancel)

    status = sub.add_parser("status", help="print one job as JSON")
    status.add_argument("job_id", type=int)
    status.set_defaults(func=_status)

    listing = sub.add_parser("list", help="list recent jobs")
    listing.add_argument("--project", default=None)
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=_list)

    prelabel = sub.add_parser("prelabel", help="pre-label (or re-score) a project's unlabeled tasks in Label Studio")
    prelabel.add_argument("--project", required=True)
    prelabel.add_argument("--task", type=int, action="append", default=None, help="only these task ids")
    prelabel.set_defaults(func=_prelabel)

    reconcile = sub.add_parser("reconcile", help="pull a project's annotations from Label Studio and repair the table")
    reconcile.add_argument("--project", required=True)
    reconcile.set_defaults(func=_reconcile)

    sweep = sub.add_parser("sweep", help="fail running jobs whose worker stopped sending heartbeats")
    sweep.set_defaults(func=_sweep)

    worker = sub.add_parser("worker", help="start a Celery worker (needs CTPHASE_BROKER_URL)")
    worker.add_argument("--queues", default="train,predict", help="comma-separated queues (train needs the GPU)")
    worker.add_argument("--concurrency", type=int, default=1, help="processes; keep 1 per GPU on the train queue")
    worker.add_argument("--pool", default="prefork", choices=("prefork", "solo", "threads"))
    worker.add_argument("--beat", action="store_true", help="also run the periodic reconcile/sweep schedule")
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(func=_worker)


def _loop() -> Loop:
    from backend.config import get_settings
    from backend.loop import build_loop

    return build_loop(get_settings())


def _job_json(job: TrainingJob) -> dict[str, Any]:
    from backend.jobs import job_summary

    return job_summary(job)


def _print(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _train(args: argparse.Namespace) -> int:
    from backend import jobs

    loop = _loop()
    try:
        if loop.settings.broker_url is None:
            print("no broker configured (CTPHASE_BROKER_URL): the job runs here, in the foreground", file=sys.stderr)
        request = jobs.request_training(loop, project=args.project, trigger="cli", requested_by=args.by)
        if request.job_id is None:
            print(f"project {args.project}: could not create a job, try again", file=sys.stderr)
            return 1
        if not request.created:
            print(f"project {args.project} already has active job {request.job_id}", file=sys.stderr)
            return 1
        if loop.settings.broker_url is not None and args.wait:
            _wait(loop, request.job_id)
        job = jobs.get_job(loop, request.job_id)
        _print(_job_json(job))
        return 0 if job.status in ("queued", "running", "succeeded") else 1
    finally:
        loop.close()


def _wait(loop: Loop, job_id: int) -> None:
    from backend import jobs

    while (job := jobs.get_job(loop, job_id)).status not in _FINISHED:
        print(f"job {job_id}: {job.status} {json.dumps(job.progress or {})}", file=sys.stderr)
        time.sleep(5.0)


def _cancel(args: argparse.Namespace) -> int:
    from backend import jobs

    loop = _loop()
    try:
        job = jobs.cancel_job(loop, args.job_id)
        _print(_job_json(job))
        return 0
    finally:
        loop.close()


def _status(args: argparse.Namespace) -> int:
    from backend import jobs

    loop = _loop()
    try:
        _print(_job_json(jobs.get_job(loop, args.job_id)))
        return 0
    finally:
        loop.close()


def _list(args: argparse.Namespace) -> int:
    from backend import jobs

    loop = _loop()
    try:
        _print([_job_json(job) for job in jobs.list_jobs(loop, project=args.project, limit=args.limit)])
        return 0
    finally:
        loop.close()


def _prelabel(args: argparse.Namespace) -> int:
    from backend.prelabel import prelabel_tasks

    loop = _loop()
    try:
        task_ids = tuple(args.task) if args.task else None
        if loop.settings.broker_url is None:
            report = prelabel_tasks(loop, project=args.project, task_ids=task_ids)
            _print(report.as_dict())
        else:
            loop.queue.enqueue_prelabel(args.project, task_ids)
            print(f"pre-labeling of project {args.project} enqueued", file=sys.stderr)
        return 0
    finally:
        loop.close()


def _reconcile(args: argparse.Namespace) -> int:
    from backend.reconcile import reconcile_project

    loop = _loop()
    try:
        _print(reconcile_project(loop, project=args.project).as_dict())
        return 0
    finally:
        loop.close()


def _sweep(_args: argparse.Namespace) -> int:
    from backend.jobs import fail_stale_jobs

    loop = _loop()
    try:
        failed = fail_stale_jobs(loop)
        _print({"failed_jobs": failed})
        return 0
    finally:
        loop.close()


def _worker(args: argparse.Namespace) -> int:
    from backend.config import get_settings

    if get_settings().broker_url is None:
        print("set CTPHASE_BROKER_URL (e.g. redis://127.0.0.1:6379/0) to run a Celery worker", file=sys.stderr)
        return 2
    argv = [sys.executable, "-m", "celery", "-A", "worker.app:app", "worker", f"--loglevel={args.loglevel}"]
    argv += [f"--queues={args.queues}", f"--concurrency={args.concurrency}", f"--pool={args.pool}"]
    if args.beat:
        argv.append("--beat")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # noqa: S606  (fixed argv, our own interpreter)
