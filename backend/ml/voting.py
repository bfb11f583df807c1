"""Slice probabilities -> one phase per series.

The network is trained one-vs-rest (a sigmoid per class), so a slice's four probabilities need not sum to 1.

- ``majority`` (the paper): each slice votes for its arg-max class; the series takes the class with most votes.
  Ties between classes are broken by the higher mean probability, then by the lower class index.
  ``confidence`` is the winning vote fraction; ``entropy`` is that of the vote distribution.
- ``mean``: average each class's probability over the slices, normalise the four means to sum 1, take the arg-max.
  ``confidence`` is the winning normalised mean probability; ``entropy`` is that of the normalised means.
- ``weighted``: the majority vote with each slice's vote weighted by its certainty, ``1 - normalised entropy`` of
  its four probabilities normalised to sum 1 (:func:`certainty_weights`): a slice that sees the phase (liver,
  portal vein, aorta and kidneys at once) counts fully, a slice that cannot tell (a thigh, a lung base) counts
  little instead of diluting the vote. Ties are broken as in ``majority``; if every slice is completely uncertain
  the plain majority decides. ``confidence`` is the winning share of the weight; ``entropy`` is that of the weighted
  vote distribution.
- ``head``: the model's series head (:mod:`backend.ml.series_head`), a logistic regression on the slices' mean
  logits fitted on the training run's validation series; it needs the head from the model's manifest.
  ``confidence`` is the head's probability of the winning phase; ``entropy`` is that of its four probabilities.
- ``auto`` (the default): ``head`` where the model has one, else ``weighted``.

``entropy`` is the Shannon entropy divided by ``log(4)``, so it lies in [0, 1]: 0 when one class takes everything,
1 for a uniform distribution. ``margin`` is top-1 minus top-2 of the same distribution (votes or means).
Both ``vote_fractions`` and ``mean_probabilities`` are always filled, whatever the method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

from backend.ml.phases import N_PHASES, PHASES, Phase
from backend.ml.series_head import HeadFeatures, SeriesHead, slice_logits

VotingMethod: TypeAlias = Literal["majority", "mean", "weighted", "head"]
"""A rule that decides a series (``head`` needs a model with a series head)."""
VOTING_METHODS: tuple[VotingMethod, ...] = ("majority", "mean", "weighted", "head")
VotingChoice: TypeAlias = Literal["auto", "majority", "mean", "weighted", "head"]
"""What a user may ask for: a rule, or ``auto``."""
VOTING_CHOICES: tuple[VotingChoice, ...] = ("auto", "majority", "mean", "weighted", "head")
DEFAULT_VOTING: Final[VotingChoice] = "auto"
"""The vote of ``ctphase predict``, ``ctphase evaluate`` and the service (see the module)."""
FALLBACK_VOTING: Final[VotingMethod] = "weighted"
"""What ``auto`` means for a model without a series head; also training's per-epoch validation vote."""


@dataclass(frozen=True)
class SeriesVote:
    """The series-level decision.

    Attributes:
        phase: the winning phase.
        confidence: winning vote fraction (majority), winning normalised mean probability (mean) or winning share of
            the certainty-weighted votes (weighted), in [0, 1].
        vote_fractions: per phase (order of ``PHASES``), share of slices whose arg-max is that phase; sums to 1.
        mean_probabilities: per phase, mean sigmoid probability over slices, normalised to sum 1.
        entropy: normalised Shannon entropy in [0, 1] of the distribution the method decides on.
        margin: top-1 minus top-2 of that distribution, in [0, 1].
        n_slices_read: number of slices that voted.
        method: the rule that decided (``auto`` resolved).
    """

    phase: Phase
    confidence: float
    vote_fractions: tuple[float, ...]
    mean_probabilities: tuple[float, ...]
    entropy: float
    margin: float
    n_slices_read: int
    method: VotingMethod


