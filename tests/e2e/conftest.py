"""End-to-end fixtures: a starter model, and a real ``ctphase serve`` subprocess wired to a real Label Studio.

The backend runs with embedded defaults (SQLite file and model store in a temporary folder, no broker: training
and pre-labeling run in the service's own threads), reads series from the phantom dataset, and writes previews
under the Label Studio's local-files root. Its settings are passed as ``CTPHASE_*`` variables built from a
``Settings`` object (``plugin.demo.settings_env``), the way ``ctphase demo`` starts it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from backend.config import Settings
from backend.db import make_engine
from plugin.demo import BackendProcess, run_cli
from tests.fixtures.label_studio import RunningLabelStudio, free_port

WEBHOOK_SECRET = "e2e-webhook-secret"
ADMIN_TOKEN = "e2e-admin-token"
BASIC_AUTH = ("labelstudio", "e2e-basic-password")
STARTER_EPOCHS = 1
RETRAIN_EPOCHS = 3


@pytest.fixture(scope="session")
def starter_model_dir(phantom_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``cpu``-preset model trained briefly on the phantom dataset (deliberately weak, so a retrain can beat it)."""
    from backend.ml.train import TrainConfig, load_labeled_series, train_model

    examples = load_labeled_series(phantom_dataset, phantom_dataset / "labels.csv")
    out_dir = tmp_path_factory.mktemp("starter") / "model"
    config = TrainConfig(preset="cpu", epochs=STARTER_EPOCHS, seed=0, slices_per_series=4, threads=2)
    return train_model(examples, out_dir=out_dir, config=config).model_dir


def run_ctphase(settings: Settings, *args: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run the ``ctphase`` CLI in a subprocess with ``settings`` as environment (parent CTPHASE_* dropped)."""
    return run_cli(settings, *args, timeout_s=timeout_s)


@dataclass(frozen=True)
class E2EBackend:
    """The running backend and what the test needs to inspect it."""

    url: str
    settings: Settings
    engine: Engine
    process: BackendProcess
    starter_label: str


@pytest.fixture(scope="module")
def e2e_backend(
    label_studio: RunningLabelStudio,
    phantom_dataset: Path,
    starter_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[E2EBackend]:
    """``ctphase serve`` on a free port, with the starter model registered and promoted through the CLI."""
    base = tmp_path_factory.mktemp("backend")
    port = free_port()
    settings = Settings(
        environment="development",
        database_url=f"sqlite:///{base / 'ctphase.db'}",
        model_store=base / "model-store",
        dicom_roots=[phantom_dataset],
        preview_dir=label_studio.files_root / "previews",
        label_studio_files_root=label_studio.files_root,
        ml_backend_url=f"http://127.0.0.1:{port}",
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.token,
        webhook_secret=WEBHOOK_SECRET,
        admin_token=ADMIN_TOKEN,
        basic_auth_user=BASIC_AUTH[0],
        basic_auth_password=BASIC_AUTH[1],
        broker_url=None,
        train_preset="cpu",
        train_epochs=RETRAIN_EPOCHS,
        retrain_after_n_labels=1000,  # only START_TRAINING starts a job in this test
        promotion_margin=0.0,
        auto_promote=True,
        torch_threads=2,
    )
    registered = run_ctphase(settings, "models", "register", str(starter_model_dir), "--promote")
    assert registered.returncode == 0, registered.stderr
    listing = run_ctphase(settings, "models", "list")
    assert listing.returncode == 0, listing.stderr
    starter_label = f"ctphase-{settings.default_project}-v1"
    assert starter_label in listing.stdout, listing.stdout
    process = BackendProcess(settings, port=port, log_path=base / "backend.log")
    engine = make_engine(settings.database_url)
    try:
        process.wait_ready(timeout_s=180.0)
        yield E2EBackend(
            url=process.url, settings=settings, engine=engine, process=process, starter_label=starter_label
        )
    finally:
        process.stop()
        engine.dispose()
