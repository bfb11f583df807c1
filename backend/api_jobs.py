"""Admin routes of the active-learning loop: trigger, list, inspect and cancel training jobs; pre-label a project.

Thin routes over :mod:`backend.jobs`; included by the app factory under ``/admin`` (admin bearer token). Blocking
database work runs in a worker thread. A trigger while the project already has an active job answers 409 with that
job's id (the partial unique index decides, not a check-then-insert).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from anyio import to_thread
from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from backend.api import AdminAuth, StateDep
from backend.jobs import (
    JobNotFoundError,
    JobStateError,
    cancel_job,
    get_job,
    job_summary,
    list_jobs,
    request_training,
)

if TYPE_CHECKING:
    from backend.api import ServiceState
    from backend.loop import Loop

jobs_router = APIRouter(prefix="/admin", tags=["admin", "jobs"], dependencies=[AdminAuth])


class TrainIn(BaseModel):
    """``POST /admin/jobs`` body."""

    project: str = Field(min_length=1, max_length=64, pattern=r"^\d+$", description="Label Studio project id")
    requested_by: str = Field(default="admin-api", max_length=255)


class PrelabelIn(BaseModel):
    """``POST /admin/prelabel`` body (no ``task_ids``: every task not labeled yet)."""

    project: str = Field(min_length=1, max_length=64, pattern=r"^\d+$")
    task_ids: list[int] | None = None


class JobOut(BaseModel):
    """A training job row."""

    id: int
    project: str
    status: str
    trigger: str
    requested_by: str | None
    n_labels: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    attempts: int
    worker: str | None
    progress: dict[str, Any] | None
    error: str | None
    cancel_requested: bool
    candidate_version_id: int | None
    decision: str | None


class JobsOut(BaseModel):
    """``GET /admin/jobs`` answer, newest first."""

    jobs: list[JobOut]


class Enqueued(BaseModel):
    """Acknowledgement of background work."""

    status: str = "enqueued"
    project: str


def _loop(state: ServiceState) -> Loop:
    if state.loop is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the active-learning loop is off in this process")
    return state.loop


def _job_out(loop: Loop, job_id: int) -> JobOut:
    try:
        return JobOut(**job_summary(get_job(loop, job_id)))
    except JobNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from error


@jobs_router.post("/jobs", status_code=status.HTTP_202_ACCEPTED)
async def create_job(body: TrainIn, state: StateDep) -> JobOut:
    """Create (and enqueue) a training job for a project; 409 when one is already queued or running."""
    loop = _loop(state)
    request = await to_thread.run_sync(
        lambda: request_training(loop, project=body.project, trigger="api", requested_by=body.requested_by)
    )
    if request.job_id is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"project {body.project} has a job finishing; retry")
    if not request.created:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"project {body.project} already has active training job {request.job_id}"
        )
    return await to_thread.run_sync(_job_out, loop, request.job_id)


@jobs_router.get("/jobs")
async def get_jobs(state: StateDep, project: str | None = None, limit: int = 20) -> JobsOut:
    """Recent jobs, newest first (optionally of one project)."""
    loop = _loop(state)
    rows = await to_thread.run_sync(lambda: list_jobs(loop, project=project, limit=min(max(limit, 1), 200)))
    return JobsOut(jobs=[JobOut(**job_summary(row)) for row in rows])


@jobs_router.get("/jobs/{job_id}")
async def get_one_job(job_id: int, state: StateDep) -> JobOut:
    """One job with its progress (epoch, loss, validation F1) and decision."""
    return await to_thread.run_sync(_job_out, _loop(state), job_id)


@jobs_router.post("/jobs/{job_id}/cancel")
async def cancel(job_id: int, state: StateDep) -> JobOut:
    """Cancel a queued job now or ask a running one to stop at its next check; 409 when it already finished."""
    loop = _loop(state)
    try:
        row = await to_thread.run_sync(cancel_job, loop, job_id)
    except JobNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from error
    except JobStateError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from error
    return JobOut(**job_summary(row))


@jobs_router.post("/prelabel", status_code=status.HTTP_202_ACCEPTED)
async def prelabel(body: PrelabelIn, state: StateDep) -> Enqueued:
    """Pre-label (or re-score) a project's tasks in the background and write the predictions to Label Studio."""
    loop = _loop(state)
    if loop.gateway is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "set CTPHASE_LABEL_STUDIO_URL and CTPHASE_LABEL_STUDIO_API_KEY first"
        )
    await to_thread.run_sync(lambda: loop.queue.enqueue_prelabel(body.project, body.task_ids))
    return Enqueued(project=body.project)
