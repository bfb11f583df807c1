"""``ctphase serve``, ``ctphase models list|register|promote|rollback`` and ``ctphase db upgrade|downgrade|check``."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from backend.config import Settings
    from backend.tables import ModelVersion


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve``, ``models`` and ``db`` subcommands."""
    _register_serve(subparsers)
    _register_models(subparsers)
    _register_db(subparsers)


def _register_serve(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the Label Studio ML backend (HTTP); settings from CTPHASE_* environment variables",
        description="Serve /health, /setup, /predict, /webhook, /versions, /metrics and /admin/*. The database is "
        "migrated to the head revision on start.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=9090, help="port (default 9090)")
    serve.add_argument(
        "--no-migrate", action="store_true", help="do not run 'alembic upgrade head' on start (migrated elsewhere)"
    )
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from backend.config import get_settings
    from backend.logging import configure_logging
    from backend.main import create_app

    try:
        settings = get_settings()
    except ValidationError as exc:
        problems = "; ".join(str(error.get("msg", "")).removeprefix("Value error, ") for error in exc.errors())
        print(f"ctphase serve: invalid settings: {problems}", file=sys.stderr)
        return 2
    configure_logging(json_lines=settings.log_json, level=settings.log_level)
    app = create_app(settings, migrate=not args.no_migrate)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False, proxy_headers=False)
    return 0


def _register_models(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = subparsers.add_parser("models", help="model registry: list, register, promote, roll back")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    project_help = "registry project: a Label Studio project id, or the default project (CTPHASE_DEFAULT_PROJECT)"

    listing = sub.add_parser("list", help="list the versions of a project and its champion")
    listing.add_argument("--project", help=project_help)
    listing.set_defaults(func=_models_list)

    reg = sub.add_parser("register", help="copy a model directory into the model store and register it")
    reg.add_argument("model_dir", type=Path, help="folder with model.safetensors + manifest.json")
    reg.add_argument("--project", help=project_help)
    reg.add_argument("--promote", action="store_true", help="make it the champion right away")
    reg.set_defaults(func=_models_register)

    prom = sub.add_parser("promote", help="make a version the champion (served without restart)")
    prom.add_argument("version", help="version number (3), 'v3' or label ('ctphase-default-v3')")
    prom.add_argument("--project", help=project_help)
    prom.set_defaults(func=_models_promote)

    back = sub.add_parser("rollback", help="return the champion to the previous one")
    back.add_argument("--project", help=project_help)
    back.set_defaults(func=_models_rollback)


def _prepared_settings() -> Settings:
    from backend import prestart
    from backend.config import get_settings

    settings = get_settings()
    prestart.upgrade(settings.database_url)
    return settings


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _run_registry(args: argparse.Namespace, action: str) -> int:
    from backend import registry
    from backend.db import make_engine, make_session_factory
    from backend.errors import CtphaseError

    settings = _prepared_settings()
    project = registry.check_project(args.project or settings.default_project)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine).begin() as session:
            if action == "list":
                _print_versions(session, project=project, default_project=settings.default_project)
                return 0
            if action == "register":
                row = registry.register_version(
                    session, project=project, model_dir=args.model_dir, store=settings.model_store
                )
                print(f"registered {row.label} ({row.arch}, sha256 {row.sha256[:12]}...)")
                if not args.promote:
                    return 0
                change = registry.promote(session, project=project, version=row.version, actor=_actor())
            elif action == "promote":
                change = registry.promote(session, project=project, version=args.version, actor=_actor())
            else:
                change = registry.rollback(session, project=project, actor=_actor())
            before = change.previous.label if change.previous is not None else "none"
            print(f"champion of project {project}: {before} -> {change.current.label} ({change.action})")
            return 0
    except CtphaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


def _print_versions(session: Session, *, project: str, default_project: str) -> None:
    from backend import registry

    versions: list[ModelVersion] = registry.list_versions(session, project=project)
    champion = registry.resolve_champion(session, project=project, default_project=default_project)
    served = f"{champion.label}" if champion is not None else "none (metadata prior)"
    print(f"project {project}: champion {served}")
    for version in versions:
        mark = "*" if champion is not None and champion.id == version.id else " "
        f1 = version.metrics.get("val_macro_f1", version.metrics.get("macro_f1"))
        f1_text = f"macro-F1 {f1:.3f}" if isinstance(f1, int | float) else "macro-F1 n/a"
        created = version.created_at.strftime("%Y-%m-%d %H:%M")
        print(f"{mark} {version.label:<28} {version.preset:<8} {version.arch:<24} {f1_text:<16} {created}")


def _models_list(args: argparse.Namespace) -> int:
    return _run_registry(args, "list")


def _models_register(args: argparse.Namespace) -> int:
    return _run_registry(args, "register")


def _models_promote(args: argparse.Namespace) -> int:
    return _run_registry(args, "promote")


def _models_rollback(args: argparse.Namespace) -> int:
    return _run_registry(args, "rollback")


def _register_db(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = subparsers.add_parser("db", help="database migrations (CTPHASE_DATABASE_URL)")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = db_sub.add_parser("upgrade", help="apply migrations (default: to head)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=_db_upgrade)
    down = db_sub.add_parser("downgrade", help="revert migrations (default: to base, dropping every table)")
    down.add_argument("revision", nargs="?", default="base")
    down.set_defaults(func=_db_downgrade)
    chk = db_sub.add_parser("check", help="exit 1 when the database schema differs from the ORM tables")
    chk.set_defaults(func=_db_check)


def _db_upgrade(args: argparse.Namespace) -> int:
    from backend import prestart
    from backend.config import get_settings

    prestart.upgrade(get_settings().database_url, revision=args.revision)
    return 0


def _db_downgrade(args: argparse.Namespace) -> int:
    from backend import prestart
    from backend.config import get_settings

    prestart.downgrade(get_settings().database_url, revision=args.revision)
    return 0


def _db_check(_args: argparse.Namespace) -> int:
    from backend import prestart
    from backend.config import get_settings

    problems = prestart.schema_differences(get_settings().database_url)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print("schema differs from the tables: write or apply a migration", file=sys.stderr)
        return 1
    print("database schema matches the tables")
    return 0
