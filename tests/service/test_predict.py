"""/predict end to end on phantom series: cold start, batches with bad tasks, promotion and rollback without restart."""

from __future__ import annotations

import io
import shutil
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from backend.config import Settings
from backend.db import make_engine, make_session_factory
from backend.ml.phantom import PhantomRecord, read_labels, write_phantom_series
from backend.tables import PredictionLog
from tests.service.conftest import LABEL_CONFIG, admin_headers

pytestmark = pytest.mark.integration

CUSTOM_CONFIG = """
<View>
  <Header value="Contrast phase of this series"/>
  <Image name="ct" value="$preview" zoom="true"/>
  <Choices name="contrast" toName="ct" choice="single-radio">
    <Choice value="Plain"/>
    <Choice value="Arterial"/>
    <Choice value="Portal venous"/>
    <Choice value="Delayed"/>
  </Choices>
  <TextArea name="notes" toName="ct"/>
</View>
"""
CUSTOM_VALUES = {"Plain", "Arterial", "Portal venous", "Delayed"}
DEFAULT_VALUES = {"Non-contrast", "Arterial", "Venous", "Others"}


@pytest.fixture
def records(phantom_dataset: Path) -> list[PhantomRecord]:
    return read_labels(phantom_dataset / "labels.csv")


@pytest.fixture
def phantom_settings(
    make_settings: Callable[..., Settings], phantom_dataset: Path, dicom_root: Path
) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        return make_settings(dicom_roots=[phantom_dataset, dicom_root], **overrides)

    return make


def _tasks(records: list[PhantomRecord], start: int = 1) -> list[dict[str, object]]:
    return [{"id": start + i, "data": {"series": r.relative_dir}} for i, r in enumerate(records)]


def _log_rows(settings: Settings) -> list[PredictionLog]:
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            return list(session.scalars(select(PredictionLog).order_by(PredictionLog.id)))
    finally:
        engine.dispose()


def _register(client: TestClient, model_dir: Path, *, promote: bool, project: str | None = None) -> str:
    body: dict[str, object] = {"path": str(model_dir), "promote": promote}
    if project is not None:
        body["project"] = project
    response = client.post("/admin/register", json=body, headers=admin_headers())
    assert response.status_code == 201, response.text
    return str(response.json()["version"]["label"])


def test_cold_start_uses_the_metadata_prior(
    client_factory: Callable[..., TestClient],
    phantom_settings: Callable[..., Settings],
    records: list[PhantomRecord],
) -> None:
    settings = phantom_settings()
    client = client_factory(settings)
    setup = client.post("/setup", json={"project": "4.1700000000", "schema": CUSTOM_CONFIG})
    assert setup.json() == {"model_version": "metadata-prior-v1"}
    response = client.post("/predict", json={"tasks": _tasks(records), "project": "4.1700000000"})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == len(records)
    answered = 0
    for result in results:
        assert result["model_version"] == "metadata-prior-v1"
        assert 0.0 <= result["score"] <= 0.3
        for item in result["result"]:
            assert (item["from_name"], item["to_name"], item["type"]) == ("contrast", "ct", "choices")
            assert item["value"]["choices"][0] in CUSTOM_VALUES
            answered += 1
    assert answered >= len(records) // 2  # phantom headers carry descriptions / timing for most series
    rows = _log_rows(settings)
    assert [r.task_id for r in rows] == [t["id"] for t in _tasks(records)]
    assert all(r.error is None and r.model_version_id is None for r in rows)


