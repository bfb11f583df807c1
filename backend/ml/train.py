"""Training of the slice network (Dao et al. 2022): labelled series -> slices -> class-weighted BCE -> artifact.

The recipe:

- **Split by study** (:func:`split_by_study`), stratified by phase, so no patient's series lands on both sides.
- **Slices**: each series' slices are decoded once into a uint8 cache (:mod:`backend.ml.dataset`), up to
  ``cache_slices_per_series`` spread along z; each epoch draws ``slices_per_series`` of them per training series.
  Every slice carries its series' label (the paper labels every slice of a series with the series phase).
- **Loss**: one-vs-rest sigmoid outputs with binary cross-entropy, ``pos_weight = n_neg / n_pos`` per class from the
  class frequencies of the training slices (:class:`ClassWeightedBCE`), so the rare ``others`` class counts.
- **Optimiser**: Adam; learning rate with a linear warm-up then cosine annealing, stepped per batch
  (:func:`warmup_cosine_factor`); gradients clipped to a global norm of :data:`GRAD_CLIP_NORM`. From random weights
  the start is fragile: without clipping and with a 1-epoch warm-up, the ``cpu`` preset on 160 phantom series reached
  a validation slice F1 of 0.60 with seed 0 but 0.45 with seed 1 (training loss stuck near 0.9); clipping and a
  3-epoch warm-up took seed 1 to 0.62 (loss 0.65; measured, 20 epochs).
- **Augmentation** (in window space, on the batch): horizontal flip, small random scale/shift, an HU offset of
  +-15 HU and a mild contrast change (both scaled by each channel's window width), and Gaussian noise of up to 12 HU;
  only pixels strictly inside a window are perturbed (air stays 0, bone/contrast above the window stays 1, as at
  inference).
- **Validation** each epoch on the held-out studies: slice-level macro F1 (arg-max per slice) and series-level
  macro F1 (the default vote of :mod:`backend.ml.voting` over the cached slices); the epoch with the best
  slice-level macro F1 (ties: series-level F1, then validation loss) is kept. Slice-level first: a validation split
  of a few dozen series moves the series F1 by 0.1-0.2 between neighbouring epochs, so its maximum is mostly luck
  (measured on phantoms: the series-F1 peak at epoch 11 of 24 scored 0.66 on held-out series), while the slice F1
  over ~1,000 slices is steady.
- **Series head** (:mod:`backend.ml.series_head`): with the kept weights, a logistic regression on each held-out
  series' certainty-weighted mean slice logits is fitted on the validation series, plus any head-only series
  (``head_examples``: other patients' labelled series that are never trained on), and stored in the manifest if
  cross-validation on those series says it decides them at least as well as the certainty-weighted vote
  (``metrics.series_head`` says what was measured and why it was or was not adopted). ``auto`` voting then uses it.
- **Atomic output**: the artifact is written once, at the end, by :func:`~backend.ml.network.save_model`;
  cancellation (``should_stop()``) or Ctrl-C leaves no model folder behind.
- CPU runs are deterministic for a seed and memory format (seeded generators, ``torch.use_deterministic_algorithms``);
  CUDA runs use AMP and channels_last. On CPU the memory format is measured (``memory_format="auto"``, see
  :func:`choose_memory_format`): channels_last ran the starter's training 1.32x faster on a 2-core AMD EPYC (Zen 4),
  but was once measured 6x slower for mobilenetv3_small's depthwise convolutions on another host.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import numpy as np
import torch
import torch.nn.functional as nnf
from numpy.typing import NDArray
from torch import nn

from backend.ml.dataset import CacheBuildCancelledError, CachedSeries, LabeledSeries, build_cache
from backend.ml.evaluate import confusion_matrix, scores_from_confusion
from backend.ml.network import (
    Manifest,
    ModelArtifactError,
    Preset,
    build_manifest,
    create_network,
    default_preset_name,
    get_preset,
    load_model,
    resolve_device,
    save_model,
    training_data_fingerprint,
    warm_start_problem,
)
from backend.ml.phases import N_PHASES, PHASES, as_phase
from backend.ml.series_head import HEAD_FEATURES, SeriesHead, fit_series_head, fitting_problem
from backend.ml.voting import FALLBACK_VOTING, head_features, winner_index

__all__ = [
    "ClassWeightedBCE",
    "LabeledSeries",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "TrainingCancelled",
    "load_labeled_series",
    "pos_weight_from_counts",
    "split_by_study",
    "train_model",
    "warmup_cosine_factor",
]

log = logging.getLogger(__name__)

HU_OFFSET_MAX: Final[float] = 15.0
"""Largest simulated HU calibration offset (augmentation), in HU."""
NOISE_HU_MAX: Final[float] = 12.0
"""Largest simulated noise standard deviation (augmentation), in HU."""
CONTRAST_MAX: Final[float] = 0.05
"""Largest relative contrast change around the window centre (augmentation)."""
SCALE_MAX: Final[float] = 0.15
"""Largest relative zoom in or out (augmentation): patients and fields of view differ in size."""
ROTATION_MAX_DEG: Final[float] = 10.0
"""Largest in-plane rotation (augmentation), degrees."""
SHIFT_MAX: Final[float] = 0.08
"""Largest shift (augmentation), in units of half the image side."""
GRAD_CLIP_NORM: Final[float] = 2.0
"""Gradients are clipped to this global L2 norm before each step (stabilises the from-scratch start)."""
MIN_LR_FACTOR: Final[float] = 0.01
"""Cosine annealing ends at this fraction of the peak learning rate."""
VALIDATION_BATCH: Final[int] = 128
"""Slices per forward pass when validating."""
CHANNELS_LAST_MIN_SPEEDUP: Final[float] = 1.1
"""On CPU, ``memory_format="auto"`` trains in channels_last only where a probe measures it at least this much faster."""
_PROBE_STEPS: Final[int] = 3
"""Timed training steps per memory format and round in the probe (after one untimed warm-up step)."""

MemoryFormatChoice: TypeAlias = Literal["auto", "channels_last", "contiguous"]
MEMORY_FORMATS: Final[dict[str, torch.memory_format]] = {
    "channels_last": torch.channels_last,
    "contiguous": torch.contiguous_format,
}


class TrainingCancelled(Exception):  # noqa: N818 (public name in the contract)
    """``should_stop()`` returned True; no model was written."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``None`` fields take the preset's default (see :data:`backend.ml.network.PRESETS`).

    Attributes:
        preset: preset name (``cpu``, ``paper``) or a :class:`~backend.ml.network.Preset` (tests use tiny ones).
        epochs: passes over the training series (``cpu`` preset: 60; ``paper``: 15, the paper's).
        batch_size: slices per optimiser step.
        lr: peak learning rate (Adam).
        warmup_epochs: linear warm-up length, in epochs.
        seed: seeds the split, the weights, the slice draws and the augmentation.
        slices_per_series: slices of each training series per epoch.
        cache_slices_per_series: slices of each series decoded into the cache (spread along z); validation votes
            over all of them.
        val_fraction: share of studies held out for validation (ignored when ``val_examples`` is given).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        threads: torch CPU threads (``None``: torch's default).
        cache_dir: slice cache folder (``None``: ``.slice-cache`` beside the output folder).
        decode_workers: threads decoding DICOM into the cache.
        augment: apply the training augmentation.
        series_head: fit a series head on the validation series (adopted only where it beats the vote there).
        show_progress: tqdm progress bars on stderr.
        memory_format: layout of the network's weights and inputs: ``channels_last``, ``contiguous``, or ``auto``
            (channels_last on CUDA; on CPU whichever :func:`choose_memory_format` measures faster, so two runs on a
            host where both are about as fast may differ: pin it for bit-identical reruns).
    """

    preset: str | Preset = field(default_factory=default_preset_name)
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    warmup_epochs: float | None = None
    seed: int = 0
    slices_per_series: int | None = None
    cache_slices_per_series: int | None = None
    val_fraction: float = 0.2
    device: str = "auto"
    threads: int | None = None
    cache_dir: Path | None = None
    decode_workers: int = 2
    augment: bool = True
    series_head: bool = True
    show_progress: bool = False
    memory_format: MemoryFormatChoice = "auto"


@dataclass(frozen=True)
class _Plan:
    """A :class:`TrainConfig` with every default resolved and validated."""

    preset: Preset
    epochs: int
    batch_size: int
    lr: float
    warmup_epochs: float
    slices_per_series: int
    cache_slices_per_series: int
    device: torch.device
    memory_format: torch.memory_format = torch.contiguous_format
    """Layout of the network and its inputs; set by :func:`choose_memory_format` when the run is prepared."""


def _resolve(config: TrainConfig) -> _Plan:
    preset = config.preset if isinstance(config.preset, Preset) else get_preset(config.preset)
    plan = _Plan(
        preset=preset,
        epochs=config.epochs if config.epochs is not None else preset.epochs,
        batch_size=config.batch_size if config.batch_size is not None else preset.batch_size,
        lr=config.lr if config.lr is not None else preset.lr,
        warmup_epochs=config.warmup_epochs if config.warmup_epochs is not None else preset.warmup_epochs,
        slices_per_series=config.slices_per_series or preset.slices_per_series,
        cache_slices_per_series=config.cache_slices_per_series or preset.cache_slices_per_series,
        device=resolve_device(config.device),
    )
    checks = (
        (plan.epochs >= 1, f"epochs must be >= 1, got {plan.epochs}"),
        (plan.batch_size >= 2, f"batch_size must be >= 2 (batch norm), got {plan.batch_size}"),
        (plan.lr > 0, f"lr must be > 0, got {plan.lr}"),
        (plan.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {plan.warmup_epochs}"),
        (plan.slices_per_series >= 1, f"slices_per_series must be >= 1, got {plan.slices_per_series}"),
        (
            plan.cache_slices_per_series >= 1,
            f"cache_slices_per_series must be >= 1, got {plan.cache_slices_per_series}",
        ),
        (0.0 <= config.val_fraction < 1.0, f"val_fraction must be in [0, 1), got {config.val_fraction}"),
        (config.threads is None or config.threads >= 1, f"threads must be >= 1, got {config.threads}"),
        (
            config.memory_format in ("auto", *MEMORY_FORMATS),
            f"memory_format must be auto, channels_last or contiguous, got {config.memory_format!r}",
        ),
    )
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return plan


@dataclass(frozen=True)
class TrainProgress:
    """One progress report (after the slice cache is built, then after each epoch).

    Attributes:
        epoch: epochs completed (0 = cache built, training starts).
        n_epochs: epochs planned.
        loss: mean training loss of the epoch (``nan`` at epoch 0).
        val_macro_f1: series-level validation macro F1 (``None`` without validation studies or at epoch 0).
        val_slice_macro_f1: slice-level validation macro F1 (``None`` likewise).
        best_epoch: the epoch kept so far (0 before the first).
        seconds: wall-clock seconds since training started.
    """

    epoch: int
    n_epochs: int
    loss: float
    val_macro_f1: float | None
    val_slice_macro_f1: float | None = None
    best_epoch: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class TrainResult:
    """A finished training run.

    Attributes:
        model_dir: the artifact folder written.
        manifest: its manifest (metrics included).
        metrics: same as ``manifest.metrics``.
        val_studies: StudyInstanceUIDs held out for validation, sorted.
    """

    model_dir: Path
    manifest: Manifest
    metrics: dict[str, Any]
    val_studies: tuple[str, ...]


# --- split ------------------------------------------------------------------------------------------------------


def split_by_study(
    examples: Sequence[LabeledSeries], *, val_fraction: float, seed: int
) -> tuple[list[LabeledSeries], list[LabeledSeries]]:
    """Split series into training and validation sets by study, stratified by phase.

    Each study is assigned to the stratum of its rarest phase (by series count over all examples), so studies
    holding a rare phase are spread over both sides in proportion. Within each stratum a seeded shuffle sends
    ``round(val_fraction * n)`` studies to validation (at least one when the stratum has two or more studies and
    ``val_fraction > 0``). All series of a study stay together.

    Args:
        examples: labelled series.
        val_fraction: target share of studies in validation, in [0, 1).
        seed: seeds the shuffle.

    Returns:
        (train, validation), each in the order of ``examples``.

    Raises:
        ValueError: ``val_fraction`` outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    studies: dict[str, list[LabeledSeries]] = {}
    for example in examples:
        studies.setdefault(example.series.study_instance_uid, []).append(example)
    frequency = Counter(example.phase for example in examples)
    strata: dict[str, list[str]] = {}
    for study, members in sorted(studies.items()):
        rarest = min((frequency[m.phase], m.phase) for m in members)[1]
        strata.setdefault(rarest, []).append(study)
    rng = np.random.default_rng(seed)
    val_studies: set[str] = set()
    for phase in sorted(strata):
        members_of_stratum = strata[phase]
        order = rng.permutation(len(members_of_stratum))
        n_val = round(val_fraction * len(members_of_stratum))
        if val_fraction > 0 and n_val == 0 and len(members_of_stratum) >= 2:
            n_val = 1
        n_val = min(n_val, len(members_of_stratum) - 1) if len(members_of_stratum) >= 2 else n_val
        val_studies.update(members_of_stratum[int(i)] for i in order[:n_val])
    train = [e for e in examples if e.series.study_instance_uid not in val_studies]
    val = [e for e in examples if e.series.study_instance_uid in val_studies]
    return train, val


# --- loss and schedule ------------------------------------------------------------------------------------------


def pos_weight_from_counts(counts: Sequence[int]) -> torch.Tensor:
    """Per-class BCE ``pos_weight = n_neg / n_pos`` from class frequencies.

    Args:
        counts: int [4], training slices per class in ``PHASES`` order.

    Returns:
        float32 [4]; a class without positives gets 1.0 (it only ever contributes negatives).

    Raises:
        ValueError: wrong length, negative counts or no samples at all.
    """
    array = np.asarray(counts, dtype=np.float64)
    if array.shape != (N_PHASES,) or np.any(array < 0):
        raise ValueError(f"counts must be {N_PHASES} non-negative numbers, got {list(counts)}")
    total = array.sum()
    if total <= 0:
        raise ValueError("cannot weight classes without any training samples")
    weights = np.ones(N_PHASES, dtype=np.float64)
    present = array > 0
    weights[present] = (total - array[present]) / array[present]
    return torch.tensor(weights, dtype=torch.float32)


class ClassWeightedBCE(nn.Module):
    """Binary cross-entropy on one-vs-rest logits with a per-class ``pos_weight`` buffer.

    Args:
        pos_weight: float32 [4] (see :func:`pos_weight_from_counts`).
    """

    pos_weight: torch.Tensor

    def __init__(self, pos_weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight.detach().clone().float())

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss.

        Args:
            logits: float [n, 4].
            labels: int64 [n], class indices.
        """
        targets = nnf.one_hot(labels, N_PHASES).to(logits.dtype)
        return nnf.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=self.pos_weight)


def warmup_cosine_factor(step: int, *, total_steps: int, warmup_steps: int, min_factor: float = MIN_LR_FACTOR) -> float:
    """Learning-rate multiplier at optimiser ``step``: linear warm-up to 1, then cosine decay to ``min_factor``.

    Args:
        step: 0-based step index.
        total_steps: steps in the whole run (>= 1).
        warmup_steps: warm-up length in steps (0 for none).
        min_factor: multiplier at the last step.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --- augmentation -----------------------------------------------------------------------------------------------


def augment_batch(images: torch.Tensor, *, widths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flip, scale/shift, HU offset, contrast and noise, applied in window space.

    Args:
        images: float32 [n, c, S, S] in [0, 1].
        widths: float32 [c], each channel's window width in HU (turns HU perturbations into window units).
        generator: seeded CPU generator (all random draws come from it).

    Returns:
        float32 [n, c, S, S] in [0, 1].
    """
    n = images.shape[0]
    device = images.device

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=generator) * (high - low) + low).to(device)

    flip = (torch.rand(n, generator=generator) < 0.5).to(device)
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    scale = uniform(1.0 - SCALE_MAX, 1.0 + SCALE_MAX, n)
    angle = uniform(-ROTATION_MAX_DEG, ROTATION_MAX_DEG, n) * (math.pi / 180.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = scale * torch.cos(angle)
    theta[:, 0, 1] = -scale * torch.sin(angle)
    theta[:, 1, 0] = scale * torch.sin(angle)
    theta[:, 1, 1] = scale * torch.cos(angle)
    theta[:, :, 2] = uniform(-SHIFT_MAX, SHIFT_MAX, n, 2)
    grid = nnf.affine_grid(theta, list(images.shape), align_corners=False)
    images = nnf.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = (images > 0.0) & (images < 1.0)
    width = widths.to(device)[None, :, None, None]
    offset = uniform(-HU_OFFSET_MAX, HU_OFFSET_MAX, n)[:, None, None, None] / width
    contrast = uniform(1.0 - CONTRAST_MAX, 1.0 + CONTRAST_MAX, n)[:, None, None, None]
    sigma = uniform(0.0, NOISE_HU_MAX, n)[:, None, None, None] / width
    noise = torch.randn(images.shape, generator=generator).to(device) * sigma
    perturbed = (images - 0.5) * contrast + 0.5 + offset + noise
    return torch.where(inside, perturbed, images).clamp_(0.0, 1.0)


# --- data -------------------------------------------------------------------------------------------------------


def _class_counts(series: Sequence[CachedSeries], per_series: int) -> list[int]:
    counts = [0] * N_PHASES
    for item in series:
        counts[item.label] += min(per_series, item.n_cached)
    return counts


def _epoch_slices(series: Sequence[CachedSeries], per_series: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """(series index, cached slice index) pairs of one epoch, shuffled: int64 [m, 2]."""
    pairs = [
        np.stack([np.full(take, s, dtype=np.int64), rng.choice(item.n_cached, size=take, replace=False)], axis=1)
        for s, item in enumerate(series)
        for take in (min(per_series, item.n_cached),)
    ]
    stacked = np.concatenate(pairs, axis=0)
    return np.asarray(stacked[rng.permutation(len(stacked))], dtype=np.int64)


def _gather(series: Sequence[CachedSeries], pairs: NDArray[np.int64]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images float32 [b, c, S, S] in [0, 1] and labels int64 [b] for (series, slice) pairs."""
    images = np.stack([series[int(s)].images[int(i)] for s, i in pairs])
    labels = np.asarray([series[int(s)].label for s, _ in pairs], dtype=np.int64)
    tensor = torch.from_numpy(images).float().div_(255.0)
    return tensor, torch.from_numpy(labels)


# --- evaluation -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """Validation scores on cached series.

    Attributes:
        loss: mean weighted BCE over slices.
        slice_macro_f1: macro F1 of per-slice arg-max predictions.
        series_macro_f1: macro F1 of per-series votes (:data:`~backend.ml.voting.FALLBACK_VOTING`).
        slice_f1: per-phase slice-level F1.
        series_f1: per-phase series-level F1.
        series_accuracy: share of series voted correctly.
        probabilities: float32 [k_i, 4] per series, every cached slice's probabilities (what the scores came from).
    """

    loss: float
    slice_macro_f1: float
    series_macro_f1: float
    slice_f1: dict[str, float]
    series_f1: dict[str, float]
    series_accuracy: float
    probabilities: tuple[NDArray[np.float32], ...] = field(default=(), compare=False, repr=False)


def _slice_probabilities(
    network: nn.Module, series: Sequence[CachedSeries], *, plan: _Plan, loss_fn: ClassWeightedBCE
) -> tuple[list[NDArray[np.float32]], float]:
    """Sigmoid probabilities float32 [k_i, 4] of every cached slice of each series, and the mean loss per slice.

    Slices of consecutive series share forward passes of :data:`VALIDATION_BATCH` (a starter series caches 8 slices:
    one pass per series ran the network at batch 8, ~2x slower per slice).
    """
    network.eval()
    pairs = np.asarray([(s, i) for s, item in enumerate(series) for i in range(item.n_cached)], dtype=np.int64)
    chunks: list[NDArray[np.float32]] = []
    total_loss = 0.0
    with torch.inference_mode(), _amp(plan.device):
        for start in range(0, len(pairs), VALIDATION_BATCH):
            images, labels = _gather(series, pairs[start : start + VALIDATION_BATCH])
            logits = network(_to_device(images, plan)).float()
            total_loss += float(loss_fn(logits, labels.to(plan.device))) * len(labels)
            chunks.append(torch.sigmoid(logits).cpu().numpy())  # float32: the logits are cast above
    if not chunks:
        return [np.zeros((0, N_PHASES), dtype=np.float32) for _ in series], 0.0
    bounds = np.cumsum([item.n_cached for item in series])[:-1]
    return list(np.split(np.concatenate(chunks), bounds)), total_loss / len(pairs)


def evaluate_cached(
    network: nn.Module, series: Sequence[CachedSeries], *, plan: _Plan, loss_fn: ClassWeightedBCE
) -> Evaluation:
    """Slice- and series-level scores of ``network`` on cached series (all cached slices vote)."""
    probs, loss = _slice_probabilities(network, series, plan=plan, loss_fn=loss_fn)
    slice_true = np.concatenate([np.full(len(p), s.label) for p, s in zip(probs, series, strict=True)])
    slice_pred = np.concatenate([p.argmax(axis=1) for p in probs])
    series_true = np.asarray([s.label for s in series])
    series_pred = np.asarray([winner_index(p, method=FALLBACK_VOTING) for p in probs])
    slice_scores = scores_from_confusion(confusion_matrix(slice_true, slice_pred))
    series_scores = scores_from_confusion(confusion_matrix(series_true, series_pred))
    return Evaluation(
        loss=loss,
        slice_macro_f1=float(slice_scores["macro_f1"]),
        series_macro_f1=float(series_scores["macro_f1"]),
        slice_f1={phase: float(v) for phase, v in zip(PHASES, slice_scores["f1"], strict=True)},
        series_f1={phase: float(v) for phase, v in zip(PHASES, series_scores["f1"], strict=True)},
        series_accuracy=float(series_scores["accuracy"]),
        probabilities=tuple(probs),
    )


def _macro_f1(true: NDArray[np.int64], predicted: NDArray[np.int64]) -> float:
    return float(scores_from_confusion(confusion_matrix(true, predicted))["macro_f1"])


def fit_head_on_held_out(
    series: Sequence[CachedSeries], probabilities: Sequence[NDArray[np.float32]], *, seed: int
) -> tuple[SeriesHead | None, dict[str, Any]]:
    """Fit the series head on held-out series; returns it (``None`` when not adopted) and what was measured.

    The head is adopted when its out-of-fold macro F1 (cross-validated on these series) is at least the macro F1 of
    the certainty-weighted vote over all their cached slices.

    Args:
        series: the held-out series (validation, plus any head-only series).
        probabilities: float32 [k_i, 4] per series, the kept network's probabilities for every cached slice.
        seed: seeds the cross-validation folds.
    """
    pairs = [(item, p) for item, p in zip(series, probabilities, strict=True) if len(p) > 0]
    if not pairs:
        return None, {"adopted": False, "reason": "no validation series"}
    series, probabilities = [item for item, _ in pairs], [p for _, p in pairs]
    labels = np.asarray([item.label for item in series], dtype=np.int64)
    problem = fitting_problem(labels)
    if problem is not None:
        return None, {"adopted": False, "reason": problem}
    features = np.stack([head_features(p, kind=HEAD_FEATURES) for p in probabilities])
    fit = fit_series_head(features, labels, seed=seed, kind=HEAD_FEATURES)
    head_f1 = _macro_f1(labels, np.asarray(fit.out_of_fold.argmax(axis=1), dtype=np.int64))
    vote_f1 = _macro_f1(labels, np.asarray([winner_index(p, method=FALLBACK_VOTING) for p in probabilities]))
    adopted = head_f1 >= vote_f1
    verdict = ">=" if adopted else "<"
    return (fit.head if adopted else None), {
        "adopted": adopted,
        "reason": f"cross-validated head macro F1 {head_f1:.3f} {verdict} {FALLBACK_VOTING} vote {vote_f1:.3f}",
        "cv_macro_f1": head_f1,
        "vote_macro_f1": vote_f1,
        "c": fit.head.c,
        "n_series": len(series),
        "n_folds": fit.n_folds,
        "cv_log_loss": {f"{c:g}": loss for c, loss in fit.cv_log_loss.items()},
    }


# --- the training loop ------------------------------------------------------------------------------------------


def _amp(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _to_device(images: torch.Tensor, plan: _Plan) -> torch.Tensor:
    return images.to(plan.device, non_blocking=True).contiguous(memory_format=plan.memory_format)


def probe_steps_per_second(
    network: nn.Module, *, plan: _Plan, memory_format: torch.memory_format, steps: int = _PROBE_STEPS
) -> float:
    """Training steps per second (forward, loss, backward, SGD update) of a copy of ``network`` in a format.

    The fastest of ``steps`` timed steps counts (after one untimed step that selects kernels and allocates); the
    input is a fixed [batch, channels, S, S] ramp, so no random numbers are drawn.
    """
    preset = plan.preset
    shape = (plan.batch_size, preset.in_chans, preset.image_size, preset.image_size)
    images = torch.linspace(0.0, 1.0, math.prod(shape)).reshape(shape).to(plan.device)
    images = images.contiguous(memory_format=memory_format)
    targets = nnf.one_hot(torch.arange(plan.batch_size) % N_PHASES, N_PHASES).float().to(plan.device)
    model = copy.deepcopy(network).to(memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    seconds = math.inf
    for step in range(1 + steps):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(nnf.binary_cross_entropy_with_logits(model(images).float(), targets))
        optimizer.step()
        if step > 0:
            seconds = min(seconds, time.perf_counter() - started)
    return 1.0 / seconds


def choose_memory_format(
    network: nn.Module, *, plan: _Plan, choice: MemoryFormatChoice
) -> tuple[torch.memory_format, dict[str, Any]]:
    """The memory format to train ``network`` in, and what was measured to choose it.

    ``auto`` means channels_last on CUDA; on CPU, two rounds of a few training steps of a copy of the network in
    each format (the fastest step of each counts), and channels_last where it is at least
    :data:`CHANNELS_LAST_MIN_SPEEDUP` times faster. The probe draws no random numbers and leaves ``network`` as it
    was, so it does not change the run. It costs 16 training steps: 1.7 s for ``cpu``, 62 s for ``paper`` on a 2-core
    CPU (where channels_last measured 1.8x faster too, and one epoch takes hours).

    Returns:
        (format, record): record holds ``memory_format`` and, where measured, ``probe_steps_per_second`` per format.
    """
    if choice != "auto":
        chosen = MEMORY_FORMATS[choice]
        return chosen, {"memory_format": choice, "probe_steps_per_second": None}
    if plan.device.type == "cuda":
        return torch.channels_last, {"memory_format": "channels_last", "probe_steps_per_second": None}
    rates = dict.fromkeys(MEMORY_FORMATS, 0.0)
    with torch.random.fork_rng(devices=[]):  # dropout in the probe must not move the run's random stream
        for _ in range(2):
            for name, memory_format in MEMORY_FORMATS.items():
                rate = probe_steps_per_second(network, plan=plan, memory_format=memory_format)
                rates[name] = max(rates[name], rate)
    name = (
        "channels_last" if rates["channels_last"] >= CHANNELS_LAST_MIN_SPEEDUP * rates["contiguous"] else "contiguous"
    )
    log.info(
        "memory format %s (training steps/s measured: channels_last %.1f, contiguous %.1f)",
        name,
        rates["channels_last"],
        rates["contiguous"],
    )
    return MEMORY_FORMATS[name], {"memory_format": name, "probe_steps_per_second": rates}


def _cpu_busy_seconds() -> float | None:
    """CPU seconds spent busy since boot on the cores this process may run on (``/proc/stat``), or None.

    Only the per-core lines of this process's CPU affinity count: in a container on a larger host, the other cores'
    load is not ours to yield to.
    """
    try:
        lines = Path("/proc/stat").read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    usable = {f"cpu{i}" for i in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else None
    ticks = 0
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or not fields[0].startswith("cpu") or fields[0] == "cpu":
            continue
        if usable is not None and fields[0] not in usable:
            continue
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
        steal = int(fields[8]) if len(fields) > 8 else 0
        ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK") if ticks else None


def busy_cores_elsewhere(window_s: float = 0.5) -> float | None:
    """Cores kept busy by other processes right now: machine-wide busy time minus this process's, over a short window.

    Returns None where ``/proc/stat`` is unavailable.
    """
    busy_before, own_before, wall_before = _cpu_busy_seconds(), time.process_time(), time.monotonic()
    if busy_before is None:
        return None
    time.sleep(window_s)
    busy_after, own_after, wall_after = _cpu_busy_seconds(), time.process_time(), time.monotonic()
    if busy_after is None:
        return None
    others = (busy_after - busy_before) - (own_after - own_before)
    return max(0.0, others / max(wall_after - wall_before, 1e-3))


def free_cpu_cores() -> int:
    """CPU cores not busy with other work right now, at least 1.

    Torch's OpenMP threads wait for each other at every operator: on a shared 2-core machine with other busy
    processes, 2 threads trained mobilenetv3_small 8x slower than 1 thread (14 vs 111 images/s, measured), while on
    an idle machine 2 threads are faster. So an unspecified thread count follows the machine's current load,
    measured over half a second (:func:`busy_cores_elsewhere`), not from the 1-minute load average: that average
    still counts a job that has just finished (e.g. ``ctphase phantom`` run just before ``ctphase train``) and made a
    training on an idle machine take 1 thread and 40% longer (measured). The load average is the fallback where
    ``/proc/stat`` is unavailable.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = busy_cores_elsewhere()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except OSError:  # not available on this platform
            return cores
    return max(1, min(cores, math.floor(cores - busy + 0.5)))


@contextlib.contextmanager
def _torch_threads(threads: int | None, device: torch.device) -> Iterator[int]:
    """Set torch's intra-op threads for the run (``None`` on CPU: :func:`free_cpu_cores`), restore them after."""
    previous = torch.get_num_threads()
    wanted = threads if threads is not None else (free_cpu_cores() if device.type == "cpu" else previous)
    torch.set_num_threads(wanted)
    log.info("training with %d torch thread(s)", wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


@dataclass
class _EpochRecord:
    epoch: int
    loss: float
    lr: float
    seconds: float
    evaluation: Evaluation | None

    def as_dict(self) -> dict[str, Any]:
        ev = self.evaluation
        return {
            "epoch": self.epoch,
            "loss": round(self.loss, 5),
            "lr": self.lr,
            "seconds": round(self.seconds, 2),
            "val_loss": None if ev is None else round(ev.loss, 5),
            "val_slice_macro_f1": None if ev is None else round(ev.slice_macro_f1, 5),
            "val_series_macro_f1": None if ev is None else round(ev.series_macro_f1, 5),
        }


@dataclass
class _Run:
    """Mutable state of one training run."""

    plan: _Plan
    config: TrainConfig
    network: nn.Module
    loss_fn: ClassWeightedBCE
    train: tuple[CachedSeries, ...]
    val: tuple[CachedSeries, ...]
    should_stop: Callable[[], bool]
    progress: Callable[[TrainProgress], None] | None
    started: float
    layout: dict[str, Any] = field(default_factory=dict)
    history: list[_EpochRecord] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    best_key: tuple[float, float, float] | None = None
    best_epoch: int = 0
    best_evaluation: Evaluation | None = None


def _steps_per_epoch(run: _Run) -> int:
    n = sum(min(run.plan.slices_per_series, item.n_cached) for item in run.train)
    return max(1, n // run.plan.batch_size)


def _train_epoch(
    run: _Run,
    epoch: int,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    bar: Any,
) -> float:
    plan = run.plan
    rng = np.random.default_rng([run.config.seed, epoch])
    pairs = _epoch_slices(run.train, plan.slices_per_series, rng)
    widths = torch.tensor([w for _, w in plan.preset.windows], dtype=torch.float32)
    scaler = torch.amp.GradScaler("cuda", enabled=plan.device.type == "cuda" and not torch.cuda.is_bf16_supported())
    run.network.train()
    losses: list[float] = []
    for step in range(_steps_per_epoch(run)):
        if run.should_stop():
            raise TrainingCancelled(f"stopped during epoch {epoch}")
        images, labels = _gather(run.train, pairs[step * plan.batch_size : (step + 1) * plan.batch_size])
        if run.config.augment:
            images = augment_batch(images, widths=widths, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        with _amp(plan.device):
            logits = run.network(_to_device(images, plan))
        loss = run.loss_fn(logits, labels.to(plan.device))
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(run.network.parameters(), GRAD_CLIP_NORM)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-20:]):.4f}", refresh=False)
    return float(np.mean(losses))


def _keep_if_best(run: _Run, epoch: int, evaluation: Evaluation | None) -> None:
    key = (
        (0.0, 0.0, float(epoch))
        if evaluation is None
        else (
            evaluation.slice_macro_f1,
            evaluation.series_macro_f1,
            -evaluation.loss,
        )
    )
    if run.best_key is None or key > run.best_key:
        run.best_key = key
        run.best_epoch = epoch
        run.best_evaluation = evaluation
        run.best_state = {k: v.detach().to("cpu", copy=True) for k, v in run.network.state_dict().items()}


def _fit(run: _Run) -> None:
    plan = run.plan
    steps = _steps_per_epoch(run)
    total = steps * plan.epochs
    optimizer = torch.optim.Adam(run.network.parameters(), lr=plan.lr, weight_decay=plan.preset.weight_decay)
    warmup = round(plan.warmup_epochs * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine_factor(s, total_steps=total, warmup_steps=warmup)
    )
    generator = torch.Generator().manual_seed(run.config.seed)
    bar = _progress_bar(total, enabled=run.config.show_progress)
    try:
        for epoch in range(1, plan.epochs + 1):
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            loss = _train_epoch(run, epoch, optimizer=optimizer, scheduler=scheduler, generator=generator, bar=bar)
            evaluation = evaluate_cached(run.network, run.val, plan=plan, loss_fn=run.loss_fn) if run.val else None
            _keep_if_best(run, epoch, evaluation)
            kept = None if evaluation is None else replace(evaluation, probabilities=())  # only the best keeps them
            run.history.append(_EpochRecord(epoch, loss, lr, time.perf_counter() - started, kept))
            _report(run, epoch, loss, evaluation, bar)
    finally:
        if bar is not None:
            bar.close()


def _progress_bar(total: int, *, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="train", unit="step", dynamic_ncols=True)


def _report(run: _Run, epoch: int, loss: float, evaluation: Evaluation | None, bar: Any) -> None:
    series_f1 = None if evaluation is None else evaluation.series_macro_f1
    slice_f1 = None if evaluation is None else evaluation.slice_macro_f1
    if bar is not None:
        bar.set_postfix(
            epoch=epoch,
            loss=f"{loss:.4f}",
            val_slice_f1="-" if slice_f1 is None else f"{slice_f1:.3f}",
            val_series_f1="-" if series_f1 is None else f"{series_f1:.3f}",
        )
    log.info(
        "epoch %d/%d loss %.4f val slice F1 %s series F1 %s",
        epoch,
        run.plan.epochs,
        loss,
        "-" if slice_f1 is None else f"{slice_f1:.4f}",
        "-" if series_f1 is None else f"{series_f1:.4f}",
    )
    if run.progress is not None:
        run.progress(
            TrainProgress(
                epoch=epoch,
                n_epochs=run.plan.epochs,
                loss=loss,
                val_macro_f1=series_f1,
                val_slice_macro_f1=slice_f1,
                best_epoch=run.best_epoch,
                seconds=time.perf_counter() - run.started,
            )
        )


# --- public entry point -----------------------------------------------------------------------------------------


def _split(
    examples: Sequence[LabeledSeries], val_examples: Sequence[LabeledSeries] | None, config: TrainConfig
) -> tuple[list[LabeledSeries], list[LabeledSeries]]:
    if val_examples is None:
        return split_by_study(examples, val_fraction=config.val_fraction, seed=config.seed)
    held_out = {e.series.study_instance_uid for e in val_examples}
    return [e for e in examples if e.series.study_instance_uid not in held_out], list(val_examples)


def _warm_start(network: nn.Module, init_from: Path, preset: Preset) -> str:
    """Copy a model's weights into ``network``; returns the source weights' sha256."""
    source = load_model(init_from, device="cpu")
    problem = warm_start_problem(preset, source.manifest)
    if problem is not None:
        raise ModelArtifactError(f"{init_from}: cannot warm-start: {problem}")
    network.load_state_dict(source.network.state_dict())
    return source.manifest.weights_sha256


def _metrics(
    run: _Run, *, n_train_studies: int, n_val_studies: int, failed: int, extra: dict[str, Any]
) -> dict[str, Any]:
    ev = run.best_evaluation
    metrics = {
        "val_series_macro_f1": None if ev is None else ev.series_macro_f1,
        "val_slice_macro_f1": None if ev is None else ev.slice_macro_f1,
        "val_series_f1": None if ev is None else ev.series_f1,
        "val_slice_f1": None if ev is None else ev.slice_f1,
        "val_series_accuracy": None if ev is None else ev.series_accuracy,
        "val_loss": None if ev is None else ev.loss,
        "n_train_series": len(run.train),
        "n_val_series": len(run.val),
        "n_train_studies": n_train_studies,
        "n_val_studies": n_val_studies,
        "n_failed_series": failed,
        "epochs": run.plan.epochs,
        "best_epoch": run.best_epoch,
        "seconds": round(time.perf_counter() - run.started, 1),
        "history": [h.as_dict() for h in run.history],
        **extra,
    }
    return {key: _json_safe(value) for key, value in metrics.items()}


def _json_safe(value: Any) -> Any:
    """Round floats to 6 digits and turn NaN/inf into None, recursively (manifests and DB rows are strict JSON)."""
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def train_model(
    examples: Sequence[LabeledSeries],
    *,
    out_dir: Path,
    config: TrainConfig,
    progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    init_from: Path | None = None,
    val_examples: Sequence[LabeledSeries] | None = None,
    head_examples: Sequence[LabeledSeries] = (),
) -> TrainResult:
    """Train a slice network and write it to ``out_dir`` atomically.

    Args:
        examples: labelled series (training, and validation unless ``val_examples`` is given).
        out_dir: model folder to create; must not exist.
        config: see :class:`TrainConfig`.
        progress: called after the cache is built (epoch 0) and after each epoch.
        should_stop: polled between series (cache) and batches; True -> :class:`TrainingCancelled`.
        init_from: a model folder to warm-start from (same architecture and preprocessing).
        val_examples: fixed validation series (e.g. the champion's held-out studies); their studies are removed from
            the training set.
        head_examples: extra labelled series that only fit the series head, together with the validation series
            (never trained on, not used to pick the epoch). Series of a training study are left out (logged).

    Returns:
        The :class:`TrainResult`.

    Raises:
        TrainingCancelled: ``should_stop()`` returned True; nothing was written (the slice cache may remain).
        ValueError: invalid configuration, no training series, or ``out_dir`` exists.
        ModelArtifactError: ``init_from`` is not a compatible, valid model.
    """
    plan = _resolve(config)
    if out_dir.exists():
        raise ValueError(f"{out_dir}: already exists; model folders are immutable, choose a new one")
    started = time.perf_counter()
    stop = should_stop or (lambda: False)
    train_examples, val_list = _split(examples, val_examples, config)
    if not train_examples:
        raise ValueError(f"no training series: {len(examples)} examples, all held out for validation")
    head_list = _head_only(head_examples, train=train_examples, val=val_list)
    with _torch_threads(config.threads, plan.device) as threads:
        train_cache, val_cache, head_cache, failed = _build_caches(
            train_examples,
            val_list,
            head_list,
            plan=plan,
            cache_dir=config.cache_dir or out_dir.parent / ".slice-cache",
            config=config,
            stop=stop,
        )
        with _deterministic(plan.device.type == "cpu"):
            run = _prepare_run(plan, config, train_cache, val_cache, stop=stop, progress=progress, started=started)
            init_sha = _warm_start(run.network, init_from, plan.preset) if init_from is not None else None
            if progress is not None:
                progress(TrainProgress(epoch=0, n_epochs=plan.epochs, loss=math.nan, val_macro_f1=None))
            _fit(run)
        if run.best_state is not None:  # always set: _fit runs >= 1 epoch
            run.network.load_state_dict(run.best_state)
        head, head_metrics = (
            _fit_head(run, head_cache)
            if config.series_head
            else (None, {"adopted": False, "reason": "not asked for (series_head=False)"})
        )
        log.info("series head: %s", head_metrics["reason"])
        extra = {
            "seed": config.seed,
            "preset": plan.preset.name,
            "batch_size": plan.batch_size,
            "lr": plan.lr,
            "slices_per_series": plan.slices_per_series,
            "cache_slices_per_series": plan.cache_slices_per_series,
            "train_class_counts": dict(zip(PHASES, _class_counts(train_cache, plan.slices_per_series), strict=True)),
            "pos_weight": dict(zip(PHASES, [float(w) for w in run.loss_fn.pos_weight], strict=True)),
            "init_from_sha256": init_sha,
            "val_data_fingerprint": _fingerprint(val_list),
            "head_data_fingerprint": _fingerprint(head_list) if head_list else None,
            "device": str(plan.device),
            "torch_threads": threads,
            **run.layout,
            "series_head": head_metrics,
        }
        metrics = _metrics(
            run,
            n_train_studies=len({s.study_instance_uid for s in train_cache}),
            n_val_studies=len({s.study_instance_uid for s in val_cache}),
            failed=failed,
            extra=extra,
        )
        manifest = build_manifest(
            plan.preset, fingerprint=_fingerprint(train_examples), metrics=metrics, series_head=head
        )
        written = save_model(out_dir, network=run.network.cpu(), manifest=manifest)
    val_studies = tuple(sorted({e.series.study_instance_uid for e in val_list}))
    return TrainResult(model_dir=out_dir, manifest=written, metrics=written.metrics, val_studies=val_studies)


def _head_only(
    examples: Sequence[LabeledSeries], *, train: Sequence[LabeledSeries], val: Sequence[LabeledSeries]
) -> list[LabeledSeries]:
    """The head-only series that share no study with the training series and are not validation series."""
    train_studies = {e.series.study_instance_uid for e in train}
    taken = {e.series.series_instance_uid for e in (*train, *val)}
    kept = [
        e
        for e in examples
        if e.series.study_instance_uid not in train_studies and e.series.series_instance_uid not in taken
    ]
    if len(kept) < len(examples):
        log.warning(
            "%d of %d head-only series left out: their study (or the series itself) is in the training or "
            "validation set",
            len(examples) - len(kept),
            len(examples),
        )
    return kept


def _fit_head(run: _Run, head_only: tuple[CachedSeries, ...]) -> tuple[SeriesHead | None, dict[str, Any]]:
    """Fit the series head with the kept weights on the validation series plus the head-only series."""
    kept = run.best_evaluation.probabilities if run.best_evaluation is not None else ()
    extra = _slice_probabilities(run.network, head_only, plan=run.plan, loss_fn=run.loss_fn)[0] if head_only else []
    head, metrics = fit_head_on_held_out([*run.val, *head_only], [*kept, *extra], seed=run.config.seed)
    return head, {**metrics, "n_head_only_series": len(head_only)}


def _prepare_run(
    plan: _Plan,
    config: TrainConfig,
    train_cache: tuple[CachedSeries, ...],
    val_cache: tuple[CachedSeries, ...],
    *,
    stop: Callable[[], bool],
    progress: Callable[[TrainProgress], None] | None,
    started: float,
) -> _Run:
    """Seed, build the network (random init) in its memory format, and the class-weighted loss."""
    torch.manual_seed(config.seed)
    network = create_network(plan.preset).to(plan.device)
    memory_format, layout = choose_memory_format(network, plan=plan, choice=config.memory_format)
    network.to(memory_format=memory_format)
    counts = _class_counts(train_cache, plan.slices_per_series)
    loss_fn = ClassWeightedBCE(pos_weight_from_counts(counts)).to(plan.device)
    plan = replace(plan, memory_format=memory_format)
    return _Run(plan, config, network, loss_fn, train_cache, val_cache, stop, progress, started, layout=layout)


def _fingerprint(examples: Sequence[LabeledSeries]) -> str:
    return training_data_fingerprint([(e.series.series_instance_uid, e.phase) for e in examples])


def _tick(bar: Any) -> None:
    bar.update(1)


def _build_caches(
    train_examples: Sequence[LabeledSeries],
    val_examples: Sequence[LabeledSeries],
    head_examples: Sequence[LabeledSeries],
    *,
    plan: _Plan,
    cache_dir: Path,
    config: TrainConfig,
    stop: Callable[[], bool],
) -> tuple[tuple[CachedSeries, ...], tuple[CachedSeries, ...], tuple[CachedSeries, ...], int]:
    """Cache the training, validation and head-only series; returns them and the number that failed to decode."""
    everything = [*train_examples, *val_examples, *head_examples]
    bar = None
    if config.show_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(everything), desc="decode", unit="series", dynamic_ncols=True)
    try:
        cache = build_cache(
            everything,
            cache_dir=cache_dir,
            windows=plan.preset.windows,
            image_size=plan.preset.image_size,
            k=plan.cache_slices_per_series,
            crop_body=plan.preset.crop_body,
            resize_first=plan.preset.resize_first,
            workers=config.decode_workers,
            should_stop=stop,
            on_series_done=None if bar is None else partial(_tick, bar),
        )
    except CacheBuildCancelledError as exc:
        raise TrainingCancelled(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    val_uids = {e.series.series_instance_uid for e in val_examples}
    head_uids = {e.series.series_instance_uid for e in head_examples}
    train = tuple(s for s in cache.series if s.series_instance_uid not in val_uids | head_uids)
    val = tuple(s for s in cache.series if s.series_instance_uid in val_uids)
    head = tuple(s for s in cache.series if s.series_instance_uid in head_uids)
    if not train:
        raise ValueError(f"none of the {len(train_examples)} training series could be decoded (see the log)")
    return train, val, head, len(cache.failed)


# --- labels and the CLI -----------------------------------------------------------------------------------------


def read_labels_csv(path: Path) -> dict[str, str]:
    """Read ``series_instance_uid`` -> phase from a CSV with those two columns (others are ignored).

    Raises:
        ValueError: missing columns, an unknown phase, or one series labelled with two different phases.
    """
    labels: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"series_instance_uid", "phase"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            uid = (row["series_instance_uid"] or "").strip()
            try:
                phase = as_phase((row["phase"] or "").strip())
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
            if uid in labels and labels[uid] != phase:
                raise ValueError(f"{path}:{line}: series {uid} labelled both {labels[uid]} and {phase}")
            labels[uid] = phase
    return labels


def load_labeled_series(data_dir: Path, labels_csv: Path) -> list[LabeledSeries]:
    """Scan ``data_dir`` for CT series and pair them with the labels of ``labels_csv``.

    Labelled series that are not found and series without a label are logged and left out.

    Returns:
        Labelled series, sorted by series uid.

    Raises:
        ValueError: the CSV is invalid or no labelled series was found.
    """
    from backend.ml.dicom import scan

    labels = read_labels_csv(labels_csv)
    result = scan(data_dir)
    if result.skipped:
        log.info("scan skipped %d file(s) under %s", len(result.skipped), data_dir)
    found = {s.series_instance_uid: s for s in result.series}
    missing = sorted(set(labels) - set(found))
    if missing:
        log.warning("%d labelled series not found under %s (e.g. %s)", len(missing), data_dir, missing[0])
    unlabelled = len(set(found) - set(labels))
    if unlabelled:
        log.info("%d series under %s have no label and are not used", unlabelled, data_dir)
    examples = [LabeledSeries(series=found[uid], phase=as_phase(labels[uid])) for uid in sorted(found) if uid in labels]
    if not examples:
        raise ValueError(f"none of the {len(labels)} series in {labels_csv} was found under {data_dir}")
    return examples
