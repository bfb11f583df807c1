"""Pure parts of training: study split, class weights, learning-rate schedule, slice choice, augmentation."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from backend.ml.dataset import CachedSeries, spread_indices
from backend.ml.network import Preset, create_network
from backend.ml.phases import PHASES
from backend.ml.train import (
    VALIDATION_BATCH,
    ClassWeightedBCE,
    LabeledSeries,
    TrainConfig,
    _resolve,
    _slice_probabilities,
    augment_batch,
    evaluate_cached,
    fit_head_on_held_out,
    pos_weight_from_counts,
    split_by_study,
    warmup_cosine_factor,
)
from tests.training.synthetic import fake_series, transitional_world


def _studies(n: int) -> list[LabeledSeries]:
    """``n`` studies; each has non-contrast, arterial and venous series, every third one also an ``others``."""
    examples = []
    for s in range(n):
        phases = [*PHASES[:3], *(["others"] if s % 3 == 0 else [])]
        examples += [LabeledSeries(series=fake_series(f"9.{s}.{p}", f"9.{s}"), phase=ph) for p, ph in enumerate(phases)]
    return examples


def test_split_keeps_studies_whole_and_is_stratified() -> None:
    examples = _studies(60)
    train, val = split_by_study(examples, val_fraction=0.25, seed=3)
    train_studies = {e.series.study_instance_uid for e in train}
    val_studies = {e.series.study_instance_uid for e in val}
    assert not train_studies & val_studies
    assert len(train) + len(val) == len(examples)
    assert len(val_studies) == 15
    others_in_val = sum(e.phase == "others" for e in val)
    assert others_in_val == 5  # 20 studies hold an "others" series: a quarter of them is held out
    assert Counter(e.phase for e in val).keys() == set(PHASES)


def test_split_is_seeded_and_val_fraction_zero_holds_out_nothing() -> None:
    examples = _studies(20)
    first = split_by_study(examples, val_fraction=0.2, seed=1)
    assert first == split_by_study(examples, val_fraction=0.2, seed=1)
    assert first != split_by_study(examples, val_fraction=0.2, seed=2)
    train, val = split_by_study(examples, val_fraction=0.0, seed=1)
    assert (len(train), val) == (len(examples), [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_study(examples, val_fraction=1.0, seed=1)


def test_pos_weight_is_negatives_over_positives() -> None:
    weights = pos_weight_from_counts([10, 20, 30, 40])
    np.testing.assert_allclose(weights.numpy(), [90 / 10, 80 / 20, 70 / 30, 60 / 40], rtol=1e-6)
    assert pos_weight_from_counts([10, 0, 10, 10]).tolist()[1] == 1.0
    with pytest.raises(ValueError, match="4 non-negative"):
        pos_weight_from_counts([1, 2, 3])


def test_loss_keeps_pos_weight_as_a_buffer() -> None:
    loss_fn = ClassWeightedBCE(pos_weight_from_counts([30, 30, 30, 10]))
    assert dict(loss_fn.named_buffers())["pos_weight"].tolist() == pytest.approx([70 / 30, 70 / 30, 70 / 30, 90 / 10])
    assert "pos_weight" in loss_fn.state_dict()
    logits = torch.zeros(2, 4)
    labels = torch.tensor([3, 0])
    weighted = loss_fn(logits, labels)
    unweighted = ClassWeightedBCE(torch.ones(4))(logits, labels)
    assert float(weighted) > float(unweighted)


def test_schedule_warms_up_linearly_then_anneals() -> None:
    total, warmup = 100, 10
    factors = [warmup_cosine_factor(s, total_steps=total, warmup_steps=warmup) for s in range(total)]
    np.testing.assert_allclose(factors[:warmup], np.arange(1, warmup + 1) / warmup)
    assert factors[warmup] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1 :], strict=False))
    assert factors[-1] == pytest.approx(0.01)
    assert factors[55] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * 45 / 89)))
    assert warmup_cosine_factor(0, total_steps=5, warmup_steps=0) == pytest.approx(1.0)


def test_cached_slices_span_the_whole_series() -> None:
    indices = spread_indices(300, 30, series_uid="1.2.3")
    assert len(indices) == 30
    assert np.all(np.diff(indices) > 0)
    assert indices[0] < 10  # one slice per stratum of 10: both ends of the series are covered
    assert indices[-1] >= 290
    np.testing.assert_array_equal(indices, spread_indices(300, 30, series_uid="1.2.3"))
    assert not np.array_equal(indices, spread_indices(300, 30, series_uid="1.2.4"))
    np.testing.assert_array_equal(spread_indices(7, 30, series_uid="x"), np.arange(7))


def test_augmentation_stays_in_range_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((6, 2, 32, 32), dtype=np.float32))
    images[:, :, :4] = 0.0  # air
    widths = torch.tensor([400.0, 80.0])
    first = augment_batch(images, widths=widths, generator=torch.Generator().manual_seed(5))
    second = augment_batch(images, widths=widths, generator=torch.Generator().manual_seed(5))
    assert first.shape == images.shape
    assert float(first.min()) >= 0.0
    assert float(first.max()) <= 1.0
    torch.testing.assert_close(first, second)
    assert not torch.equal(first, images)


def test_validation_batches_across_series_and_splits_back_per_series(tiny_preset: Preset) -> None:
    """Series of 1 to VALIDATION_BATCH + 3 cached slices share forward passes; each gets back its own slices."""
    rng = np.random.default_rng(3)
    sizes = [1, 5, VALIDATION_BATCH + 3, 2, 7]
    series = [
        CachedSeries(
            series_instance_uid=f"s{i}",
            study_instance_uid=f"t{i}",
            label=i % len(PHASES),
            slice_indices=np.arange(k, dtype=np.int64),
            images=rng.integers(0, 256, (k, 1, 32, 32), dtype=np.uint8),
        )
        for i, k in enumerate(sizes)
    ]
    torch.manual_seed(0)
    network = create_network(tiny_preset).eval()
    loss_fn = ClassWeightedBCE(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    probs, loss = _slice_probabilities(
        network, series, plan=_resolve(TrainConfig(preset=tiny_preset, device="cpu")), loss_fn=loss_fn
    )
    with torch.inference_mode():
        logits = [network(torch.from_numpy(s.images).float() / 255.0) for s in series]
    assert [p.shape for p in probs] == [(k, len(PHASES)) for k in sizes]
    for got, expected in zip(probs, logits, strict=True):
        np.testing.assert_allclose(got, torch.sigmoid(expected).numpy(), atol=1e-5)
    labels = torch.cat([torch.full((k,), s.label) for k, s in zip(sizes, series, strict=True)])
    assert loss == pytest.approx(float(loss_fn(torch.cat(logits), labels)), rel=1e-5)


class _LogitsFromPixels(torch.nn.Module):
    """A stand-in network: each of the 4 input channels' mean, in [0, 1], maps linearly to a logit in [-10, 10]."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3)) * 20.0 - 10.0


