"""The ctphase CLI: models register/list/promote/rollback and db upgrade/check on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backend.cli import main
from backend.config import get_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, pg_database_url: str, tmp_path: Path) -> Iterator[Path]:
    store = tmp_path / "store"
    monkeypatch.setenv("CTPHASE_DATABASE_URL", pg_database_url)
    monkeypatch.setenv("CTPHASE_MODEL_STORE", str(store))
    get_settings.cache_clear()
    yield store
    get_settings.cache_clear()


def test_models_commands(
    cli_env: Path, tiny_model_factory: Callable[[int], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "register", str(tiny_model_factory(1)), "--promote"]) == 0
    out = capsys.readouterr().out
    assert "registered ctphase-default-v1" in out
    assert "champion of project default: none -> ctphase-default-v1 (promote)" in out
    assert main(["models", "register", str(tiny_model_factory(2)), "--project", "12"]) == 0
    assert main(["models", "promote", "1", "--project", "12"]) == 0
    assert main(["models", "register", str(tiny_model_factory(3)), "--project", "12", "--promote"]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--project", "12"]) == 0
    listing = capsys.readouterr().out
    assert "project 12: champion ctphase-12-v2" in listing
    assert "* ctphase-12-v2" in listing
    assert "  ctphase-12-v1" in listing
    assert main(["models", "rollback", "--project", "12"]) == 0
    assert "ctphase-12-v2 -> ctphase-12-v1 (rollback)" in capsys.readouterr().out
    assert list((cli_env / "12").iterdir())


def test_models_errors_are_actionable(cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "rollback"]) == 1
    assert "has no champion to roll back" in capsys.readouterr().err
    assert main(["models", "register", str(tmp_path)]) == 1
    assert "missing model.safetensors" in capsys.readouterr().err
    assert main(["models", "promote", "v7"]) == 1
    assert "no model version 'v7'" in capsys.readouterr().err


def test_db_commands(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "check"]) == 0
    assert "matches" in capsys.readouterr().out
