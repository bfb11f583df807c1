"""Job rows: one active job per project under concurrency, atomic claim, cancel, stale-job sweep, re-enqueue."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from backend.db import utcnow
from backend.jobs import (
    JobNotFoundError,
    JobStateError,
    cancel_job,
    fail_stale_jobs,
    get_job,
    job_work_dir,
    request_training,
    requeue_orphaned_jobs,
)
from backend.retrain import claim_job
from backend.tables import TrainingJob
from tests.loop.conftest import RecordingQueue


def test_concurrent_double_trigger_creates_exactly_one_job(database_url, make_loop):
    loop = make_loop(database_url, queue=RecordingQueue())
    barrier = threading.Barrier(2)
    results = []

    def trigger(name):
        barrier.wait()
        results.append(request_training(loop, project="4", trigger="api", requested_by=name))

    for _round in range(3):  # repeat: the race must be lost cleanly every time
        with loop.sessions() as session:
            session.query(TrainingJob).delete()
            session.commit()
        results.clear()
        threads = [threading.Thread(target=trigger, args=(f"user{i}",)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with loop.sessions() as session:
            jobs = list(session.scalars(select(TrainingJob)))
        assert len(jobs) == 1
        assert sorted(r.created for r in results) == [False, True]
        assert {r.job_id for r in results} == {jobs[0].id}


def test_other_projects_are_independent_and_finished_jobs_free_the_project(database_url, make_loop):
    loop = make_loop(database_url, queue=RecordingQueue())
    first = request_training(loop, project="1", trigger="api")
    assert request_training(loop, project="2", trigger="api").created
    cancel_job(loop, first.job_id)
    again = request_training(loop, project="1", trigger="api")
    assert again.created
    assert again.job_id != first.job_id


def test_claim_is_atomic_and_a_second_delivery_is_a_no_op(database_url, make_loop):
    loop = make_loop(database_url, queue=RecordingQueue())
    job_id = request_training(loop, project="1", trigger="api").job_id
    assert claim_job(loop, job_id, worker="w1")
    assert not claim_job(loop, job_id, worker="w2")
    job = get_job(loop, job_id)
    assert (job.status, job.worker, job.attempts) == ("running", "w1", 1)


def test_cancel(database_url, make_loop):
    loop = make_loop(database_url, queue=RecordingQueue())
    queued = request_training(loop, project="1", trigger="api").job_id
    assert cancel_job(loop, queued).status == "cancelled"
    assert not claim_job(loop, queued, worker="w")  # a cancelled job's message does nothing
    running = request_training(loop, project="1", trigger="api").job_id
    claim_job(loop, running, worker="w")
    job = cancel_job(loop, running)
    assert (job.status, job.cancel_requested) == ("running", True)
    with pytest.raises(JobNotFoundError):
        cancel_job(loop, 999_999)
    other = request_training(loop, project="2", trigger="api").job_id
    claim_job(loop, other, worker="w")
    with loop.sessions() as session:
        session.get(TrainingJob, other).status = "succeeded"
        session.commit()
    with pytest.raises(JobStateError, match="already finished"):
        cancel_job(loop, other)


def test_stale_running_job_fails_and_its_scratch_folder_goes(database_url, make_loop):
    loop = make_loop(database_url, queue=RecordingQueue(), job_heartbeat_timeout_s=60)
    job_id = request_training(loop, project="1", trigger="api").job_id
    claim_job(loop, job_id, worker="host:123")
    scratch = job_work_dir(loop.settings, job_id)
    (scratch / "candidate").mkdir(parents=True)
    assert fail_stale_jobs(loop) == []  # fresh heartbeat
    later = utcnow() + timedelta(seconds=61)
    assert fail_stale_jobs(loop, now=later) == [job_id]
    job = get_job(loop, job_id)
    assert job.status == "failed"
    assert "worker lost" in job.error
    assert not scratch.exists()
    assert fail_stale_jobs(loop, now=later) == []  # exactly once
    assert request_training(loop, project="1", trigger="api").created  # the project is free again


def test_trigger_sweeps_a_dead_job_of_its_project_first(database_url, make_loop):
    loop = make_loop(database_url, queue=RecordingQueue(), job_heartbeat_timeout_s=60)
    dead = request_training(loop, project="1", trigger="api").job_id
    claim_job(loop, dead, worker="gone:1")
    with loop.sessions() as session:
        session.get(TrainingJob, dead).heartbeat_at = utcnow() - timedelta(minutes=5)
        session.commit()
    fresh = request_training(loop, project="1", trigger="api")
    assert fresh.created
    assert get_job(loop, dead).status == "failed"


def test_orphaned_queued_jobs_are_re_enqueued(database_url, make_loop):
    queue = RecordingQueue()
    loop = make_loop(database_url, queue=queue)
    job_id = request_training(loop, project="1", trigger="api").job_id
    assert queue.calls == [("train", job_id)]
    assert requeue_orphaned_jobs(loop, older_than_s=3600) == []
    assert requeue_orphaned_jobs(loop, older_than_s=3600, now=utcnow() + timedelta(hours=2)) == [job_id]
    assert queue.calls == [("train", job_id), ("train", job_id)]