def _cached_world(n_per_phase: int, *, seed: int) -> list[CachedSeries]:
    """:func:`transitional_world` series as cached slices whose pixels encode the slice logits."""
    probs, labels = transitional_world(n_per_phase, seed=seed)
    out = []
    for i, (p, label) in enumerate(zip(probs, labels, strict=True)):
        pixels = np.round((np.log(p / (1.0 - p)) + 10.0) / 20.0 * 255.0).clip(0, 255).astype(np.uint8)
        out.append(
            CachedSeries(
                series_instance_uid=f"s{i}",
                study_instance_uid=f"t{i}",
                label=int(label),
                slice_indices=np.arange(len(p), dtype=np.int64),
                images=np.broadcast_to(pixels[:, :, None, None], (len(p), 4, 2, 2)).copy(),
            )
        )
    return out


def _fit_head(series: list[CachedSeries], preset: Preset) -> tuple[object, dict[str, object]]:
    plan = _resolve(TrainConfig(preset=preset, device="cpu"))
    loss_fn = ClassWeightedBCE(torch.ones(4))
    probs = evaluate_cached(_LogitsFromPixels(), series, plan=plan, loss_fn=loss_fn).probabilities if series else ()
    return fit_head_on_held_out(series, probs, seed=0)


def test_the_series_head_is_adopted_where_it_beats_the_vote(tiny_preset: Preset) -> None:
    head, metrics = _fit_head(_cached_world(12, seed=1), tiny_preset)
    assert head is not None
    assert metrics["adopted"] is True
    assert metrics["n_series"] == 48
    assert metrics["vote_macro_f1"] < 0.85  # every "others" series votes venous
    assert metrics["cv_macro_f1"] >= 0.95
    assert "cross-validated head macro F1" in str(metrics["reason"])


def test_the_series_head_is_not_adopted_where_it_cannot_be_fitted_or_does_worse(tiny_preset: Preset) -> None:
    head, metrics = _fit_head(_cached_world(4, seed=1), tiny_preset)
    assert head is None
    assert metrics == {"adopted": False, "reason": "needs >= 5 validation series per phase, has [4, 4, 4, 4]"}
    head, metrics = _fit_head([], tiny_preset)
    assert (head, metrics["reason"]) == (None, "no validation series")
    perfect = [s for s in _cached_world(8, seed=2) if s.label != PHASES.index("others")]
    others = [  # "others" series as unmistakable as the rest: the vote is perfect, the head can only tie
        CachedSeries(s.series_instance_uid + "o", s.study_instance_uid, 3, s.slice_indices, s.images[:, ::-1].copy())
        for s in perfect[:8]
    ]
    head, metrics = _fit_head(perfect + others, tiny_preset)
    assert metrics["vote_macro_f1"] == pytest.approx(1.0)
    assert (head is not None) == (metrics["cv_macro_f1"] >= 1.0)
