"""Voting on hand-built slice probability arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backend.ml.phases import PHASES
from backend.ml.voting import DEFAULT_VOTING, certainty_weights, vote, winner_index


def probs(*rows):
    return np.asarray(rows, dtype=np.float32)


def test_majority_vote_counts_argmax_per_slice():
    result = vote(
        probs(
            [0.9, 0.1, 0.1, 0.1],
            [0.1, 0.8, 0.3, 0.1],
            [0.1, 0.7, 0.2, 0.1],
            [0.2, 0.6, 0.1, 0.1],
        ),
        method="majority",
    )
    assert result.phase == "arterial"
    assert result.vote_fractions == (0.25, 0.75, 0.0, 0.0)
    assert result.confidence == pytest.approx(0.75)
    assert result.margin == pytest.approx(0.5)
    assert result.n_slices_read == 4
    # entropy of (0.25, 0.75) over 4 classes, normalised by log 4
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(4)
    assert result.entropy == pytest.approx(expected)
    assert sum(result.mean_probabilities) == pytest.approx(1.0)


def test_majority_beats_a_confident_minority():
    # two slices barely venous, one very confident arterial slice: majority says venous, mean says arterial
    slices = probs([0.0, 0.45, 0.55, 0.0], [0.0, 0.45, 0.55, 0.0], [0.0, 1.0, 0.0, 0.0])
    assert vote(slices, method="majority").phase == "venous"
    mean = vote(slices, method="mean")
    assert mean.phase == "arterial"
    means = np.asarray([0.0, 1.9, 1.1, 0.0]) / 3.0
    np.testing.assert_allclose(mean.mean_probabilities, means / means.sum(), rtol=1e-6)
    assert mean.confidence == pytest.approx(1.9 / 3.0)
    assert mean.margin == pytest.approx(0.8 / 3.0)


def test_tie_broken_by_mean_probability():
    # one vote each for non_contrast and others; others has the higher mean probability
    slices = probs([0.6, 0.0, 0.0, 0.5], [0.1, 0.0, 0.0, 0.9])
    result = vote(slices, method="majority")
    assert result.vote_fractions == (0.5, 0.0, 0.0, 0.5)
    assert result.phase == "others"
    assert result.margin == 0.0
    assert result.confidence == 0.5


def test_exact_tie_takes_the_lower_index():
    result = vote(probs([0.9, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.9]), method="majority")
    assert result.phase == "non_contrast"


def test_unanimous_vote_has_zero_entropy_and_uniform_has_one():
    unanimous = vote(probs(*[[0.1, 0.1, 0.9, 0.1]] * 5), method="majority")
    assert unanimous.entropy == 0.0
    assert unanimous.margin == 1.0
    spread = vote(probs([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]), method="majority")
    assert spread.entropy == pytest.approx(1.0)
    uniform_mean = vote(probs([0.5, 0.5, 0.5, 0.5]), method="mean")
    assert uniform_mean.entropy == pytest.approx(1.0)
    assert uniform_mean.mean_probabilities == pytest.approx((0.25, 0.25, 0.25, 0.25))


def test_all_zero_probabilities_give_uniform_means():
    result = vote(probs([0.0, 0.0, 0.0, 0.0]), method="mean")
    assert result.mean_probabilities == pytest.approx((0.25,) * 4)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((0, 4), dtype=np.float32), "zero slices"),
        (np.zeros((3, 3), dtype=np.float32), "shape"),
        (np.full((2, 4), np.nan, dtype=np.float32), "NaN"),
        (np.full((2, 4), 1.5, dtype=np.float32), r"\[0, 1\]"),
    ],
)
def test_invalid_probabilities(array, message):
    with pytest.raises(ValueError, match=message):
        vote(array)


def test_unknown_method():
    with pytest.raises(ValueError, match="voting method"):
        vote(probs([1, 0, 0, 0]), method="median")  # type: ignore[arg-type]


def test_certainty_weights_run_from_uniform_to_one_hot():
    weights = certainty_weights(
        probs([0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [0.0, 0.9, 0.0, 0.0], [0.2, 0.6, 0.2, 0.2])
    )
    assert weights[0] == pytest.approx(0.0)
    assert weights[1] == pytest.approx(0.0), "no probability at all is no certainty"
    assert weights[2] == pytest.approx(1.0)
    q = np.asarray([0.2, 0.6, 0.2, 0.2]) / 1.2
    assert weights[3] == pytest.approx(1.0 + (q * np.log(q)).sum() / math.log(4))


def test_weighted_vote_lets_certain_slices_outvote_undecided_ones():
    # three slices that cannot tell (a thigh, a lung base) lean venous; two slices that see the phase say arterial
    undecided = [[0.30, 0.30, 0.36, 0.30]] * 3
    certain = [[0.02, 0.95, 0.03, 0.02]] * 2
    slices = probs(*undecided, *certain)
    assert vote(slices, method="majority").phase == "venous"
    result = vote(slices, method="weighted")
    assert result.phase == "arterial"
    weights = certainty_weights(slices)
    share = weights[3:].sum() / weights.sum()
    assert result.confidence == pytest.approx(share)
    assert result.margin == pytest.approx(2 * share - 1)
    assert result.vote_fractions == pytest.approx((0.0, 0.4, 0.6, 0.0)), "vote fractions stay the plain counts"
    assert result.n_slices_read == 5


def test_weighted_vote_of_completely_undecided_slices_is_the_majority():
    slices = probs([0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    majority, weighted = vote(slices, method="majority"), vote(slices, method="weighted")
    assert weighted.phase == majority.phase == "non_contrast"
    assert weighted.confidence == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["majority", "mean", "weighted"])
def test_winner_index_is_the_vote(method):
    rng = np.random.default_rng(3)
    for _ in range(50):
        slices = rng.uniform(0.0, 1.0, size=(int(rng.integers(1, 12)), 4))
        assert PHASES[winner_index(slices, method=method)] == vote(slices, method=method).phase


def test_without_a_head_the_default_is_the_certainty_weighted_vote():
    slices = probs(*[[0.30, 0.30, 0.36, 0.30]] * 3, *[[0.02, 0.95, 0.03, 0.02]] * 2)
    assert DEFAULT_VOTING == "auto"
    assert vote(slices) == vote(slices, method="weighted")
    assert vote(slices).method == "weighted"
