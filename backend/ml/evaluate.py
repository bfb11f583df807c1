"""Evaluation as in the paper: Table 5 (slice and series level), confusion, ROC/AUC, F1 versus R (Figure 7).

Conventions (documented here once, used everywhere below):

- **Missing predictions count as wrong.** A labelled series with no prediction (absent from ``preds.csv``, or a row
  with an error and an empty phase) gets the pseudo-class ``missing``: it is a false negative for its true class
  and a false positive for nobody. Confusion matrices therefore have 4 rows (true) and 5 columns (the 4 phases,
  then ``missing``). At slice level, a missing series contributes its ``n_slices`` (from ``preds.csv``; 1 if
  unknown) missing slices.
- **Undefined scores**: a class present but never predicted has precision 0; a class absent from the true labels
  has NaN recall/F1 and is left out of the macro means (unweighted means over the phases present). With all four
  phases present this is scikit-learn's ``zero_division=0``; it keeps bootstrap resamples that miss a class from
  dragging the CIs to 0.
- **Slice labels** are their series' label (the paper labels every slice of a series with the series phase); a
  slice's prediction is the arg-max of its four sigmoid probabilities.
- **Bootstrap CIs** (95%, percentile, 5,000 resamples by default) resample *series* with replacement. At slice level
  the series are resampled as clusters (all slices of a drawn series come along), because slices of one series are
  strongly correlated; resampling single slices would give CIs that are far too narrow. Both levels are computed
  the same vectorised way: per-series confusion matrices ``[m, 4, 5]`` times multinomial resample counts
  ``[B, m]`` gives ``B`` confusion matrices at once.
- **Breakdown** (``--by COLUMN``): series-level predictions counted per value of any labels.csv column, e.g. a
  phantom's ``subphase`` (the default when present: it shows which sub-phase of "others" a model misses) or a
  scanner or protocol column of real labels. Counts only, no CIs: groups can be a handful of series.
- **ROC/AUC** are one-vs-rest. Series scores are the ``p_*`` columns of ``preds.csv`` (normalised mean slice
  probabilities); slice scores are the slice probabilities. Series without a prediction have no score and are left
  out of the ROC (they are counted in Table 5). AUC is the Mann-Whitney statistic (ties count one half), which
  equals the trapezoidal area under the ROC curve.
- **F1 versus R** needs the per-slice probabilities of *every* slice (``ctphase predict --slices-out`` classifies all
  slices). For each R the series results are re-derived by sub-sampling the stored probabilities with
  :func:`~backend.ml.sampling.sample_indices` (``min_slices=1`` by default so R = 1% really reads 1% of the slices),
  for ``repeats`` independent samples per series (repeat 0 is the sample used at inference), and the macro F1 is
  averaged over repeats. Because samples are nested (one permutation per series and repeat, then a prefix), every R
  of a series/repeat is computed from one cumulative sum. If ``slices.csv`` holds only the voted slices, R is
  relative to the stored slices (the report says so). The curve votes by the rule that decided ``preds.csv`` (its
  ``voting`` column) unless told otherwise; re-voting with a model's series head needs that head (``--model``).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from backend.ml.phases import N_PHASES, PHASES, phase_index
from backend.ml.sampling import sample_size, series_rng
from backend.ml.series_head import SeriesHead
from backend.ml.voting import (
    DEFAULT_VOTING,
    FALLBACK_VOTING,
    VOTING_CHOICES,
    VOTING_METHODS,
    VotingChoice,
    VotingMethod,
    certainty_weights,
    prefix_head_features,
)

MISSING = N_PHASES
"""Column index of the ``missing`` pseudo-class in confusion matrices (predicted label -1 maps here)."""

COLUMN_NAMES: tuple[str, ...] = (*PHASES, "missing")

DEFAULT_FRACTIONS: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(1, 101))
"""R from 1% to 100% in steps of 1%."""


class EvaluationError(Exception):
    """Input files for the evaluation are missing, malformed or inconsistent (the message says which and where)."""


# --- metrics --------------------------------------------------------------------------------------------------


def confusion_matrix(y_true: NDArray[Any], y_pred: NDArray[Any]) -> NDArray[Any]:
    """Confusion counts with a ``missing`` column.

    Args:
        y_true: int [n] true class indices in [0, 4).
        y_pred: int [n] predicted class indices in [0, 4), or -1 for no prediction.

    Returns:
        int64 [4, 5]: rows are true phases, columns the predicted phases then ``missing``.

    Raises:
        ValueError: shapes differ or labels are out of range.
    """
    true = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(y_pred, dtype=np.int64)
    if true.shape != pred.shape or true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got {true.shape} and {pred.shape}")
    if true.size and (true.min() < 0 or true.max() >= N_PHASES):
        raise ValueError(f"y_true must lie in [0, {N_PHASES}), got range [{true.min()}, {true.max()}]")
    if pred.size and (pred.min() < -1 or pred.max() >= N_PHASES):
        raise ValueError(f"y_pred must lie in [-1, {N_PHASES}), got range [{pred.min()}, {pred.max()}]")
    columns = np.where(pred < 0, MISSING, pred)
    flat = np.bincount(true * (N_PHASES + 1) + columns, minlength=N_PHASES * (N_PHASES + 1))
    return flat.reshape(N_PHASES, N_PHASES + 1)


def _safe_divide(numerator: NDArray[Any], denominator: NDArray[Any]) -> NDArray[Any]:
    out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def scores_from_confusion(confusion: NDArray[Any]) -> dict[str, NDArray[Any]]:
    """Per-class precision, recall and F1 (and accuracy) from confusion matrices; vectorised over leading axes.

    A class absent from the true labels has undefined (NaN) recall and F1 and is left out of the macro means; its
    precision is 0 if it was predicted (all false positives), NaN otherwise. A class that is present but never
    predicted has precision 0 (every case was missed). With every class present this is scikit-learn's
    ``zero_division=0``; the NaN rule matters for bootstrap resamples that happen to miss a class.

    Args:
        confusion: numeric [..., 4, 5] (true x predicted-or-missing).

    Returns:
        ``precision``, ``recall``, ``f1``: float64 [..., 4]; ``macro_precision``, ``macro_recall``, ``macro_f1``,
        ``accuracy``: float64 [...].
    """
    conf = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diagonal(conf[..., :, :N_PHASES], axis1=-2, axis2=-1)
    predicted = conf[..., :, :N_PHASES].sum(axis=-2)
    actual = conf.sum(axis=-1)
    present = actual > 0
    precision = np.where(present | (predicted > 0), _safe_divide(true_positive, predicted), np.nan)
    recall = np.where(present, _safe_divide(true_positive, actual), np.nan)
    f1 = np.where(present, _safe_divide(2.0 * true_positive, predicted + actual), np.nan)  # = 2PR / (P + R)
    n_present = present.sum(axis=-1)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "macro_precision": _safe_divide(np.where(present, precision, 0.0).sum(axis=-1), n_present),
        "macro_recall": _safe_divide(np.where(present, recall, 0.0).sum(axis=-1), n_present),
        "macro_f1": _safe_divide(np.where(present, f1, 0.0).sum(axis=-1), n_present),
        "accuracy": _safe_divide(true_positive.sum(axis=-1), actual.sum(axis=-1)),
    }


def bootstrap_scores(
    cluster_confusions: NDArray[Any], *, n_resamples: int = 5000, seed: int = 0, block: int = 500
) -> dict[str, NDArray[Any]]:
    """Bootstrap distribution of the scores, resampling clusters (series) with replacement.

    Args:
        cluster_confusions: int [m, 4, 5], one confusion matrix per series (one-hot for series level, that series'
            slices for slice level).
        n_resamples: B, number of bootstrap resamples.
        seed: seed of the resampling generator (same seed -> same distribution).
        block: resamples computed per matrix product (bounds memory at ``block * m`` counts).

    Returns:
        The keys of :func:`scores_from_confusion`, each with a leading axis of length B.

    Raises:
        ValueError: no clusters or B < 1.
    """
    clusters = np.asarray(cluster_confusions, dtype=np.float64)
    m = clusters.shape[0]
    if m == 0:
        raise ValueError("cannot bootstrap zero series")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    flat = clusters.reshape(m, -1)
    uniform = np.full(m, 1.0 / m)
    parts = []
    for start in range(0, n_resamples, block):
        size = min(block, n_resamples - start)
        weights = rng.multinomial(m, uniform, size=size).astype(np.float64)  # [size, m]: times each series drawn
        parts.append(weights @ flat)
    resampled = np.concatenate(parts, axis=0).reshape(n_resamples, *clusters.shape[1:])
    return scores_from_confusion(resampled)


def percentile_interval(samples: NDArray[Any], *, level: float = 0.95) -> tuple[NDArray[Any], NDArray[Any]]:
    """Percentile bootstrap interval along axis 0, ignoring NaN (resamples where the metric is undefined).

    Args:
        samples: float [B, ...].
        level: coverage in (0, 1).

    Returns:
        (low, high), each float [...].
    """
    tail = 100.0 * (1.0 - level) / 2.0
    with warnings.catch_warnings():  # a class absent from every resample has an all-NaN column
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(samples, [tail, 100.0 - tail], axis=0)
    return np.asarray(low), np.asarray(high)


def roc_curve(positive: NDArray[Any], scores: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """One-vs-rest ROC curve.

    Args:
        positive: bool [n], True for the class of interest.
        scores: float [n], higher means more likely positive.

    Returns:
        (fpr, tpr, thresholds), float64 [t + 1] each: one point per distinct score (descending), preceded by
        (0, 0) at threshold +inf. Rates are NaN when a side has no samples.
    """
    pos = np.asarray(positive, dtype=bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    sorted_scores = np.asarray(scores, dtype=np.float64)[order]
    sorted_pos = pos[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    tp = np.cumsum(sorted_pos)[last_of_value]
    fp = np.cumsum(~sorted_pos)[last_of_value]
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, tp / n_pos] if n_pos else np.full(tp.size + 1, np.nan)
        fpr = np.r_[0.0, fp / n_neg] if n_neg else np.full(fp.size + 1, np.nan)
    thresholds = np.r_[np.inf, sorted_scores[last_of_value]]
    return fpr, tpr, thresholds


def _average_ranks(values: NDArray[Any]) -> NDArray[Any]:
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], sorted_values.size]
    mean_rank = (starts + ends + 1) / 2.0  # 1-based average rank of each run of equal values
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(positive: NDArray[Any], scores: NDArray[Any]) -> float:
    """Area under the one-vs-rest ROC curve (Mann-Whitney U / (P * N); ties count one half).

    Args:
        positive: bool [n].
        scores: float [n].

    Returns:
        The AUC in [0, 1], or NaN when there are no positives or no negatives.
    """
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    u_statistic = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))


# --- inputs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictionTable:
    """``preds.csv`` as arrays aligned with a list of series uids.

    Attributes:
        uids: the series uids, in file order.
        label: int64 [m], predicted class index, -1 when the row has no phase (error).
        scores: float64 [m, 4], the ``p_*`` columns (NaN when empty).
        n_slices: int64 [m].
        errors: uid -> error message for rows with an error.
        voting: the rules named in the ``voting`` column (empty for files written before it existed).
        models: the ``model_sha256`` values (empty likewise).
        second_looks: rows whose ``second_look`` is 1 (voted again on a wider sample; 0 for older files).
    """

    uids: tuple[str, ...]
    label: NDArray[Any]
    scores: NDArray[Any]
    n_slices: NDArray[Any]
    errors: dict[str, str]
    voting: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    second_looks: int = 0

    def index(self) -> dict[str, int]:
        """uid -> row position."""
        return {uid: i for i, uid in enumerate(self.uids)}


@dataclass(frozen=True)
class SliceTable:
    """``slices.csv`` grouped by series.

    Attributes:
        probabilities: uid -> float64 [k, 4] slice probabilities, rows sorted by slice index.
        slice_index: uid -> int64 [k] slice positions.
        n_slices: uid -> slices in the series.
    """

    probabilities: dict[str, NDArray[Any]]
    slice_index: dict[str, NDArray[Any]]
    n_slices: dict[str, int]


def _open_rows(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise EvaluationError(f"{path}: no such file")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in required if column not in (reader.fieldnames or [])]
        if missing:
            raise EvaluationError(f"{path}: missing column(s) {', '.join(missing)}; found {reader.fieldnames}")
        return list(reader)


def _float(text: str) -> float:
    return float(text) if text.strip() else math.nan


def read_labels_csv(path: Path) -> dict[str, int]:
    """Read ``series_instance_uid`` -> true class index from a CSV with ``series_instance_uid`` and ``phase``.

    Raises:
        EvaluationError: missing file/columns, unknown phase or duplicate uid (with the line number).
    """
    labels: dict[str, int] = {}
    for line, row in enumerate(_open_rows(path, ("series_instance_uid", "phase")), start=2):
        uid = row["series_instance_uid"].strip()
        try:
            label = phase_index(row["phase"].strip())
        except ValueError as exc:
            raise EvaluationError(f"{path}:{line}: {exc}") from None
        if uid in labels:
            raise EvaluationError(f"{path}:{line}: duplicate series_instance_uid {uid}")
        labels[uid] = label
    if not labels:
        raise EvaluationError(f"{path}: no labelled series")
    return labels


def read_label_groups(path: Path, column: str) -> dict[str, str]:
    """Read ``series_instance_uid`` -> the value of ``column`` (e.g. a phantom's ``subphase``, a scanner model).

    Raises:
        EvaluationError: missing file or column.
    """
    rows = _open_rows(path, ("series_instance_uid", column))
    return {row["series_instance_uid"].strip(): row[column].strip() or "(empty)" for row in rows}


def _has_column(path: Path, column: str) -> bool:
    with path.open(newline="") as handle:
        return column in (csv.DictReader(handle).fieldnames or [])


def read_predictions_csv(path: Path) -> PredictionTable:
    """Read a ``ctphase predict`` CSV.

    Raises:
        EvaluationError: missing file/columns, unknown phase, bad number or duplicate uid (with the line number).
    """
    score_columns = [f"p_{phase}" for phase in PHASES]
    rows = _open_rows(path, ("series_instance_uid", "phase", "n_slices", "error", *score_columns))
    uids: list[str] = []
    labels, scores, n_slices = [], [], []
    errors: dict[str, str] = {}
    seen: set[str] = set()
    voting: set[str] = set()
    models: set[str] = set()
    second_looks = 0
    for line, row in enumerate(rows, start=2):
        uid = row["series_instance_uid"].strip()
        second_looks += (row.get("second_look") or "").strip() == "1"
        voting.add((row.get("voting") or "").strip())
        models.add((row.get("model_sha256") or "").strip())
        if uid in seen:
            raise EvaluationError(f"{path}:{line}: duplicate series_instance_uid {uid}")
        seen.add(uid)
        try:
            phase = row["phase"].strip()
            labels.append(phase_index(phase) if phase else -1)
            scores.append([_float(row[column]) for column in score_columns])
            n_slices.append(int(row["n_slices"]) if row["n_slices"].strip() else 0)
        except ValueError as exc:
            raise EvaluationError(f"{path}:{line}: {exc}") from None
        if row["error"].strip() or not phase:
            errors[uid] = row["error"].strip() or "no phase"
        uids.append(uid)
    return PredictionTable(
        uids=tuple(uids),
        label=np.asarray(labels, dtype=np.int64),
        scores=np.asarray(scores, dtype=np.float64).reshape(-1, N_PHASES),
        n_slices=np.asarray(n_slices, dtype=np.int64),
        errors=errors,
        voting=frozenset(voting - {""}),
        models=frozenset(models - {""}),
        second_looks=second_looks,
    )


def read_slices_csv(path: Path) -> SliceTable:
    """Read a ``ctphase predict --slices-out`` CSV, grouped by series and sorted by slice index.

    Raises:
        EvaluationError: missing file/columns or malformed numbers (with the line number).
    """
    score_columns = [f"p_{phase}" for phase in PHASES]
    rows = _open_rows(path, ("series_instance_uid", "slice_index", "n_slices", *score_columns))
    grouped: dict[str, tuple[list[int], list[list[float]]]] = {}
    n_slices: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        uid = row["series_instance_uid"].strip()
        try:
            index = int(row["slice_index"])
            probs = [float(row[column]) for column in score_columns]
            n_slices[uid] = int(row["n_slices"])
        except ValueError as exc:
            raise EvaluationError(f"{path}:{line}: {exc}") from None
        indices, values = grouped.setdefault(uid, ([], []))
        indices.append(index)
        values.append(probs)
    probabilities: dict[str, NDArray[Any]] = {}
    slice_index: dict[str, NDArray[Any]] = {}
    for uid, (indices, values) in grouped.items():
        order = np.argsort(np.asarray(indices, dtype=np.int64), kind="stable")
        slice_index[uid] = np.asarray(indices, dtype=np.int64)[order]
        probabilities[uid] = np.asarray(values, dtype=np.float64)[order]
    return SliceTable(probabilities=probabilities, slice_index=slice_index, n_slices=n_slices)


# --- levels ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelResult:
    """Table 5 for one level (series or slice).

    Attributes:
        level: ``"series"`` or ``"slice"``.
        confusion: int64 [4, 5].
        scores: point estimates (keys of :func:`scores_from_confusion`).
        ci_low / ci_high: 95% bootstrap bounds, same keys and shapes as ``scores``.
        auc: float64 [4], one-vs-rest AUC per phase (NaN if undefined).
        roc: per phase, (fpr, tpr, thresholds).
        n_units: series (or slices) evaluated; n_missing: of which without a prediction.
    """

    level: str
    confusion: NDArray[Any]
    scores: dict[str, NDArray[Any]]
    ci_low: dict[str, NDArray[Any]]
    ci_high: dict[str, NDArray[Any]]
    auc: NDArray[Any]
    roc: list[tuple[NDArray[Any], NDArray[Any], NDArray[Any]]]
    n_units: int
    n_missing: int


def _level_result(
    level: str,
    cluster_confusions: NDArray[Any],
    roc_true: NDArray[Any],
    roc_scores: NDArray[Any],
    *,
    n_bootstrap: int,
    seed: int,
) -> LevelResult:
    confusion = cluster_confusions.sum(axis=0).astype(np.int64)
    scores = scores_from_confusion(confusion)
    samples = bootstrap_scores(cluster_confusions, n_resamples=n_bootstrap, seed=seed)
    ci_low: dict[str, NDArray[Any]] = {}
    ci_high: dict[str, NDArray[Any]] = {}
    for key, values in samples.items():
        ci_low[key], ci_high[key] = percentile_interval(values)
    roc = [roc_curve(roc_true == c, roc_scores[:, c]) for c in range(N_PHASES)]
    auc = np.asarray([roc_auc(roc_true == c, roc_scores[:, c]) for c in range(N_PHASES)], dtype=np.float64)
    return LevelResult(
        level=level,
        confusion=confusion,
        scores=scores,
        ci_low=ci_low,
        ci_high=ci_high,
        auc=auc,
        roc=roc,
        n_units=int(confusion.sum()),
        n_missing=int(confusion[:, MISSING].sum()),
    )


def _one_hot_confusions(true: NDArray[Any], pred: NDArray[Any]) -> NDArray[Any]:
    clusters = np.zeros((true.size, N_PHASES, N_PHASES + 1), dtype=np.int64)
    clusters[np.arange(true.size), true, np.where(pred < 0, MISSING, pred)] = 1
    return clusters


def series_level(
    labels: dict[str, int], predictions: PredictionTable, *, n_bootstrap: int = 5000, seed: int = 0
) -> LevelResult:
    """Series-level Table 5 over every labelled series (missing predictions count as wrong)."""
    position = predictions.index()
    uids = list(labels)
    true = np.asarray([labels[uid] for uid in uids], dtype=np.int64)
    rows = np.asarray([position.get(uid, -1) for uid in uids], dtype=np.int64)
    # Append one "no prediction" row so that uids without a row (-1) index it.
    label_column = np.r_[predictions.label, -1]
    score_rows = np.vstack([predictions.scores, np.full((1, N_PHASES), np.nan)])
    pred = label_column[rows]
    scored = (pred >= 0) & np.all(np.isfinite(score_rows[rows]), axis=1)
    roc_scores = score_rows[rows][scored]
    return _level_result(
        "series", _one_hot_confusions(true, pred), true[scored], roc_scores, n_bootstrap=n_bootstrap, seed=seed
    )


def slice_level(
    labels: dict[str, int],
    slices: SliceTable,
    predictions: PredictionTable | None,
    *,
    n_bootstrap: int = 5000,
    seed: int = 0,
) -> LevelResult:
    """Slice-level Table 5: every stored slice carries its series label; series clusters for the bootstrap.

    Labelled series without slices count ``n_slices`` (from ``predictions``, else 1) missing slices.
    """
    n_from_predictions = {}
    if predictions is not None:
        n_from_predictions = dict(zip(predictions.uids, predictions.n_slices.tolist(), strict=True))
    clusters = np.zeros((len(labels), N_PHASES, N_PHASES + 1), dtype=np.int64)
    true_parts, score_parts = [], []
    for i, (uid, label) in enumerate(labels.items()):
        probs = slices.probabilities.get(uid)
        if probs is None or probs.shape[0] == 0:
            clusters[i, label, MISSING] = max(1, int(n_from_predictions.get(uid, 1)))
            continue
        clusters[i, label, :N_PHASES] = np.bincount(probs.argmax(axis=1), minlength=N_PHASES)
        true_parts.append(np.full(probs.shape[0], label, dtype=np.int64))
        score_parts.append(probs)
    roc_true = np.concatenate(true_parts) if true_parts else np.zeros(0, dtype=np.int64)
    roc_scores = np.concatenate(score_parts) if score_parts else np.zeros((0, N_PHASES))
    return _level_result("slice", clusters, roc_true, roc_scores, n_bootstrap=n_bootstrap, seed=seed)


# --- F1 versus R ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FractionCurve:
    """Series-level macro F1 as a function of R (the paper's Figure 7).

    Attributes:
        fractions: float64 [r], R values in (0, 1].
        macro_f1: float64 [repeats, r], one row per independent sample of every series.
        accuracy: float64 [repeats, r].
        mean_slices: float64 [r], mean slices voting per series.
        partial_series: series whose stored slices are fewer than their n_slices (R is relative to stored slices).
    """

    fractions: NDArray[Any]
    macro_f1: NDArray[Any]
    accuracy: NDArray[Any]
    mean_slices: NDArray[Any]
    partial_series: int


def _prefix_labels(
    probs: NDArray[Any],
    sizes: NDArray[Any],
    *,
    order: NDArray[Any],
    method: VotingMethod,
    head: SeriesHead | None = None,
) -> NDArray[Any]:
    """Vote of every prefix ``order[:size]`` at once (same rule as backend.ml.voting.vote).

    Args:
        probs: float64 [k, 4] slice probabilities of one series.
        sizes: int64 [r] prefix lengths, each in [1, k].
        order: int [k] permutation of the slices (the nested sample order).
        method: voting method (``head`` needs ``head``).
        head: the model's series head.

    Returns:
        int64 [r] winning class per prefix.
    """
    permuted = probs[order]
    if method == "head" and head is not None:
        decided = head.probabilities(prefix_head_features(permuted, sizes, kind=head.features))
        return np.asarray(np.argmax(decided, axis=1), dtype=np.int64)
    mean_sums = np.cumsum(permuted, axis=0)[sizes - 1]  # [r, 4], proportional to the means of each prefix
    if method == "mean":
        return np.asarray(np.argmax(mean_sums, axis=1), dtype=np.int64)
    one_hot = np.eye(N_PHASES, dtype=np.float64)[permuted.argmax(axis=1)]
    counts = np.cumsum(one_hot, axis=0)[sizes - 1]  # [r, 4]
    if method == "weighted":
        weighted = np.cumsum(one_hot * certainty_weights(permuted)[:, None], axis=0)[sizes - 1]
        counts = np.where(weighted.sum(axis=1, keepdims=True) > 0.0, weighted, counts)
    tied = counts == counts.max(axis=1, keepdims=True)
    return np.asarray(np.argmax(np.where(tied, mean_sums, -np.inf), axis=1), dtype=np.int64)


def fraction_curve(
    labels: dict[str, int],
    slices: SliceTable,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    repeats: int = 5,
    min_slices: int = 1,
    method: VotingMethod = FALLBACK_VOTING,
    head: SeriesHead | None = None,
) -> FractionCurve:
    """Macro F1 versus R, re-deriving each series' vote from sub-samples of its stored slice probabilities.

    Every labelled series counts; one without stored slices is a missing (wrong) prediction at every R.

    Raises:
        ValueError: empty fractions, a fraction outside (0, 1], repeats < 1, or ``head`` without a head.
    """
    if method == "head" and head is None:
        raise ValueError("the F1-versus-R curve cannot re-vote with a series head it was not given")
    grid = np.asarray(fractions, dtype=np.float64)
    if grid.size == 0 or grid.min() <= 0.0 or grid.max() > 1.0:
        raise ValueError(f"fractions must be non-empty and in (0, 1], got {list(fractions)[:5]}...")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    uids = list(labels)
    true = np.asarray([labels[uid] for uid in uids], dtype=np.int64)
    pred = np.full((repeats, grid.size, len(uids)), -1, dtype=np.int64)
    slices_used = np.zeros((grid.size, len(uids)), dtype=np.float64)
    partial = 0
    for j, uid in enumerate(uids):
        probs = slices.probabilities.get(uid)
        if probs is None or probs.shape[0] == 0:
            continue
        k = probs.shape[0]
        partial += k < slices.n_slices.get(uid, k)
        sizes = np.asarray([sample_size(k, fraction=float(r), min_slices=min_slices) for r in grid], dtype=np.int64)
        slices_used[:, j] = sizes
        for repeat in range(repeats):
            order = series_rng(uid, repeat=repeat).permutation(k)
            pred[repeat, :, j] = _prefix_labels(probs, sizes, order=order, method=method, head=head)
    index = (true * (N_PHASES + 1))[None, None, :] + np.where(pred < 0, MISSING, pred)
    offsets = np.arange(repeats * grid.size)[:, None] * (N_PHASES * (N_PHASES + 1))
    counts = np.bincount(
        (index.reshape(repeats * grid.size, -1) + offsets).ravel(),
        minlength=repeats * grid.size * N_PHASES * (N_PHASES + 1),
    ).reshape(repeats, grid.size, N_PHASES, N_PHASES + 1)
    scores = scores_from_confusion(counts)
    return FractionCurve(
        fractions=grid,
        macro_f1=scores["macro_f1"],
        accuracy=scores["accuracy"],
        mean_slices=slices_used.mean(axis=1) if uids else np.zeros(grid.size),
        partial_series=int(partial),
    )


# --- breakdown by a label column --------------------------------------------------------------------------------

DEFAULT_BREAKDOWN_COLUMN = "subphase"
"""labels.csv column broken down by default when present (phantom labels carry the contrast sub-phase)."""


@dataclass(frozen=True)
class Breakdown:
    """Series-level predictions per value of a labels.csv column.

    Attributes:
        column: the labels.csv column.
        groups: its values, sorted.
        true_phase: per group, the true phase of its series ("mixed" when they differ).
        counts: int64 [g, 5], series per predicted phase (last column: no prediction).
        correct: int64 [g], series predicted as labelled.
    """

    column: str
    groups: tuple[str, ...]
    true_phase: tuple[str, ...]
    counts: NDArray[Any]
    correct: NDArray[Any]


def breakdown(
    labels: dict[str, int], groups: dict[str, str], predictions: PredictionTable, *, column: str
) -> Breakdown:
    """Count each group's series by predicted phase (labelled series only; missing predictions in the last column)."""
    position = predictions.index()
    names = tuple(sorted({groups.get(uid, "(none)") for uid in labels}))
    counts = np.zeros((len(names), N_PHASES + 1), dtype=np.int64)
    correct = np.zeros(len(names), dtype=np.int64)
    phases: dict[str, set[int]] = {name: set() for name in names}
    for uid, true in labels.items():
        g = names.index(groups.get(uid, "(none)"))
        row = position.get(uid)
        predicted = -1 if row is None else int(predictions.label[row])
        counts[g, MISSING if predicted < 0 else predicted] += 1
        correct[g] += int(predicted == true)
        phases[names[g]].add(true)
    true_phase = tuple(PHASES[next(iter(p))] if len(p) == 1 else "mixed" for p in phases.values())
    return Breakdown(column=column, groups=names, true_phase=true_phase, counts=counts, correct=correct)


def format_breakdown(result: Breakdown) -> str:
    """The breakdown as text: one row per group with its true phase, counts per predicted phase and accuracy."""
    width = max(len(name) for name in COLUMN_NAMES) + 2
    first = max(14, *(len(g) + 2 for g in result.groups))
    lines = [
        f"series by {result.column} (rows: {result.column} and its true phase, columns predicted)",
        "".ljust(first) + "phase".ljust(14) + "".join(n.rjust(width) for n in COLUMN_NAMES) + "correct".rjust(10),
    ]
    for g, name in enumerate(result.groups):
        total = int(result.counts[g].sum())
        cells = "".join(str(int(v)).rjust(width) for v in result.counts[g])
        lines.append(f"{name.ljust(first)}{result.true_phase[g].ljust(14)}{cells}{f'{result.correct[g]}/{total}':>10}")
    return "\n".join(lines)


def _write_breakdown_csv(result: Breakdown, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([result.column, "true_phase", *COLUMN_NAMES, "correct", "n"])
        for g, name in enumerate(result.groups):
            counts = [int(v) for v in result.counts[g]]
            writer.writerow([name, result.true_phase[g], *counts, int(result.correct[g]), sum(counts)])


# --- report ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationReport:
    """What :func:`run_evaluation` produced.

    Attributes:
        text: the tables as plain text (printed by the CLI).
        files: every file written into the report folder.
        series: the series-level result; slice: the slice-level result (None without ``slices.csv``);
        curve: the F1-versus-R curve (None without ``slices.csv``).
        n_unlabelled: predicted series with no label (ignored).
        by: the series-level breakdown by a labels.csv column (None when there is none).
    """

    text: str
    files: tuple[Path, ...]
    series: LevelResult
    slice: LevelResult | None
    curve: FractionCurve | None
    n_unlabelled: int
    notes: tuple[str, ...] = field(default=())
    by: Breakdown | None = None


def macro_mean_auc(result: LevelResult) -> float:
    """Unweighted mean of the defined one-vs-rest AUCs (NaN if none is defined)."""
    defined = result.auc[np.isfinite(result.auc)]
    return float(defined.mean()) if defined.size else math.nan


def format_table5(result: LevelResult) -> str:
    """The paper's Table 5 layout for one level: per phase and macro, precision / recall / F1 with 95% CIs."""
    unit = "series" if result.level == "series" else "slices"
    title = f"{result.level} level: {result.n_units} {unit}, {result.n_missing} without prediction"
    lines = [title, f"{'phase':<14}{'precision':>22}{'recall':>22}{'F1':>22}{'AUC':>8}{'support':>9}"]
    support = result.confusion.sum(axis=1)

    def cell(key: str, c: int | None) -> str:
        if c is None:
            value, low, high = (
                result.scores[f"macro_{key}"],
                result.ci_low[f"macro_{key}"],
                result.ci_high[f"macro_{key}"],
            )
        else:
            value, low, high = result.scores[key][c], result.ci_low[key][c], result.ci_high[key][c]
        if not np.isfinite(value):
            return "n/a".rjust(22)
        return f"{float(value):.3f} [{float(low):.3f}-{float(high):.3f}]".rjust(22)

    for c, phase in enumerate(PHASES):
        auc = f"{result.auc[c]:.3f}" if np.isfinite(result.auc[c]) else "n/a"
        metrics = "".join(cell(key, c) for key in ("precision", "recall", "f1"))
        lines.append(f"{phase:<14}{metrics}{auc:>8}{int(support[c]):>9}")
    macro_auc = macro_mean_auc(result)
    metrics = "".join(cell(key, None) for key in ("precision", "recall", "f1"))
    lines.append(f"{'macro':<14}{metrics}{macro_auc:>8.3f}{int(support.sum()):>9}")
    lines.append(
        f"accuracy {float(result.scores['accuracy']):.3f} "
        f"[{float(result.ci_low['accuracy']):.3f}-{float(result.ci_high['accuracy']):.3f}]"
    )
    return "\n".join(lines)


def format_confusion(result: LevelResult) -> str:
    """Confusion matrix as text (rows true, columns predicted, last column missing)."""
    width = max(len(name) for name in COLUMN_NAMES) + 2
    lines = [
        f"confusion ({result.level} level; rows true, columns predicted)",
        "".ljust(14) + "".join(name.rjust(width) for name in COLUMN_NAMES),
    ]
    for c, phase in enumerate(PHASES):
        lines.append(phase.ljust(14) + "".join(str(int(v)).rjust(width) for v in result.confusion[c]))
    return "\n".join(lines)


def _write_table5_csv(result: LevelResult, path: Path) -> None:
    support = result.confusion.sum(axis=1)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["level", "phase"]
        for key in ("precision", "recall", "f1"):
            header += [key, f"{key}_ci_low", f"{key}_ci_high"]
        writer.writerow([*header, "auc", "support"])
        for c, phase in enumerate(PHASES):
            row: list[Any] = [result.level, phase]
            for key in ("precision", "recall", "f1"):
                row += [f"{result.scores[key][c]:.6f}", f"{result.ci_low[key][c]:.6f}", f"{result.ci_high[key][c]:.6f}"]
            writer.writerow([*row, f"{result.auc[c]:.6f}", int(support[c])])
        row = [result.level, "macro"]
        for key in ("precision", "recall", "f1"):
            macro = f"macro_{key}"
            row += [f"{result.scores[macro]:.6f}", f"{result.ci_low[macro]:.6f}", f"{result.ci_high[macro]:.6f}"]
        writer.writerow([*row, f"{macro_mean_auc(result):.6f}", int(support.sum())])


def _write_confusion_csv(result: LevelResult, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true", *COLUMN_NAMES])
        for c, phase in enumerate(PHASES):
            writer.writerow([phase, *(int(v) for v in result.confusion[c])])


def _write_roc_csv(result: LevelResult, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["phase", "threshold", "fpr", "tpr"])
        for phase, (fpr, tpr, thresholds) in zip(PHASES, result.roc, strict=True):
            for t, f, p in zip(thresholds.tolist(), fpr.tolist(), tpr.tolist(), strict=True):
                writer.writerow([phase, f"{t:.6g}", f"{f:.6f}", f"{p:.6f}"])


def _write_curve_csv(curve: FractionCurve, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "fraction",
                "macro_f1_mean",
                "macro_f1_std",
                "macro_f1_min",
                "macro_f1_max",
                "accuracy_mean",
                "mean_slices_per_series",
            ]
        )
        for i, r in enumerate(curve.fractions.tolist()):
            f1 = curve.macro_f1[:, i]
            writer.writerow(
                [
                    f"{r:.4f}",
                    f"{f1.mean():.6f}",
                    f"{f1.std():.6f}",
                    f"{f1.min():.6f}",
                    f"{f1.max():.6f}",
                    f"{curve.accuracy[:, i].mean():.6f}",
                    f"{curve.mean_slices[i]:.2f}",
                ]
            )


def _plot_confusion(result: LevelResult, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8), dpi=100)
    axes = figure.add_subplot()
    rows = result.confusion.sum(axis=1, keepdims=True)
    shares = _safe_divide(result.confusion.astype(np.float64), rows.astype(np.float64))
    axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for (r, c), count in np.ndenumerate(result.confusion):
        colour = "white" if shares[r, c] > 0.6 else "black"
        axes.text(c, r, str(int(count)), ha="center", va="center", color=colour)
    axes.set_xticks(range(N_PHASES + 1), COLUMN_NAMES, rotation=30, ha="right")
    axes.set_yticks(range(N_PHASES), PHASES)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"Confusion matrix, {result.level} level (colour: row share)")
    figure.tight_layout()
    figure.savefig(path)


def _plot_roc(result: LevelResult, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.6, 5.2), dpi=100)
    axes = figure.add_subplot()
    for c, (phase, (fpr, tpr, _)) in enumerate(zip(PHASES, result.roc, strict=True)):
        if np.isfinite(result.auc[c]):
            axes.plot(fpr, tpr, label=f"{phase} (AUC {result.auc[c]:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title(f"One-vs-rest ROC, {result.level} level")
    if np.isfinite(result.auc).any():
        axes.legend(loc="lower right")
    else:
        axes.text(0.5, 0.3, "no phase has both positive and negative series", ha="center", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)


def _plot_curve(curve: FractionCurve, path: Path, *, slice_f1: float | None) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=100)
    axes = figure.add_subplot()
    percent = 100.0 * curve.fractions
    axes.fill_between(
        percent,
        curve.macro_f1.min(axis=0),
        curve.macro_f1.max(axis=0),
        alpha=0.25,
        label=f"min-max over {curve.macro_f1.shape[0]} samples",
    )
    axes.plot(percent, curve.macro_f1.mean(axis=0), label="series macro F1 (mean)")
    if slice_f1 is not None:
        axes.axhline(slice_f1, color="grey", linestyle="--", label=f"slice macro F1 ({slice_f1:.3f})")
    axes.axvline(30.0, color="black", linestyle=":", linewidth=1)
    axes.set_xlabel("R, % of slices per series")
    axes.set_ylabel("macro F1")
    axes.set_title("Series-level macro F1 versus sampled fraction R")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)


