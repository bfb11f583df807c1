"""``ctphase phantom OUT_DIR``: write a synthetic multi-phase abdominal CT dataset (DICOM series + labels.csv)."""

from __future__ import annotations

import argparse
import sys


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _matrix_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 512 or 256,512; got {text!r}"
        ) from None
    if not sizes or any(size < 32 or size > 1024 for size in sizes):
        raise argparse.ArgumentTypeError(f"matrix sizes must be in [32, 1024], got {text!r}")
    return sizes


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``phantom`` subcommand."""
    parser = subparsers.add_parser(
        "phantom",
        help="write a synthetic multi-phase abdominal CT dataset (DICOM) with labels.csv",
        description=(
            "Render synthetic abdomens (per-patient anatomy, per-phase contrast physiology) and write them as DICOM "
            "CT series with OUT_DIR/labels.csv. Every nuisance variable (coverage, thickness, matrix, noise, kernel, "
            "compression, descriptions, file names) is drawn independently of the phase."
        ),
    )
    parser.add_argument("out_dir", help="output folder (created; must be empty or absent)")
    parser.add_argument("--n-per-class", type=_positive_int, required=True, help="series per phase")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same dataset")
    parser.add_argument(
        "--compression",
        choices=("mixed", "none"),
        default="mixed",
        help="mixed: uncompressed and lossless JPEG 2000 / JPEG-LS / JPEG Lossless SV1 / RLE; none: uncompressed",
    )
    parser.add_argument(
        "--matrix",
        type=_matrix_sizes,
        default=None,
        help="image matrix size(s), e.g. 512 or 256,384,512 (drawn uniformly); default: the archive-like mix",
    )
    parser.add_argument(
        "--max-slices",
        type=_non_negative_int,
        default=64,
        help="cap on slices per series: longer coverages get a wider spacing (default 64; 0 = no cap, far more data)",
    )
    parser.add_argument("--workers", type=_positive_int, default=2, help="processes (default 2)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from backend.ml.phantom import PhantomError, generate_dataset

    out_dir = Path(args.out_dir)
    started = time.perf_counter()
    try:
        records = generate_dataset(
            out_dir,
            n_per_class=args.n_per_class,
            seed=args.seed,
            compression=args.compression,
            matrix_sizes=args.matrix,
            max_slices=args.max_slices or None,
            workers=args.workers,
        )
    except (PhantomError, ValueError) as error:
        print(f"ctphase phantom: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    n_slices = sum(record.n_slices for record in records)
    size_mb = sum(path.stat().st_size for path in out_dir.rglob("*") if path.is_file()) / 1e6
    print(
        f"wrote {len(records)} series ({n_slices} slices, {size_mb:.0f} MB) to {out_dir} in {seconds:.1f} s; "
        f"labels: {out_dir / 'labels.csv'}"
    )
    return 0
