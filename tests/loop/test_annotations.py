"""Webhook events -> idempotent annotation upserts (PostgreSQL and SQLite), label counting, automatic triggers."""

from __future__ import annotations

import itertools
import logging

import pytest
from sqlalchemy import select

from backend.annotations import handle_event
from backend.jobs import count_labels
from backend.tables import Annotation, TrainingJob
from tests.loop.conftest import RecordingQueue

PROJECT = 7


def _payload(action, annotation_id, task_id, choice, updated_at, *, cancelled=False, series="a/s1"):
    return {
        "action": action,
        "annotation": {
            "id": annotation_id,
            "task": task_id,
            "result": [{"from_name": "phase", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}],
            "was_cancelled": cancelled,
            "completed_by": 3,
            "updated_at": updated_at,
        },
        "task": {"id": task_id, "data": {"series": series, "series_uid": f"1.2.{task_id}", "study_uid": "1.9"}},
        "project": {"id": PROJECT, "label_config": "<View/>"},
    }


def _table(loop):
    columns = [c for c in Annotation.__table__.columns if c.name != "received_at"]
    with loop.sessions() as session:
        return sorted(tuple(row) for row in session.execute(select(*columns)))


EVENTS = [
    _payload("ANNOTATION_CREATED", 11, 1, "Arterial", "2024-05-01T10:00:00Z"),
    _payload("ANNOTATION_UPDATED", 11, 1, "Venous", "2024-05-01T10:05:00.5Z"),
    _payload("ANNOTATION_CREATED", 12, 2, "Non-contrast", "2024-05-01T10:01:00+00:00"),
    _payload("ANNOTATION_CREATED", 13, 3, "Others", "2024-05-01T10:02:00Z"),
    {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 13}], "project": {"id": PROJECT}},
]


def test_duplicated_and_reordered_events_leave_the_same_table(database_url, make_loop):
    reference = make_loop(database_url, queue=RecordingQueue())
    for event in EVENTS:
        handle_event(reference, event)
    expected = _table(reference)
    by_id = {row[0]: row for row in expected}
    assert by_id[11][6] == "venous"  # the newer update wins
    assert by_id[12][6] == "non_contrast"
    assert by_id[13][8] is True  # deleted
    assert count_labels(reference, str(PROJECT)) == 2

    orders = [list(reversed(EVENTS)), [EVENTS[i] for i in (4, 1, 3, 0, 2)], EVENTS + EVENTS[::2]]
    for order in orders:
        with reference.sessions() as session:
            session.query(Annotation).delete()
            session.commit()
        for event in order:
            handle_event(reference, event)
            handle_event(reference, event)  # re-delivery
        assert _table(reference) == expected, order


def test_unknown_choice_is_stored_without_phase_and_warned(database_url, make_loop, caplog):
    loop = make_loop(database_url, queue=RecordingQueue())
    with caplog.at_level(logging.WARNING, logger="backend.annotations"):
        outcome = handle_event(loop, _payload("ANNOTATION_CREATED", 21, 4, "Liver", "2024-05-01T10:00:00Z"))
    assert outcome.status == "stored"
    with loop.sessions() as session:
        row = session.get(Annotation, 21)
    assert row is not None
    assert row.phase is None
    assert "'Liver' names no phase" in caplog.text
    assert count_labels(loop, str(PROJECT)) == 0


def test_cancelled_annotations_do_not_count(database_url, make_loop):
    loop = make_loop(database_url, queue=RecordingQueue())
    handle_event(loop, _payload("ANNOTATION_CREATED", 31, 5, "Venous", "2024-05-01T10:00:00Z", cancelled=True))
    handle_event(loop, _payload("ANNOTATION_CREATED", 32, 6, "Venous", "2024-05-01T10:00:00Z"))
    assert count_labels(loop, str(PROJECT)) == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"action": "ANNOTATION_CREATED"},
        {"action": "ANNOTATION_CREATED", "annotation": {"id": "x", "task": 1}, "project": {"id": PROJECT}},
        {"action": "ANNOTATION_UPDATED", "annotation": {"id": 5, "task": 1}},
        {"action": "ANNOTATIONS_DELETED", "project": {"id": PROJECT}},
        {"action": "TASKS_CREATED", "tasks": "nope", "project": {"id": PROJECT}},
        {"action": "START_TRAINING", "project": {"id": "seven"}},
    ],
)
def test_malformed_payloads_are_reported_not_raised(database_url, make_loop, payload):
    loop = make_loop(database_url, queue=RecordingQueue())
    assert handle_event(loop, payload).status == "malformed"


def test_unknown_actions_are_ignored(database_url, make_loop):
    loop = make_loop(database_url, queue=RecordingQueue())
    assert handle_event(loop, {"action": "PROJECT_UPDATED", "project": {"id": PROJECT}}).status == "ignored"


def test_n_new_labels_request_one_job_and_start_training_another_later(database_url, make_loop):
    queue = RecordingQueue()
    loop = make_loop(database_url, queue=queue, retrain_after_n_labels=3)
    ids = itertools.count(100)
    for task in range(1, 3):
        handle_event(loop, _payload("ANNOTATION_CREATED", next(ids), task, "Arterial", "2024-05-01T10:00:00Z"))
    assert queue.calls == []
    handle_event(loop, _payload("ANNOTATION_CREATED", next(ids), 3, "Venous", "2024-05-01T10:00:00Z"))
    with loop.sessions() as session:
        jobs = list(session.scalars(select(TrainingJob)))
    assert [(j.trigger, j.n_labels, j.status) for j in jobs] == [("n_labels", 3, "queued")]
    assert queue.calls == [("train", jobs[0].id)]
    # The job is active: more labels and the "Start training" button do not create a second one.
    handle_event(loop, _payload("ANNOTATION_CREATED", next(ids), 4, "Venous", "2024-05-01T10:00:00Z"))
    outcome = handle_event(loop, {"action": "START_TRAINING", "project": {"id": PROJECT}})
    assert outcome.detail == {"job_id": jobs[0].id, "created": False}
    assert len(queue.calls) == 1


def test_tasks_created_enqueues_prelabel_only_with_label_studio(database_url, make_loop, fake_ls):
    payload = {"action": "TASKS_CREATED", "tasks": [{"id": 5, "data": {}}, {"id": 6, "data": {}}], "project": {"id": 3}}
    without = make_loop(database_url, queue=RecordingQueue())
    assert handle_event(without, payload).status == "ignored"
    queue = RecordingQueue()
    with_ls = make_loop(database_url, queue=queue, fake=fake_ls)
    assert handle_event(with_ls, payload).status == "prelabel_enqueued"
    assert queue.calls == [("prelabel", ("3", (5, 6)))]