def test_batch_with_bad_tasks_answers_every_task(
    client_factory: Callable[..., TestClient],
    phantom_settings: Callable[..., Settings],
    records: list[PhantomRecord],
    phantom_dataset: Path,
    dicom_root: Path,
    tmp_path: Path,
    tiny_model_factory: Callable[[int], Path],
) -> None:
    settings = phantom_settings()
    client = client_factory(settings)
    label = _register(client, tiny_model_factory(1), promote=True)
    (dicom_root / "corrupt").mkdir()
    (dicom_root / "corrupt" / "1.dcm").write_bytes(b"\0" * 300)
    outside = tmp_path / "outside"
    shutil.copytree(phantom_dataset / records[0].relative_dir, outside)
    (dicom_root / "escape").symlink_to(outside, target_is_directory=True)
    truncated = dicom_root / "truncated"
    write_phantom_series(truncated, phase="arterial", seed=3, n_slices=8, matrix=64, transfer_syntax="rle")
    for path in truncated.iterdir():  # headers read fine, pixel data does not decode
        path.write_bytes(path.read_bytes()[:-200])
    tasks = [
        {"id": 1, "data": {"series": records[0].relative_dir}},
        {"id": 2, "data": {"series": str(dicom_root / "corrupt")}},
        {"id": 3, "data": {"image": "no series key"}},
        {"id": 4, "data": {"series": f"{records[1].relative_dir}/../../{records[2].relative_dir}"}},
        {"id": 5, "data": {"series": str(dicom_root / "escape")}},
        {"id": 6, "data": {"series": str(outside)}},
        {"id": 7, "data": {"series": records[3].relative_dir}},
        {"id": 8, "data": {"series": "truncated"}},
    ]
    response = client.post("/predict", json={"tasks": tasks, "project": "2.1", "label_config": LABEL_CONFIG})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == len(tasks)
    assert all(r["model_version"] == label for r in results)
    for good in (results[0], results[6]):
        assert len(good["result"]) == 1
        assert good["result"][0]["value"]["choices"][0] in DEFAULT_VALUES
        assert 0.0 <= good["score"] <= 1.0
    for bad in [*results[1:6], results[7]]:
        assert bad["result"] == []
        assert bad["score"] == 0.0
    kinds = [row.error.split(":", 1)[0] if row.error else None for row in _log_rows(settings)]
    assert kinds[0] is None
    assert kinds[6] is None
    assert kinds[1].startswith("dicom_")  # type: ignore[union-attr]
    assert kinds[2:6] == ["series_ref_missing", "path_not_allowed", "path_not_allowed", "path_not_allowed"]
    assert kinds[7] == "dicom_corrupt_dicom"
    for row in _log_rows(settings):
        assert str(tmp_path) not in (row.error or "")


def test_promotion_and_rollback_apply_without_restart(
    client_factory: Callable[..., TestClient],
    phantom_settings: Callable[..., Settings],
    records: list[PhantomRecord],
    tiny_model_factory: Callable[[int], Path],
) -> None:
    client = client_factory(phantom_settings())
    body = {"tasks": _tasks(records[:1]), "project": "9.1", "label_config": LABEL_CONFIG}

    def served() -> str:
        response = client.post("/predict", json=body)
        assert response.status_code == 200
        return str(response.json()["results"][0]["model_version"])

    assert served() == "metadata-prior-v1"
    v1 = _register(client, tiny_model_factory(1), promote=True)
    assert served() == v1
    v2 = _register(client, tiny_model_factory(2), promote=False)
    assert served() == v1
    assert client.post("/admin/promote", json={"version": v2}, headers=admin_headers()).status_code == 200
    assert served() == v2
    assert client.post("/admin/rollback", json={}, headers=admin_headers()).json()["champion"] == v1
    assert served() == v1
    # a project-specific champion wins over the default project's, for that project only
    own = _register(client, tiny_model_factory(3), promote=True, project="9")
    assert own == "ctphase-9-v1"
    assert served() == own
    other = client.post("/predict", json={**body, "project": "10.1"}).json()["results"][0]["model_version"]
    assert other == v1
    assert client.post("/setup", json={"project": "9.1", "schema": LABEL_CONFIG}).json()["model_version"] == own
    metrics = client.get("/metrics").text
    assert f'ctphase_model_version_info{{model_version="{own}",project="9"}} 1.0' in metrics


@pytest.fixture
def headed_model(tmp_path: Path) -> Path:
    """A tiny untrained network whose series head calls every series "others"."""
    import torch

    from backend.ml.network import Preset, build_manifest, create_network, save_model
    from backend.ml.series_head import SeriesHead

    torch.manual_seed(5)
    preset = Preset(name="tiny", arch="mobilenetv3_small_050", image_size=32, windows=((50.0, 400.0),))
    head = SeriesHead(
        feature_mean=[0.0] * 4,
        feature_scale=[1.0] * 4,
        weights=[[0.0] * 4] * 4,
        bias=[0.0, 0.0, 0.0, 9.0],
        c=1.0,
        n_series=40,
    )
    manifest = build_manifest(preset, fingerprint="headed", metrics={}, series_head=head)
    save_model(tmp_path / "headed", network=create_network(preset), manifest=manifest)
    return tmp_path / "headed"


