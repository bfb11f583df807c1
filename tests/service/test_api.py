"""The HTTP surface without series: health, setup, versions, label-config errors, auth, admin API, webhook, metrics."""

from __future__ import annotations

import argparse
import base64
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from backend.config import Settings, get_settings
from backend.db import make_engine, make_session_factory
from backend.tables import Annotation
from tests.service.conftest import ADMIN_TOKEN, LABEL_CONFIG, admin_headers

pytestmark = pytest.mark.integration


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_health_setup_versions(client: TestClient) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "UP"
    assert health.headers["x-request-id"]
    setup = client.post("/setup", json={"project": "3.1712345678", "schema": LABEL_CONFIG, "hostname": "http://ls"})
    assert setup.status_code == 200
    assert setup.json() == {"model_version": "metadata-prior-v1"}
    versions = client.get("/versions")
    assert versions.json() == {"versions": ["metadata-prior-v1"]}


def test_request_id_is_echoed(client: TestClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    assert client.get("/health", headers={"X-Request-ID": "bad id\n"}).headers["x-request-id"] != "bad id\n"


def test_setup_with_unusable_config_is_422(client: TestClient) -> None:
    config = '<View><Image name="i" value="$i"/><Choices name="c" toName="i"><Choice value="Liver"/></Choices></View>'
    response = client.post("/setup", json={"project": "3.1", "schema": config})
    assert response.status_code == 422
    body = response.json()
    assert body["kind"] == "label_config"
    assert "no choice for non_contrast, arterial, venous, others" in body["detail"]
    assert "<Choice value=" in body["detail"]


def test_predict_without_any_config_is_422(client: TestClient) -> None:
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"series": "x"}}], "project": "9.1"})
    assert response.status_code == 422
    assert "call /setup" in response.json()["detail"]


def test_predict_empty_task_list(client: TestClient) -> None:
    response = client.post("/predict", json={"tasks": [], "project": "9.1", "label_config": LABEL_CONFIG})
    assert response.json() == {"results": []}


def test_validation_errors_do_not_echo_input(client: TestClient) -> None:
    response = client.post("/predict", json={"tasks": "/patients/DOE^JOHN/series"})
    assert response.status_code == 422
    assert "DOE" not in response.text


# --- auth --------------------------------------------------------------------------------------------------------


@pytest.fixture
def secured(client_factory: Callable[..., TestClient], make_settings: Callable[..., Settings]) -> TestClient:
    settings = make_settings(basic_auth_user="ls", basic_auth_password="ls-pass-1", webhook_secret="hook-secret-1")
    return client_factory(settings)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/setup", {"project": "1.1", "schema": LABEL_CONFIG}),
        ("post", "/predict", {"tasks": [], "project": "1.1", "label_config": LABEL_CONFIG}),
        ("get", "/versions", None),
    ],
)
def test_basic_auth_required(secured: TestClient, method: str, path: str, body: object) -> None:
    call = getattr(secured, method)
    kwargs = {"json": body} if body is not None else {}
    missing = call(path, **kwargs)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Basic"
    assert call(path, headers=_basic("ls", "wrong"), **kwargs).status_code == 401
    assert call(path, headers=_basic("other", "ls-pass-1"), **kwargs).status_code == 401
    assert call(path, headers={"Authorization": "Basic !!notbase64"}, **kwargs).status_code == 401
    assert call(path, headers=_basic("ls", "ls-pass-1"), **kwargs).status_code == 200


def test_health_open_but_refuses_wrong_credentials(secured: TestClient) -> None:
    assert secured.get("/health").status_code == 200
    assert secured.get("/health", headers=_basic("ls", "ls-pass-1")).status_code == 200
    assert secured.get("/health", headers=_basic("ls", "nope")).status_code == 401


def test_webhook_secret(secured: TestClient) -> None:
    event = {"action": "PROJECT_UPDATED", "project": {"id": 1}}
    missing = secured.post("/webhook", json=event)
    assert missing.status_code == 401
    assert "X-Ctphase-Webhook-Secret missing" in missing.json()["detail"]
    wrong = secured.post("/webhook", json=event, headers={"X-Ctphase-Webhook-Secret": "nope"})
    assert wrong.status_code == 401
    assert "nope" not in wrong.text
    ok = secured.post("/webhook", json=event, headers={"X-Ctphase-Webhook-Secret": "hook-secret-1"})
    assert ok.status_code == 200
    assert ok.json() == {"status": "accepted", "action": "PROJECT_UPDATED"}
    # "Start training" comes through Label Studio's ML connection: basic auth, no custom header
    assert secured.post("/webhook", json={"action": "START_TRAINING"}, headers=_basic("ls", "ls-pass-1")).is_success