def _curve_summary(curve: FractionCurve) -> list[str]:
    mean = curve.macro_f1.mean(axis=0)
    lines = []
    for target in (0.05, 0.1, 0.3, 0.5, 1.0):
        i = int(np.argmin(np.abs(curve.fractions - target)))
        lines.append(
            f"R={100 * curve.fractions[i]:.0f}%: macro F1 {mean[i]:.3f} (std {curve.macro_f1[:, i].std():.3f}, "
            f"{curve.mean_slices[i]:.1f} slices/series)"
        )
    full = mean[-1]
    within = np.flatnonzero(mean >= full - 0.01)
    if within.size:
        lines.append(
            f"smallest R within 0.01 of the R={100 * curve.fractions[-1]:.0f}% F1: "
            f"{100 * curve.fractions[within[0]]:.0f}%"
        )
    return lines


def _markdown(report_text: str, notes: Sequence[str], files: Sequence[Path]) -> str:
    parts = ["# ctphase evaluation", "", "```", report_text, "```", ""]
    if notes:
        parts += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    parts += [
        "## Files",
        "",
        *(f"- `{path.name}`" for path in files),
        "",
        "Conventions: missing predictions count as wrong (column `missing`); 95% percentile bootstrap CIs "
        "resample series (slice level: series clusters); AUC is one-vs-rest (Mann-Whitney); see "
        "`backend/ml/evaluate.py`.",
        "",
    ]
    return "\n".join(parts)


