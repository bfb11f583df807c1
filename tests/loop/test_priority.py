"""Unit tests of the review priority (pure function, no I/O)."""

from __future__ import annotations

import math

import pytest

from backend.ml.priority import PriorityWeights, normalized_entropy, review_priority, vote_margin


def test_confident_agreeing_prediction_scores_high():
    result = review_priority(
        phase="venous",
        vote_fractions=(0.0, 0.0, 1.0, 0.0),
        probabilities=(0.01, 0.01, 0.97, 0.01),
        prior_phase="venous",
        prior_confidence=0.9,
    )
    assert result.conflict == 0.0
    assert result.uncertainty < 0.15
    assert result.score > 0.9
    assert math.isclose(result.score + result.priority, 1.0, abs_tol=1e-6)


def test_each_component_lowers_the_score():
    base = {"phase": "arterial", "vote_fractions": (0.0, 1.0, 0.0, 0.0), "probabilities": (0.02, 0.95, 0.02, 0.01)}
    confident = review_priority(**base)
    split_vote = review_priority(**{**base, "vote_fractions": (0.0, 0.5, 0.4, 0.1)})
    conflicting = review_priority(**base, prior_phase="venous", prior_confidence=0.8)
    others = review_priority(phase="others", vote_fractions=(0, 0, 0, 1.0), probabilities=(0.02, 0.02, 0.01, 0.95))
    assert split_vote.score < confident.score
    assert conflicting.score < confident.score
    assert conflicting.conflict == pytest.approx(0.8)
    assert others.others == 1.0
    assert others.score < confident.score


def test_prior_without_opinion_is_no_conflict():
    result = review_priority(
        phase="arterial", vote_fractions=(0, 1, 0, 0), probabilities=(0, 1, 0, 0), prior_phase=None, prior_confidence=1
    )
    assert result.conflict == 0.0
    assert result.as_components()["prior_phase"] is None


def test_entropy_and_margin_bounds():
    assert normalized_entropy((0.25, 0.25, 0.25, 0.25)) == pytest.approx(1.0)
    assert normalized_entropy((0.0, 0.0, 0.0, 0.0)) == 1.0
    assert normalized_entropy((0.0, 1.0, 0.0, 0.0)) == 0.0
    assert vote_margin((0.1, 0.6, 0.3, 0.0)) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"phase": "portal"}, "unknown phase"),
        ({"vote_fractions": (1.0, 0.0)}, "must have 4 values"),
        ({"probabilities": (0.1, 0.2, 1.5, 0.0)}, r"in \[0, 1\]"),
        ({"prior_phase": "venous", "prior_confidence": 2.0}, "prior_confidence"),
    ],
)
def test_invalid_inputs_are_rejected(kwargs, message):
    args = {"phase": "venous", "vote_fractions": (0, 0, 1, 0), "probabilities": (0, 0, 1, 0), **kwargs}
    with pytest.raises(ValueError, match=message):
        review_priority(**args)


def test_weights_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        PriorityWeights(uncertainty=0.5, others=0.5, conflict=0.5)
