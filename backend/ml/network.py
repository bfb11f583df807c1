"""Slice networks: presets, the timm factory, and safe, atomic model artifacts.

A model artifact is a folder holding exactly two files:

- ``model.safetensors``: the state dict (safetensors never executes code on load, unlike a pickle). Its header
  metadata embeds the manifest (without ``weights_sha256``), so the weights file describes itself.
- ``manifest.json``: :class:`Manifest`, including the sha256 of ``model.safetensors``.

:func:`load_model` refuses an artifact whose weights do not hash to the manifest's sha256, whose manifest differs
from the copy embedded in the weights (a hand-edited manifest), whose architecture timm does not know, whose
classes are not :data:`~backend.ml.phases.PHASES` in order, or whose format version is unknown.
:func:`save_model` writes into a temporary folder beside the target, fsyncs, and renames it into place, so a
reader never sees a half-written model folder.

Presets (``PRESETS``), measured on a shared 2-core AMD EPYC (torch 2.14.1 CPU, batch 32, 2 threads, images/s,
inference channels_last fp32 / bf16 autocast; training fp32 contiguous; training in channels_last was 6x slower on
that host and 1.5x faster on a later 2-core AMD EPYC (Zen 4), so ``backend.ml.train`` measures which to use,
``bench/train_step.py`` compares them):

============================ ============== =================
network @ input               inference      training
============================ ============== =================
mobilenetv3_small_100 @128    2,537 / 3,199  306
lcnet_100 @128                1,856 / 2,668  177
mobilenetv3_large_100 @128      992 / 1,390   --
efficientnet_b0 @128            611 /   681   59
resnet10t @128                  364 /   937   85
efficientnet_b2 @224 (paper)     52 /   115   14
============================ ============== =================

``cpu`` is mobilenetv3_small_100 at 96 pixels, trained 60 epochs. Its input has three channels: the paper's
(50, 400) window, :data:`SOFT_TISSUE_WINDOW` (0-240 HU), which raises 1.7-fold the contrast between the enhancement
levels of organs (liver 70-90 vs 100-130 HU, blood 90-130 vs 140-200 HU), and :data:`CONTRAST_WINDOW` (100-400 HU),
where enhanced blood is not clipped (late-arterial aorta 250-400 HU saturates the other two). It resizes the HU slice
and then windows the small image (``resize_first``), which halves the preprocessing time per slice. Measured on
phantoms (trained on 160 series of seed 1, 32 slices each; series macro F1, majority vote at R = 30 %, on 80
series of seed 7, which served to choose the recipe, and on 80 fresh series of seed 11):

================================================== ======== =========
input, epochs                                       seed 7   seed 11
================================================== ======== =========
128 px, 50/400 + 0-240 HU, 30 epochs (previous)     0.80     0.72
+ 100-400 HU channel                                0.84     0.81
+ resize, then window                               0.87     0.78
+ 96 px, 60 epochs = ``cpu``                        0.94     0.86
96 px, 80 epochs                                    0.94     0.87
128 px, 50 epochs                                   0.89     0.91
================================================== ======== =========

Each figure is one training run; 80 series put a 95 % interval of about +-0.07 around each, so the last three rows
do not differ measurably; 96 px is the one that serves fastest.

Measured again on 320 series (160 of seed 21, 40 slices each, plus seeds 11 and 7), same training data, series
macro F1 with majority / mean voting per test set (seed 21, 11, 7):

================================================== ======================= ================
run                                                 majority                mean
================================================== ======================= ================
``cpu`` (the row above, retrained)                  0.89 / 0.91 / 0.90      0.91 / 0.91 / 0.91
320 series x 16 slices, 30 epochs (equal steps)     0.90 / 0.91 / 0.90      0.91 / 0.91 / 0.92
augmentation +-5 HU offset, noise <= 4 HU           0.89 / 0.86 / 0.93      0.89 / 0.86 / 0.92
peak lr 4e-3                                        0.88 / 0.87 / 0.86      0.91 / 0.91 / 0.90
120 epochs (twice the compute)                      0.91 / 0.88 / 0.95      0.92 / 0.91 / 0.95
================================================== ======================= ================

Pooled over the 320 series, no variant beats the shipped recipe by more than the run-to-run noise (the same recipe
scored 0.86 and 0.91 on seed 11 in two runs); twice the epochs is the best row by about 0.01 at twice the training
time. The remaining errors are the rare "others" sub-phases (transitional, early arterial) and late-arterial series
voted "others": levers other than more of the same training are needed (a larger network and input on a GPU, or
fewer uninformative slices in the vote).

Fewer uninformative slices in the vote is what the certainty-weighted vote (``backend.ml.voting``, the default since)
does. With it, training variants were measured again on a slower 2-core host (where ``cpu`` took 16.3 minutes with
its phantoms). Series macro F1 at R = 30 %, plain majority / weighted vote, on 160 series each of seeds 31 and 21
(one training run per row, same training data; EMA: a per-step 0.998 moving average of the weights, validated and
kept instead of the weights):

================================================== ======================= =======================
run                                                 seed 31                 seed 21
================================================== ======================= =======================
``cpu``, retrained                                  0.84 / 0.93             0.86 / 0.92
+ EMA                                               0.88 / 0.91             0.90 / 0.93
EMA, 40 epochs instead of 60                        0.78 / 0.86             0.82 / 0.88
EMA, batch 64, peak lr 3e-3                         0.82 / 0.91             0.89 / 0.94
EMA, batch 64, peak lr 3e-3, 112 pixels             0.87 / 0.91             --
================================================== ======================= =======================

The weighted vote adds 0.03-0.09 to every model; no training variant beats ``cpu`` under it. Batch 64 was tried for
speed (230 vs 182 images/s for the bare network step): in the full loop its epochs are 1.13x faster (12.4 vs 14.1 s,
measured back to back), ~1.5 of the 16.3 minutes, and a product run of it (with EMA) scored 0.88 vs 0.89 for ``cpu``
on 160 fresh series of seed 41. Batch 64 alone (no moving average) scored 0.79 / 0.87 and 0.84 / 0.91 on seeds 31
and 21, below ``cpu``. Cutting epochs costs accuracy (40 epochs: -0.05). Also measured and not adopted: averaging
each slice with its horizontal mirror at inference (seed 31: 0.85 / 0.91, no gain) and ``torch.compile`` for
training (84 s to compile, no faster per step on this CPU).

What did move it is the training data: many patients with few slices each, at the same rendering time and the
same training steps (rendering and training cost scale with slices, not series), down to 8 slices per series: at 4,
fewer slices show the excreted contrast that marks a delayed series. One training run per row, on a
2-core Intel Xeon (AVX-512), series macro F1 at R = 30 %, weighted vote, 160 series each of seeds 41 and 31, and
what the remaining errors are (``ctphase evaluate`` counts them per sub-phase):

===================================================== ======== ======== ==============================================
training phantoms (slices per series per epoch)        seed 41  seed 31  series right per sub-phase (41 + 31)
===================================================== ======== ======== ==============================================
160 series x 32 slices (16), previous recipe           0.89     0.89     late arterial 68/80, transitional 2/12
  same, "others" a third each of delayed, early         0.84     0.90     late arterial 79/80, delayed 34/55
  arterial and transitional (instead of ~60/22/18 %)
320 x 16 (8), "others" balanced                         0.82     0.87     delayed 28/55
640 x 8 (4), the starter recipe                         0.93     0.93     late arterial 77/80, delayed 55/55,
                                                                          early arterial 7/13, transitional 0/12
640 x 8 (4), "others" balanced                          0.91     0.92     delayed 46/55, transitional 0/12
1,280 x 4 (2)                                           0.87     0.91     delayed 44/55, early arterial 6/13
640 x 8 (4), uncompressed (another draw of the same     0.94     0.94     early arterial 11/13, transitional 0/12
  recipe: the starter since)
1,280 x 8 (2), uncompressed, 1.2x the time               0.97     0.93     early arterial 10/13, transitional 0/12
===================================================== ======== ======== ==============================================

The two uncompressed rows were chosen between on these seeds (the 1,280-series one is ~0.01 better on average, as is
its compressed twin, 0.95 / 0.93, but costs 11.3 instead of 9.5 minutes with its phantoms on this host, over 15 on
a 1.4x slower one). On 160 fresh series of seed 61 they score 0.91 and 0.93: seed 61 holds 11 transitional series
(5-7 on the other seeds), recognised 1 of 11 by both; of the other 149 series they label 146 and 148 right.

What moved transitional is the series head (:mod:`backend.ml.series_head`): a logistic regression on each series'
mean slice logits, fitted on the training run's validation series, its ``C`` chosen by cross-validation there
(10 for both rows below; seed 71 was drawn after every choice). Series macro F1 at R = 30 %, same samples, with
transitional series right on seeds 41 / 31 / 61 / 71:

===================================================== ======= ======= ======= ======= ========================
model, vote                                            seed 41 seed 31 seed 61 seed 71 transitional right
===================================================== ======= ======= ======= ======= ========================
640 x 8 (4), weighted vote                             0.941   0.936   0.914   0.942   0/5, 0/7, 1/11, 1/5
  + head (120 validation series, 3 transitional)       0.956   0.956   0.948   0.936   1/5, 3/7, 5/11, 1/5
1,280 x 8 (2), weighted vote                           0.968   0.929   0.928   0.936   0/5, 0/7, 1/11, 0/5
  + head (272 validation series, 9 transitional)       0.944   0.945   0.962   0.938   1/5, 6/7, 10/11, 3/5
===================================================== ======= ======= ======= ======= ========================

``others`` F1 with the head: 0.907 / 0.909 / 0.889 / 0.877 (640) and 0.889 / 0.897 / 0.927 / 0.884 (1,280); with the
weighted vote 0.873 / 0.865 / 0.806 / 0.873 (640). The larger validation split teaches the head more transitional
series but it then calls more late-arterial and portal-venous series "others" (5, 8, 4, 8 of 80 vs 1, 2, 0, 1);
the two recipes tie on average, and the 640-series one (14.7 vs 17.7 minutes on one host) stays the starter. Fixed
``C`` from 0.1 to 30 moved single seeds by up to 0.04 either way, with no value better on all four. The head gains
from more slices per vote (its input is a mean): 640-series model, mean of 5 samples per R on seed 71, 30 % 0.940,
50 % 0.945, 100 % 0.942.

Two changes to the head, measured on that 640-series network by refitting heads on its validation probabilities
and applying them to the very R = 30 % slices ``ctphase predict`` voted on each seed (series macro F1; the first
row is what the product scored): its input weighted by slice certainty, as the weighted vote weighs slices (a pelvis
slice that cannot tell moves the mean less), and 400 more fitting series of other patients (100 per phase, seed 5,
8 slices each, never trained on: 46 s of phantoms and ~5 s of decoding and inference here):

===================================================== ======= ======= ======= ======= =======
head input, fitted on                                  seed 71 seed 61 seed 41 seed 31 mean
===================================================== ======= ======= ======= ======= =======
mean logits, 120 validation series (previous head)     0.936   0.948   0.956   0.956   0.949
mean logits, + 400 head-only series                    0.943   0.975   0.956   0.975   0.962
certainty-weighted mean logits, validation series      0.949   0.955   0.962   0.969   0.959
certainty-weighted, + 400 head-only series (starter)   0.943   0.968   0.956   0.975   0.961
===================================================== ======= ======= ======= ======= =======

The same four rows on a network trained with a +-4 HU offset augmentation instead of +-15 (slice macro F1 0.74-0.76
instead of 0.71-0.73 on these seeds): 0.951, 0.955, 0.956, 0.966 on average; the series did not gain, so the
augmentation that covers scanner calibration stays. Sub-phase outputs for early arterial, transitional and delayed as
extra training targets (an auxiliary loss) did not teach the network transitional either (0-2 of 11 on seed 61).

Balancing the sub-phases of "others" (a generator change measured here and not kept) fixes late arterial at the cost
of delayed and never teaches transitional (0 of 12 even from ~50 transitional training series): what is left is the
narrow transitional band between late arterial and portal venous, and early arterial, which the slice network does
not resolve. The phases themselves are separable: a linear discriminant on the organs' mean HU labels every
sub-phase (``tests/phantom/test_physiology``).

An epoch at 96 pixels costs ~0.8x one at 128 (6.9 vs 8.2 s here), so 60 epochs take ~1.7x the time of the previous
30. Inference runs ~2,200 slices/s at 96 pixels (2 threads, channels_last; ~1,750 at 128), so a 300-slice series' 90
sampled slices cost ~40 ms of network time and the series' cost is dominated by decoding the sampled slices.
``paper`` is the paper's efficientnet_b2 at 224 with the (50, 400) HU window (the default on CUDA).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pydantic
import timm
import torch
from numpy.typing import NDArray
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from backend.ml.phases import N_PHASES, PHASES
from backend.ml.series_head import SeriesHead

log = logging.getLogger(__name__)

FORMAT_VERSION: Final[int] = 1
"""Version of the artifact layout written by :func:`save_model`; :func:`load_model` accepts only this one."""

WEIGHTS_FILE: Final[str] = "model.safetensors"
MANIFEST_FILE: Final[str] = "manifest.json"
_EMBEDDED_MANIFEST_KEY: Final[str] = "ctphase_manifest"

RESIZE_METHOD: Final[str] = "antialiased bilinear (backend.ml.dicom.resize)"
"""How slices are brought to ``image_size``; recorded in the manifest's preprocessing."""


