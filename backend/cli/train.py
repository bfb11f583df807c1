"""``ctphase train DATA_DIR --labels labels.csv --out MODEL_DIR``: train a slice network and write a model artifact."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train a slice network on labelled DICOM series",
        description=(
            "Train the 2D slice network on the labelled series under DATA_DIR (split train/validation by study), "
            "keep the epoch with the best slice-level validation macro F1, and write MODEL_DIR atomically "
            "(model.safetensors + manifest.json)."
        ),
    )
    parser.add_argument("data_dir", type=str, metavar="DATA_DIR", help="folder tree holding the DICOM series")
    parser.add_argument(
        "--labels",
        type=str,
        default=None,
        help="CSV with series_instance_uid,phase columns (default: DATA_DIR/labels.csv)",
    )
    parser.add_argument("--out", type=str, required=True, help="model folder to create (must not exist)")
    parser.add_argument("--preset", choices=("cpu", "paper"), default=None, help="default: paper on CUDA, else cpu")
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's)")
    parser.add_argument("--slices-per-series", type=int, default=None, help="slices per series per epoch")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="fraction of studies held out")
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default on CPU: the idle cores)")
    parser.add_argument("--cache-dir", type=str, default=None, help="decoded slice cache (default: beside --out)")
    parser.add_argument("--init-from", type=str, default=None, help="warm start from this model folder")
    parser.add_argument(
        "--head-data",
        type=str,
        default=None,
        metavar="DIR",
        help=(
            "extra labelled series (other patients) that only fit the series head, with the validation series; "
            "never trained on"
        ),
    )
    parser.add_argument(
        "--head-labels", type=str, default=None, help="labels CSV of --head-data (default: DIR/labels.csv)"
    )
    parser.add_argument(
        "--no-series-head",
        action="store_true",
        help="do not fit a series head on the validation series (voting then falls back to weighted)",
    )
    parser.add_argument(
        "--memory-format",
        choices=("auto", "channels_last", "contiguous"),
        default="auto",
        help="layout of the network and its inputs (auto: channels_last on CUDA; on CPU the one a few measured "
        "training steps find faster; pin it to rerun a training bit for bit on a host where both are close)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)
    starter = subparsers.add_parser(
        "starter-model",
        help="create a demo model from phantoms (cpu preset) unless MODEL_DIR already holds one",
        description=(
            "If MODEL_DIR holds no model: generate phantom series (or reuse --phantoms) and train the cpu preset "
            "on them; 9-15 minutes on 2 CPU cores. Same as "
            "`ctphase phantom P --n-per-class 160 --seed 1 --max-slices 8 --compression none`, "
            "`ctphase phantom H --n-per-class 100 --seed 9001 --max-slices 8 --compression none` (head-only series) "
            "then `ctphase train P --labels P/labels.csv --out MODEL_DIR --preset cpu --seed 1 --slices-per-series 4 "
            "--head-data H`."
        ),
    )
    starter.add_argument("model_dir", type=str, metavar="MODEL_DIR")
    starter.add_argument("--phantoms", type=str, default=None, help="phantom folder (default: beside MODEL_DIR)")
    starter.add_argument("--n-per-class", type=int, default=None, help="phantom series per phase (default 160)")
    starter.add_argument("--seed", type=int, default=1)
    starter.add_argument("--threads", type=int, default=None)
    starter.set_defaults(func=_run_starter)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.ml.network import default_preset_name
    from backend.ml.train import TrainConfig, load_labeled_series, train_model

    data_dir = Path(args.data_dir)
    labels = Path(args.labels) if args.labels else data_dir / "labels.csv"
    out = Path(args.out)
    head_dir = Path(args.head_data) if args.head_data else None
    head_labels = Path(args.head_labels) if args.head_labels else (head_dir / "labels.csv" if head_dir else None)
    if head_labels is not None and head_dir is None:
        print("ctphase train: --head-labels needs --head-data", file=sys.stderr)
        return 2
    checks = [(data_dir, "DATA_DIR"), (labels, "--labels")]
    if head_dir is not None and head_labels is not None:
        checks += [(head_dir, "--head-data"), (head_labels, "--head-labels")]
    for path, what in checks:
        if not path.exists():
            print(f"ctphase train: {what} {path}: no such file or folder", file=sys.stderr)
            return 2
    if out.exists():
        print(f"ctphase train: --out {out} already exists; models are never overwritten", file=sys.stderr)
        return 2
    config = TrainConfig(
        preset=args.preset or default_preset_name(),
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        slices_per_series=args.slices_per_series,
        val_fraction=args.val_fraction,
        device=args.device,
        threads=args.threads,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        series_head=not args.no_series_head,
        show_progress=not args.no_progress,
        memory_format=args.memory_format,
    )
    try:
        examples = load_labeled_series(data_dir, labels)
        head_examples = load_labeled_series(head_dir, head_labels) if head_dir and head_labels else []
        result = train_model(
            examples,
            out_dir=out,
            config=config,
            init_from=Path(args.init_from) if args.init_from else None,
            head_examples=head_examples,
        )
    except ValueError as exc:
        print(f"ctphase train: {exc}", file=sys.stderr)
        return 2
    _print_summary(result.model_dir, result.metrics)
    return 0


def _print_summary(model_dir: object, metrics: dict[str, Any]) -> None:
    print(f"model: {model_dir}")
    print(
        f"series: {metrics['n_train_series']} train / {metrics['n_val_series']} val "
        f"({metrics['n_train_studies']} / {metrics['n_val_studies']} studies); "
        f"best epoch {metrics['best_epoch']} of {metrics['epochs']}; {metrics['seconds']:.0f} s"
    )
    if metrics.get("val_series_f1") is None:
        print("no validation studies: no validation scores")
        return
    print(f"{'phase':14s} {'slice F1':>9s} {'series F1':>10s}")
    for phase, series_f1 in metrics["val_series_f1"].items():
        print(f"{phase:14s} {_score(metrics['val_slice_f1'].get(phase)):>9s} {_score(series_f1):>10s}")
    print(f"{'macro':14s} {_score(metrics['val_slice_macro_f1']):>9s} {_score(metrics['val_series_macro_f1']):>10s}")
    head = metrics.get("series_head") or {}
    if head:
        print(f"series head {'adopted' if head.get('adopted') else 'not adopted'}: {head.get('reason')}")


def _score(value: float | None) -> str:
    """A score with 3 decimals, or "n/a" where it is undefined (a phase absent from the validation studies)."""
    return "n/a" if value is None else f"{value:.3f}"


def _run_starter(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.ml.starter import STARTER_N_PER_CLASS, ensure_starter_model

    model_dir = ensure_starter_model(
        Path(args.model_dir),
        phantom_dir=Path(args.phantoms) if args.phantoms else None,
        n_per_class=args.n_per_class or STARTER_N_PER_CLASS,
        seed=args.seed,
        threads=args.threads,
        show_progress=True,
    )
    print(f"model: {model_dir}")
    return 0
