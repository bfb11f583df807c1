"""Initial schema: model registry, champion alias and history, training jobs, annotations, prediction log.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PHASE_CHECK = "phase IS NULL OR phase IN ('non_contrast', 'arterial', 'venous', 'others')"
ACTIVE_JOB = "status IN ('queued', 'running')"


def _ts(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    # model_version <-> training_job reference each other: create model_version without its training_job
    # foreign key, then training_job, then add the key (batch mode so SQLite can do it too).
    op.create_table(
        "model_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("preset", sa.String(length=64), nullable=False),
        sa.Column("arch", sa.String(length=128), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("preprocessing", sa.JSON(), nullable=False),
        sa.Column("artifact_uri", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("training_job_id", sa.Integer(), nullable=True),
        sa.Column("parent_version_id", sa.Integer(), nullable=True),
        _ts("created_at"),
        sa.ForeignKeyConstraint(
            ["parent_version_id"], ["model_version.id"], name=op.f("fk_model_version_parent_version_id_model_version")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_version")),
        sa.UniqueConstraint("project", "version", name=op.f("uq_model_version_project_version")),
    )
    op.create_index(op.f("ix_model_version_project"), "model_version", ["project"], unique=False)

    op.create_table(
        "training_job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=64), nullable=False),
        sa.Column("requested_by", sa.String(length=255), nullable=True),
        sa.Column("n_labels", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        _ts("heartbeat_at", nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("candidate_version_id", sa.Integer(), nullable=True),
        sa.Column("decision", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=op.f("ck_training_job_status")
        ),
        sa.ForeignKeyConstraint(
            ["candidate_version_id"],
            ["model_version.id"],
            name=op.f("fk_training_job_candidate_version_id_model_version"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_job")),
    )
    op.create_index(op.f("ix_training_job_project"), "training_job", ["project"], unique=False)
    op.create_index(
        "uq_training_job_active_project",
        "training_job",
        ["project"],
        unique=True,
        postgresql_where=sa.text(ACTIVE_JOB),
        sqlite_where=sa.text(ACTIVE_JOB),
    )
    with op.batch_alter_table("model_version") as batch:
        batch.create_foreign_key(
            op.f("fk_model_version_training_job_id_training_job"),
            "training_job",
            ["training_job_id"],
            ["id"],
            ondelete="SET NULL",
        )

    op.create_table(
        "champion",
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        _ts("updated_at"),
        sa.ForeignKeyConstraint(
            ["model_version_id"], ["model_version.id"], name=op.f("fk_champion_model_version_id_model_version")
        ),
        sa.PrimaryKeyConstraint("project", name=op.f("pk_champion")),
    )

    op.create_table(
        "champion_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("from_version_id", sa.Integer(), nullable=True),
        sa.Column("to_version_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        _ts("created_at"),
        sa.CheckConstraint("action IN ('promote', 'rollback', 'auto_promote')", name=op.f("ck_champion_event_action")),
        sa.ForeignKeyConstraint(
            ["from_version_id"], ["model_version.id"], name=op.f("fk_champion_event_from_version_id_model_version")
        ),
        sa.ForeignKeyConstraint(
            ["to_version_id"], ["model_version.id"], name=op.f("fk_champion_event_to_version_id_model_version")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_champion_event")),
    )
    op.create_index(op.f("ix_champion_event_project"), "champion_event", ["project"], unique=False)

    op.create_table(
        "annotation",
        sa.Column("ls_annotation_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.Column("series_ref", sa.Text(), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=128), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=128), nullable=True),
        sa.Column("phase", sa.String(length=16), nullable=True),
        sa.Column("was_cancelled", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("completed_by", sa.String(length=255), nullable=True),
        _ts("ls_updated_at", nullable=True),
        _ts("received_at"),
        sa.CheckConstraint(PHASE_CHECK, name=op.f("ck_annotation_phase")),
        sa.PrimaryKeyConstraint("ls_annotation_id", name=op.f("pk_annotation")),
    )
    op.create_index("ix_annotation_project_task_id", "annotation", ["project", "task_id"], unique=False)
    op.create_index(op.f("ix_annotation_series_instance_uid"), "annotation", ["series_instance_uid"], unique=False)

    op.create_table(
        "prediction_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=True),
        sa.Column("series_instance_uid", sa.String(length=128), nullable=True),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=True),
        sa.Column("components", sa.JSON(), nullable=True),
        sa.Column("n_slices", sa.Integer(), nullable=True),
        sa.Column("n_sampled", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _ts("created_at"),
        sa.CheckConstraint(PHASE_CHECK, name=op.f("ck_prediction_log_phase")),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_version.id"],
            name=op.f("fk_prediction_log_model_version_id_model_version"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction_log")),
    )
    op.create_index(op.f("ix_prediction_log_created_at"), "prediction_log", ["created_at"], unique=False)
    op.create_index("ix_prediction_log_project_task_id", "prediction_log", ["project", "task_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_prediction_log_project_task_id", table_name="prediction_log")
    op.drop_index(op.f("ix_prediction_log_created_at"), table_name="prediction_log")
    op.drop_table("prediction_log")
    op.drop_index(op.f("ix_annotation_series_instance_uid"), table_name="annotation")
    op.drop_index("ix_annotation_project_task_id", table_name="annotation")
    op.drop_table("annotation")
    op.drop_index(op.f("ix_champion_event_project"), table_name="champion_event")
    op.drop_table("champion_event")
    op.drop_table("champion")
    with op.batch_alter_table("model_version") as batch:
        batch.drop_constraint(op.f("fk_model_version_training_job_id_training_job"), type_="foreignkey")
    op.drop_index("uq_training_job_active_project", table_name="training_job")
    op.drop_index(op.f("ix_training_job_project"), table_name="training_job")
    op.drop_table("training_job")
    op.drop_index(op.f("ix_model_version_project"), table_name="model_version")
    op.drop_table("model_version")