@pytest.mark.parametrize("voting", ["auto", "head"])
def test_the_service_votes_with_the_champion_series_head(
    client_factory: Callable[..., TestClient],
    phantom_settings: Callable[..., Settings],
    records: list[PhantomRecord],
    tiny_model_factory: Callable[[int], Path],
    headed_model: Path,
    voting: str,
) -> None:
    """``auto`` and ``head`` use the champion's head; a champion without one is voted ``weighted``, not refused."""
    settings = phantom_settings(voting=voting)
    client = client_factory(settings)
    body = {"tasks": _tasks(records[:2]), "project": "9.1", "label_config": LABEL_CONFIG}
    _register(client, headed_model, promote=True)
    results = client.post("/predict", json=body).json()["results"]
    assert [r["result"][0]["value"]["choices"] for r in results] == [["Others"], ["Others"]]
    _register(client, tiny_model_factory(1), promote=True)
    assert client.post("/predict", json=body).status_code == 200
    rows = _log_rows(settings)
    assert [row.components["voting"] for row in rows] == ["head", "head", "weighted", "weighted"]
    assert [row.components["second_look"] for row in rows] == [False] * 4, "a sure head and vote shares: no second look"


def test_the_service_looks_again_at_an_unsure_series(
    client_factory: Callable[..., TestClient],
    phantom_settings: Callable[..., Settings],
    records: list[PhantomRecord],
    tiny_model_factory: Callable[[int], Path],
) -> None:
    """CTPHASE_SECOND_LOOK_BELOW=1 makes every mean-probability vote unsure: each series is voted on all its slices."""
    settings = phantom_settings(second_look_below=1.0, sample_fraction=0.1, min_slices=1, voting="mean")
    client = client_factory(settings)
    _register(client, tiny_model_factory(1), promote=True)
    body = {"tasks": _tasks(records[:2]), "project": "9.1", "label_config": LABEL_CONFIG}
    assert client.post("/predict", json=body).status_code == 200
    rows = _log_rows(settings)
    assert all(row.n_slices > 1 for row in rows), "a 10 % sample of these series leaves slices to look at again"
    assert [row.components["second_look"] for row in rows] == [True, True]
    assert [row.n_sampled for row in rows] == [row.n_slices for row in rows]


def test_missing_champion_artifact_is_503(
    client_factory: Callable[..., TestClient],
    phantom_settings: Callable[..., Settings],
    records: list[PhantomRecord],
    tiny_model_factory: Callable[[int], Path],
) -> None:
    settings = phantom_settings()
    client = client_factory(settings)
    _register(client, tiny_model_factory(1), promote=True)
    shutil.rmtree(settings.model_store / "default")
    response = client.post("/predict", json={"tasks": _tasks(records[:1]), "label_config": LABEL_CONFIG})
    assert response.status_code == 503
    assert "ctphase models promote|rollback" in response.json()["detail"]


def _zip_dir(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def test_label_studio_download_does_not_block_the_event_loop(
    client_factory: Callable[..., TestClient],
    phantom_settings: Callable[..., Settings],
    phantom_series_dir: Path,
) -> None:
    archive = _zip_dir(phantom_series_dir)
    seen: list[httpx.Request] = []

    def slow_label_studio(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        time.sleep(1.5)
        return httpx.Response(200, content=archive)

    settings = phantom_settings(label_studio_url="http://ls.test:8080", label_studio_api_key="ls-key-1")
    client = client_factory(settings, http_client=httpx.Client(transport=httpx.MockTransport(slow_label_studio)))
    body = {
        "tasks": [{"id": 1, "data": {"series": "/data/local-files/?d=ct/s1.zip"}}],
        "project": "3.1",
        "label_config": LABEL_CONFIG,
    }
    answer: dict[str, object] = {}
    worker = threading.Thread(target=lambda: answer.update(client.post("/predict", json=body).json()))
    worker.start()
    time.sleep(0.3)
    started = time.perf_counter()
    assert client.get("/health").status_code == 200
    health_s = time.perf_counter() - started
    worker.join(timeout=60)
    assert health_s < 0.5
    assert seen[0].headers["authorization"] == "Token ls-key-1"
    results = answer["results"]
    assert isinstance(results, list)
    assert results[0]["model_version"] == "metadata-prior-v1"


def test_embedded_sqlite_round_trip(
    client_factory: Callable[..., TestClient],
    phantom_settings: Callable[..., Settings],
    sqlite_database_url: str,
    records: list[PhantomRecord],
    tiny_model_factory: Callable[[int], Path],
) -> None:
    client = client_factory(phantom_settings(database_url=sqlite_database_url))
    label = _register(client, tiny_model_factory(1), promote=True)
    response = client.post("/predict", json={"tasks": _tasks(records[:2]), "label_config": LABEL_CONFIG})
    results = response.json()["results"]
    assert [r["model_version"] for r in results] == [label, label]
    assert all(len(r["result"]) == 1 for r in results)
