"""``ctphase scan PATH [--json]``: list the CT series under a folder and every file skipped, with its reason.

Headers only: no pixel data is read. Exit code 0 even when files are skipped; 2 when PATH does not exist.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from backend.ml.dicom import ScanResult, SeriesInfo


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``scan`` subcommand."""
    parser = subparsers.add_parser(
        "scan",
        help="list the CT series under a folder (headers only) and the files skipped",
        description="Find every CT series under PATH from file headers (no pixel data is read), with its slice "
        "count and problems, and list every file skipped with its reason.",
    )
    parser.add_argument("path", type=Path, help="a folder tree or a single DICOM file")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.set_defaults(func=run_scan)


def run_scan(args: argparse.Namespace) -> int:
    """Handle ``ctphase scan``; returns the exit code."""
    from backend.ml.dicom import scan

    root: Path = args.path
    if not root.exists():
        print(f"ctphase scan: {root}: no such file or folder", file=sys.stderr)
        return 2
    result = scan(root)
    if args.json:
        json.dump(scan_to_json(root, result), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(root, result, stream=sys.stdout)
    return 0


def series_to_json(series: SeriesInfo, *, root: Path) -> dict[str, Any]:
    """One series as a JSON-ready dict (no patient identifiers)."""
    folder = _common_folder([s.path for s in series.slices])
    return {
        "series_instance_uid": series.series_instance_uid,
        "study_instance_uid": series.study_instance_uid,
        "modality": series.modality,
        "n_slices": series.n_slices,
        "slice_thickness_mm": series.slice_thickness_mm,
        "pixel_spacing_mm": list(series.pixel_spacing_mm) if series.pixel_spacing_mm else None,
        "rows": series.rows,
        "columns": series.columns,
        "series_number": series.metadata.series_number,
        "series_description": series.metadata.series_description,
        "folder": _relative(folder, root),
        "problems": list(series.problems),
    }


def scan_to_json(root: Path, result: ScanResult) -> dict[str, Any]:
    """The whole scan as a JSON-ready dict: ``{"root", "series": [...], "skipped": [{"path", "reason"}]}``."""
    return {
        "root": str(root),
        "series": [series_to_json(s, root=root) for s in result.series],
        "skipped": [{"path": _relative(s.path, root), "reason": s.reason} for s in result.skipped],
    }


def print_table(root: Path, result: ScanResult, *, stream: TextIO) -> None:
    """Human-readable listing: one line per series (problems indented below), then the skipped files."""
    n_slices = sum(s.n_slices for s in result.series)
    print(
        f"{len(result.series)} CT series ({n_slices} slices) under {root}; {len(result.skipped)} file(s) skipped",
        file=stream,
    )
    if result.series:
        header = f"{'SLICES':>6}  {'THICK':>6}  {'SERIES#':>7}  {'DESCRIPTION':<28}  SERIES UID / STUDY UID / FOLDER"
        print(header, file=stream)
    for series in result.series:
        thickness = f"{series.slice_thickness_mm:g}" if series.slice_thickness_mm is not None else "-"
        number = str(series.metadata.series_number) if series.metadata.series_number is not None else "-"
        description = series.metadata.series_description or "-"
        folder = _relative(_common_folder([s.path for s in series.slices]), root)
        print(
            f"{series.n_slices:>6}  {thickness:>6}  {number:>7}  {description[:28]:<28}  {series.series_instance_uid}",
            file=stream,
        )
        print(f"{'':>6}  {'':>6}  {'':>7}  {'':<28}  study {series.study_instance_uid}", file=stream)
        print(f"{'':>6}  {'':>6}  {'':>7}  {'':<28}  in {folder}", file=stream)
        for problem in series.problems:
            print(f"{'':>8}problem: {problem}", file=stream)
    if result.skipped:
        print("skipped:", file=stream)
        for skipped in result.skipped:
            print(f"  {_relative(skipped.path, root)}: {skipped.reason}", file=stream)


def _common_folder(paths: list[Path]) -> Path:
    if not paths:
        return Path()
    try:
        return Path(os.path.commonpath([str(p.parent) for p in paths]))
    except ValueError:
        return paths[0].parent


def _relative(path: Path, root: Path) -> str:
    base = root if root.is_dir() else root.parent
    try:
        relative = path.relative_to(base)
    except ValueError:
        return str(path)
    return str(relative) if str(relative) != "." else "."
