"""Alembic on real PostgreSQL: upgrade head, downgrade base, and the tables match the migrations."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import inspect, text

from backend import prestart
from backend.db import make_engine
from backend.errors import MigrationMismatchError

pytestmark = pytest.mark.integration

TABLES = {"model_version", "champion", "champion_event", "training_job", "annotation", "prediction_log"}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_check_postgres(postgres_database_factory: Callable[[], str]) -> None:
    url = postgres_database_factory()
    prestart.prestart(url, timeout_s=10)
    assert _tables(url) >= TABLES
    assert prestart.schema_differences(url) == []
    prestart.check(url)
    prestart.downgrade(url)
    assert _tables(url) - {"alembic_version"} == set()
    prestart.upgrade(url)
    assert prestart.schema_differences(url) == []


def test_check_detects_drift(postgres_database_factory: Callable[[], str]) -> None:
    url = postgres_database_factory()
    prestart.upgrade(url)
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_prediction_log_created_at"))
        connection.execute(text("ALTER TABLE annotation ADD COLUMN stray integer"))
    engine.dispose()
    with pytest.raises(MigrationMismatchError) as info:
        prestart.check(url)
    assert "ix_prediction_log_created_at" in str(info.value)
    assert "stray" in str(info.value)


def test_one_active_job_per_project_postgres(postgres_database_factory: Callable[[], str]) -> None:
    from sqlalchemy.exc import IntegrityError

    url = postgres_database_factory()
    prestart.upgrade(url)
    engine = make_engine(url)
    insert = text(
        "INSERT INTO training_job (project, status, trigger, n_labels, created_at, attempts, cancel_requested) "
        "VALUES (:p, :s, 'test', 0, now(), 0, false)"
    )
    with engine.begin() as connection:
        connection.execute(insert, {"p": "7", "s": "succeeded"})
        connection.execute(insert, {"p": "7", "s": "queued"})
        connection.execute(insert, {"p": "8", "s": "running"})
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(insert, {"p": "7", "s": "running"})
    engine.dispose()


def test_sqlite_embedded_default(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/ctphase.db"
    prestart.prestart(url)
    assert _tables(url) >= TABLES
    assert prestart.schema_differences(url) == []
    prestart.downgrade(url)
    prestart.upgrade(url)
    assert prestart.schema_differences(url) == []


def test_wait_for_database_times_out() -> None:
    from backend.errors import DatabaseNotReadyError

    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=1")
    with pytest.raises(DatabaseNotReadyError, match="not reachable"):
        prestart.wait_for_database(engine, timeout_s=0.5, interval_s=0.1)
    engine.dispose()
