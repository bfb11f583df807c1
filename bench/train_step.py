"""Training-step benchmark: the two memory formats the trainer chooses between on CPU, measured longer.

``backend.ml.train`` (``memory_format="auto"``) times a few training steps of the network in each format before a
CPU run and trains in channels_last where it is at least ``CHANNELS_LAST_MIN_SPEEDUP`` faster: channels_last was once
measured 6x *slower* for mobilenetv3_small's depthwise convolutions, and 1.5x faster on a 2-core AMD EPYC (Zen 4)
(the starter's training 411 s instead of 555 s). This runs the trainer's own probe
(:func:`backend.ml.train.probe_steps_per_second`: forward, BCE, backward, update of a copy of the preset's network at
its batch size, deterministic algorithms on, as in training) for more steps and rounds, interleaved, and prints
images/s per format, the ratio, and what ``auto`` would choose. Usage::

    .venv/bin/python -m bench.train_step [--preset cpu] [--threads 2] [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from backend.ml.network import create_network
from backend.ml.train import (
    CHANNELS_LAST_MIN_SPEEDUP,
    MEMORY_FORMATS,
    TrainConfig,
    _resolve,
    probe_steps_per_second,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per block (the fastest counts)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved blocks per format (median reported)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    plan = _resolve(TrainConfig(preset=args.preset, device="cpu"))
    network = create_network(plan.preset)
    rates: dict[str, list[float]] = {name: [] for name in MEMORY_FORMATS}
    for _ in range(args.rounds):
        for name, memory_format in MEMORY_FORMATS.items():
            rates[name].append(
                probe_steps_per_second(network, plan=plan, memory_format=memory_format, steps=args.steps)
            )
    median = {name: statistics.median(values) for name, values in rates.items()}
    preset = plan.preset
    print(f"{preset.arch} @ {preset.image_size} px, batch {plan.batch_size}, {args.threads} threads, training step:")
    for name, value in median.items():
        print(f"  {name:14s} {value * plan.batch_size:7.0f} images/s")
    ratio = median["channels_last"] / median["contiguous"]
    chosen = "channels_last" if ratio >= CHANNELS_LAST_MIN_SPEEDUP else "contiguous"
    print(f"channels_last vs contiguous: {ratio:.2f}x -> auto would train in {chosen}")


if __name__ == "__main__":
    main()
