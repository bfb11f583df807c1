"""Active-learning simulation: review order by ctphase priority versus random order, at equal label budgets.

A simulated radiologist labels series with the phantom ground truth. Both strategies start from the same seed
labels and the same first model; then, each round, the current model predicts every unlabeled pool series, the
queue is ordered (ctphase: ascending review score = :func:`backend.ml.priority.review_priority` with the DICOM
metadata prior; random: a seeded shuffle), the radiologist labels the first ``--budget`` series, and the model is
retrained on all labels so far, warm-started from the previous model as the service does
(``Settings.train_warm_start``; ``--cold`` trains from scratch). Reported per strategy and round:

- series-level macro F1 on held-out test studies (never labeled, never trained on);
- of the current model's errors on the unlabeled pool, the share found in the first 10 % and 20 % of the queue
  (random order finds ~10 % / ~20 % in expectation; we also give the mean over 200 random permutations).

Writes ``active_learning.csv`` and ``active_learning.png`` under ``--out`` and prints a summary. The defaults (40
phantom series per phase, 30 % of the studies held out, 40 seed labels, 3 rounds of 20, ``cpu`` preset at its own
input size, 8 epochs per training) take about 20 minutes on 2 CPU cores, of which ~5 generate the phantoms (reuse a
dataset with ``--data``); every number comes from this one run. With much smaller settings the first models learn
too little for their uncertainty to mean anything, so both orders look alike.

    python bench/active_learning.py --out bench-results/active_learning
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import logging
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from backend.ml.dataset import LabeledSeries
from backend.ml.evaluate import confusion_matrix, scores_from_confusion
from backend.ml.network import LoadedModel, get_preset, load_model
from backend.ml.phantom import generate_dataset
from backend.ml.phases import phase_index
from backend.ml.predict import SeriesPrediction, predict_series
from backend.ml.prior import metadata_prior
from backend.ml.priority import review_priority
from backend.ml.train import TrainConfig, load_labeled_series, train_model

log = logging.getLogger("bench.active_learning")

STRATEGIES = ("ctphase", "random")
TOP_SHARES = (0.1, 0.2)


@dataclass(frozen=True)
class RoundResult:
    """One CSV row."""

    strategy: str
    round: int
    n_labels: int
    test_macro_f1: float
    pool_size: int
    pool_errors: int
    errors_in_top10: float
    errors_in_top20: float
    random_expected_top10: float
    random_expected_top20: float
    train_seconds: float


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/active_learning"))
    parser.add_argument("--data", type=Path, default=None, help="phantom dataset to reuse (generated when missing)")
    parser.add_argument("--n-per-class", type=int, default=40, help="phantom series per phase")
    parser.add_argument(
        "--matrix", type=int, default=None, help="phantom image matrix (pixels); default: the archive-like mix"
    )
    parser.add_argument("--max-slices", type=int, default=64, help="phantom slices per series at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--initial", type=int, default=40, help="seed labels (random, shared by both strategies)")
    parser.add_argument("--budget", type=int, default=20, help="labels per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--image-size", type=int, default=None, help="override the preset's input size (pixels)")
    parser.add_argument("--slices-per-series", type=int, default=16)
    parser.add_argument("--cold", action="store_true", help="retrain from scratch instead of warm-starting")
    parser.add_argument("--test-fraction", type=float, default=0.3, help="share of studies held out for testing")
    parser.add_argument("--sample-fraction", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def _study_rank(uid: str, seed: int) -> float:
    return int(hashlib.sha256(f"{seed}:{uid}".encode()).hexdigest()[:12], 16) / float(1 << 48)


def split_test(examples: Sequence[LabeledSeries], *, fraction: float, seed: int) -> tuple[list[LabeledSeries], ...]:
    """(pool, test) by study."""
    studies = sorted({e.series.study_instance_uid for e in examples}, key=lambda s: _study_rank(s, seed))
    test_studies = set(studies[: max(1, round(fraction * len(studies)))])
    pool = [e for e in examples if e.series.study_instance_uid not in test_studies]
    test = [e for e in examples if e.series.study_instance_uid in test_studies]
    return pool, test


class Simulation:
    """Trains, predicts and scores; keeps one slice cache for every training."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.cache_dir = workdir / "slice-cache"
        self._n_models = 0
        base = get_preset(args.preset)
        size = args.image_size or base.image_size
        self.preset = dataclasses.replace(base, name=f"{base.name}-{size}px", image_size=size)

    def train(self, labeled: Sequence[LabeledSeries], *, init_from: Path | None) -> tuple[Path, LoadedModel, float]:
        self._n_models += 1
        out = self.workdir / f"model-{self._n_models}"
        config = TrainConfig(
            preset=self.preset,
            epochs=self.args.epochs,
            slices_per_series=self.args.slices_per_series,
            seed=self.args.seed,
            val_fraction=0.0,
            device="cpu",
            threads=self.args.threads,
            cache_dir=self.cache_dir,
        )
        started = time.perf_counter()
        train_model(list(labeled), out_dir=out, config=config, init_from=None if self.args.cold else init_from)
        seconds = time.perf_counter() - started
        return out, load_model(out, device="cpu", threads=self.args.threads), seconds

    def predict(self, model: LoadedModel, examples: Sequence[LabeledSeries]) -> list[SeriesPrediction]:
        return [predict_series(model, e.series, sample_fraction=self.args.sample_fraction) for e in examples]

    @staticmethod
    def macro_f1(examples: Sequence[LabeledSeries], predictions: Sequence[SeriesPrediction]) -> float:
        truth = np.array([phase_index(e.phase) for e in examples], dtype=np.int64)
        predicted = np.array([phase_index(p.vote.phase) for p in predictions], dtype=np.int64)
        return float(scores_from_confusion(confusion_matrix(truth, predicted))["macro_f1"])


