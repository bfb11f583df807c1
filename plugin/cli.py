"""``ctphase ls ...`` (Label Studio project bootstrap, import, status) and ``ctphase demo``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``ls`` command group and ``demo`` to the top-level parser."""
    ls = subparsers.add_parser("ls", help="Label Studio project: init, import series, status")
    ls.set_defaults(func=lambda _args: _print_help(ls))


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
