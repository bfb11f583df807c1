"""The whole loop against a real Label Studio 1.23.2 and a real ``ctphase serve`` (no mocks).

One scenario, in the order an operator and a radiologist live it:

1. ``ctphase ls init`` creates the project, connects the backend (basic auth), puts the shared secret on the
   webhook, creates the "Review first" view and the preview storage; running it again changes nothing.
2. ``ctphase ls import`` creates one task per phantom series with a preview Label Studio serves; re-importing adds
   nothing.
3. The backend pre-labels the new tasks (``TASKS_CREATED`` webhook): every task gets a prediction with a score,
   and the project's ``model_version`` points at the serving version so score ordering works.
4. The "Review first" view lists tasks by ascending score, i.e. by descending review priority (uncertainty,
   ``others``, metadata conflict), as logged by the backend.
5. Annotations made through the SDK reach the backend by webhook.
6. "Start training" (``START_TRAINING``) produces a new model version.
7. After its promotion the project's ``model_version`` follows and the unlabeled tasks are re-scored and re-ordered;
   ``ctphase ls status`` reports the counts, the champion and no active job.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.ml.preview import PREVIEW_HEIGHT, PREVIEW_WIDTH
from backend.tables import Annotation, ModelVersion, PredictionLog, TrainingJob
from plugin import client as ls
from plugin.importer import PHASE_LABELS
from tests.e2e.conftest import ADMIN_TOKEN, E2EBackend, run_ctphase
from tests.fixtures.label_studio import RunningLabelStudio

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.integration]

T = TypeVar("T")
N_UNLABELED = 2


def wait_for(what: str, probe: Callable[[], T | None], *, timeout_s: float, backend: E2EBackend) -> T:
    """Poll ``probe`` every 0.5 s until it returns something truthy; fail with the backend log otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(
        f"timed out after {timeout_s:.0f} s waiting for {what}\n--- backend log ---\n{backend.process.log_tail(60)}"
    )


def _labels(dataset: Path) -> dict[str, str]:
    with (dataset / "labels.csv").open(newline="", encoding="utf-8") as handle:
        return {row["series_instance_uid"]: row["phase"] for row in csv.DictReader(handle)}


def _tasks(client: ls.LabelStudioClient, project: int, **kwargs: Any) -> list[Any]:
    return list(client.tasks.list(project=project, fields="all", **kwargs))


def _predictions(client: ls.LabelStudioClient, task_id: int) -> list[Any]:
    return list(client.predictions.list(task=task_id))


def _session(backend: E2EBackend) -> Session:
    return Session(backend.engine)


def test_label_studio_round_trip(
    label_studio: RunningLabelStudio, e2e_backend: E2EBackend, phantom_dataset: Path
) -> None:
    settings = e2e_backend.settings
    client = ls.connect(settings)
    labels = _labels(phantom_dataset)

    project, view_id, ml_id = _init_twice(client, settings, e2e_backend)
    _import_twice(client, settings, project=project, n_series=len(labels))
    _previews_are_served(client, label_studio, project=project)
    first_scores = _prelabeled(client, e2e_backend, project=project, model_version=e2e_backend.starter_label)
    _review_order(client, e2e_backend, project=project, view_id=view_id, scores=first_scores)

    unlabeled = sorted(first_scores, key=first_scores.__getitem__)[:N_UNLABELED]
    annotated = _annotate(client, e2e_backend, project=project, labels=labels, skip=set(unlabeled))
    assert len(annotated) == len(labels) - N_UNLABELED

    new_label = _start_training(client, e2e_backend, project=project, ml_id=ml_id)
    new_scores = _rescored(client, e2e_backend, project=project, task_ids=unlabeled, model_version=new_label)
    listed = [t.id for t in _tasks(client, project, view=view_id) if t.id in new_scores]
    assert listed == sorted(new_scores, key=lambda t: (new_scores[t], t))

    status = run_ctphase(settings, "ls", "status")
    assert status.returncode == 0, status.stderr
    assert f"labelled {len(annotated)}, unlabelled {N_UNLABELED}" in status.stdout, status.stdout
    assert f"model_version (review order uses it): {new_label}" in status.stdout
    assert f"champion: {new_label}" in status.stdout
    assert "training: no active job" in status.stdout