def ctphase_order(pool: Sequence[LabeledSeries], predictions: Sequence[SeriesPrediction]) -> list[int]:
    """Indices of ``pool`` by ascending review score (ties: series uid)."""
    scores = []
    for example, prediction in zip(pool, predictions, strict=True):
        prior = metadata_prior(example.series.metadata)
        vote = prediction.vote
        priority = review_priority(
            phase=vote.phase,
            vote_fractions=vote.vote_fractions,
            probabilities=vote.mean_probabilities,
            prior_phase=prior.phase,
            prior_confidence=prior.confidence,
        )
        scores.append((priority.score, example.series.series_instance_uid))
    return sorted(range(len(pool)), key=lambda i: scores[i])


def error_share(order: Sequence[int], errors: set[int], top: float) -> float:
    """Share of ``errors`` among the first ``ceil(top * len(order))`` queue positions (nan without errors)."""
    if not errors:
        return math.nan
    head = set(order[: math.ceil(top * len(order))])
    return len(head & errors) / len(errors)


def random_expectation(n: int, errors: set[int], top: float, rng: np.random.Generator) -> float:
    if not errors:
        return math.nan
    return float(np.mean([error_share(list(rng.permutation(n)), errors, top) for _ in range(200)]))


def run(args: argparse.Namespace) -> list[RoundResult]:
    with tempfile.TemporaryDirectory(prefix="ctphase-al-") as tmp:
        workdir = Path(tmp)
        data = args.data or workdir / "phantoms"
        started = time.perf_counter()
        if not (data / "labels.csv").is_file():
            generate_dataset(
                data,
                n_per_class=args.n_per_class,
                seed=args.seed,
                matrix_sizes=None if args.matrix is None else (args.matrix,),
                max_slices=args.max_slices,
            )
        examples = load_labeled_series(data, data / "labels.csv")
        log.info("%d phantom series ready in %.0f s", len(examples), time.perf_counter() - started)
        pool, test = split_test(examples, fraction=args.test_fraction, seed=args.seed)
        rng = np.random.default_rng(args.seed)
        initial = [int(i) for i in rng.choice(len(pool), size=min(args.initial, len(pool)), replace=False)]
        sim = Simulation(args, workdir)
        first_dir, first_model, first_seconds = sim.train([pool[i] for i in initial], init_from=None)
        first_f1 = sim.macro_f1(test, sim.predict(first_model, test))
        log.info("pool %d, test %d series; round 0 macro F1 %.3f", len(pool), len(test), first_f1)
        results: list[RoundResult] = []
        for strategy in STRATEGIES:
            start = (first_dir, first_model, first_f1, first_seconds)
            results.extend(_simulate(sim, strategy, pool, test, initial, start))
        return results


