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
