"""Training-step benchmark: the memory format the trainer uses, measured against the other one.

``backend.ml.train`` runs the network and its inputs in ``channels_last`` on every device. On CPU this was once
measured 6x *slower* for mobilenetv3_small's depthwise convolutions (torch 2.14.1, an early host); on the 2-core AMD
EPYC (Zen 4) hosts of later sessions it is faster (one starter training: 421 s instead of 555 s). This benchmark
lets you check your own host: it times interleaved blocks of training steps (forward, class-weighted BCE, backward,
Adam step; deterministic algorithms on, as in training) of a preset's network at its batch size, in both formats,
and prints images/s and the ratio. Usage::

    .venv/bin/python -m bench.train_step [--preset cpu] [--threads 2] [--steps 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as nnf

from backend.ml.network import create_network, get_preset
from backend.ml.phases import N_PHASES


def _steps_per_second(
    network: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, *, steps: int
) -> float:
    """Training steps per second of ``network`` on ``images`` (float32 [b, c, S, S], in its memory format)."""
    targets = nnf.one_hot(torch.arange(images.shape[0]) % N_PHASES, N_PHASES).float()
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = nnf.binary_cross_entropy_with_logits(network(images).float(), targets)
        torch.autograd.backward(loss)
        optimizer.step()
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="training steps per timed block")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved blocks per format (median reported)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    preset = get_preset(args.preset)
    torch.manual_seed(0)
    batch = torch.rand(preset.batch_size, preset.in_chans, preset.image_size, preset.image_size)
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    rates: dict[str, list[float]] = {name: [] for name in formats}
    for _ in range(args.rounds):
        for name, memory_format in formats.items():
            network = create_network(preset).to(memory_format=memory_format).train()
            optimizer = torch.optim.Adam(network.parameters(), lr=preset.lr)
            images = batch.contiguous(memory_format=memory_format)
            _steps_per_second(network, optimizer, images, steps=3)  # warm-up: kernel selection, allocations
            rates[name].append(_steps_per_second(network, optimizer, images, steps=args.steps))
    print(f"{preset.arch} @ {preset.image_size} px, batch {preset.batch_size}, {args.threads} threads, training step:")
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in median.items():
        print(f"  {name:14s} {value * preset.batch_size:7.0f} images/s")
    print(f"channels_last vs contiguous: {median['channels_last'] / median['contiguous']:.2f}x")


if __name__ == "__main__":
    main()