def check_probabilities(slice_probs: NDArray[Any]) -> NDArray[Any]:
    """Validate slice probabilities and return them as float64 ``[n, 4]``.

    Raises:
        ValueError: wrong shape, no slices, or values that are not finite probabilities in [0, 1].
    """
    probs = np.asarray(slice_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != N_PHASES:
        raise ValueError(f"slice_probs must have shape [n, {N_PHASES}], got {list(probs.shape)}")
    if probs.shape[0] == 0:
        raise ValueError("cannot vote on zero slices")
    if not np.all(np.isfinite(probs)):
        raise ValueError("slice_probs contains NaN or infinite values")
    if probs.min() < 0.0 or probs.max() > 1.0:
        raise ValueError(f"slice_probs must lie in [0, 1], got range [{probs.min():.4g}, {probs.max():.4g}]")
    return probs


def normalised_entropy(distribution: NDArray[Any]) -> float:
    """Shannon entropy of a distribution over the phases divided by ``log(N_PHASES)``; 0 <= result <= 1.

    Args:
        distribution: float [4], non-negative, summing to 1.
    """
    p = distribution[distribution > 0]
    value = float(-(p * np.log(p)).sum() / math.log(N_PHASES))
    return min(1.0, max(0.0, value))


def normalised_means(probs: NDArray[Any]) -> NDArray[Any]:
    """Per-class mean probability over slices, normalised to sum 1 (uniform if every probability is 0).

    Args:
        probs: float64 [n, 4] slice probabilities.

    Returns:
        float64 [4].
    """
    means = probs.mean(axis=0)
    total = means.sum()
    if total <= 0.0:
        return np.full(N_PHASES, 1.0 / N_PHASES)
    return np.asarray(means / total, dtype=np.float64)


def certainty_weights(probs: NDArray[Any]) -> NDArray[np.float64]:
    """Each slice's certainty: 1 minus the normalised entropy of its probabilities normalised to sum 1.

    Args:
        probs: float [n, 4] slice probabilities in [0, 1].

    Returns:
        float64 [n] in [0, 1]: 1 when one class holds all the probability, 0 for four equal probabilities (or all 0).
    """
    p = np.asarray(probs, dtype=np.float64)
    totals = p.sum(axis=1, keepdims=True)
    q = np.where(totals > 0.0, p / np.where(totals > 0.0, totals, 1.0), 1.0 / N_PHASES)
    plogp = np.where(q > 0.0, q * np.log(np.where(q > 0.0, q, 1.0)), 0.0)
    return np.asarray(np.clip(1.0 + plogp.sum(axis=1) / math.log(N_PHASES), 0.0, 1.0), dtype=np.float64)


def head_features(probs: NDArray[Any], *, kind: HeadFeatures) -> NDArray[np.float64]:
    """A series head's input: each output's logit averaged over the slices.

    ``weighted_mean_logits`` weights each slice by its :func:`certainty_weights` (the plain mean where every weight
    is 0), so that slices which show little (a pelvis slice, a slice above the liver) count less, as in the
    weighted vote; ``mean_logits`` is the plain mean.

    Args:
        probs: float [n, 4] slice probabilities in [0, 1], n >= 1.
        kind: which features.

    Returns:
        float64 [4].
    """
    return np.asarray(prefix_head_features(probs, np.asarray([len(probs)]), kind=kind)[0], dtype=np.float64)


def prefix_head_features(probs: NDArray[Any], sizes: NDArray[Any], *, kind: HeadFeatures) -> NDArray[np.float64]:
    """:func:`head_features` of every prefix ``probs[:size]`` at once (the F1-versus-R curve re-votes prefixes).

    Args:
        probs: float [k, 4] slice probabilities in [0, 1].
        sizes: int [r] prefix lengths, each in [1, k].
        kind: which features.

    Returns:
        float64 [r, 4].
    """
    logits = slice_logits(probs)  # [k, 4]
    weights = certainty_weights(probs) if kind == "weighted_mean_logits" else np.ones(len(logits))
    totals = np.cumsum(weights)[sizes - 1]  # [r]
    sums = np.cumsum(weights[:, None] * logits, axis=0)[sizes - 1]  # [r, 4]
    plain = np.cumsum(logits, axis=0)[sizes - 1] / sizes[:, None]
    safe = np.where(totals > 0.0, totals, 1.0)[:, None]
    return np.asarray(np.where(totals[:, None] > 0.0, sums / safe, plain), dtype=np.float64)


def weighted_votes(probs: NDArray[Any]) -> NDArray[np.float64]:
    """Per-class sum of the certainty-weighted arg-max votes (plain vote counts if every weight is 0).

    Args:
        probs: float [n, 4] slice probabilities (validated by the caller).

    Returns:
        float64 [4], non-negative, with a positive sum.
    """
    winners = probs.argmax(axis=1)
    totals = np.bincount(winners, weights=certainty_weights(probs), minlength=N_PHASES)
    if totals.sum() <= 0.0:
        totals = np.bincount(winners, minlength=N_PHASES).astype(np.float64)
    return np.asarray(totals, dtype=np.float64)


def _winner_of(scores: NDArray[Any], probs: NDArray[Any]) -> int:
    """Arg-max of per-class ``scores`` [4], ties broken by the higher mean probability, then the lower index."""
    tied = np.flatnonzero(scores == scores.max())
    if tied.size == 1:
        return int(tied[0])
    means = probs.mean(axis=0)
    return int(tied[np.argmax(means[tied])])  # argmax takes the first (lowest index) on an exact tie


def majority_winner(probs: NDArray[Any]) -> int:
    """Class index chosen by the paper's majority vote, ties broken by mean probability then lower index.

    Args:
        probs: float [n, 4] slice probabilities (validated by the caller).
    """
    return _winner_of(np.bincount(probs.argmax(axis=1), minlength=N_PHASES), probs)


def _top_margin(distribution: NDArray[Any]) -> float:
    top2 = np.sort(distribution)[-2:]
    return float(top2[1] - top2[0])


def resolve_voting(choice: VotingChoice, head: SeriesHead | None) -> VotingMethod:
    """The rule a choice means for a model: ``auto`` -> ``head`` when the model has one, else ``weighted``.

    Raises:
        ValueError: an unknown choice, or ``head`` for a model without a series head.
    """
    if choice not in VOTING_CHOICES:
        raise ValueError(f"unknown voting method {choice!r}; expected one of {', '.join(VOTING_CHOICES)}")
    if choice == "auto":
        return "head" if head is not None else FALLBACK_VOTING
    if choice == "head" and head is None:
        raise ValueError(
            "voting 'head' needs a model with a series head (trained by this version with enough validation "
            "series per phase; see the manifest's metrics.series_head); use auto, majority, mean or weighted"
        )
    return choice


def vote(
    slice_probs: NDArray[Any], *, method: VotingChoice = DEFAULT_VOTING, head: SeriesHead | None = None
) -> SeriesVote:
    """Combine slice probabilities into a series decision.

    Args:
        slice_probs: float [n, 4] per-slice sigmoid probabilities in [0, 1], columns in ``PHASES`` order.
        method: ``"majority"`` (the paper's vote over per-slice arg-max), ``"mean"`` (arg-max of mean probability),
            ``"weighted"`` (majority with certainty-weighted votes), ``"head"`` (the model's series head) or
            ``"auto"`` (see :func:`resolve_voting`).
        head: the model's series head (``manifest.series_head``), if it has one.

    Returns:
        The :class:`SeriesVote`.

    Raises:
        ValueError: invalid probabilities, an unknown method, or ``head`` without a head.
    """
    rule = resolve_voting(method, head)
    probs = check_probabilities(slice_probs)
    n = probs.shape[0]
    fractions = np.bincount(probs.argmax(axis=1), minlength=N_PHASES) / n
    means = normalised_means(probs)
    if rule == "majority":
        winner = majority_winner(probs)
        decided_on = fractions
    elif rule == "weighted":
        totals = weighted_votes(probs)
        winner = _winner_of(totals, probs)
        decided_on = totals / totals.sum()
    elif rule == "head" and head is not None:
        decided_on = head.probabilities(head_features(probs, kind=head.features))
        winner = int(np.argmax(decided_on))
    else:
        winner = int(np.argmax(means))
        decided_on = means
    return SeriesVote(
        phase=PHASES[winner],
        confidence=float(decided_on[winner]),
        vote_fractions=tuple(float(x) for x in fractions),
        mean_probabilities=tuple(float(x) for x in means),
        entropy=normalised_entropy(decided_on),
        margin=_top_margin(decided_on),
        n_slices_read=n,
        method=rule,
    )


def winner_index(slice_probs: NDArray[Any], *, method: VotingMethod = FALLBACK_VOTING) -> int:
    """Only the winning class index of :func:`vote` by a rule that needs no head, without validation (training).

    Args:
        slice_probs: float [n, 4], n >= 1, already validated.
        method: ``majority``, ``mean`` or ``weighted``.

    Raises:
        ValueError: ``head`` (it needs the head; use :func:`vote`).
    """
    if method == "head":
        raise ValueError("winner_index cannot vote with a series head; use vote(..., head=...)")
    if method == "majority":
        return majority_winner(slice_probs)
    if method == "weighted":
        return _winner_of(weighted_votes(slice_probs), slice_probs)
    return int(np.argmax(slice_probs.mean(axis=0)))
