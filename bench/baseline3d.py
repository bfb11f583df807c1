"""The paper's comparison baseline: a small 3D SE-CNN on the whole volume resized to 32x128x128 (benchmark only).

Dao et al. (2022) compare their sampled 2D slice CNN with a 3D CNN that sees the whole series resized to
32x128x128. This module reproduces that baseline on the same data so that accuracy and speed can be compared in
one run (bench/classifier.py):

- reading: every slice of the series is decoded (``backend.ml.dicom.read_hu``), HU window 50/400 -> [0, 1];
- resize: in-plane antialiased bilinear to 128x128 chunk by chunk (bounded memory), then linear along z to 32
  slices: a separable trilinear resize of the volume to 32x128x128;
- network: 4 residual 3D conv stages with squeeze-and-excitation (~0.9 M parameters), 4 sigmoid outputs;
- training: class-weighted BCE (``pos_weight`` = negatives / positives per class), Adam, cosine schedule,
  random left-right flips, on the phantom training set.

Usage (from the repository root)::

    python -m bench.baseline3d train --data PHANTOM_DIR --out MODEL_DIR [--epochs 12]
    python -m bench.baseline3d predict --model MODEL_DIR SERIES_DIR...

Training 160 phantom series for 12 epochs takes a few minutes on 2 CPU cores (the bench prints the time).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from numpy.typing import NDArray
from torch import nn

from backend.ml.dicom import SeriesInfo, read_hu, read_series, resize, window
from backend.ml.phases import N_PHASES, PHASES

DEPTH = 32
SIZE = 128
WINDOW = ((50.0, 400.0),)
CHUNK = 16
WEIGHTS_FILE = "baseline3d.safetensors"
CONFIG_FILE = "baseline3d.json"


# --- volume ---------------------------------------------------------------------------------------------------


def load_volume(series: SeriesInfo, *, depth: int = DEPTH, size: int = SIZE) -> NDArray[np.float32]:
    """Decode every slice, window 50/400 and resize the volume to ``depth x size x size``.

    Args:
        series: a discovered series (all of its slices are decoded).
        depth: output slices.
        size: output in-plane side, pixels.

    Returns:
        float32 [1, depth, size, size] in [0, 1] (channel first).
    """
    n = series.n_slices
    planes = np.empty((n, size, size), dtype=np.float32)
    chunk = min(CHUNK, n)
    hu_buffer = np.empty((chunk, series.rows, series.columns), dtype=np.float32)
    window_buffer = np.empty((chunk, 1, series.rows, series.columns), dtype=np.float32)
    for start in range(0, n, chunk):
        part = list(range(start, min(n, start + chunk)))
        m = len(part)
        hu = read_hu(series, part, out=hu_buffer[:m])
        windowed = window(hu, WINDOW, out=window_buffer[:m])
        planes[start : start + m] = resize(windowed, size)[:, 0]
    volume = torch.from_numpy(planes)[None, None]  # [1, 1, n, size, size]
    with torch.no_grad():
        resized = nnf.interpolate(volume, size=(depth, size, size), mode="trilinear", align_corners=False)
    return np.ascontiguousarray(resized[0].numpy())


# --- network --------------------------------------------------------------------------------------------------


class SqueezeExcite3d(nn.Module):
    """Channel attention: global average pool -> bottleneck MLP -> sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(4, channels // reduction)
        self.fc1 = nn.Conv3d(channels, hidden, 1)
        self.fc2 = nn.Conv3d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(nnf.relu(self.fc1(x.mean(dim=(2, 3, 4), keepdim=True)))))
        return x * gate


class SEBlock3d(nn.Module):
    """Residual block: two 3x3x3 convs (the first strided) with batch norm, SE gate, projected shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.se = SqueezeExcite3d(c_out)
        self.shortcut = nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nnf.relu(self.bn1(self.conv1(x)))
        y = self.se(self.bn2(self.conv2(y)))
        return nnf.relu(y + self.shortcut(x))


class SECNN3d(nn.Module):
    """Small 3D SE-CNN: [n, 1, 32, 128, 128] -> logits [n, 4]."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 112), dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(1, widths[0], 3, stride=(1, 2, 2), padding=1, bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks = []
        c_in = widths[0]
        for i, c_out in enumerate(widths):
            stride = (1, 2, 2) if i == 0 else (2, 2, 2)
            blocks.append(SEBlock3d(c_in, c_out, stride))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, N_PHASES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(x)).mean(dim=(2, 3, 4))
        return self.head(self.dropout(features))


def n_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


# --- training -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedBaseline:
    network: SECNN3d
    seconds_loading: float
    seconds_training: float
    epochs: int


def _pos_weight(labels: NDArray[np.int64]) -> torch.Tensor:
    counts = np.bincount(labels, minlength=N_PHASES).astype(np.float64)
    positives = np.maximum(counts, 1.0)
    return torch.tensor((labels.size - counts) / positives, dtype=torch.float32)