# --- steps ----------------------------------------------------------------------------------------------------------


def _init_twice(client: ls.LabelStudioClient, settings: Settings, backend: E2EBackend) -> tuple[int, int, int]:
    done = run_ctphase(settings, "ls", "init")
    assert done.returncode == 0, done.stderr + done.stdout
    again = run_ctphase(settings, "ls", "init")
    assert again.returncode == 0, again.stderr
    assert "updated" in again.stdout

    found = ls.find_project(client, settings.label_studio_project)
    assert found is not None
    backends = list(client.ml.list(project=found.id))
    assert [b.url for b in backends] == [backend.url]
    assert backends[0].auth_method == "BASIC_AUTH"
    hooks = [h for h in client.webhooks.list(project=str(found.id)) if h.url == f"{backend.url}/webhook"]
    assert len(hooks) == 1
    assert hooks[0].headers == {settings.webhook_secret_header: "e2e-webhook-secret"}
    views = [v for v in client.views.list(project=found.id) if (v.data or {}).get("title") == "Review first"]
    assert len(views) == 1
    assert views[0].data["ordering"] == ["tasks:predictions_score"]
    storages = list(client.import_storage.local.list(project=found.id))
    assert [s.path for s in storages] == [str(settings.preview_dir.resolve())]

    unauthenticated = httpx.post(f"{backend.url}/webhook", json={"action": "PROJECT_UPDATED"}, timeout=5)
    assert unauthenticated.status_code == 401  # so annotations that arrive below came with the secret header
    return found.id, int(views[0].id), int(backends[0].id)


def _import_twice(client: ls.LabelStudioClient, settings: Settings, *, project: int, n_series: int) -> None:
    root = str(settings.dicom_roots[0])
    done = run_ctphase(settings, "ls", "import", root)
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"{n_series} tasks created" in done.stdout, done.stdout
    again = run_ctphase(settings, "ls", "import", root)
    assert again.returncode == 0, again.stderr
    assert f"0 tasks created, {n_series} already imported" in again.stdout, again.stdout
    tasks = _tasks(client, project)
    assert len(tasks) == n_series
    assert len({t.data["series_uid"] for t in tasks}) == n_series


def _previews_are_served(client: ls.LabelStudioClient, label_studio: RunningLabelStudio, *, project: int) -> None:
    task = _tasks(client, project)[0]
    url = label_studio.url + task.data["preview"]
    assert httpx.get(url, timeout=10).status_code in (401, 403)  # Label Studio's auth guards the previews
    answer = httpx.get(url, headers={"Authorization": f"Token {label_studio.token}"}, timeout=10)
    assert answer.status_code == 200
    assert Image.open(io.BytesIO(answer.content)).size == (PREVIEW_WIDTH, PREVIEW_HEIGHT)


def _prelabeled(
    client: ls.LabelStudioClient, backend: E2EBackend, *, project: int, model_version: str
) -> dict[int, float]:
    """Wait for one prediction of ``model_version`` per task; returns task id -> score."""

    def scores() -> dict[int, float] | None:
        tasks = _tasks(client, project)
        found: dict[int, float] = {}
        for task in tasks:
            mine = [p for p in _predictions(client, task.id) if p.model_version == model_version]
            if not mine:
                return None
            found[task.id] = float(mine[-1].score)
        return found

    found = wait_for(f"predictions by {model_version} on every task", scores, timeout_s=240, backend=backend)
    for task in _tasks(client, project):
        prediction = [p for p in _predictions(client, task.id) if p.model_version == model_version][-1]
        assert 0.0 <= prediction.score <= 1.0
        (item,) = prediction.result
        assert (item["from_name"], item["to_name"], item["type"]) == ("phase", "image", "choices")
        assert item["value"]["choices"][0] in PHASE_LABELS.values()
    assert ls.project_model_version(client, project=project) == model_version, (
        "the backend did not point the project's model_version at the serving version, so 'Review first' cannot "
        "sort by its scores (when Label Studio fetched the predictions itself through /predict, the pre-labeling "
        "run wrote nothing and left model_version alone)"
    )
    return found


