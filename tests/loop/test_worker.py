"""The loop on real Redis, PostgreSQL and a real Celery worker subprocess (prefork pool, concurrency 1).

- a concurrent double "Start training" makes exactly one job; the worker trains it, the better candidate is
  promoted, the worker re-scores the unlabeled tasks into Label Studio, and ``/predict`` serves the new champion;
- a pool process killed with SIGKILL mid-training leaves the job failed (after the heartbeat timeout), the
  champion unchanged, no partial artifact and no re-delivered message; the worker carries on (a new job can be
  cancelled through it).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from backend import prestart
from backend.annotations import handle_event
from backend.jobs import cancel_job, fail_stale_jobs, get_job, list_jobs, request_training
from backend.main import create_app
from backend.registry import champion_of
from backend.tables import ModelVersion
from tests.fixtures.celery_worker import CONFIDENT_EPOCHS
from tests.loop.conftest import CHOICES, constant_model, install_champion, phantom_tasks
from tests.loop.fake_label_studio import API_KEY

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEARTBEAT_TIMEOUT_S = 4.0
DEADLINE_S = 150.0


@pytest.fixture
def broker_url(redis_url):
    """The run's Redis database, emptied before each test (no message of an earlier test survives)."""
    client = redis.Redis.from_url(redis_url)
    lock = client.get("ctphase:test-run")
    client.flushdb()
    client.set("ctphase:test-run", lock or b"x", ex=3600)
    client.close()
    return redis_url


@pytest.fixture
def database(postgres_database_factory):
    url = postgres_database_factory()
    prestart.upgrade(url)
    return url


def _worker_env(settings):
    return {
        "CTPHASE_DATABASE_URL": settings.database_url,
        "CTPHASE_BROKER_URL": settings.broker_url,
        "CTPHASE_MODEL_STORE": str(settings.model_store),
        "CTPHASE_DICOM_ROOTS": ",".join(str(p) for p in settings.dicom_roots),
        "CTPHASE_LABEL_STUDIO_URL": settings.label_studio_url,
        "CTPHASE_LABEL_STUDIO_API_KEY": API_KEY,
        "CTPHASE_TRAIN_PRESET": settings.train_preset,
        "CTPHASE_TRAIN_EPOCHS": str(settings.train_epochs),
        "CTPHASE_TRAIN_WARM_START": "false",
        "CTPHASE_HOLDOUT_FRACTION": str(settings.holdout_fraction),
        "CTPHASE_JOB_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
        "CTPHASE_DEVICE": "cpu",
        "CTPHASE_TORCH_THREADS": "1",
        "CTPHASE_RETRAIN_AFTER_N_LABELS": "1000",
    }


def _wait(condition, what, worker):
    deadline = time.monotonic() + DEADLINE_S
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; worker log:\n{worker.log_text()[-6000:]}")
        time.sleep(0.2)
    return value


def _setup(
    database, broker_url, fake_ls, phantom_dataset, tmp_path, make_loop, *, project, preset, epochs=CONFIDENT_EPOCHS
):
    loop = make_loop(
        database,
        queue="celery",
        fake=fake_ls,
        broker_url=broker_url,
        dicom_roots=[phantom_dataset],
        train_preset=preset,
        train_epochs=epochs,
        train_warm_start=False,
        holdout_fraction=0.25,
        job_heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
    )
    tasks = phantom_tasks(fake_ls, phantom_dataset, project=project)
    champion = install_champion(loop, constant_model(tmp_path / "constant", preset, "others"), project=str(project))
    for task in tasks:
        # Every answer "Venous" against an always-"others" champion: the candidate is unambiguously better (see
        # tests/loop/test_retrain.py for why eight phantom series need this).
        annotation = fake_ls.annotate(task["task_id"], CHOICES["venous"])
        handle_event(loop, fake_ls.webhook("ANNOTATION_CREATED", task["task_id"], annotation))
    return loop, tasks, champion