SOFT_TISSUE_WINDOW: Final[tuple[float, float]] = (120.0, 240.0)
"""(centre, width) HU of the ``cpu`` preset's second channel: 0-240 HU, the range of enhancing organs and blood."""
CONTRAST_WINDOW: Final[tuple[float, float]] = (250.0, 300.0)
"""(centre, width) HU of the ``cpu`` preset's third channel: 100-400 HU, enhanced blood and excreted contrast."""


@dataclass(frozen=True)
class Preset:
    """A network and its preprocessing and training defaults.

    Attributes:
        name: preset name recorded in manifests (``cpu``, ``paper``, or a custom name in tests).
        arch: timm model name (created with ``pretrained=False``).
        image_size: square input size in pixels.
        windows: (centre, width) HU windows, one input channel each, values scaled to [0, 1].
        epochs: default number of training epochs.
        batch_size: default training batch size.
        lr: default peak learning rate (Adam), reached after the warm-up.
        weight_decay: Adam weight decay.
        warmup_epochs: linear warm-up length in epochs (fractional allowed).
        slices_per_series: slices of each training series drawn per epoch.
        cache_slices_per_series: slices of each series decoded once into the slice cache (spread along z).
        inference_batch_size: slices per forward pass in :meth:`LoadedModel.predict_proba`.
        cpu_bf16_inference: use bf16 autocast for inference on CPU (only where measured faster and as accurate).
        crop_body: crop each slice to a square around the body before resizing (``backend.ml.dicom.body_boxes``).
        resize_first: resize the HU image, then window it (``backend.ml.dicom.to_network_input``); else window at
            full size, then resize each channel.
    """

    name: str
    arch: str
    image_size: int
    windows: tuple[tuple[float, float], ...]
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_epochs: float = 1.0
    slices_per_series: int = 16
    cache_slices_per_series: int = 32
    inference_batch_size: int = 32
    cpu_bf16_inference: bool = False
    crop_body: bool = False
    resize_first: bool = False

    @property
    def in_chans(self) -> int:
        """Number of input channels (one per window)."""
        return len(self.windows)


