"""``ctphase ls init|import|status`` (Label Studio project bootstrap) and ``ctphase demo``.

Settings come from ``CTPHASE_*`` environment variables (``backend.config``): ``CTPHASE_LABEL_STUDIO_URL``,
``CTPHASE_LABEL_STUDIO_API_KEY``, ``CTPHASE_LABEL_STUDIO_PROJECT`` (title or id), ``CTPHASE_ML_BACKEND_URL``,
``CTPHASE_DICOM_ROOTS``, ``CTPHASE_PREVIEW_DIR`` and ``CTPHASE_LABEL_STUDIO_FILES_ROOT`` (previews served by Label
Studio), ``CTPHASE_WEBHOOK_SECRET``, ``CTPHASE_BASIC_AUTH_USER/PASSWORD``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backend.config import Settings
    from plugin.importer import ImportReport


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``ls`` command group and ``demo`` to the top-level parser."""
    ls = subparsers.add_parser(
        "ls",
        help="Label Studio project: init, import series, status",
        description="Create and wire the Label Studio project, import series as tasks, show progress. "
        "Settings: CTPHASE_LABEL_STUDIO_URL, CTPHASE_LABEL_STUDIO_API_KEY, CTPHASE_ML_BACKEND_URL, ...",
    )
    sub = ls.add_subparsers(dest="ls_command", metavar="ACTION", required=True)
    project_help = "project title or id (default: CTPHASE_LABEL_STUDIO_PROJECT, 'CT contrast phase')"

    init = sub.add_parser(
        "init",
        help="create/update the project, connect the ML backend, webhook secret, 'Review first' view, storage",
    )
    init.add_argument("--project", help=project_help)
    init.add_argument("--backend-url", help="backend URL as Label Studio reaches it (default: CTPHASE_ML_BACKEND_URL)")
    init.set_defaults(func=_init)

    imp = sub.add_parser("import", help="create one task per CT series found under PATH (idempotent), with previews")
    imp.add_argument("path", type=Path, metavar="PATH", help="folder (or file) inside CTPHASE_DICOM_ROOTS")
    imp.add_argument("--project", help=project_help)
    imp.add_argument("--limit", type=int, default=None, help="create at most this many tasks")
    imp.set_defaults(func=_import)

    status = sub.add_parser("status", help="labelled/unlabelled counts, champion model, active training job")
    status.add_argument("--project", help=project_help)
    status.set_defaults(func=_status)

    from plugin.demo import register_demo

    register_demo(subparsers)


def _settings() -> Settings:
    from backend.config import get_settings

    return get_settings()


def _init(args: argparse.Namespace) -> int:
    from backend.errors import CtphaseError
    from plugin import client as ls
    from plugin.bootstrap import init_project

    settings = _settings()
    backend_url = args.backend_url or settings.ml_backend_url
    if not backend_url:
        print("error: give --backend-url or set CTPHASE_ML_BACKEND_URL (e.g. http://127.0.0.1:9090)", file=sys.stderr)
        return 2
    try:
        client = ls.connect(settings)
        result = init_project(
            client, settings, project=args.project or settings.label_studio_project, backend_url=backend_url
        )
    except CtphaseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    verb = "created" if result.project.created else "updated"
    print(f"project {result.project.id} ({result.project.title!r}) {verb}")
    print(f"ML backend {result.ml_backend_id} -> {backend_url}")
    secret = "with the shared-secret header" if result.webhook_authenticated else "UNAUTHENTICATED (no webhook secret)"
    print(f"webhook {result.webhook_id} -> {backend_url.rstrip('/')}/webhook, {secret}")
    if result.storage_id is not None:
        print(f"local storage {result.storage_id} for previews")
    print(f"open {settings.label_studio_url}/projects/{result.project.id}/data?tab={result.view_id} ('Review first')")
    if not result.webhook_authenticated:
        print("warning: set CTPHASE_WEBHOOK_SECRET (same value in the backend) and run init again", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    from backend.errors import CtphaseError
    from backend.ml.dicom import DicomReadError
    from plugin import client as ls
    from plugin.bootstrap import import_path, require_project

    settings = _settings()
    if not settings.dicom_roots:
        print("error: set CTPHASE_DICOM_ROOTS (the folders the backend may read series from)", file=sys.stderr)
        return 2
    try:
        client = ls.connect(settings)
        project = require_project(client, args.project or settings.label_studio_project)
        report, found = import_path(client, settings, project_id=project.id, path=args.path, limit=args.limit)
    except (CtphaseError, DicomReadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    _print_import(report, n_found=len(found.series), n_skipped_files=len(found.skipped), project=project.id)
    return 0


def _print_import(report: ImportReport, *, n_found: int, n_skipped_files: int, project: int) -> None:
    print(
        f"project {project}: {n_found} series found, {len(report.created)} tasks created, "
        f"{len(report.already_imported)} already imported, {len(report.skipped)} skipped"
    )
    if n_skipped_files:
        print(f"{n_skipped_files} files were not CT series slices (see 'ctphase scan PATH')")
    for skipped in report.skipped:
        print(f"  skipped {skipped.series_uid}: {skipped.reason}")


def _status(args: argparse.Namespace) -> int:
    from backend.errors import CtphaseError
    from plugin import client as ls
    from plugin.bootstrap import require_project

    settings = _settings()
    try:
        client = ls.connect(settings)
        project = require_project(client, args.project or settings.label_studio_project)
        counts = ls.project_counts(client, project=project.id)
        model_version = ls.project_model_version(client, project=project.id)
    except CtphaseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"project {project.id} ({project.title!r}): {counts.total} tasks")
    print(f"  labelled {counts.labeled}, unlabelled {counts.unlabeled}, predictions {counts.predictions}")
    print(f"  project model_version (review order uses it): {model_version or '(none)'}")
    for line in _registry_lines(settings, project=str(project.id)):
        print(f"  {line}")
    return 0


def _registry_lines(settings: Settings, *, project: str) -> list[str]:
    """Champion and active job of the project from the backend database (a line saying why when unreachable)."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from backend import registry
    from backend.db import make_engine, make_session_factory
    from backend.tables import TrainingJob

    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            champion = registry.resolve_champion(session, project=project, default_project=settings.default_project)
            job = session.scalars(
                select(TrainingJob)
                .where(TrainingJob.project == project, TrainingJob.status.in_(("queued", "running")))
                .order_by(TrainingJob.id.desc())
            ).first()
            lines = [f"champion: {champion.label if champion is not None else 'none (no model registered)'}"]
            if job is None:
                lines.append("training: no active job")
            else:
                progress = job.progress or {}
                epoch = f", epoch {progress.get('epoch')}/{progress.get('n_epochs')}" if progress else ""
                lines.append(f"training: job {job.id} {job.status}{epoch}")
            return lines
    except SQLAlchemyError as error:
        return [f"champion/job unknown: database {engine.url.get_backend_name()} unreachable ({type(error).__name__})"]
    finally:
        engine.dispose()
