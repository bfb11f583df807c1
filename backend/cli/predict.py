"""``ctphase predict`` (phase of every series under a folder -> CSV) and ``ctphase evaluate`` (metrics report)."""

from __future__ import annotations

import argparse
import os
import sys


def _fraction(text: str) -> float:
    value = float(text)
    if not (0.0 < value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not (0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``predict`` and ``evaluate`` subcommands."""
    from backend.ml.sampling import DEFAULT_SECOND_LOOK_BELOW
    from backend.ml.voting import DEFAULT_VOTING, VOTING_CHOICES

    predict = subparsers.add_parser(
        "predict",
        help="predict the phase of every CT series under a folder",
        description=(
            "Discover every CT series under PATH (headers only), read a random R% of each series' slices (seeded "
            "by the SeriesInstanceUID), classify them and vote; a series whose vote is unsure is voted again on a "
            "wider sample (second look). Writes one CSV row per series; a series that cannot "
            "be read gets its error and an empty phase. p_* columns hold the normalised mean slice probabilities."
        ),
    )
    predict.add_argument("path", help="a DICOM file or a folder tree")
    predict.add_argument("--model", required=True, help="model directory (manifest.json + model.safetensors)")
    predict.add_argument("--out", required=True, help="output CSV (one row per series)")
    predict.add_argument("--sample-fraction", type=_fraction, default=None, help="R in (0, 1] (default 0.3)")
    predict.add_argument("--min-slices", type=_positive_int, default=None, help="minimum slices per vote (default 8)")
    predict.add_argument(
        "--voting",
        choices=VOTING_CHOICES,
        default=DEFAULT_VOTING,
        help="series vote: head (the model's series head on the mean slice logits), weighted (majority, each "
        "slice's vote weighted by its certainty), majority (the paper's) or mean (of the probabilities); "
        f"auto: head where the model has one, else weighted (default {DEFAULT_VOTING})",
    )
    predict.add_argument(
        "--second-look-below",
        type=_probability,
        default=None,
        metavar="CONFIDENCE",
        help="vote again on a wider sample (--second-look-fraction) when the first vote's confidence is below this; "
        f"0 never (the paper's single sample); default: {DEFAULT_SECOND_LOOK_BELOW} for series decided by a series "
        "head, never for the vote-share rules",
    )
    predict.add_argument(
        "--second-look-fraction",
        type=_fraction,
        default=None,
        help="share of the slices that vote in a second look, in (0, 1] (default 1.0: all of them)",
    )
    predict.add_argument(
        "--slices-out",
        default=None,
        help="also write per-slice probabilities here; the network then classifies EVERY slice (for "
        "`ctphase evaluate --slices`: slice-level metrics and the F1-versus-R curve); the vote still uses the sample",
    )
    predict.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:0, auto)")
    predict.add_argument(
        "--threads",
        type=_positive_int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="torch CPU threads (default: CPU cores - 1; one core is left to the decoding thread, which runs "
        "concurrently with the network; measured faster than 2 network threads on a 2-core machine)",
    )
    predict.add_argument("--chunk-size", type=_positive_int, default=16, help="slices per decode/network chunk")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    predict.set_defaults(func=_run_predict)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="metrics of a predictions CSV against labels (Table 5, confusion, ROC, F1 versus R)",
    )
    evaluate.add_argument("predictions", help="CSV written by `ctphase predict`")
    evaluate.add_argument("labels", help="CSV with series_instance_uid and phase columns (e.g. a phantom labels.csv)")
    evaluate.add_argument("--report", required=True, help="output folder for CSV tables, PNG plots and summary.md")
    evaluate.add_argument("--slices", default=None, help="per-slice CSV from `ctphase predict --slices-out`")
    evaluate.add_argument("--bootstrap", type=_positive_int, default=5000, help="bootstrap resamples (default 5000)")
    evaluate.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    evaluate.add_argument("--repeats", type=_positive_int, default=5, help="random samples per R for the F1-vs-R curve")
    evaluate.add_argument(
        "--voting",
        choices=VOTING_CHOICES,
        default=DEFAULT_VOTING,
        help="vote for the R curve; auto: the rule recorded in the predictions' voting column (default "
        f"{DEFAULT_VOTING})",
    )
    evaluate.add_argument(
        "--model",
        default=None,
        help="the model folder that wrote the predictions: the F1-versus-R curve re-votes with its series head "
        "(needed when the predictions were voted by the head)",
    )
    evaluate.add_argument(
        "--by",
        default=None,
        metavar="COLUMN",
        help="also count series-level predictions per value of this labels.csv column (default: subphase, when "
        "present, as in phantom labels; e.g. a scanner or protocol column of your own labels)",
    )
    evaluate.set_defaults(func=_run_evaluate)


def _run_predict(args: argparse.Namespace) -> int:
    import csv
    from pathlib import Path

    from tqdm import tqdm

    from backend.ml.dicom import scan
    from backend.ml.network import load_model
    from backend.ml.predict import (
        PREDICTION_CSV_COLUMNS,
        SLICE_CSV_COLUMNS,
        PredictOptions,
        predict_many,
        prediction_row,
        slice_rows,
    )
    from backend.ml.sampling import DEFAULT_FRACTION, DEFAULT_MIN_SLICES, DEFAULT_SECOND_LOOK_FRACTION
    from backend.ml.voting import resolve_voting

    root = Path(args.path)
    if not root.exists():
        print(f"ctphase predict: {root}: no such file or folder", file=sys.stderr)
        return 2
    model = load_model(Path(args.model), device=args.device, threads=args.threads)
    try:
        rule = resolve_voting(args.voting, model.manifest.series_head)
    except ValueError as exc:
        print(f"ctphase predict: {args.model}: {exc}", file=sys.stderr)
        return 2
    print(f"voting: {rule}", file=sys.stderr)
    found = scan(root)
    for skipped in found.skipped[:10]:
        print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    if len(found.skipped) > 10:
        print(f"... and {len(found.skipped) - 10} more skipped files", file=sys.stderr)
    options = PredictOptions(
        sample_fraction=args.sample_fraction or DEFAULT_FRACTION,
        min_slices=args.min_slices or DEFAULT_MIN_SLICES,
        method=args.voting,
        chunk_size=args.chunk_size,
        classify_all=args.slices_out is not None,
        second_look_below=args.second_look_below,
        second_look_fraction=args.second_look_fraction or DEFAULT_SECOND_LOOK_FRACTION,
    )
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    slices_path = Path(args.slices_out) if args.slices_out else None
    n_errors = n_second_looks = 0
    with out_path.open("w", newline="") as out_file:
        writer = csv.DictWriter(out_file, fieldnames=PREDICTION_CSV_COLUMNS)
        writer.writeheader()
        slice_file = slices_path.open("w", newline="") if slices_path else None
        try:
            slice_writer = csv.DictWriter(slice_file, fieldnames=SLICE_CSV_COLUMNS) if slice_file else None
            if slice_writer is not None:
                slice_writer.writeheader()
            outcomes = predict_many(model, found.series, options=options)
            for outcome in tqdm(outcomes, total=len(found.series), unit="series", disable=args.no_progress):
                writer.writerow(prediction_row(outcome, model_sha256=model.manifest.weights_sha256))
                n_errors += outcome.error is not None
                n_second_looks += outcome.prediction is not None and outcome.prediction.second_look
                if slice_writer is not None and outcome.prediction is not None:
                    slice_writer.writerows(slice_rows(outcome.prediction))
        finally:
            if slice_file is not None:
                slice_file.close()
    n_series = len(found.series)
    print(
        f"{n_series} series, {n_errors} errors, {n_second_looks} second looks, {len(found.skipped)} skipped files "
        f"-> {out_path}",
        file=sys.stderr,
    )
    if n_series == 0:
        print(f"ctphase predict: no readable CT series under {root}", file=sys.stderr)
        return 1
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.ml.evaluate import EvaluationError, run_evaluation
    from backend.ml.network import ModelArtifactError, read_manifest

    try:
        manifest = read_manifest(Path(args.model)) if args.model else None
    except ModelArtifactError as exc:
        print(f"ctphase evaluate: {exc}", file=sys.stderr)
        return 2
    try:
        report = run_evaluation(
            predictions_csv=Path(args.predictions),
            labels_csv=Path(args.labels),
            report_dir=Path(args.report),
            slices_csv=Path(args.slices) if args.slices else None,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            repeats=args.repeats,
            method=args.voting,
            head=manifest.series_head if manifest is not None else None,
            model_sha256=manifest.weights_sha256 if manifest is not None else None,
            by=args.by,
        )
    except EvaluationError as exc:
        print(f"ctphase evaluate: {exc}", file=sys.stderr)
        return 2
    print(report.text)
    return 0