def run_evaluation(
    *,
    predictions_csv: Path,
    labels_csv: Path,
    report_dir: Path,
    slices_csv: Path | None = None,
    n_bootstrap: int = 5000,
    seed: int = 0,
    repeats: int = 5,
    method: VotingChoice = DEFAULT_VOTING,
    head: SeriesHead | None = None,
    model_sha256: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    by: str | None = None,
) -> EvaluationReport:
    """Evaluate predictions against labels and write the report folder.

    Writes ``table5_series.csv`` (+ ``table5_slice.csv``), ``confusion_*.csv/png``, ``roc_*.csv/png``,
    ``f1_vs_r.csv/png`` (with slices), ``series_by_<column>.csv`` (with a breakdown), ``metrics.json`` and
    ``summary.md`` into ``report_dir``.

    Args:
        method: the vote of the F1-versus-R curve; ``auto``: the rule ``preds.csv`` records (see
            :func:`curve_voting`).
        head: the series head of the model that wrote the predictions (``manifest.series_head``), for ``head``.
        model_sha256: that model's weights sha256; refused when ``preds.csv`` names other models.
        by: a labels.csv column to break the series-level results down by (an error if absent); None breaks
            down by :data:`DEFAULT_BREAKDOWN_COLUMN` when the labels have it.

    Raises:
        EvaluationError: unreadable or inconsistent inputs.
    """
    labels = read_labels_csv(labels_csv)
    predictions = read_predictions_csv(predictions_csv)
    if model_sha256 is not None and predictions.models and predictions.models != {model_sha256}:
        written_by = ", ".join(sorted(sha[:12] for sha in predictions.models))
        raise EvaluationError(
            f"{predictions_csv} was written by model {written_by}, not by the given model {model_sha256[:12]}; "
            "pass the model that wrote the predictions"
        )
    report_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    n_unlabelled = sum(uid not in labels for uid in predictions.uids)
    if n_unlabelled:
        notes.append(f"{n_unlabelled} predicted series have no label and are ignored")
    missing = [uid for uid in labels if uid not in predictions.index()]
    errored = [uid for uid in labels if uid in predictions.errors]
    if missing:
        notes.append(f"{len(missing)} labelled series are absent from the predictions (counted wrong)")
    if errored:
        example = predictions.errors[errored[0]]
        notes.append(f"{len(errored)} labelled series have an error instead of a phase (counted wrong), e.g. {example}")

    if predictions.second_looks:
        notes.append(
            f"{predictions.second_looks} of {len(predictions.uids)} series were voted again on a wider sample (second "
            "look) for the series-level results; the F1-versus-R curve re-votes fixed R% samples without one"
        )
    series = series_level(labels, predictions, n_bootstrap=n_bootstrap, seed=seed)
    files: list[Path] = []
    sections = [format_table5(series), format_confusion(series)]
    column = by
    if column is None and _has_column(labels_csv, DEFAULT_BREAKDOWN_COLUMN):
        column = DEFAULT_BREAKDOWN_COLUMN
    by_result = None
    if column is not None:
        by_result = breakdown(labels, read_label_groups(labels_csv, column), predictions, column=column)
        sections.append(format_breakdown(by_result))
        _write_breakdown_csv(by_result, report_dir / f"series_by_{column}.csv")
        files.append(report_dir / f"series_by_{column}.csv")
    slice_result: LevelResult | None = None
    curve: FractionCurve | None = None
    if slices_csv is not None:
        slices = read_slices_csv(slices_csv)
        slice_result = slice_level(labels, slices, predictions, n_bootstrap=n_bootstrap, seed=seed)
        sections += [format_table5(slice_result), format_confusion(slice_result)]
        rule = curve_voting(method, recorded=predictions.voting, head=head)
        curve = fraction_curve(labels, slices, fractions=fractions, repeats=repeats, method=rule, head=head)
        if curve.partial_series:
            notes.append(
                f"{curve.partial_series} series have fewer stored slices than n_slices: R is relative to the "
                "stored slices (run `ctphase predict --slices-out` to classify every slice)"
            )
        sections.append(
            "F1 versus R (series level, "
            + f"{rule} vote, {repeats} samples per R):\n"
            + "\n".join(_curve_summary(curve))
        )

    for result in (series, slice_result):
        if result is None:
            continue
        level = result.level
        for name, writer in (
            (f"table5_{level}.csv", _write_table5_csv),
            (f"confusion_{level}.csv", _write_confusion_csv),
            (f"roc_{level}.csv", _write_roc_csv),
            (f"confusion_{level}.png", _plot_confusion),
            (f"roc_{level}.png", _plot_roc),
        ):
            writer(result, report_dir / name)
            files.append(report_dir / name)
    if curve is not None:
        _write_curve_csv(curve, report_dir / "f1_vs_r.csv")
        slice_f1 = float(slice_result.scores["macro_f1"]) if slice_result is not None else None
        _plot_curve(curve, report_dir / "f1_vs_r.png", slice_f1=slice_f1)
        files += [report_dir / "f1_vs_r.csv", report_dir / "f1_vs_r.png"]

    metrics: dict[str, Any] = {level.level: _metrics_json(level) for level in (series, slice_result) if level}
    if by_result is not None:
        metrics["by"] = {
            "column": by_result.column,
            "columns": list(COLUMN_NAMES),
            "groups": {
                name: {"true_phase": by_result.true_phase[g], "counts": by_result.counts[g].tolist()}
                for g, name in enumerate(by_result.groups)
            },
        }
    metrics["notes"] = list(notes)
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    files.append(report_dir / "metrics.json")
    text = "\n\n".join(sections)
    if notes:
        text += "\n\nnotes:\n" + "\n".join(f"- {note}" for note in notes)
    (report_dir / "summary.md").write_text(_markdown(text, notes, [*files, report_dir / "summary.md"]))
    files.append(report_dir / "summary.md")
    return EvaluationReport(
        text=text,
        files=tuple(files),
        series=series,
        slice=slice_result,
        curve=curve,
        n_unlabelled=n_unlabelled,
        notes=tuple(notes),
        by=by_result,
    )


