"""Fixtures of the service tests: tiny saved networks, settings, an app client on real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.config import Settings
from backend.main import create_app

LABEL_CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <Choices name="phase" toName="image" choice="single" showInline="true">
    <Choice value="Non-contrast"/>
    <Choice value="Arterial"/>
    <Choice value="Venous"/>
    <Choice value="Others"/>
  </Choices>
</View>
"""

ADMIN_TOKEN = "test-admin-token-0123456789"


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """``make(seed) -> model dir``: a tiny untrained network (mobilenetv3_small_050 at 32 px) saved with save_model."""
    import torch

    from backend.ml.network import Preset, build_manifest, create_network, save_model

    root = tmp_path_factory.mktemp("tiny-models")
    made: dict[int, Path] = {}

    def make(seed: int) -> Path:
        if seed not in made:
            torch.manual_seed(seed)
            preset = Preset(name="tiny", arch="mobilenetv3_small_050", image_size=32, windows=((50.0, 400.0),))
            manifest = build_manifest(preset, fingerprint=f"seed-{seed}", metrics={"val_macro_f1": 0.25 + seed / 100})
            made[seed] = root / f"seed-{seed}"
            save_model(made[seed], network=create_network(preset), manifest=manifest)
        return made[seed]

    return make


@pytest.fixture
def dicom_root(tmp_path: Path) -> Path:
    """An empty folder configured as the only DICOM root."""
    root = tmp_path / "dicom"
    root.mkdir()
    return root


@pytest.fixture
def make_settings(tmp_path: Path, dicom_root: Path, pg_database_url: str) -> Callable[..., Settings]:
    """``make(**overrides) -> Settings`` on the test's PostgreSQL database, model store and DICOM root."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": pg_database_url,
            "model_store": tmp_path / "store",
            "dicom_roots": [dicom_root],
            "admin_token": ADMIN_TOKEN,
            "min_slices": 4,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
def client_factory(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    """``make(settings=None, **create_app_kwargs) -> TestClient`` (started; closed after the test)."""
    clients: list[TestClient] = []

    def make(settings: Settings | None = None, **kwargs: object) -> TestClient:
        kwargs.setdefault("loop_mode", "off")
        app = create_app(settings or make_settings(), **kwargs)  # type: ignore[arg-type]
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(client_factory: Callable[..., TestClient]) -> TestClient:
    """A started app with default test settings (no basic auth, no webhook secret, loop off)."""
    return client_factory()


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    """The bearer header of the admin routes."""
    return {"Authorization": f"Bearer {token}"}