def _simulate(
    sim: Simulation,
    strategy: str,
    pool: Sequence[LabeledSeries],
    test: Sequence[LabeledSeries],
    initial: Sequence[int],
    start: tuple[Path, LoadedModel, float, float],
) -> list[RoundResult]:
    model_dir, model, test_f1, train_seconds = start
    args = sim.args
    rng = np.random.default_rng(args.seed + 1)
    labeled = list(initial)
    rows: list[RoundResult] = []
    for round_number in range(args.rounds + 1):
        unlabeled = [i for i in range(len(pool)) if i not in set(labeled)]
        candidates = [pool[i] for i in unlabeled]
        predictions = sim.predict(model, candidates)
        errors = {k for k, (e, p) in enumerate(zip(candidates, predictions, strict=True)) if p.vote.phase != e.phase}
        order = (
            ctphase_order(candidates, predictions) if strategy == "ctphase" else list(rng.permutation(len(candidates)))
        )
        rows.append(
            RoundResult(
                strategy=strategy,
                round=round_number,
                n_labels=len(labeled),
                test_macro_f1=round(test_f1, 4),
                pool_size=len(candidates),
                pool_errors=len(errors),
                errors_in_top10=round(error_share(order, errors, 0.1), 4),
                errors_in_top20=round(error_share(order, errors, 0.2), 4),
                random_expected_top10=round(random_expectation(len(candidates), errors, 0.1, rng), 4),
                random_expected_top20=round(random_expectation(len(candidates), errors, 0.2, rng), 4),
                train_seconds=round(train_seconds, 1),
            )
        )
        log.info("%s", rows[-1])
        if round_number == args.rounds or not candidates:
            break
        labeled += [unlabeled[k] for k in order[: args.budget]]  # the radiologist answers with the ground truth
        model_dir, model, train_seconds = sim.train([pool[i] for i in labeled], init_from=model_dir)
        test_f1 = sim.macro_f1(test, sim.predict(model, test))
    return rows


def write_outputs(results: Sequence[RoundResult], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "active_learning.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(results[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in results)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"ctphase": "tab:blue", "random": "tab:orange"}
    for strategy in STRATEGIES:
        rows = [r for r in results if r.strategy == strategy]
        color = colors[strategy]
        left.plot([r.n_labels for r in rows], [r.test_macro_f1 for r in rows], marker="o", color=color, label=strategy)
        rounds = [r.round for r in rows]
        right.plot(rounds, [r.errors_in_top20 for r in rows], marker="o", color=color, label=f"{strategy}, top 20%")
        top10 = [r.errors_in_top10 for r in rows]
        right.plot(rounds, top10, marker="x", ls="--", color=color, label=f"{strategy}, top 10%")
    left.set(xlabel="labels", ylabel="test series macro F1", title="Model quality at equal label budgets")
    right.set(xlabel="round", ylabel="share of model errors found", ylim=(0, 1.05), title="Errors early in the queue")
    left.legend()
    right.legend(fontsize=8)
    fig.tight_layout()
    png_path = out / "active_learning.png"
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return csv_path, png_path


def summary(results: Sequence[RoundResult]) -> str:
    lines = ["strategy  round  labels  test_F1  pool_errors  top10%  top20%  (random expectation 10%/20%)"]
    for r in results:
        lines.append(
            f"{r.strategy:<8}  {r.round:>5}  {r.n_labels:>6}  {r.test_macro_f1:>7.3f}  {r.pool_errors:>11}  "
            f"{r.errors_in_top10:>6.2f}  {r.errors_in_top20:>6.2f}  "
            f"({r.random_expected_top10:.2f}/{r.random_expected_top20:.2f})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    started = time.perf_counter()
    results = run(args)
    csv_path, png_path = write_outputs(results, args.out)
    print(summary(results))
    print(f"wrote {csv_path} and {png_path} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
