"""The series head: a learned series-level vote on the mean slice logits.

A slice network trained one-vs-rest sees one slice at a time. Between late arterial and portal venous lies a narrow
"transitional" band (labelled ``others``) whose slices each look like a weak arterial or a weak venous slice: no
slice is confident, so every vote counts them arterial or venous (0-1 of 5-11 transitional phantom series right for
every starter model, voted by majority or by certainty). The evidence is there at series level, in how *much* each
output leans: a transitional series' mean ``others`` logit is higher than that of a portal venous or late arterial
series, and its venous and arterial logits are both middling.

The head reads exactly that: for a series it averages the four logits ``log(p / (1 - p))`` of the voting slices,
each slice weighted by its certainty as in the weighted vote (:func:`backend.ml.voting.head_features`; heads
fitted before the weighting read the plain mean, and their ``features`` field says so), standardises them and
applies a multinomial logistic regression (4 features -> 4 phases, :class:`SeriesHead`). Training fits it on the
series the trainer held out for validation, plus any head-only series it is given (:func:`fit_series_head`), never
on the series the network learned from, whose logits are over-confident.

Fitting: class-balanced cross-entropy (each phase weighs the same, as macro F1 does) plus an L2 penalty
``||W||^2 / (2 C)`` on the weights (not the biases), minimised by Newton's method (20 parameters: exact and
deterministic). ``C`` is chosen from :data:`C_GRID` by stratified k-fold cross-validation on the same series (lowest
out-of-fold log-loss); the out-of-fold predictions at that ``C`` estimate the head on series it did not see, and
training adopts the head only where they score at least as well as the certainty-weighted vote on the same series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import numpy as np
import pydantic
from numpy.typing import NDArray

from backend.ml.phases import N_PHASES

PROBABILITY_CLIP: Final[float] = 1e-6
"""Probabilities are clipped to [clip, 1 - clip] before the logit (|logit| <= 13.8; float32 sigmoids saturate)."""
C_GRID: Final[tuple[float, ...]] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
"""Inverse L2 strengths tried by cross-validation."""
MAX_FOLDS: Final[int] = 5
"""Cross-validation folds (fewer when a phase has fewer series)."""
MIN_SERIES_PER_PHASE: Final[int] = 5
"""Fewest fitting series per phase: below it the head is not fitted (the folds would be one or two series)."""
HeadFeatures: TypeAlias = Literal["mean_logits", "weighted_mean_logits"]
"""What a head reads (computed by :func:`backend.ml.voting.head_features`): the slices' mean logits, or their
certainty-weighted mean (each slice weighted by :func:`backend.ml.voting.certainty_weights`)."""
HEAD_FEATURES: Final[HeadFeatures] = "weighted_mean_logits"
"""What heads fitted now read; a stored head without the field reads ``mean_logits`` (heads fitted before it)."""
_BIAS_RIDGE: Final[float] = 1e-4
"""A tiny penalty on the biases: the softmax is invariant to a common shift, which makes the Hessian singular."""
_NEWTON_STEPS: Final[int] = 100
_GRADIENT_TOLERANCE: Final[float] = 1e-9


def slice_logits(slice_probs: NDArray[Any]) -> NDArray[np.float64]:
    """Logits ``log(p / (1 - p))`` of sigmoid probabilities clipped to [clip, 1 - clip].

    Args:
        slice_probs: float [n, 4] sigmoid probabilities in [0, 1], columns in ``PHASES`` order.

    Returns:
        float64 [n, 4], each in [-13.8, 13.8].
    """
    p = np.clip(np.asarray(slice_probs, dtype=np.float64), PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    return np.asarray(np.log(p / (1.0 - p)), dtype=np.float64)


def _softmax(scores: NDArray[Any]) -> NDArray[np.float64]:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float64)


def _four(values: list[float]) -> list[float]:
    if len(values) != N_PHASES or not all(math.isfinite(v) for v in values):
        raise ValueError(f"expected {N_PHASES} finite numbers, got {values}")
    return values


class SeriesHead(pydantic.BaseModel):
    """A fitted head, stored in the model manifest (``series_head``).

    Attributes:
        feature_mean: float [4], mean of the fitting series' features.
        feature_scale: float [4] > 0, their standard deviation (inputs are ``(x - mean) / scale``).
        weights: float [4 phases][4 features].
        bias: float [4].
        c: inverse L2 strength chosen by cross-validation.
        n_series: series it was fitted on.
        features: what it reads (:data:`HeadFeatures`); ``mean_logits`` where a stored head does not say.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    feature_mean: list[float]
    feature_scale: list[float]
    weights: list[list[float]]
    bias: list[float]
    c: float = pydantic.Field(gt=0)
    n_series: int = pydantic.Field(ge=1)
    features: HeadFeatures = "mean_logits"

    @pydantic.field_validator("feature_mean", "bias")
    @classmethod
    def _check_four(cls, value: list[float]) -> list[float]:
        return _four(value)

    @pydantic.field_validator("feature_scale")
    @classmethod
    def _check_scale(cls, value: list[float]) -> list[float]:
        if min(_four(value)) <= 0.0:
            raise ValueError(f"feature_scale must be positive, got {value}")
        return value

    @pydantic.field_validator("weights")
    @classmethod
    def _check_weights(cls, value: list[list[float]]) -> list[list[float]]:
        if len(value) != N_PHASES:
            raise ValueError(f"weights must have {N_PHASES} rows, got {len(value)}")
        return [_four(row) for row in value]

    def probabilities(self, features: NDArray[Any]) -> NDArray[np.float64]:
        """Phase probabilities of series.

        Args:
            features: float [m, 4] or [4], each series' :func:`backend.ml.voting.head_features` (``self.features``).

        Returns:
            float64 [m, 4] (or [4]), rows summing to 1, columns in ``PHASES`` order.
        """
        x = np.asarray(features, dtype=np.float64)
        z = (x - np.asarray(self.feature_mean)) / np.asarray(self.feature_scale)
        return _softmax(z @ np.asarray(self.weights).T + np.asarray(self.bias))


