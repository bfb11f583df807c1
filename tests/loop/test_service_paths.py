"""The loop inside the API process: embedded background threads (no broker), admin job routes, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.jobs import get_job, run_maintenance
from backend.main import create_app
from backend.ml.prior import PRIOR_VERSION
from backend.prelabel import prelabel_tasks
from backend.retrain import claim_job
from tests.loop.conftest import REPO, RecordingQueue, loop_settings, phantom_tasks

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": "Bearer changethis"}


def _until(condition, what, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_embedded_mode_prelabels_new_tasks_in_the_background(sqlite_database_url, fake_ls, phantom_dataset, tmp_path):
    tasks = phantom_tasks(fake_ls, phantom_dataset, project=31)[:3]
    settings = loop_settings(sqlite_database_url, tmp_path, fake=fake_ls, dicom_roots=[phantom_dataset])
    app = create_app(settings, migrate=False, loop_mode="embedded")
    payload = {"action": "TASKS_CREATED", "tasks": [{"id": t["task_id"], "data": t["data"]} for t in tasks]}
    with TestClient(app) as client:
        response = client.post("/webhook", json={**payload, "project": {"id": 31}})
        assert response.status_code == 200
        # No champion yet: the metadata prior pre-labels, in the embedded "predict" lane, after the answer.
        _until(lambda: all(fake_ls.predictions_for(t["task_id"]) for t in tasks), "background pre-labels")
        _until(lambda: fake_ls.project_model_version.get(31) == PRIOR_VERSION, "the project's model_version")
        loop = app.state.ctphase.loop
        again = prelabel_tasks(loop, project="31", task_ids=[t["task_id"] for t in tasks])
    assert (again.already_predicted, again.written) == (3, 0)  # idempotent: nothing is written twice
    for task in tasks:
        (prediction,) = fake_ls.predictions_for(task["task_id"])
        assert prediction["model_version"] == PRIOR_VERSION
        assert 0.0 <= prediction["score"] <= 0.3


def test_admin_job_routes(pg_database_url, redis_url, tmp_path):
    settings = loop_settings(pg_database_url, tmp_path, broker_url=redis_url)
    with TestClient(create_app(settings, migrate=False, loop_mode="celery")) as client:
        assert client.post("/admin/jobs", json={"project": "5"}).status_code == 401
        created = client.post("/admin/jobs", json={"project": "5", "requested_by": "ana"}, headers=ADMIN)
        assert created.status_code == 202, created.text
        job = created.json()
        assert (job["status"], job["trigger"], job["requested_by"]) == ("queued", "api", "ana")
        conflict = client.post("/admin/jobs", json={"project": "5"}, headers=ADMIN)
        assert conflict.status_code == 409
        assert f"active training job {job['id']}" in conflict.json()["detail"]
        listed = client.get("/admin/jobs", params={"project": "5"}, headers=ADMIN).json()["jobs"]
        assert [j["id"] for j in listed] == [job["id"]]
        cancelled = client.post(f"/admin/jobs/{job['id']}/cancel", headers=ADMIN).json()
        assert cancelled["status"] == "cancelled"
        assert client.post(f"/admin/jobs/{job['id']}/cancel", headers=ADMIN).status_code == 409
        assert client.get("/admin/jobs/999999", headers=ADMIN).status_code == 404
        assert client.post("/admin/prelabel", json={"project": "5"}, headers=ADMIN).status_code == 503  # no LS


def test_periodic_maintenance_sweeps_requeues_and_reconciles(pg_database_url, make_loop, fake_ls):
    queue = RecordingQueue()
    loop = make_loop(pg_database_url, queue=queue, fake=fake_ls, job_heartbeat_timeout_s=1e-3, job_time_limit_s=1e-3)
    fake_ls.add_task(8, 80, {"series": "x"})
    fake_ls.annotate(80, "Arterial")
    from backend.jobs import request_training

    stuck = request_training(loop, project="8", trigger="api").job_id
    claim_job(loop, stuck, worker="gone:1")
    time.sleep(0.01)  # let the 1 ms heartbeat timeout pass
    orphan = request_training(loop, project="9", trigger="api").job_id
    time.sleep(0.01)
    report = run_maintenance(loop)
    assert report["failed_jobs"] == [stuck]
    assert report["requeued_jobs"] == [orphan]
    assert report["reconciled"]["8"]["listed"] == 1  # project 8 is known from its job: its annotation was pulled
    assert get_job(loop, stuck).status == "failed"


def test_cli_runs_a_job_inline_without_a_broker_and_reports_it(sqlite_database_url, tmp_path):
    env = {"CTPHASE_DATABASE_URL": sqlite_database_url, "CTPHASE_MODEL_STORE": str(tmp_path / "store"), "PATH": ""}

    def ctphase(*args):
        return subprocess.run(
            [str(Path(sys.executable).with_name("ctphase")), "jobs", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    train = ctphase("train", "--project", "3")
    assert train.returncode == 1  # no labels: the job ran here and failed with the reason
    assert "runs here, in the foreground" in train.stderr
    job = json.loads(train.stdout)
    assert job["status"] == "failed"
    assert "at least 4 are needed" in job["error"]
    listed = json.loads(ctphase("list", "--project", "3").stdout)
    assert [j["id"] for j in listed] == [job["id"]]
    assert json.loads(ctphase("status", str(job["id"])).stdout)["status"] == "failed"
    worker = ctphase("worker")
    assert worker.returncode == 2
    assert "CTPHASE_BROKER_URL" in worker.stderr
