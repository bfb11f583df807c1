"""``ctphase serve``, ``ctphase models list|register|promote|rollback`` and ``ctphase db upgrade|downgrade|check``."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve``, ``models`` and ``db`` subcommands."""
    _register_db(subparsers)


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