PRESETS: Final[dict[str, Preset]] = {
    "paper": Preset(
        name="paper",
        arch="efficientnet_b2",
        image_size=224,
        windows=((50.0, 400.0),),
        epochs=15,
        batch_size=32,
        lr=1e-3,
        slices_per_series=32,
        cache_slices_per_series=64,
        crop_body=True,
    ),
    "cpu": Preset(
        name="cpu",
        arch="mobilenetv3_small_100",
        image_size=96,
        windows=((50.0, 400.0), SOFT_TISSUE_WINDOW, CONTRAST_WINDOW),
        epochs=60,
        batch_size=32,
        lr=2e-3,
        warmup_epochs=3.0,
        slices_per_series=16,
        cache_slices_per_series=32,
        crop_body=True,
        resize_first=True,
    ),
}


def default_preset_name() -> str:
    """``"paper"`` when CUDA is available, else ``"cpu"``."""
    return "paper" if torch.cuda.is_available() else "cpu"


def get_preset(name: str) -> Preset:
    """Look up a preset by name.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(sorted(PRESETS))}") from None


def create_network(preset: Preset) -> torch.nn.Module:
    """Build the preset's timm network with random weights.

    Returns:
        A module mapping float32 [n, in_chans, S, S] images in [0, 1] to logits float32 [n, 4].

    Raises:
        ModelArtifactError: timm does not know ``preset.arch``.
    """
    return _create_timm(preset.arch, in_chans=preset.in_chans)


def _create_timm(arch: str, *, in_chans: int) -> torch.nn.Module:
    if not timm.is_model(arch):
        raise ModelArtifactError(f"unknown network architecture {arch!r} (not a timm model name)")
    network: torch.nn.Module = timm.create_model(arch, pretrained=False, num_classes=N_PHASES, in_chans=in_chans)
    return network


def preprocessing_spec(preset: Preset) -> dict[str, Any]:
    """The preprocessing an artifact expects, as stored in its manifest."""
    return {
        "windows_hu": [[c, w] for c, w in preset.windows],
        "channels": [f"HU window centre {c:g} width {w:g}, scaled to [0, 1]" for c, w in preset.windows],
        "image_size": preset.image_size,
        "crop": "body" if preset.crop_body else "none",
        "resize": RESIZE_METHOD,
        "order": "resize, then window" if preset.resize_first else "window, then resize",
        "input_range": [0.0, 1.0],
        "normalization": "none",
        "slice_order": "ascending along the slice normal",
    }


def training_data_fingerprint(pairs: Iterator[tuple[str, str]] | list[tuple[str, str]]) -> str:
    """sha256 hex digest over the sorted, de-duplicated (series uid, phase) pairs a model was trained on."""
    digest = hashlib.sha256()
    for uid, phase in sorted(set(pairs)):
        digest.update(f"{uid}\t{phase}\n".encode())
    return digest.hexdigest()


class ModelArtifactError(Exception):
    """A model folder cannot be written or is not a valid, untampered ctphase artifact (the message says why)."""


class Manifest(pydantic.BaseModel):
    """What a model artifact is, how to feed it, what it was trained on and how well it did."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    format_version: int
    preset: str
    arch: str
    classes: list[str]
    image_size: int = pydantic.Field(gt=0)
    windows: list[tuple[float, float]] = pydantic.Field(min_length=1)
    preprocessing: dict[str, Any]
    training_data_fingerprint: str
    metrics: dict[str, Any]
    weights_sha256: str
    created_at: datetime
    torch_version: str
    timm_version: str
    series_head: SeriesHead | None = None

    @property
    def in_chans(self) -> int:
        """Number of input channels (one per window)."""
        return len(self.windows)


