"""train_model on synthetic series: determinism, cancellation, progress, fixed validation, warm start."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from backend.ml.network import ModelArtifactError, Preset, load_model
from backend.ml.phases import PHASES
from backend.ml.train import (
    CHANNELS_LAST_MIN_SPEEDUP,
    TrainConfig,
    TrainingCancelled,
    TrainProgress,
    train_model,
)
from tests.training.synthetic import make_examples

pytestmark = pytest.mark.usefixtures("fake_loader")


def _config(preset: Preset, tmp_path: Path, **changes: object) -> TrainConfig:
    """A pinned memory format: ``auto`` measures, and tests compare the weights of separate runs."""
    base = TrainConfig(
        preset=preset,
        seed=7,
        device="cpu",
        cache_dir=tmp_path / "cache",
        val_fraction=0.25,
        memory_format="contiguous",
    )
    return dataclasses.replace(base, **changes)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_model(model_dir).network.state_dict()


def test_same_seed_gives_identical_weights(tmp_path: Path, tiny_preset: Preset) -> None:
    examples = make_examples(4)
    first = train_model(examples, out_dir=tmp_path / "a", config=_config(tiny_preset, tmp_path))
    second = train_model(examples, out_dir=tmp_path / "b", config=_config(tiny_preset, tmp_path))
    other = train_model(examples, out_dir=tmp_path / "c", config=_config(tiny_preset, tmp_path, seed=8))
    a, b, c = _weights(first.model_dir), _weights(second.model_dir), _weights(other.model_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert first.manifest.weights_sha256 != other.manifest.weights_sha256


def test_auto_memory_format_is_measured_recorded_and_changes_nothing_else(tmp_path: Path, tiny_preset: Preset) -> None:
    examples = make_examples(4)
    auto = train_model(examples, out_dir=tmp_path / "auto", config=_config(tiny_preset, tmp_path, memory_format="auto"))
    chosen = auto.metrics["memory_format"]
    assert chosen in ("channels_last", "contiguous")
    rates = auto.metrics["probe_steps_per_second"]
    assert set(rates) == {"channels_last", "contiguous"}
    assert min(rates.values()) > 0
    assert (chosen == "channels_last") == (rates["channels_last"] >= CHANNELS_LAST_MIN_SPEEDUP * rates["contiguous"])
    pinned = train_model(
        examples, out_dir=tmp_path / "pinned", config=_config(tiny_preset, tmp_path, memory_format=chosen)
    )
    assert pinned.metrics["memory_format"] == chosen
    assert pinned.metrics["probe_steps_per_second"] is None
    a, b = _weights(auto.model_dir), _weights(pinned.model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the probe draws no random numbers and trains a copy


def test_channels_last_training_learns_the_same_task(tmp_path: Path, tiny_preset: Preset) -> None:
    examples = make_examples(4)
    config = _config(tiny_preset, tmp_path, memory_format="channels_last")
    first = train_model(examples, out_dir=tmp_path / "a", config=config)
    second = train_model(examples, out_dir=tmp_path / "b", config=config)
    contiguous = train_model(examples, out_dir=tmp_path / "c", config=_config(tiny_preset, tmp_path))
    assert first.metrics["memory_format"] == "channels_last"
    a, b, c = _weights(first.model_dir), _weights(second.model_dir), _weights(contiguous.model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)  # deterministic for a pinned format
    assert all(torch.allclose(a[k].float(), c[k].float(), atol=1e-2, rtol=1e-2) for k in a)  # other kernels


def test_result_metrics_and_progress(tmp_path: Path, tiny_preset: Preset) -> None:
    reports: list[TrainProgress] = []
    result = train_model(
        make_examples(4),
        out_dir=tmp_path / "m",
        config=_config(tiny_preset, tmp_path, epochs=2),
        progress=reports.append,
    )
    assert [r.epoch for r in reports] == [0, 1, 2]
    assert all(r.n_epochs == 2 for r in reports)
    assert reports[-1].val_macro_f1 is not None
    metrics = result.metrics
    assert metrics == result.manifest.metrics == load_model(result.model_dir).manifest.metrics
    assert (metrics["n_train_studies"], metrics["n_val_studies"]) == (3, 1)
    assert (metrics["n_train_series"], metrics["n_val_series"]) == (12, 4)
    assert set(metrics["val_series_f1"]) == set(PHASES)
    assert 1 <= metrics["best_epoch"] <= 2
    assert len(metrics["history"]) == 2
    assert metrics["pos_weight"] == dict.fromkeys(PHASES, 3.0)
    assert metrics["series_head"] == {
        "adopted": False,
        "reason": "needs >= 5 validation series per phase, has [1, 1, 1, 1]",
        "n_head_only_series": 0,
    }
    assert result.manifest.series_head is None
    assert len(result.val_studies) == 1


def test_cancellation_during_training_leaves_no_model(tmp_path: Path, tiny_preset: Preset) -> None:
    calls = iter(range(1000))

    def stop_after_a_few_batches() -> bool:
        return next(calls) >= 3

    with pytest.raises(TrainingCancelled):
        train_model(
            make_examples(4),
            out_dir=tmp_path / "m",
            config=_config(tiny_preset, tmp_path, epochs=3),
            should_stop=stop_after_a_few_batches,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_cancellation_while_decoding_leaves_no_model(tmp_path: Path, tiny_preset: Preset) -> None:
    with pytest.raises(TrainingCancelled, match="slice cache"):
        train_model(
            make_examples(4), out_dir=tmp_path / "m", config=_config(tiny_preset, tmp_path), should_stop=lambda: True
        )
    assert not (tmp_path / "m").exists()


def test_fixed_validation_studies_are_removed_from_training(tmp_path: Path, tiny_preset: Preset) -> None:
    examples = make_examples(5)
    held_out = [e for e in examples if e.series.study_instance_uid == "1.2.4"]
    result = train_model(examples, out_dir=tmp_path / "m", config=_config(tiny_preset, tmp_path), val_examples=held_out)
    assert result.val_studies == ("1.2.4",)
    assert (result.metrics["n_train_series"], result.metrics["n_val_series"]) == (16, 4)


def test_head_only_series_fit_the_series_head_and_are_never_trained_on(tmp_path: Path, tiny_preset: Preset) -> None:
    examples = make_examples(4)
    others = [e for e in make_examples(10) if e.series.study_instance_uid not in {"1.2.0", "1.2.1", "1.2.2", "1.2.3"}]
    result = train_model(
        examples,
        out_dir=tmp_path / "m",
        config=_config(tiny_preset, tmp_path, epochs=2),
        head_examples=[*examples, *others],  # the training and validation series themselves are left out
    )
    metrics = result.metrics
    assert (metrics["n_train_series"], metrics["n_val_series"]) == (12, 4)
    head = metrics["series_head"]
    assert (head["n_series"], head["n_head_only_series"]) == (4 + 24, 24)  # 7 series per phase: fitted
    assert "cross-validated head macro F1" in head["reason"]
    assert metrics["head_data_fingerprint"] is not None
    assert (result.manifest.series_head is not None) == head["adopted"]
    plain = train_model(examples, out_dir=tmp_path / "plain", config=_config(tiny_preset, tmp_path, epochs=2))
    assert plain.metrics["head_data_fingerprint"] is None
    assert plain.metrics["series_head"]["reason"].startswith("needs >= 5 validation series per phase")
    a, b = _weights(plain.model_dir), _weights(result.model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)  # head-only series never train the network


def test_warm_start_and_its_refusal(tmp_path: Path, tiny_preset: Preset) -> None:
    examples = make_examples(4)
    champion = train_model(examples, out_dir=tmp_path / "champion", config=_config(tiny_preset, tmp_path))
    candidate = train_model(
        examples, out_dir=tmp_path / "candidate", config=_config(tiny_preset, tmp_path), init_from=champion.model_dir
    )
    assert candidate.metrics["init_from_sha256"] == champion.manifest.weights_sha256
    bigger = dataclasses.replace(tiny_preset, image_size=48)
    with pytest.raises(ModelArtifactError, match="cannot warm-start"):
        train_model(examples, out_dir=tmp_path / "x", config=_config(bigger, tmp_path), init_from=champion.model_dir)
    assert not (tmp_path / "x").exists()


def test_existing_output_and_bad_settings_are_refused(tmp_path: Path, tiny_preset: Preset) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        train_model(make_examples(2), out_dir=tmp_path / "m", config=_config(tiny_preset, tmp_path))
    with pytest.raises(ValueError, match="batch_size"):
        train_model(make_examples(2), out_dir=tmp_path / "n", config=_config(tiny_preset, tmp_path, batch_size=1))
    bad = _config(tiny_preset, tmp_path, memory_format="nhwc")
    with pytest.raises(ValueError, match="memory_format"):
        train_model(make_examples(2), out_dir=tmp_path / "n", config=bad)
    with pytest.raises(ValueError, match="unknown preset"):
        train_model(make_examples(2), out_dir=tmp_path / "n", config=TrainConfig(preset="huge"))
