"""Database preparation before serving: wait for the database, then ``alembic upgrade head``.

Alembic is driven programmatically (``alembic.command``) with the configuration file shipped inside the package
(``backend/alembic.ini``); its ``script_location`` points at ``migrations/`` next to the package, so this works from
an editable install and from any working directory.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Final

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

import backend.tables  # noqa: F401  (registers every table on the metadata)
from backend.db import make_engine, metadata
from backend.errors import DatabaseNotReadyError, MigrationMismatchError

logger = logging.getLogger(__name__)

ALEMBIC_INI: Final[Path] = Path(__file__).resolve().parent / "alembic.ini"


def alembic_config(database_url: str) -> Config:
    """Return an Alembic configuration for ``database_url`` using the packaged ``alembic.ini``.

    Raises:
        FileNotFoundError: the packaged configuration or the migrations folder is missing (broken install).
    """
    if not ALEMBIC_INI.is_file():
        raise FileNotFoundError(f"{ALEMBIC_INI}: packaged alembic.ini missing; reinstall ctphase")
    config = Config(str(ALEMBIC_INI))
    script_location = config.get_main_option("script_location")
    if script_location is None or not Path(script_location).is_dir():
        raise FileNotFoundError(
            f"{script_location}: migrations folder missing; install ctphase from a source checkout (pip install -e .)"
        )
    # '%' must be doubled for ConfigParser interpolation (passwords in URLs).
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def wait_for_database(engine: Engine, *, timeout_s: float = 60.0, interval_s: float = 1.0) -> None:
    """Block until ``SELECT 1`` succeeds on ``engine``.

    Raises:
        DatabaseNotReadyError: still unreachable after ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return
        except OperationalError as exc:
            where = engine.url.render_as_string(hide_password=True)
            if time.monotonic() >= deadline:
                raise DatabaseNotReadyError(
                    f"database {where} not reachable after {timeout_s:.0f} s: {exc.orig}"
                ) from exc
            logger.info("waiting for database %s", where)
            time.sleep(interval_s)


def upgrade(database_url: str, *, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (``alembic upgrade``)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, *, revision: str = "base") -> None:
    """Revert migrations down to ``revision`` (``alembic downgrade``)."""
    command.downgrade(alembic_config(database_url), revision)


def schema_differences(database_url: str) -> list[str]:
    """Compare the live schema with the ORM tables; an empty list means migrations and tables agree.

    Returns:
        One human-readable line per difference (Alembic autogenerate diff), plus a line when the database is not
        at the head revision.
    """
    config = alembic_config(database_url)
    head = ScriptDirectory.from_config(config).get_current_head()
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            problems = [str(diff) for diff in compare_metadata(context, metadata)]
            current = context.get_current_revision()
    finally:
        engine.dispose()
    if current != head:
        problems.insert(0, f"database at revision {current}, migrations head is {head}")
    return problems


def check(database_url: str) -> None:
    """Raise when the database schema differs from the ORM tables.

    Raises:
        MigrationMismatchError: lists every difference; write a migration (``alembic revision --autogenerate``).
    """
    problems = schema_differences(database_url)
    if problems:
        raise MigrationMismatchError("schema differs from backend/tables.py:\n  " + "\n  ".join(problems))


def prestart(database_url: str, *, timeout_s: float = 60.0) -> None:
    """Wait for the database and upgrade it to the head revision (run before serving)."""
    engine = make_engine(database_url)
    try:
        wait_for_database(engine, timeout_s=timeout_s)
    finally:
        engine.dispose()
    upgrade(database_url)
    logger.info("database at head revision")