def build_manifest(
    preset: Preset, *, fingerprint: str, metrics: Mapping[str, Any], series_head: SeriesHead | None = None
) -> Manifest:
    """A manifest for a network built from ``preset``; ``weights_sha256`` is filled in by :func:`save_model`."""
    return Manifest(
        format_version=FORMAT_VERSION,
        preset=preset.name,
        arch=preset.arch,
        classes=list(PHASES),
        image_size=preset.image_size,
        windows=[(float(c), float(w)) for c, w in preset.windows],
        preprocessing=preprocessing_spec(preset),
        training_data_fingerprint=fingerprint,
        metrics=dict(metrics),
        weights_sha256="",
        created_at=datetime.now(UTC),
        torch_version=torch.__version__,
        timm_version=timm.__version__,
        series_head=series_head,
    )


def preset_from_manifest(manifest: Manifest) -> Preset:
    """The preset a manifest was trained with: the named preset's defaults with the manifest's network and input."""
    base = PRESETS.get(manifest.preset, PRESETS["cpu"])
    return Preset(
        name=manifest.preset,
        arch=manifest.arch,
        image_size=manifest.image_size,
        windows=tuple((float(c), float(w)) for c, w in manifest.windows),
        epochs=base.epochs,
        batch_size=base.batch_size,
        lr=base.lr,
        weight_decay=base.weight_decay,
        warmup_epochs=base.warmup_epochs,
        slices_per_series=base.slices_per_series,
        cache_slices_per_series=base.cache_slices_per_series,
        inference_batch_size=base.inference_batch_size,
        cpu_bf16_inference=base.cpu_bf16_inference if base.arch == manifest.arch else False,
        crop_body=manifest_crops_body(manifest),
        resize_first=manifest_resizes_first(manifest),
    )


