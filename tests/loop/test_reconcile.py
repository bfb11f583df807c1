"""The SDK gateway against a fake Label Studio over HTTP, and reconciliation repairing missed webhooks."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from backend.annotations import handle_event
from backend.config import Settings
from backend.gateway import GatewayError, LabelStudioGateway, load_gateway
from backend.reconcile import reconcile_project
from backend.tables import Annotation
from tests.loop.conftest import RecordingQueue
from tests.loop.fake_label_studio import API_KEY


def test_installed_gateway_lists_pages_and_writes(fake_ls):
    for task_id in range(1, 131):  # more than one page of 100
        fake_ls.add_task(2, task_id, {"series": f"s/{task_id}"})
    fake_ls.annotate(5, "Venous")
    gateway = load_gateway(Settings(label_studio_url=fake_ls.url, label_studio_api_key=API_KEY))
    assert isinstance(gateway, LabelStudioGateway)
    tasks = list(gateway.iter_tasks("2"))
    assert [t.id for t in tasks] == list(range(1, 131))
    assert [t.id for t in tasks if t.is_labeled] == [5]
    (annotation,) = gateway.iter_annotations("2")
    assert (annotation.task_id, annotation.choice, annotation.task_data["series"]) == (5, "Venous", "s/5")
    assert gateway.get_task(7).data == {"series": "s/7"}
    assert "<Choices" in gateway.get_label_config("2")
    result = [{"from_name": "phase", "to_name": "image", "type": "choices", "value": {"choices": ["Arterial"]}}]
    gateway.create_prediction(task_id=7, result=result, score=0.25, model_version="ctphase-2-v1")
    gateway.set_project_model_version("2", "ctphase-2-v1")
    assert fake_ls.predictions_for(7)[0]["score"] == 0.25
    assert fake_ls.project_model_version[2] == "ctphase-2-v1"


def test_gateway_errors_name_the_operation(fake_ls):
    gateway = load_gateway(Settings(label_studio_url=fake_ls.url, label_studio_api_key=API_KEY))
    with pytest.raises(GatewayError, match="setting model_version of project 2 failed: HTTP 400"):
        gateway.set_project_model_version("2", "never-written")
    wrong_key = load_gateway(Settings(label_studio_url=fake_ls.url, label_studio_api_key="f" * 40))
    with pytest.raises(GatewayError, match="HTTP 401"):
        list(wrong_key.iter_tasks("2"))
    down = load_gateway(Settings(label_studio_url="http://127.0.0.1:9", label_studio_api_key=API_KEY))
    with pytest.raises(GatewayError, match="ConnectError"):
        down.get_task(1)


def test_no_label_studio_means_no_gateway():
    assert load_gateway(Settings()) is None


def test_reconciliation_repairs_missed_webhooks(database_url, make_loop, fake_ls):
    loop = make_loop(database_url, queue=RecordingQueue(), fake=fake_ls, retrain_after_n_labels=3)
    for task_id in range(1, 6):
        fake_ls.add_task(9, task_id, {"series": f"s/{task_id}", "series_uid": f"1.{task_id}"})
    delivered = fake_ls.annotate(1, "Arterial")
    handle_event(loop, fake_ls.webhook("ANNOTATION_CREATED", 1, delivered))
    gone = fake_ls.annotate(2, "Venous")
    handle_event(loop, fake_ls.webhook("ANNOTATION_CREATED", 2, gone))
    # Missed: two creates, a skip, and the deletion of annotation `gone`.
    fake_ls.annotate(3, "Non-contrast")
    fake_ls.annotate(4, "Others")
    fake_ls.annotate(5, "Venous", was_cancelled=True)
    fake_ls.delete_annotation(gone["id"])

    report = reconcile_project(loop, project="9")

    assert (report.listed, report.deleted) == (4, 1)
    with loop.sessions() as session:
        rows = {r.task_id: r for r in session.scalars(select(Annotation))}
    assert {t: (r.phase, r.was_cancelled, r.deleted) for t, r in rows.items()} == {
        1: ("arterial", False, False),
        2: ("venous", False, True),
        3: ("non_contrast", False, False),
        4: ("others", False, False),
        5: ("venous", True, False),
    }
    assert rows[3].series_instance_uid == "1.3"
    assert report.job_id is not None  # the missed labels reached the retraining threshold
    again = reconcile_project(loop, project="9")
    assert (again.changed, again.deleted, again.job_id) == (4, 0, None)  # same values rewritten, nothing new


def test_reconcile_without_label_studio_is_skipped(database_url, make_loop):
    loop = make_loop(database_url, queue=RecordingQueue())
    assert reconcile_project(loop, project="1").skipped