def train_baseline(
    volumes: NDArray[np.float16],
    labels: NDArray[np.int64],
    *,
    epochs: int = 12,
    batch_size: int = 4,
    lr: float = 2e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[SECNN3d, float]:
    """Fit the 3D SE-CNN with class-weighted BCE.

    Args:
        volumes: float16 [n, 1, 32, 128, 128] in [0, 1].
        labels: int64 [n] phase indices.
        epochs / batch_size / lr / seed: training schedule.
        log: progress sink.

    Returns:
        (network in eval mode, training seconds).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = SECNN3d()
    criterion = nn.BCEWithLogitsLoss(pos_weight=_pos_weight(labels))
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(labels) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    targets = torch.from_numpy(np.eye(N_PHASES, dtype=np.float32)[labels])
    started = time.perf_counter()
    for epoch in range(epochs):
        network.train()
        order = rng.permutation(len(labels))
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            x = torch.from_numpy(volumes[batch].astype(np.float32))
            flip = torch.from_numpy(rng.random(len(batch)) < 0.5)
            x[flip] = x[flip].flip(-1)
            loss = criterion(network(x), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch)
        log(f"  3D epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f} ({time.perf_counter() - started:.0f} s)")
    network.eval()
    return network, time.perf_counter() - started


def predict_volumes(network: SECNN3d, volumes: NDArray[Any], *, batch_size: int = 4) -> NDArray[np.float32]:
    """Sigmoid probabilities float32 [n, 4] of volumes float [n, 1, 32, 128, 128]."""
    out = np.empty((volumes.shape[0], N_PHASES), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, volumes.shape[0], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(volumes[start : start + batch_size], dtype=np.float32))
            out[start : start + x.shape[0]] = torch.sigmoid(network(x)).numpy()
    return out


# --- artifact -------------------------------------------------------------------------------------------------


def save_baseline(model_dir: Path, network: SECNN3d, *, info: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(model_dir / WEIGHTS_FILE))
    config = {"depth": DEPTH, "size": SIZE, "window": WINDOW, "classes": list(PHASES), **info}
    (model_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def load_baseline(model_dir: Path) -> tuple[SECNN3d, dict[str, Any]]:
    from safetensors.torch import load_file

    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no 3D baseline here (train it: python -m bench.baseline3d train ...)")
    network = SECNN3d()
    network.load_state_dict(load_file(str(weights)), strict=True)
    network.eval()
    info: dict[str, Any] = json.loads((model_dir / CONFIG_FILE).read_text())
    return network, info


def load_labelled_volumes(
    data_dir: Path, *, log: Callable[[str], None] = print
) -> tuple[NDArray[np.float16], NDArray[np.int64], float]:
    """Volumes float16 [n, 1, 32, 128, 128] and labels int64 [n] of a phantom dataset (labels.csv), and seconds."""
    from backend.ml.phantom import read_labels

    records = read_labels(data_dir / "labels.csv")
    started = time.perf_counter()
    volumes = np.empty((len(records), 1, DEPTH, SIZE, SIZE), dtype=np.float16)
    labels = np.empty(len(records), dtype=np.int64)
    for i, record in enumerate(records):
        volumes[i] = load_volume(read_series(data_dir / record.relative_dir))
        labels[i] = PHASES.index(record.phase)
        if (i + 1) % 40 == 0:
            log(f"  3D volumes: {i + 1}/{len(records)} ({time.perf_counter() - started:.0f} s)")
    return volumes, labels, time.perf_counter() - started


def train_and_save(data_dir: Path, model_dir: Path, *, epochs: int, seed: int = 0) -> SECNN3d:
    """Load a phantom training set, fit the baseline, save it; returns the network."""
    volumes, labels, seconds_loading = load_labelled_volumes(data_dir)
    print(f"3D baseline: {len(labels)} training volumes loaded in {seconds_loading:.0f} s; training {epochs} epochs")
    network, seconds_training = train_baseline(volumes, labels, epochs=epochs, seed=seed)
    save_baseline(
        model_dir,
        network,
        info={
            "epochs": epochs,
            "seed": seed,
            "n_train": len(labels),
            "train_data": str(data_dir),
            "seconds_loading": round(seconds_loading, 1),
            "seconds_training": round(seconds_training, 1),
            "parameters": n_parameters(network),
        },
    )
    print(f"3D baseline: trained in {seconds_training:.0f} s -> {model_dir}")
    return network


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline3d", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train on a phantom dataset folder (with labels.csv)")
    train.add_argument("--data", type=Path, required=True)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--epochs", type=int, default=12)
    train.add_argument("--seed", type=int, default=0)
    predict = sub.add_parser("predict", help="print the phase of series folders")
    predict.add_argument("--model", type=Path, required=True)
    predict.add_argument("series", type=Path, nargs="+")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "train":
        train_and_save(args.data, args.out, epochs=args.epochs, seed=args.seed)
        return 0
    network, _ = load_baseline(args.model)
    for folder in args.series:
        volume = load_volume(read_series(folder))
        probs = predict_volumes(network, volume[None])[0]
        print(folder, PHASES[int(np.argmax(probs))], " ".join(f"{p:.3f}" for p in probs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