def curve_voting(choice: VotingChoice, *, recorded: frozenset[str], head: SeriesHead | None) -> VotingMethod:
    """The rule the F1-versus-R curve re-votes with.

    ``auto`` takes the rule ``preds.csv`` records when it names exactly one (so the curve at R = 30 % matches the
    predictions), else the head when one is given, else ``weighted``.

    Raises:
        EvaluationError: an unknown choice, or the head's rule without the head.
    """
    if choice not in VOTING_CHOICES:
        raise EvaluationError(f"unknown voting method {choice!r}; expected one of {', '.join(VOTING_CHOICES)}")
    wanted: str = choice
    if choice == "auto":
        single = next(iter(recorded)) if len(recorded) == 1 else None
        wanted = single if single is not None else ("head" if head is not None else FALLBACK_VOTING)
    rule = next((method for method in VOTING_METHODS if method == wanted), None)
    if rule is None:
        raise EvaluationError(f"preds.csv names an unknown voting rule {wanted!r}")
    if rule == "head" and head is None:
        raise EvaluationError(
            "the predictions were voted by the model's series head: pass --model MODEL_DIR (the model that wrote "
            "them) so the F1-versus-R curve votes the same way, or choose another rule with --voting"
        )
    return rule


def _metrics_json(result: LevelResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "n": result.n_units,
        "n_missing": result.n_missing,
        "confusion": result.confusion.tolist(),
        "columns": list(COLUMN_NAMES),
    }
    for key, value in result.scores.items():
        out[key] = {
            "value": np.asarray(value).tolist(),
            "ci_low": np.asarray(result.ci_low[key]).tolist(),
            "ci_high": np.asarray(result.ci_high[key]).tolist(),
        }
    out["auc"] = [None if not np.isfinite(a) else float(a) for a in result.auc]
    return out