def manifest_crops_body(manifest: Manifest) -> bool:
    """Whether the artifact expects body-cropped slices (manifests written before the crop existed: no)."""
    return bool(manifest.preprocessing.get("crop", "none") == "body")


def manifest_resizes_first(manifest: Manifest) -> bool:
    """Whether the artifact expects slices resized in HU before windowing (manifests without the key: no)."""
    return bool(manifest.preprocessing.get("order", "window, then resize") == "resize, then window")


def warm_start_problem(preset: Preset, manifest: Manifest) -> str | None:
    """Why a network of ``preset`` cannot start from the weights of ``manifest``'s model; ``None`` when it can.

    The architecture, input size and windows (input channels) must match. A preset whose definition changed between
    releases (the ``cpu`` preset went from 128 px with two windows to 96 px with three) has the same name as its
    older champions but cannot take their weights.
    """
    wanted = (preset.arch, preset.image_size, [tuple(w) for w in preset.windows])
    found = (manifest.arch, manifest.image_size, [tuple(w) for w in manifest.windows])
    if wanted == found:
        return None
    return (
        f"preset {preset.name!r} is {wanted[0]} @ {wanted[1]} px with windows {wanted[2]}, the model is a "
        f"{found[0]} @ {found[1]} px model with windows {found[2]}"
    )