def _review_order(
    client: ls.LabelStudioClient, backend: E2EBackend, *, project: int, view_id: int, scores: dict[int, float]
) -> None:
    listed = [t.id for t in _tasks(client, project, view=view_id)]
    assert listed == sorted(scores, key=lambda t: (scores[t], t))
    with _session(backend) as session:
        rows = session.scalars(select(PredictionLog).where(PredictionLog.project == str(project))).all()
    priority = {r.task_id: r.components["priority"] for r in rows if r.components and r.error is None}
    for task_id, score in scores.items():
        components = next(r.components for r in rows if r.task_id == task_id and r.components)
        weighted = 0.5 * components["uncertainty"] + 0.2 * components["others"] + 0.3 * components["conflict"]
        assert components["priority"] == pytest.approx(weighted, abs=1e-4)
        assert score == pytest.approx(1.0 - priority[task_id], abs=1e-4)
    first, last = listed[0], listed[-1]
    assert priority[first] >= priority[last]  # others / uncertain / conflicting series come first


def _annotate(
    client: ls.LabelStudioClient, backend: E2EBackend, *, project: int, labels: dict[str, str], skip: set[int]
) -> list[int]:
    created = []
    for task in _tasks(client, project):
        if task.id in skip:
            continue
        choice = PHASE_LABELS[labels[task.data["series_uid"]]]
        result = [
            {"from_name": "phase", "to_name": "image", "type": "choices", "value": {"choices": [choice]}},
        ]
        created.append(int(client.annotations.create(id=task.id, result=result).id))

    def arrived() -> bool:
        with _session(backend) as session:
            stored = session.scalars(select(Annotation).where(Annotation.ls_annotation_id.in_(created))).all()
            return len(stored) == len(created) and all(a.phase is not None for a in stored)

    wait_for("annotations to reach the backend by webhook", arrived, timeout_s=30, backend=backend)
    with _session(backend) as session:
        stored = {a.task_id: a.phase for a in session.scalars(select(Annotation)).all()}
    by_task = {t.id: labels[t.data["series_uid"]] for t in _tasks(client, project) if t.id not in skip}
    assert stored == by_task
    return created


def _start_training(client: ls.LabelStudioClient, backend: E2EBackend, *, project: int, ml_id: int) -> str:
    """Press "Start training"; wait for the job; make sure its version is the champion; return its label."""
    client.ml.train(id=ml_id)

    def finished() -> TrainingJob | None:
        with _session(backend) as session:
            job = session.scalars(
                select(TrainingJob).where(TrainingJob.project == str(project)).order_by(TrainingJob.id.desc())
            ).first()
            return job if job is not None and job.status in ("succeeded", "failed", "cancelled") else None

    job = wait_for("the START_TRAINING job to finish", finished, timeout_s=420, backend=backend)
    assert job.status == "succeeded", job.error
    assert job.trigger == "start_training"
    with _session(backend) as session:
        candidate = session.get(ModelVersion, job.candidate_version_id)
        assert candidate is not None
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 2
        label = candidate.label
    if not (job.decision or "").startswith("promoted"):
        # The gate kept the champion (held-out F1 not better): promote as an admin would, then re-score.
        answer = httpx.post(
            f"{backend.url}/admin/promote",
            json={"version": label, "project": str(project)},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        rescore = run_ctphase(backend.settings, "jobs", "prelabel", "--project", str(project))
        assert rescore.returncode == 0, rescore.stderr
    return label


def _rescored(
    client: ls.LabelStudioClient, backend: E2EBackend, *, project: int, task_ids: list[int], model_version: str
) -> dict[int, float]:
    def done() -> dict[int, float] | None:
        if ls.project_model_version(client, project=project) != model_version:
            return None
        found: dict[int, float] = {}
        for task_id in task_ids:
            mine = [p for p in _predictions(client, task_id) if p.model_version == model_version]
            if not mine:
                return None
            found[task_id] = float(mine[-1].score)
        return found

    return wait_for(f"re-scoring by {model_version}", done, timeout_s=240, backend=backend)
