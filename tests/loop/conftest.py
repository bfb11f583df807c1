"""Fixtures of the active-learning loop tests: a fake Label Studio, loops on real databases, a recording queue."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from backend.config import Settings
from backend.loop import Loop, build_loop
from tests.loop.fake_label_studio import API_KEY, FakeLabelStudio, running

REPO = Path(__file__).resolve().parents[2]


class RecordingQueue:
    """A JobQueue that records what would be enqueued (annotation and job tests run nothing in the background)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def enqueue_training(self, job_id: int) -> None:
        self.calls.append(("train", job_id))

    def enqueue_prelabel(self, project: str, task_ids: Sequence[int] | None) -> None:
        self.calls.append(("prelabel", (project, None if task_ids is None else tuple(task_ids))))

    def enqueue_reconcile(self, project: str) -> None:
        self.calls.append(("reconcile", project))

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None


@pytest.fixture
def fake_ls() -> Iterator[FakeLabelStudio]:
    """A running fake Label Studio with the project's real label config."""
    state = FakeLabelStudio(label_config=(REPO / "plugin" / "label_config.xml").read_text())
    with running(state):
        yield state


def loop_settings(
    database_url: str, tmp_path: Path, *, fake: FakeLabelStudio | None = None, **overrides: Any
) -> Settings:
    """Settings for a loop test (model store under tmp_path, Label Studio = the fake when given)."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "model_store": tmp_path / "store",
        "retrain_after_n_labels": 1000,
        "device": "cpu",
        "torch_threads": 1,
    }
    if fake is not None:
        values |= {"label_studio_url": fake.url, "label_studio_api_key": API_KEY}
    return Settings(**(values | overrides))


@pytest.fixture
def make_loop(tmp_path: Path) -> Iterator[Callable[..., Loop]]:
    """Build loops (closed at teardown): ``make_loop(database_url, queue=..., gateway=..., **settings)``."""
    loops: list[Loop] = []

    def make(
        database_url: str,
        *,
        queue: Any = "inline",
        gateway: Any = None,
        fake: FakeLabelStudio | None = None,
        **overrides: Any,
    ) -> Loop:
        settings = loop_settings(database_url, tmp_path, fake=fake, **overrides)
        if fake is not None and gateway is None:
            gateway = "installed"
        if isinstance(queue, RecordingQueue):
            loop = build_loop(settings, gateway=gateway, queue="inline")
            loop.queue = queue
        else:
            loop = build_loop(settings, gateway=gateway, queue=queue)
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        loop.close()


# --- phantom projects -------------------------------------------------------------------------------------------

CHOICES = {"non_contrast": "Non-contrast", "arterial": "Arterial", "venous": "Venous", "others": "Others"}


@pytest.fixture
def tiny_training(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register the loop tests' tiny preset (the Celery worker subprocess does the same) and return its name."""
    from backend.ml.network import PRESETS
    from tests.fixtures.celery_worker import TINY_PRESET

    monkeypatch.setitem(PRESETS, TINY_PRESET.name, TINY_PRESET)
    return TINY_PRESET.name


def phantom_tasks(fake: FakeLabelStudio, dataset: Path, *, project: int) -> list[dict[str, Any]]:
    """Add one Label Studio task per phantom series; returns ``{task_id, phase, study, series}`` per task."""
    from backend.ml.phantom import read_labels

    tasks = []
    for number, record in enumerate(sorted(read_labels(dataset / "labels.csv"), key=lambda r: r.series_instance_uid)):
        task_id = project * 1000 + number
        data = {
            "series": str(dataset / record.relative_dir),
            "series_uid": record.series_instance_uid,
            "study_uid": record.study_instance_uid,
        }
        fake.add_task(project, task_id, data)
        tasks.append({"task_id": task_id, "phase": record.phase, "study": record.study_instance_uid, "data": data})
    return tasks


def holdout_studies(tasks: list[dict[str, Any]], *, fraction: float) -> set[str]:
    """The studies the loop will hold out (same rule as backend.retrain.holdout_split)."""
    from backend.retrain import study_hash

    studies = sorted({t["study"] for t in tasks}, key=lambda s: (study_hash(s), s))
    held = {s for s in studies if study_hash(s) < fraction}
    if not held or len(held) == len(studies):
        held = set(studies[: max(1, min(len(studies) - 1, round(fraction * len(studies))))])
    return held


def constant_model(model_dir: Path, preset_name: str, phase: str) -> Path:
    """Save a network that answers ``phase`` for every image (a deliberately bad champion)."""
    import torch

    from backend.ml.network import PRESETS, build_manifest, create_network, save_model
    from backend.ml.phases import PHASES

    preset = PRESETS[preset_name]
    network = create_network(preset)
    classifier = network.get_classifier()
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.fill_(-10.0)
        classifier.bias[PHASES.index(phase)] = 10.0
    save_model(model_dir, network=network, manifest=build_manifest(preset, fingerprint="constant", metrics={}))
    return model_dir


def install_champion(loop: Loop, model_dir: Path, *, project: str) -> int:
    """Register ``model_dir`` in ``project`` and make it the champion; returns the version id."""
    from backend.registry import promote, register_version

    with loop.sessions() as session:
        version = register_version(session, project=project, model_dir=model_dir, store=loop.settings.model_store)
        promote(session, project=project, version=version.version, actor="test")
        session.commit()
        return version.id
