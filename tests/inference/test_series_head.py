"""The series head: fitting (Newton, cross-validated C), its manifest form, and voting with it."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from backend.ml.phases import PHASES
from backend.ml.series_head import (
    C_GRID,
    HEAD_FEATURES,
    MIN_SERIES_PER_PHASE,
    SeriesHead,
    _balanced_weights,
    _newton,
    fit_series_head,
    fitting_problem,
    stratified_folds,
)
from backend.ml.voting import head_features, resolve_voting, vote
from tests.training.synthetic import transitional_world

OTHERS = PHASES.index("others")


def test_head_features_clip_saturated_probabilities():
    for kind in ("mean_logits", "weighted_mean_logits"):
        features = head_features(np.array([[0.0, 1.0, 0.5, 0.5], [0.0, 1.0, 0.5, 0.5]]), kind=kind)
        assert np.all(np.isfinite(features))
        np.testing.assert_allclose(features, [-13.8155, 13.8155, 0.0, 0.0], atol=1e-3)


def test_weighted_head_features_count_certain_slices_more():
    certain = [0.001, 0.999, 0.001, 0.001]  # certainty ~1
    unsure = [0.5, 0.5, 0.5, 0.5]  # certainty 0
    probs = np.array([certain, unsure, unsure, unsure])
    weighted = head_features(probs, kind="weighted_mean_logits")
    plain = head_features(probs, kind="mean_logits")
    np.testing.assert_allclose(weighted, np.log(np.array(certain) / (1 - np.array(certain))), atol=1e-9)
    np.testing.assert_allclose(plain, weighted / 4, atol=1e-9)
    only_unsure = head_features(np.array([unsure, unsure]), kind="weighted_mean_logits")
    np.testing.assert_allclose(only_unsure, [0.0, 0.0, 0.0, 0.0])  # every weight 0: the plain mean


def test_newton_reaches_the_optimum_a_generic_optimiser_finds():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [40, 50, 30, 20])
    z = rng.normal(size=(4, 4))[labels] * 2 + rng.normal(size=(len(labels), 4))
    weights = _balanced_weights(labels)
    theta = _newton(z, labels, weights, c=1.0)
    t = torch.zeros(4, 5, dtype=torch.float64, requires_grad=True)
    x = torch.tensor(np.c_[z, np.ones(len(labels))])
    optimiser = torch.optim.LBFGS(
        [t], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        ce = torch.nn.functional.cross_entropy(x @ t.T, torch.tensor(labels), reduction="none")
        loss = (torch.tensor(weights) * ce).sum() + 0.5 * (t[:, :4] ** 2).sum() + 0.5e-4 * (t[:, 4] ** 2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    np.testing.assert_allclose(theta, t.detach().numpy(), atol=1e-6)


def test_balanced_weights_give_every_phase_the_same_total():
    labels = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3])
    weights = _balanced_weights(labels)
    totals = np.bincount(labels, weights=weights)
    np.testing.assert_allclose(totals, totals[0])
    assert weights.sum() == pytest.approx(len(labels))


def test_folds_are_stratified_and_seeded():
    labels = np.repeat(np.arange(4), [5, 7, 9, 11])
    folds = stratified_folds(labels, n_folds=5, seed=3)
    for phase in range(4):
        counts = np.bincount(folds[labels == phase], minlength=5)
        assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(folds, stratified_folds(labels, n_folds=5, seed=3))
    assert not np.array_equal(folds, stratified_folds(labels, n_folds=5, seed=4))


def test_the_head_recognises_what_the_slice_vote_cannot():
    train, train_labels = transitional_world(20, seed=1)
    fit = fit_series_head(np.stack([head_features(p, kind=HEAD_FEATURES) for p in train]), train_labels, seed=0)
    assert fit.head.c in C_GRID
    assert fit.n_folds == 5
    assert fit.out_of_fold.shape == (80, 4)
    np.testing.assert_allclose(fit.out_of_fold.sum(axis=1), 1.0)
    assert (fit.out_of_fold.argmax(axis=1) == train_labels).mean() >= 0.95
    test, test_labels = transitional_world(20, seed=2)
    others = [p for p, label in zip(test, test_labels, strict=True) if label == OTHERS]
    assert all(vote(p, method="weighted").phase == "venous" for p in others)
    by_head = [vote(p, head=fit.head) for p in test]
    assert all(v.method == "head" for v in by_head)
    assert sum(v.phase == PHASES[label] for v, label in zip(by_head, test_labels, strict=True)) >= 76
    assert sum(v.phase == "others" for v, label in zip(by_head, test_labels, strict=True) if label == OTHERS) >= 18


def test_a_head_vote_reports_the_head_probabilities():
    train, labels = transitional_world(10, seed=5)
    head = fit_series_head(np.stack([head_features(p, kind=HEAD_FEATURES) for p in train]), labels).head
    slices = train[0]
    decided = vote(slices, method="head", head=head)
    expected = head.probabilities(head_features(slices, kind=HEAD_FEATURES))
    assert decided.confidence == pytest.approx(float(expected.max()))
    assert decided.phase == PHASES[int(expected.argmax())]
    assert decided.n_slices_read == len(slices)
    assert sum(decided.vote_fractions) == pytest.approx(1.0)
    assert 0.0 <= decided.entropy <= 1.0


def test_voting_choices_resolve_by_whether_the_model_has_a_head():
    train, labels = transitional_world(5, seed=6)
    head = fit_series_head(np.stack([head_features(p, kind=HEAD_FEATURES) for p in train]), labels).head
    assert resolve_voting("auto", head) == "head"
    assert resolve_voting("auto", None) == "weighted"
    assert resolve_voting("majority", head) == "majority"
    with pytest.raises(ValueError, match="needs a model with a series head"):
        resolve_voting("head", None)
    with pytest.raises(ValueError, match="unknown voting method"):
        resolve_voting("best", head)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a model with a series head"):
        vote(train[0], method="head")


def test_too_few_series_per_phase_are_refused():
    labels = np.repeat(np.arange(4), [MIN_SERIES_PER_PHASE] * 3 + [MIN_SERIES_PER_PHASE - 1])
    assert "per phase" in (fitting_problem(labels) or "")
    with pytest.raises(ValueError, match="cannot fit a series head"):
        fit_series_head(np.zeros((len(labels), 4)), labels)
    assert fitting_problem(np.repeat(np.arange(4), MIN_SERIES_PER_PHASE)) is None


@pytest.mark.parametrize(
    "change",
    [
        {"feature_scale": [1.0, 0.0, 1.0, 1.0]},
        {"bias": [0.0, 0.0, 0.0]},
        {"weights": [[0.0] * 4] * 3},
        {"feature_mean": [0.0, float("nan"), 0.0, 0.0]},
        {"c": 0.0},
        {"extra": 1},
    ],
)
def test_a_malformed_head_is_refused(change):
    valid = {
        "feature_mean": [0.0] * 4,
        "feature_scale": [1.0] * 4,
        "weights": [[0.0] * 4] * 4,
        "bias": [0.0] * 4,
        "c": 1.0,
        "n_series": 20,
    }
    SeriesHead.model_validate(valid)
    with pytest.raises(pydantic.ValidationError):
        SeriesHead.model_validate({**valid, **change})