# --- the loaded model -------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A verified artifact's network, ready for inference.

    Attributes:
        network: the module, in eval mode, on ``device``.
        manifest: the verified manifest.
        device: where the network runs.
        batch_size: slices per forward pass.
        bf16: run under bf16 autocast (CUDA always when supported; CPU only where measured faster and as accurate).
    """

    network: torch.nn.Module
    manifest: Manifest
    device: torch.device
    batch_size: int = 32
    bf16: bool = False

    @property
    def image_size(self) -> int:
        """Input size in pixels the network expects."""
        return self.manifest.image_size

    @property
    def windows(self) -> tuple[tuple[float, float], ...]:
        """(centre, width) HU windows, one channel each."""
        return tuple((float(c), float(w)) for c, w in self.manifest.windows)

    @property
    def crop_body(self) -> bool:
        """Whether slices are cropped to the body before resizing (older manifests without the key: no)."""
        return manifest_crops_body(self.manifest)

    @property
    def resize_first(self) -> bool:
        """Whether slices are resized in HU before windowing (older manifests without the key: no)."""
        return manifest_resizes_first(self.manifest)

    def predict_proba(self, images: NDArray[Any]) -> NDArray[np.float32]:
        """Per-class sigmoid probabilities of slices.

        Args:
            images: float32 [n, c, S, S] windowed slices in [0, 1], ``c == len(windows)``, ``S == image_size``.

        Returns:
            float32 [n, 4], columns in ``PHASES`` order; rows need not sum to 1 (one-vs-rest sigmoids).

        Raises:
            ValueError: the images do not have the shape the network expects.
        """
        array = np.asarray(images, dtype=np.float32)
        expected = (self.manifest.in_chans, self.image_size, self.image_size)
        if array.ndim != 4 or tuple(array.shape[1:]) != expected:
            raise ValueError(f"images must have shape [n, {', '.join(map(str, expected))}], got {list(array.shape)}")
        out = np.empty((array.shape[0], N_PHASES), dtype=np.float32)
        with torch.inference_mode(), _autocast(self.device, enabled=self.bf16):
            for start in range(0, array.shape[0], self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(array[start : start + self.batch_size]))
                batch = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                logits = self.network(batch)
                out[start : start + batch.shape[0]] = torch.sigmoid(logits.float()).cpu().numpy()
        return out


def _autocast(device: torch.device, *, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as torch parses it.

    Raises:
        ValueError: CUDA was asked for but is not available.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!s} requested but CUDA is not available; use 'cpu' or 'auto'")
    return resolved


# --- saving -----------------------------------------------------------------------------------------------------


def _embedded_manifest(manifest: Manifest) -> str:
    """The manifest without its weights checksum, canonical JSON (stored in the weights file's header).

    A manifest without a series head leaves the key out, as artifacts written before the head existed did, and a
    head reading ``mean_logits`` leaves out its ``features`` key, as heads written before that key existed did, so
    their embedded copies still match.
    """
    exclude: dict[str, Any] = {"weights_sha256": True}
    if manifest.series_head is None:
        exclude["series_head"] = True
    elif manifest.series_head.features == "mean_logits":
        exclude["series_head"] = {"features": True}
    return json.dumps(manifest.model_dump(mode="json", exclude=exclude), sort_keys=True)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _state_dict_for_saving(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in network.state_dict().items()}


def _write_weights(path: Path, *, network: torch.nn.Module, manifest: Manifest) -> None:
    save_file(
        _state_dict_for_saving(network), str(path), metadata={_EMBEDDED_MANIFEST_KEY: _embedded_manifest(manifest)}
    )
    _fsync_path(path)


def _write_manifest(path: Path, manifest: Manifest) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write(manifest.model_dump_json(indent=2))
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def save_model(model_dir: Path, *, network: torch.nn.Module, manifest: Manifest) -> Manifest:
    """Write a model artifact atomically.

    The files go into a temporary folder beside ``model_dir`` (same file system), are fsynced, and the folder is
    renamed to ``model_dir`` in one step; on any error the temporary folder is removed and nothing appears.

    Args:
        model_dir: folder to create; must not exist (artifacts are immutable).
        network: the trained module (any device); its state dict is stored.
        manifest: the manifest to store; ``weights_sha256`` is replaced by the hash of the written weights file.

    Returns:
        The manifest as written (with ``weights_sha256``).

    Raises:
        ModelArtifactError: ``model_dir`` exists, or the manifest's classes/arch do not describe a ctphase network.
    """
    if list(manifest.classes) != list(PHASES):
        raise ModelArtifactError(f"manifest classes {manifest.classes} differ from {list(PHASES)}")
    if model_dir.exists():
        raise ModelArtifactError(f"{model_dir}: already exists; model folders are immutable, choose a new one")
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.tmp-", dir=model_dir.parent))
    try:
        _write_weights(tmp / WEIGHTS_FILE, network=network, manifest=manifest)
        written = manifest.model_copy(update={"weights_sha256": _sha256_file(tmp / WEIGHTS_FILE)})
        _write_manifest(tmp / MANIFEST_FILE, written)
        for path in (tmp / WEIGHTS_FILE, tmp / MANIFEST_FILE):
            path.chmod(0o644)  # readable by the serving and worker processes; mkdtemp made the folder 0700
        tmp.chmod(0o755)
        _fsync_path(tmp)
        try:
            tmp.rename(model_dir)
        except OSError as exc:
            raise ModelArtifactError(f"{model_dir}: cannot move the new model into place: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_path(model_dir.parent)
    log.info("saved model %s (%s, sha256 %s)", model_dir, written.arch, written.weights_sha256[:12])
    return written


# --- loading ----------------------------------------------------------------------------------------------------


def read_manifest(model_dir: Path) -> Manifest:
    """Parse and validate ``model_dir/manifest.json`` (no weights check; see :func:`load_model`).

    Raises:
        ModelArtifactError: missing or unreadable manifest, unknown format version, wrong classes or unknown arch.
    """
    path = model_dir / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelArtifactError(f"{model_dir}: no {MANIFEST_FILE}; not a ctphase model folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelArtifactError(f"{path}: unreadable manifest: {exc}") from exc
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise ModelArtifactError(f"{path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    try:
        manifest = Manifest.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise ModelArtifactError(f"{path}: invalid manifest: {exc}") from exc
    if list(manifest.classes) != list(PHASES):
        raise ModelArtifactError(f"{path}: classes {manifest.classes} differ from this version's {list(PHASES)}")
    if not timm.is_model(manifest.arch):
        raise ModelArtifactError(f"{path}: unknown network architecture {manifest.arch!r} (not a timm model name)")
    return manifest


def _verified_state_dict(model_dir: Path, manifest: Manifest) -> dict[str, torch.Tensor]:
    path = model_dir / WEIGHTS_FILE
    if not path.is_file():
        raise ModelArtifactError(f"{model_dir}: no {WEIGHTS_FILE}")
    actual = _sha256_file(path)
    if actual != manifest.weights_sha256:
        raise ModelArtifactError(
            f"{path}: sha256 {actual} does not match the manifest's {manifest.weights_sha256}; refusing to load"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for a malformed file
        raise ModelArtifactError(f"{path}: unreadable safetensors file: {exc}") from exc
    if metadata.get(_EMBEDDED_MANIFEST_KEY) != _embedded_manifest(manifest):
        raise ModelArtifactError(
            f"{model_dir / MANIFEST_FILE}: manifest differs from the one recorded in {WEIGHTS_FILE} "
            "(edited by hand?); refusing to load"
        )
    return state


def load_model(
    model_dir: Path,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    bf16: bool | None = None,
    batch_size: int | None = None,
) -> LoadedModel:
    """Load and verify a model artifact.

    Args:
        model_dir: folder written by :func:`save_model`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        threads: torch intra-op CPU threads for this process (``None`` leaves torch's setting).
        bf16: bf16 autocast for inference; ``None`` chooses: on CUDA when supported, on CPU as the preset measured.
        batch_size: slices per forward pass (default: the preset's).

    Raises:
        ModelArtifactError: see :func:`read_manifest`; also a checksum mismatch, a manifest that differs from the
            one embedded in the weights, or weights that do not fit the architecture.
        ValueError: an unusable device or thread count.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    target = resolve_device(device)
    manifest = read_manifest(model_dir)
    state = _verified_state_dict(model_dir, manifest)
    network = _create_timm(manifest.arch, in_chans=manifest.in_chans)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelArtifactError(f"{model_dir}: weights do not fit {manifest.arch}: {exc}") from exc
    network.eval().to(target)
    network.to(memory_format=torch.channels_last)
    preset = preset_from_manifest(manifest)
    if bf16 is None:
        bf16 = torch.cuda.is_bf16_supported() if target.type == "cuda" else preset.cpu_bf16_inference
    return LoadedModel(
        network=network,
        manifest=manifest,
        device=target,
        batch_size=batch_size or preset.inference_batch_size,
        bf16=bf16,
    )
