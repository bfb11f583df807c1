"""ORM tables (SQLAlchemy 2 typed declarative). Singular snake_case names, timezone-aware ``*_at`` columns.

Invariants are constraints, not conventions:

- ``model_version``: one ``version`` number per project (unique); rows are immutable once written.
- ``champion``: the project is the primary key, so a project has at most one champion.
- ``training_job``: a partial unique index allows at most one ``queued`` or ``running`` job per project
  (PostgreSQL and SQLite both support partial indexes).
- status / action / phase columns carry CHECK constraints with the allowed values.

``project`` is always text: the Label Studio project id (``"7"``) or the registry-wide fallback project
(``Settings.default_project``, ``"default"``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from backend.db import Base, UtcDateTime, utcnow
from backend.ml.phases import PHASES

JOB_STATUSES: Final[tuple[str, ...]] = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_JOB_STATUSES: Final[tuple[str, ...]] = ("queued", "running")
CHAMPION_ACTIONS: Final[tuple[str, ...]] = ("promote", "rollback", "auto_promote")


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


_ACTIVE_JOB_WHERE: Final[str] = _in_list("status", ACTIVE_JOB_STATUSES)
_PHASE_OR_NULL: Final[str] = f"phase IS NULL OR {_in_list('phase', PHASES)}"


class ModelVersion(Base):
    """One registered, immutable network artifact (directory with ``model.safetensors`` + ``manifest.json``)."""

    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("project", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    preset: Mapped[str] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(128))
    classes: Mapped[list[str]] = mapped_column(JSON)
    preprocessing: Mapped[dict[str, Any]] = mapped_column(JSON)
    artifact_uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    training_job_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_job.id", ondelete="SET NULL", use_alter=True)
    )
    parent_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    @property
    def label(self) -> str:
        """The version string Label Studio sees (``model_version`` of predictions), e.g. ``ctphase-7-v3``."""
        return version_label(self.project, self.version)


def version_label(project: str, version: int) -> str:
    """Return the public version string of ``version`` in ``project`` (``ctphase-<project>-v<version>``)."""
    return f"ctphase-{project}-v{version}"


class Champion(Base):
    """The movable alias: which model version serves predictions for a project (one row per project)."""

    __tablename__ = "champion"

    project: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class ChampionEvent(Base):
    """Audit trail of champion changes; rollback walks it backwards."""

    __tablename__ = "champion_event"
    __table_args__ = (CheckConstraint(_in_list("action", CHAMPION_ACTIONS), name="action"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    from_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id"))
    to_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    action: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class TrainingJob(Base):
    """One retraining run; the row is the job's state and result (Celery only carries its id)."""

    __tablename__ = "training_job"
    __table_args__ = (
        CheckConstraint(_in_list("status", JOB_STATUSES), name="status"),
        Index(
            "uq_training_job_active_project",
            "project",
            unique=True,
            postgresql_where=text(_ACTIVE_JOB_WHERE),
            sqlite_where=text(_ACTIVE_JOB_WHERE),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    trigger: Mapped[str] = mapped_column(String(64))
    requested_by: Mapped[str | None] = mapped_column(String(255))
    n_labels: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    candidate_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id", ondelete="SET NULL"))
    decision: Mapped[str | None] = mapped_column(Text)


class Annotation(Base):
    """A Label Studio annotation as received by webhook or reconciliation (upserted by its Label Studio id)."""

    __tablename__ = "annotation"
    __table_args__ = (
        CheckConstraint(_PHASE_OR_NULL, name="phase"),
        Index("ix_annotation_project_task_id", "project", "task_id"),
    )

    ls_annotation_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    project: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[int] = mapped_column(BigInteger)
    series_ref: Mapped[str] = mapped_column(Text)
    series_instance_uid: Mapped[str | None] = mapped_column(String(128), index=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(128))
    phase: Mapped[str | None] = mapped_column(String(16))
    was_cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    completed_by: Mapped[str | None] = mapped_column(String(255))
    ls_updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class PredictionLog(Base):
    """One answered prediction (or its error) per task, for monitoring and for re-scoring after a retrain."""

    __tablename__ = "prediction_log"
    __table_args__ = (
        CheckConstraint(_PHASE_OR_NULL, name="phase"),
        Index("ix_prediction_log_project_task_id", "project", "task_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[int | None] = mapped_column(BigInteger)
    series_instance_uid: Mapped[str | None] = mapped_column(String(128))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id", ondelete="SET NULL"))
    model_version: Mapped[str] = mapped_column(String(128))
    phase: Mapped[str | None] = mapped_column(String(16))
    score: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[list[float] | None] = mapped_column(JSON)
    components: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    n_slices: Mapped[int | None] = mapped_column(Integer)
    n_sampled: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
