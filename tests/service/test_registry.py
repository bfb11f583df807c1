"""Model registry: immutable versions, champion alias with fallback, promote / rollback history, network cache."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from backend import registry
from backend.errors import (
    ArtifactRegistrationError,
    NothingToRollBackError,
    RegistryError,
    VersionNotFoundError,
)
from backend.tables import Champion, ChampionEvent, ModelVersion

pytestmark = pytest.mark.integration


def _register(
    sessions: sessionmaker[Session], model_dir: Path, store: Path, *, project: str = "default"
) -> ModelVersion:
    with sessions.begin() as session:
        return registry.register_version(session, project=project, model_dir=model_dir, store=store)


def test_register_copies_and_numbers(
    db_sessions: sessionmaker[Session], tiny_model_factory: Callable[[int], Path], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    first = _register(db_sessions, tiny_model_factory(1), store)
    second = _register(db_sessions, tiny_model_factory(2), store)
    assert (first.version, second.version) == (1, 2)
    assert first.label == "ctphase-default-v1"
    assert first.artifact_uri.startswith("default/v1-")
    copied = registry.artifact_path(store, first)
    assert (copied / "model.safetensors").is_file()
    assert copied != tiny_model_factory(1)
    manifest = json.loads((copied / "manifest.json").read_text())
    assert manifest["weights_sha256"] == first.sha256
    assert first.arch == "mobilenetv3_small_050"
    assert first.preprocessing["image_size"] == 32
    assert not list((store / "default").glob(".incoming-*"))


def test_register_refuses_tampered_artifact(
    db_sessions: sessionmaker[Session], tiny_model_factory: Callable[[int], Path], tmp_path: Path
) -> None:
    import shutil

    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_model_factory(1), tampered)
    weights = tampered / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactRegistrationError, match="not a loadable model artifact"):
        _register(db_sessions, tampered, tmp_path / "store")
    with pytest.raises(ArtifactRegistrationError, match=r"missing model\.safetensors, manifest\.json"):
        _register(db_sessions, tmp_path / "missing", tmp_path / "store")
    with db_sessions() as session:
        assert session.scalars(select(ModelVersion)).all() == []


def test_promote_rollback_walks_history(
    db_sessions: sessionmaker[Session], tiny_model_factory: Callable[[int], Path], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    for seed in (1, 2, 3):
        _register(db_sessions, tiny_model_factory(seed), store, project="7")
    with db_sessions.begin() as session:
        with pytest.raises(NothingToRollBackError, match="no champion"):
            registry.rollback(session, project="7", actor="test")
        for version in (1, "v2", "ctphase-7-v3"):
            registry.promote(session, project="7", version=version, actor="test")
        assert registry.champion_of(session, project="7").version == 3  # type: ignore[union-attr]
    with db_sessions.begin() as session:
        change = registry.rollback(session, project="7", actor="test")
        assert (change.previous.version, change.current.version) == (3, 2)  # type: ignore[union-attr]
    with db_sessions.begin() as session:
        assert registry.rollback(session, project="7", actor="test").current.version == 1
    with db_sessions.begin() as session:
        with pytest.raises(NothingToRollBackError, match="first champion"):
            registry.rollback(session, project="7", actor="test")
        events = session.scalars(select(ChampionEvent).order_by(ChampionEvent.id)).all()
        assert [e.action for e in events] == ["promote", "promote", "promote", "rollback", "rollback"]
        assert session.scalars(select(Champion)).one().project == "7"


def test_unknown_version_and_project(db_sessions: sessionmaker[Session]) -> None:
    with db_sessions() as session:
        with pytest.raises(VersionNotFoundError, match="registered: none"):
            registry.promote(session, project="7", version=9, actor="test")
        with pytest.raises(RegistryError, match="invalid project"):
            registry.check_project("../etc")


def test_champion_falls_back_to_default(
    db_sessions: sessionmaker[Session], tiny_model_factory: Callable[[int], Path], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    _register(db_sessions, tiny_model_factory(1), store)
    _register(db_sessions, tiny_model_factory(2), store, project="7")
    with db_sessions.begin() as session:
        assert registry.resolve_champion(session, project="7", default_project="default") is None
        registry.promote(session, project="default", version=1, actor="test")
    with db_sessions.begin() as session:
        served = registry.resolve_champion(session, project="7", default_project="default")
        assert served is not None
        assert served.label == "ctphase-default-v1"
        registry.promote(session, project="7", version=1, actor="test")
    with db_sessions() as session:
        served = registry.resolve_champion(session, project="7", default_project="default")
        assert served is not None
        assert served.label == "ctphase-7-v1"
        other = registry.resolve_champion(session, project="8", default_project="default")
        assert other is not None
        assert other.label == "ctphase-default-v1"


def test_version_unique_per_project(
    db_sessions: sessionmaker[Session], tiny_model_factory: Callable[[int], Path], tmp_path: Path
) -> None:
    row = _register(db_sessions, tiny_model_factory(1), tmp_path / "store")
    fields = {k: getattr(row, k) for k in ("project", "version", "preset", "arch", "classes", "preprocessing")}
    with db_sessions() as session:
        session.add(ModelVersion(**fields, artifact_uri="x", sha256="0" * 64, metrics={}))
        with pytest.raises(IntegrityError):
            session.flush()


def test_project_from_label_studio() -> None:
    assert registry.project_from_label_studio("12.1712345678", default="default") == "12"
    assert registry.project_from_label_studio(None, default="default") == "default"
    assert registry.project_from_label_studio("", default="default") == "default"


def test_model_cache_lru_and_checksum(
    db_sessions: sessionmaker[Session], tiny_model_factory: Callable[[int], Path], tmp_path: Path
) -> None:
    from backend.ml.network import ModelArtifactError

    store = tmp_path / "store"
    versions = [_register(db_sessions, tiny_model_factory(seed), store) for seed in (1, 2, 3)]
    cache = registry.ModelCache(store=store, max_size=2, device="cpu")
    loaded: list[object] = []
    threads = [threading.Thread(target=lambda: loaded.append(cache.get(versions[0]))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(model) for model in loaded}) == 1  # loaded once, shared
    cache.get(versions[1])
    cache.get(versions[2])
    assert cache.cached_ids() == [versions[1].id, versions[2].id]
    with db_sessions() as session:
        forged = session.get(ModelVersion, versions[0].id)
        assert forged is not None
        session.expunge(forged)
    forged.sha256 = "f" * 64
    with pytest.raises(ModelArtifactError, match="differs from the registered"):
        cache.get(forged)
