"""The benchmark's 3D baseline: volume preprocessing and a short fit on tiny volumes."""

from __future__ import annotations

import numpy as np
import torch

from backend.ml.dicom import read_series
from bench.baseline3d import DEPTH, SIZE, SECNN3d, load_volume, n_parameters, predict_volumes, train_baseline
from tests.inference.test_predict import write_ct_series


def test_volume_is_windowed_and_resized_to_32x128x128(tmp_path):
    write_ct_series(tmp_path / "s", n_slices=7, level_hu=450, seed=0)
    volume = load_volume(read_series(tmp_path / "s"))
    assert volume.shape == (1, DEPTH, SIZE, SIZE)
    assert volume.dtype == np.float32
    assert volume.min() >= 0.0
    assert volume.max() <= 1.0
    assert volume[0, :, 0, 0].max() == 0.0, "air is below the 50/400 window"
    assert volume[0, :, SIZE // 2, SIZE // 2].min() == 1.0, "450 HU is above the window"


def test_network_is_small_and_trains_with_weighted_bce():
    torch.manual_seed(0)
    assert 0.5e6 < n_parameters(SECNN3d()) < 1.5e6
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2, 3, 3, 3], dtype=np.int64)
    # the network is fully convolutional: tiny volumes keep this smoke test fast
    volumes = rng.random((6, 1, 4, 16, 16)).astype(np.float16)
    lines = []
    network, seconds = train_baseline(volumes, labels, epochs=1, batch_size=3, log=lines.append)
    assert not network.training
    assert seconds > 0
    assert len(lines) == 1
    assert lines[0].startswith("  3D epoch 1/1: loss ")
    probs = predict_volumes(network, volumes)
    assert probs.shape == (6, 4)
    assert np.all((probs > 0) & (probs < 1))