# --- fitting ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadFit:
    """A fitted head and what cross-validation said about it.

    Attributes:
        head: fitted on every series given.
        out_of_fold: float64 [n, 4], each series' probabilities from the head fitted without its fold, at the
            chosen ``C`` (an estimate of the head on unseen series).
        cv_log_loss: class-balanced mean out-of-fold log-loss per ``C`` tried (``C`` -> loss).
        n_folds: folds used.
    """

    head: SeriesHead
    out_of_fold: NDArray[np.float64]
    cv_log_loss: dict[float, float]
    n_folds: int


def _balanced_weights(labels: NDArray[np.int64]) -> NDArray[np.float64]:
    """Per-series weight ``n / (K * n_phase)`` (phases absent from ``labels`` do not count in K)."""
    counts = np.bincount(labels, minlength=N_PHASES).astype(np.float64)
    present = int((counts > 0).sum())
    return np.asarray(len(labels) / (present * counts[labels]), dtype=np.float64)


def _newton(
    z: NDArray[np.float64], labels: NDArray[np.int64], weights: NDArray[np.float64], *, c: float
) -> NDArray[np.float64]:
    """Minimise the weighted cross-entropy + L2; returns theta float64 [4, d + 1] (last column: bias).

    Args:
        z: float64 [n, d] standardised features.
        labels: int64 [n] phase indices.
        weights: float64 [n] per-series weights.
        c: inverse L2 strength on the feature weights.
    """
    n, d = z.shape
    x = np.concatenate([z, np.ones((n, 1))], axis=1)  # [n, d + 1]
    onehot = np.eye(N_PHASES)[labels]
    ridge = np.full(d + 1, 1.0 / c)
    ridge[d] = _BIAS_RIDGE
    theta: NDArray[np.float64] = np.zeros((N_PHASES, d + 1))

    def objective(t: NDArray[np.float64]) -> float:
        scores = x @ t.T
        top = scores.max(axis=1, keepdims=True)
        lse = (top + np.log(np.exp(scores - top).sum(axis=1, keepdims=True)))[:, 0]
        data = float((weights * (lse - (scores * onehot).sum(axis=1))).sum())
        return data + 0.5 * float((ridge * t * t).sum())

    current = objective(theta)
    for _ in range(_NEWTON_STEPS):
        p = _softmax(x @ theta.T)  # [n, K]
        grad = (weights[:, None] * (p - onehot)).T @ x + ridge * theta  # [K, d + 1]
        if float(np.abs(grad).max()) < _GRADIENT_TOLERANCE:
            break
        curvature = weights[:, None, None] * (p[:, :, None] * np.eye(N_PHASES) - p[:, :, None] * p[:, None, :])
        hessian = np.einsum("nkl,na,nb->kalb", curvature, x, x).reshape(N_PHASES * (d + 1), N_PHASES * (d + 1))
        hessian += np.diag(np.tile(ridge, N_PHASES))
        step = np.linalg.solve(hessian, grad.ravel()).reshape(theta.shape)
        scale = 1.0
        while scale > 1e-6:
            candidate = theta - scale * step
            value = objective(candidate)
            if value <= current:
                theta, current = candidate, value
                break
            scale *= 0.5
        else:
            break
    return theta