def _start_training_twice(loop, project):
    barrier = threading.Barrier(2)
    outcomes = []

    def press():
        barrier.wait()
        outcomes.append(handle_event(loop, {"action": "START_TRAINING", "project": {"id": project}}))

    threads = [threading.Thread(target=press) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_double_trigger_trains_once_promotes_rescores_and_serves(
    database, broker_url, fake_ls, phantom_dataset, tmp_path, make_loop, celery_worker, tiny_training
):
    loop, tasks, old_champion = _setup(
        database, broker_url, fake_ls, phantom_dataset, tmp_path, make_loop, project=21, preset=tiny_training
    )
    unlabeled = [fake_ls.add_task(21, 21_900 + i, dict(t["data"])) for i, t in enumerate(tasks[:2])]
    worker = celery_worker(_worker_env(loop.settings))

    outcomes = _start_training_twice(loop, 21)

    assert sorted(o.detail["created"] for o in outcomes) == [False, True]
    (job,) = list_jobs(loop, project="21")
    finished = _wait(lambda: get_job(loop, job.id).status in ("succeeded", "failed"), "the job to finish", worker)
    job = get_job(loop, job.id)
    assert finished
    assert job.status == "succeeded", f"{job.error}\n{worker.log_text()[-4000:]}"
    assert job.decision.startswith("promoted"), job.decision
    assert job.attempts == 1
    with loop.sessions() as session:
        champion = champion_of(session, project="21")
        assert champion.id == job.candidate_version_id != old_champion
        label = champion.label
    # The promotion re-scored the unlabeled tasks through the broker; Label Studio orders by the new version.
    _wait(lambda: all(fake_ls.predictions_for(t["id"]) for t in unlabeled), "re-scored predictions", worker)
    assert {p["model_version"] for t in unlabeled for p in fake_ls.predictions_for(t["id"])} == {label}
    _wait(lambda: fake_ls.project_model_version.get(21) == label, "the project's model_version", worker)

    with TestClient(create_app(loop.settings, migrate=False, loop_mode="off")) as client:
        response = client.post(
            "/predict",
            json={
                "tasks": [{"id": 5, "data": tasks[0]["data"]}],
                "project": "21.1",
                "label_config": fake_ls.label_config,
            },
        )
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["model_version"] == label


def test_sigkill_mid_training_fails_the_job_and_keeps_the_champion(
    database, broker_url, fake_ls, phantom_dataset, tmp_path, make_loop, celery_worker, tiny_training
):
    loop, _tasks, old_champion = _setup(
        database,
        broker_url,
        fake_ls,
        phantom_dataset,
        tmp_path,
        make_loop,
        project=22,
        epochs=400,
        preset=tiny_training,
    )
    store = loop.settings.model_store
    artifacts_before = sorted(p.name for p in (store / "22").iterdir())
    worker = celery_worker(_worker_env(loop.settings))
    job_id = request_training(loop, project="22", trigger="api").job_id

    def training() -> bool:
        progress = get_job(loop, job_id).progress or {}
        return progress.get("stage") == "training" and (progress.get("epoch") or 0) >= 1

    _wait(training, "training to start", worker)
    running = get_job(loop, job_id)
    pool_process = int(running.worker.rsplit(":", 1)[1])
    assert pool_process != worker.pid  # the prefork child runs the job
    assert (store / ".jobs" / f"job-{job_id}").exists()
    os.kill(pool_process, signal.SIGKILL)

    failed = _wait(lambda: fail_stale_jobs(loop), "the stale-job sweep", worker)
    assert failed == [job_id]
    job = get_job(loop, job_id)
    assert job.status == "failed"
    assert "worker lost" in job.error
    with loop.sessions() as session:
        assert champion_of(session, project="22").id == old_champion
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 1
    assert sorted(p.name for p in (store / "22").iterdir()) == artifacts_before  # no partial artifact
    assert not (store / ".jobs" / f"job-{job_id}").exists()
    # Not re-delivered: the killed task's message was acknowledged (task_reject_on_worker_lost=False).
    broker = redis.Redis.from_url(loop.settings.broker_url)
    assert broker.llen("train") == 0
    # The main process acknowledges the lost task's message asynchronously after it notices the dead child.
    _wait(lambda: broker.hlen("unacked") == 0, "the killed task's message to be acknowledged", worker)
    assert worker.process.poll() is None  # the worker replaced its pool process

    # The same worker takes the next job; cancelling it stops training at the next batch.
    second = request_training(loop, project="22", trigger="api").job_id
    _wait(lambda: get_job(loop, second).status == "running", "the next job to start", worker)
    cancel_job(loop, second)
    _wait(lambda: get_job(loop, second).status == "cancelled", "the cancellation", worker)
    assert sorted(p.name for p in (store / "22").iterdir()) == artifacts_before
