"""Retraining through the loop (inline queue, real PostgreSQL, phantom DICOM): the evaluation gate decides.

Eight phantom series are far too few for a network to learn the phases, so the simulated radiologist's answers are
chosen to make model quality unambiguous on the held-out studies: a project labelled all "Venous" (the trained
candidate answers venous: held-out F1 1) against a champion that always answers "others" (F1 0) is a better
candidate; training studies labelled "Arterial" while the held-out ones say "Venous" give a candidate with F1 0
against an always-venous champion, a worse one. What is under test is the loop: trigger, claim, dataset, real
training, the same-held-out comparison, registration, promotion, re-scoring into Label Studio and ``/predict``.
"""

from __future__ import annotations

import dataclasses

import pytest
from fastapi.testclient import TestClient

from backend.annotations import handle_event
from backend.jobs import list_jobs
from backend.main import create_app
from backend.registry import champion_of
from backend.retrain import gate_voting
from backend.tables import ModelVersion
from tests.fixtures.celery_worker import CONFIDENT_EPOCHS
from tests.loop.conftest import (
    CHOICES,
    constant_model,
    holdout_studies,
    install_champion,
    phantom_tasks,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOLDOUT = 0.25


def _label_all(loop, fake_ls, tasks, answer):
    """The radiologist labels every task with ``answer(task)``, one webhook per label."""
    for task in tasks:
        annotation = fake_ls.annotate(task["task_id"], CHOICES[answer(task)])
        handle_event(loop, fake_ls.webhook("ANNOTATION_CREATED", task["task_id"], annotation))


def _settings(phantom_dataset, preset, n_labels, **extra):
    return {
        "dicom_roots": [phantom_dataset],
        "train_preset": preset,
        "train_epochs": CONFIDENT_EPOCHS,
        "train_warm_start": False,
        "retrain_after_n_labels": n_labels,
        "holdout_fraction": HOLDOUT,
        **extra,
    }


def test_better_candidate_is_promoted_rescored_and_served(
    pg_database_url, make_loop, fake_ls, phantom_dataset, tiny_training, tmp_path
):
    tasks = phantom_tasks(fake_ls, phantom_dataset, project=11)
    unlabeled = [fake_ls.add_task(11, 11_900 + i, dict(t["data"])) for i, t in enumerate(tasks[:2])]
    loop = make_loop(pg_database_url, fake=fake_ls, **_settings(phantom_dataset, tiny_training, len(tasks)))
    old_champion = install_champion(loop, constant_model(tmp_path / "constant", tiny_training, "others"), project="11")

    _label_all(loop, fake_ls, tasks, lambda _task: "venous")  # the last label triggers the job (run inline)

    (job,) = list_jobs(loop, project="11")
    assert job.status == "succeeded", job.error
    assert job.decision.startswith("promoted"), job.decision
    assert (job.trigger, job.n_labels, job.attempts) == ("n_labels", len(tasks), 1)
    assert job.progress["epoch"] == job.progress["n_epochs"] == CONFIDENT_EPOCHS
    assert (job.progress["candidate_f1"], job.progress["champion_f1"]) == (1.0, 0.0)
    with loop.sessions() as session:
        champion = champion_of(session, project="11")
        assert champion is not None
        assert champion.id == job.candidate_version_id != old_champion
        label = champion.label
    # Re-scoring after the promotion: every unlabeled task got a prediction by the new champion, and the project's
    # model_version follows it (Label Studio orders by the score of that version only).
    for task in unlabeled:
        (prediction,) = fake_ls.predictions_for(task["id"])
        assert prediction["model_version"] == label
        assert 0.0 <= prediction["score"] <= 1.0
        assert prediction["result"][0]["value"]["choices"][0] in CHOICES.values()
    assert fake_ls.project_model_version[11] == label
    # No scratch left behind: the store holds the two registered versions and the shared slice cache only.
    assert not list((loop.settings.model_store / ".jobs").glob("job-*"))

    app = create_app(loop.settings, migrate=False, loop_mode="off")
    with TestClient(app) as client:
        response = client.post(
            "/predict",
            json={
                "tasks": [{"id": 1, "data": tasks[0]["data"]}],
                "project": "11.1700000000",
                "label_config": fake_ls.label_config,
            },
        )
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["model_version"] == label


def test_worse_candidate_is_registered_but_not_promoted(
    pg_database_url, make_loop, fake_ls, phantom_dataset, tiny_training, tmp_path
):
    tasks = phantom_tasks(fake_ls, phantom_dataset, project=12)
    held = holdout_studies(tasks, fraction=HOLDOUT)
    loop = make_loop(pg_database_url, fake=fake_ls, **_settings(phantom_dataset, tiny_training, len(tasks)))
    old_champion = install_champion(loop, constant_model(tmp_path / "venous", tiny_training, "venous"), project="12")

    _label_all(loop, fake_ls, tasks, lambda task: "venous" if task["study"] in held else "arterial")

    (job,) = list_jobs(loop, project="12")
    assert job.status == "succeeded", job.error
    assert job.decision.startswith("kept champion"), job.decision
    assert (job.progress["candidate_f1"], job.progress["champion_f1"]) == (0.0, 1.0)
    with loop.sessions() as session:
        champion = champion_of(session, project="12")
        assert champion is not None
        assert champion.id == old_champion
        assert session.get(ModelVersion, job.candidate_version_id) is not None  # registered, for the record
    assert fake_ls.predictions == []  # no promotion, no re-scoring


def test_awaiting_admin_when_auto_promotion_is_off(
    pg_database_url, make_loop, fake_ls, phantom_dataset, tiny_training, tmp_path
):
    tasks = phantom_tasks(fake_ls, phantom_dataset, project=13)
    settings = _settings(phantom_dataset, tiny_training, len(tasks), auto_promote=False, train_epochs=1)
    loop = make_loop(pg_database_url, fake=fake_ls, **settings)

    _label_all(loop, fake_ls, tasks, lambda task: task["phase"])

    (job,) = list_jobs(loop, project="13")
    assert job.status == "succeeded", job.error
    assert job.decision.startswith("awaiting admin"), job.decision  # no champion yet: the candidate is better
    with loop.sessions() as session:
        assert champion_of(session, project="13") is None


def test_too_few_labels_fail_the_job_with_a_clear_message(pg_database_url, make_loop, fake_ls, phantom_dataset):
    tasks = phantom_tasks(fake_ls, phantom_dataset, project=14)[:3]
    loop = make_loop(pg_database_url, fake=fake_ls, dicom_roots=[phantom_dataset], retrain_after_n_labels=3)
    _label_all(loop, fake_ls, tasks, lambda task: task["phase"])
    (job,) = list_jobs(loop, project="14")
    assert job.status == "failed"
    assert "at least 4 are needed" in job.error
    assert job.finished_at is not None


def test_champion_of_an_older_preset_definition_is_not_warm_started(
    pg_database_url, make_loop, fake_ls, phantom_dataset, tiny_training, tmp_path, monkeypatch
):
    """An upgrade that redefines a preset (the cpu preset went from 128 to 96 px) must not break retraining."""
    from backend.ml.network import PRESETS

    current = PRESETS[tiny_training]
    monkeypatch.setitem(PRESETS, tiny_training, dataclasses.replace(current, image_size=current.image_size * 2))
    older = constant_model(tmp_path / "older", tiny_training, "others")
    monkeypatch.setitem(PRESETS, tiny_training, current)
    tasks = phantom_tasks(fake_ls, phantom_dataset, project=15)
    settings = _settings(phantom_dataset, tiny_training, len(tasks), train_warm_start=True, train_epochs=1)
    loop = make_loop(pg_database_url, fake=fake_ls, **settings)
    install_champion(loop, older, project="15")

    _label_all(loop, fake_ls, tasks, lambda task: task["phase"])

    (job,) = list_jobs(loop, project="15")
    assert job.status == "succeeded", job.error
    with loop.sessions() as session:
        candidate = session.get(ModelVersion, job.candidate_version_id)
        assert candidate is not None
        assert candidate.parent_version_id is None  # trained from random weights, not from the older champion


def test_the_gate_compares_networks_not_the_heads_fitted_on_its_series() -> None:
    """Heads are fitted on the held-out series the gate compares on: comparing through them would favour the fitter."""
    assert gate_voting("auto") == "weighted"
    assert gate_voting("head") == "weighted"
    assert [gate_voting(rule) for rule in ("majority", "mean", "weighted")] == ["majority", "mean", "weighted"]