def _fit_at(
    features: NDArray[np.float64], labels: NDArray[np.int64], *, c: float, kind: HeadFeatures = HEAD_FEATURES
) -> SeriesHead:
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    theta = _newton((features - mean) / scale, labels, _balanced_weights(labels), c=c)
    return SeriesHead(
        feature_mean=[float(v) for v in mean],
        feature_scale=[float(v) for v in scale],
        weights=[[float(v) for v in row[:-1]] for row in theta],
        bias=[float(v) for v in theta[:, -1]],
        c=c,
        n_series=len(labels),
        features=kind,
    )


def stratified_folds(labels: NDArray[np.int64], *, n_folds: int, seed: int) -> NDArray[np.int64]:
    """Fold number of each series: every phase's series dealt round-robin over the folds in a seeded order.

    Returns:
        int64 [n] in [0, n_folds).
    """
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(labels), dtype=np.int64)
    for phase in range(N_PHASES):
        members = np.flatnonzero(labels == phase)
        folds[rng.permutation(members)] = np.arange(members.size) % n_folds
    return folds


def fitting_problem(labels: NDArray[Any]) -> str | None:
    """Why a head cannot be fitted on series with these phase indices; ``None`` when it can."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=N_PHASES)
    if int(counts.min()) < MIN_SERIES_PER_PHASE:
        return f"needs >= {MIN_SERIES_PER_PHASE} validation series per phase, has {counts.tolist()}"
    return None


def fit_series_head(
    features: NDArray[Any], labels: NDArray[Any], *, seed: int = 0, kind: HeadFeatures = HEAD_FEATURES
) -> HeadFit:
    """Fit a head, choosing ``C`` by stratified cross-validation (see the module docstring).

    Args:
        features: float [n, 4], :func:`backend.ml.voting.head_features` of each series.
        labels: int [n], phase indices.
        seed: seeds the fold assignment.
        kind: which features they are (recorded in the head).

    Raises:
        ValueError: shapes disagree, or :func:`fitting_problem` objects.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != N_PHASES or x.shape[0] != y.shape[0] or not np.all(np.isfinite(x)):
        raise ValueError(f"features must be finite float [n, {N_PHASES}] with one label each, got {list(x.shape)}")
    problem = fitting_problem(y)
    if problem is not None:
        raise ValueError(f"cannot fit a series head: {problem}")
    n_folds = min(MAX_FOLDS, int(np.bincount(y, minlength=N_PHASES).min()))
    folds = stratified_folds(y, n_folds=n_folds, seed=seed)
    weights = _balanced_weights(y)
    out_of_fold: dict[float, NDArray[np.float64]] = {}
    losses: dict[float, float] = {}
    for c in C_GRID:
        probs = np.zeros((len(y), N_PHASES))
        for fold in range(n_folds):
            held = folds == fold
            probs[held] = _fit_at(x[~held], y[~held], c=c).probabilities(x[held])
        out_of_fold[c] = probs
        picked = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
        losses[c] = float(-(weights * np.log(picked)).sum() / weights.sum())
    best = min(C_GRID, key=lambda c: (losses[c], c))
    return HeadFit(
        head=_fit_at(x, y, c=best, kind=kind),
        out_of_fold=out_of_fold[best],
        cv_log_loss=losses,
        n_folds=n_folds,
    )