def test_webhook_bad_body(client: TestClient) -> None:
    assert client.post("/webhook", content=b"not json").status_code == 400
    assert client.post("/webhook", json=[1, 2]).status_code == 400


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/admin/versions", None),
        ("post", "/admin/promote", {"version": 1}),
        ("post", "/admin/rollback", {}),
        ("post", "/admin/register", {"path": "/tmp/x"}),
    ],
)
def test_admin_bearer_required(client: TestClient, method: str, path: str, body: object) -> None:
    call = getattr(client, method)
    kwargs = {"json": body} if body is not None else {}
    missing = call(path, **kwargs)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert call(path, headers=admin_headers("wrong-token"), **kwargs).status_code == 401
    assert call(path, headers={"Authorization": f"Basic {ADMIN_TOKEN}"}, **kwargs).status_code == 401
    assert call(path, headers=admin_headers(), **kwargs).status_code not in (401, 403)


def test_production_refuses_default_secrets(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from backend.cli import serve

    monkeypatch.setenv("CTPHASE_ENVIRONMENT", "production")
    get_settings.cache_clear()
    try:
        code = serve._serve(argparse.Namespace(host="127.0.0.1", port=0, no_migrate=True))
    finally:
        get_settings.cache_clear()
    assert code == 2
    err = capsys.readouterr().err
    assert "CTPHASE_ADMIN_TOKEN must be set to a non-default secret when CTPHASE_ENVIRONMENT=production" in err


# --- admin registry API ------------------------------------------------------------------------------------------


def test_admin_register_promote_rollback(client: TestClient, tiny_model_factory: Callable[[int], Path]) -> None:
    headers = admin_headers()
    first = client.post("/admin/register", json={"path": str(tiny_model_factory(1))}, headers=headers)
    assert first.status_code == 201, first.text
    assert first.json()["version"]["label"] == "ctphase-default-v1"
    assert first.json()["promoted"] is False
    second = client.post("/admin/register", json={"path": str(tiny_model_factory(2)), "promote": True}, headers=headers)
    assert second.json()["promoted"] is True
    listing = client.get("/admin/versions", headers=headers).json()
    assert listing["champion"] == "ctphase-default-v2"
    assert [v["label"] for v in listing["versions"]] == ["ctphase-default-v2", "ctphase-default-v1"]
    assert listing["versions"][0]["metrics"]["val_macro_f1"] == pytest.approx(0.27)
    assert listing["versions"][0]["is_champion"] is True
    promoted = client.post("/admin/promote", json={"version": "v1"}, headers=headers).json()
    assert promoted == {
        "project": "default",
        "champion": "ctphase-default-v1",
        "previous": "ctphase-default-v2",
        "action": "promote",
    }
    assert client.post("/admin/rollback", json={}, headers=headers).json()["champion"] == "ctphase-default-v2"
    assert client.post("/setup", json={"project": "5.1", "schema": LABEL_CONFIG}).json() == {
        "model_version": "ctphase-default-v2"
    }
    assert "ctphase-default-v1" in client.get("/versions").json()["versions"]


def test_admin_errors(client: TestClient, tmp_path: Path) -> None:
    headers = admin_headers()
    unknown = client.post("/admin/promote", json={"version": 4}, headers=headers)
    assert unknown.status_code == 404
    assert "registered: none" in unknown.json()["detail"]
    nothing = client.post("/admin/rollback", json={"project": "4"}, headers=headers)
    assert nothing.status_code == 409
    bad = client.post("/admin/register", json={"path": str(tmp_path)}, headers=headers)
    assert bad.status_code == 400
    assert bad.json()["kind"] == "artifact_registration"
    invalid = client.get("/admin/versions", params={"project": "../x"}, headers=headers)
    assert invalid.status_code == 400


# --- webhook handoff and metrics -------------------------------------------------------------------------------


def test_webhook_hands_annotation_to_the_loop(
    client_factory: Callable[..., TestClient], make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(retrain_after_n_labels=1000)
    client = client_factory(settings, loop_mode="inline")
    event = {
        "action": "ANNOTATION_CREATED",
        "annotation": {
            "id": 501,
            "result": [{"from_name": "phase", "to_name": "image", "type": "choices", "value": {"choices": ["Venous"]}}],
            "task": 77,
            "completed_by": 1,
            "updated_at": "2024-05-01T12:00:00Z",
            "was_cancelled": False,
        },
        "task": {"id": 77, "data": {"series": "study/series"}, "project": 3},
        "project": {"id": 3},
    }
    assert client.post("/webhook", json=event).status_code == 200
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            row = session.scalars(select(Annotation)).one()
    finally:
        engine.dispose()
    assert (row.ls_annotation_id, row.project, row.task_id, row.phase) == (501, "3", 77, "venous")


def test_metrics_per_app(client_factory: Callable[..., TestClient]) -> None:
    first, second = client_factory(), client_factory()
    first.get("/health")
    first.post("/setup", json={"project": "2.1", "schema": "<View/>"})
    text = first.get("/metrics").text
    assert 'ctphase_http_requests_total{method="GET",route="/health",status="200"} 1.0' in text
    assert 'ctphase_http_requests_total{method="POST",route="/setup",status="422"} 1.0' in text
    assert 'ctphase_errors_total{kind="label_config"} 1.0' in text
    assert "ctphase_http_request_seconds_bucket" in text
    assert 'route="/setup"' not in second.get("/metrics").text
