"""Accuracy and end-to-end speed of the sampled 2D slice classifier versus the 3D volume baseline, in one run.

For the same phantom test series (uncompressed, and JPEG 2000 lossless copies of the same series), prints:

- 2D ``cpu`` preset at R = 30% (the serving default, with its second look at unsure series), the same without the
  second look (the paper's single sample), 2D ``cpu`` on all slices (R = 100%),
- 2D ``paper`` preset (efficientnet_b2 @ 224) at R = 30%: trained if you pass one, else an untrained network of the
  right architecture (timing only; its F1 is not meaningful and is marked so),
- the 3D SE-CNN baseline on the whole volume resized to 32x128x128 (bench/baseline3d.py),

with the series-level macro F1 and the end-to-end seconds per series, and the speed ratios to the 3D baseline.

End to end means everything a prediction costs: ``read_series`` of the series folder (header discovery and the
geometric sort), decoding (only the sampled slices for 2D; every slice for 3D), windowing, resizing, the network and
the vote. Each pipeline streams the whole test set with decoding on a producer thread overlapping the network
(``backend.ml.predict.predict_many`` for 2D, the same pattern for 3D), so seconds/series is throughput. Before each
pipeline the test files are evicted from the page cache (fsync + ``posix_fadvise(DONTNEED)``): reads are
"cold-ish" (the VM host may still cache the disk). torch runs with cores - 1 threads (1 on 2 cores: the decode
thread needs the other core; 2 network threads measured up to 2x slower here, idle OpenMP threads spin). With
``--repeats`` the table gives the median and the best wall time, and the process CPU time (all threads), which other
processes on a shared machine disturb much less than wall time.

Missing pieces are created on demand (times are printed):

- training set: ``generate_dataset(n_per_class=40, seed=1)`` (default compression);
- test set: ``generate_dataset(n_per_class=N, seed=7, compression=<uncompressed>)`` + JPEG 2000 copies;
- cpu model: ``ctphase train TRAIN --preset cpu --seed 1`` (measured 6.3 min on an idle 2-core machine, on the
  starter's 32-slice training phantoms);
- 3D baseline: ``python -m bench.baseline3d train`` (same conditions: 5 min to read the 160 volumes, 19 min for
  12 epochs).

Usage (from the repository root; tcmalloc is optional and only affects this process; Debian/Ubuntu package
``libtcmalloc-minimal4``)::

    LD_PRELOAD=/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
        .venv/bin/python -m bench.classifier --work /tmp/ctphase-bench [--cpu-model DIR] [--paper-model DIR]
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.ml.evaluate import confusion_matrix, scores_from_confusion
from backend.ml.phases import PHASES

REPO = Path(__file__).resolve().parents[1]
TCMALLOC = Path("/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- data -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestSet:
    name: str
    root: Path
    folders: tuple[Path, ...]
    labels: tuple[int, ...]
    uids: tuple[str, ...]
    n_slices: tuple[int, ...]


def ensure_dataset(root: Path, *, n_per_class: int, seed: int, compression: str | None) -> None:
    from backend.ml.phantom import generate_dataset

    if (root / "labels.csv").is_file():
        return
    started = time.perf_counter()
    kwargs: dict[str, Any] = {"n_per_class": n_per_class, "seed": seed}
    if compression is not None:
        kwargs["compression"] = compression
    records = generate_dataset(root, **kwargs)
    log(f"generated {len(records)} phantom series in {root} ({time.perf_counter() - started:.0f} s)")


def load_test_set(root: Path, name: str) -> TestSet:
    from backend.ml.phantom import read_labels

    records = read_labels(root / "labels.csv")
    return TestSet(
        name=name,
        root=root,
        folders=tuple(root / r.relative_dir for r in records),
        labels=tuple(PHASES.index(r.phase) for r in records),
        uids=tuple(r.series_instance_uid for r in records),
        n_slices=tuple(r.n_slices for r in records),
    )


def write_jpeg2000_copy(source: TestSet, target: Path) -> TestSet:
    """JPEG 2000 lossless copies of every file of ``source`` under ``target`` (same relative paths and UIDs)."""
    import shutil

    import pydicom
    from pydicom.uid import JPEG2000Lossless

    if not (target / "labels.csv").is_file():
        started = time.perf_counter()
        for path in sorted(p for p in source.root.rglob("*") if p.is_file() and p.name != "labels.csv"):
            out = target / path.relative_to(source.root)
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                ds = pydicom.dcmread(path)
                ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
                ds.save_as(out, enforce_file_format=True)
            except Exception as exc:  # a non-image file: copy as is
                log(f"  copy {path.name} unchanged ({type(exc).__name__}: {exc})")
                shutil.copy2(path, out)
        shutil.copy2(source.root / "labels.csv", target / "labels.csv")
        log(f"wrote JPEG 2000 copies in {target} ({time.perf_counter() - started:.0f} s)")
    return load_test_set(target, "JPEG 2000")


def evict(folders: Sequence[Path]) -> None:
    """Drop the files of ``folders`` from the page cache so that the next read goes to the disk."""
    for folder in folders:
        for path in folder.rglob("*"):
            if not path.is_file():
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# --- models ---------------------------------------------------------------------------------------------------


def ensure_cpu_model(model_dir: Path, train_dir: Path, *, seed: int) -> None:
    if (model_dir / "manifest.json").is_file():
        return
    started = time.perf_counter()
    command = [
        str(REPO / ".venv/bin/ctphase"),
        "train",
        str(train_dir),
        "--out",
        str(model_dir),
        "--preset",
        "cpu",
        "--seed",
        str(seed),
        "--threads",
        "2",
        "--device",
        "cpu",
        "--no-progress",
    ]
    log("training the cpu model: " + " ".join(command))
    subprocess.run(command, check=True)
    log(f"cpu model trained in {time.perf_counter() - started:.0f} s")


def ensure_untrained_paper_model(model_dir: Path) -> None:
    from backend.ml.network import PRESETS, build_manifest, create_network, save_model

    if (model_dir / "manifest.json").is_file():
        return
    preset = PRESETS["paper"]
    manifest = build_manifest(preset, fingerprint="untrained", metrics={"note": "untrained, timing only"})
    save_model(model_dir, network=create_network(preset), manifest=manifest)
    log(f"saved an untrained {preset.arch} @ {preset.image_size} (timing only) in {model_dir}")


def ensure_baseline3d(model_dir: Path, train_dir: Path, *, epochs: int) -> None:
    from bench.baseline3d import train_and_save

    if (model_dir / "baseline3d.safetensors").is_file():
        return
    started = time.perf_counter()
    train_and_save(train_dir, model_dir, epochs=epochs)
    log(f"3D baseline ready in {time.perf_counter() - started:.0f} s (loading + training)")


# --- pipelines ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    pipeline: str
    data: str
    macro_f1: float
    seconds_per_series: float  # wall clock, end to end, pipelined (throughput)
    slices_decoded_per_series: float
    n_errors: int
    trained: bool = True
    cpu_seconds_per_series: float = 0.0  # process CPU time (all threads): robust to other load on a shared machine
    min_seconds_per_series: float = 0.0  # fastest repeat (least disturbed by other processes)


def _macro_f1(true: Sequence[int], pred: Sequence[int]) -> float:
    return float(scores_from_confusion(confusion_matrix(np.asarray(true), np.asarray(pred)))["macro_f1"])


def run_2d(
    model: Any,
    data: TestSet,
    *,
    fraction: float,
    min_slices: int,
    name: str,
    trained: bool,
    second_look_below: float | None = None,
) -> Run:
    """One streamed 2D pipeline over ``data``; ``second_look_below`` None is the serving default (see predict)."""
    from backend.ml.predict import PredictOptions, predict_many

    evict(data.folders)
    options = PredictOptions(sample_fraction=fraction, min_slices=min_slices, second_look_below=second_look_below)
    started, cpu_started = time.perf_counter(), time.process_time()
    outcomes = list(predict_many(model, list(data.folders), options=options))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    pred = [PHASES.index(o.prediction.phase) if o.prediction else -1 for o in outcomes]
    decoded = [o.prediction.n_sampled if o.prediction else 0 for o in outcomes]
    errors = [o for o in outcomes if o.error]
    for outcome in errors[:3]:
        log(f"  {name}: {outcome.source}: {outcome.error}")
    return Run(
        name,
        data.name,
        _macro_f1(data.labels, pred),
        seconds / len(outcomes),
        float(np.mean(decoded)),
        len(errors),
        trained,
        cpu_seconds / len(outcomes),
        seconds / len(outcomes),
    )


def _prefetch(producer: Callable[[], Iterator[Any]], depth: int = 2) -> Iterator[Any]:
    """Run ``producer`` on a thread, yielding its items through a bounded queue (exceptions are re-raised)."""
    items: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)

    def work() -> None:
        try:
            for item in producer():
                items.put(("item", item))
            items.put(("end", None))
        except BaseException as exc:
            items.put(("error", exc))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while True:
        kind, value = items.get()
        if kind == "end":
            break
        if kind == "error":
            raise value
        yield value
    thread.join()


def run_3d(network: Any, data: TestSet) -> Run:
    from backend.ml.dicom import read_series
    from bench.baseline3d import load_volume, predict_volumes

    def volumes() -> Iterator[np.ndarray]:
        for folder in data.folders:
            yield load_volume(read_series(folder))

    evict(data.folders)
    started, cpu_started = time.perf_counter(), time.process_time()
    pred = [int(np.argmax(predict_volumes(network, volume[None])[0])) for volume in _prefetch(volumes)]
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return Run(
        "3D SE-CNN 32x128x128 (all slices)",
        data.name,
        _macro_f1(data.labels, pred),
        seconds / len(pred),
        float(np.mean(data.n_slices)),
        0,
        cpu_seconds_per_series=cpu_seconds / len(pred),
        min_seconds_per_series=seconds / len(pred),
    )


def run_all(args: argparse.Namespace, sets: Sequence[TestSet]) -> list[Run]:
    from backend.ml.network import load_model
    from bench.baseline3d import load_baseline

    cpu = load_model(args.cpu_model, device="cpu", threads=args.threads)
    paper = load_model(args.paper_model, device="cpu", threads=args.threads)
    paper_trained = paper.manifest.training_data_fingerprint != "untrained"
    network3d, _ = load_baseline(args.baseline3d)
    cpu_name = f"{cpu.manifest.arch} @ {cpu.manifest.image_size}"
    paper_name = f"{paper.manifest.arch} @ {paper.manifest.image_size}"
    runs: list[Run] = []
    for data in sets:
        for _ in range(args.repeats):
            runs.append(run_3d(network3d, data))
            runs.append(run_2d(cpu, data, fraction=0.3, min_slices=8, name=f"2D cpu {cpu_name}, R=30%", trained=True))
            single = f"2D cpu {cpu_name}, R=30%, no second look"
            runs.append(run_2d(cpu, data, fraction=0.3, min_slices=8, name=single, trained=True, second_look_below=0.0))
            runs.append(
                run_2d(cpu, data, fraction=1.0, min_slices=1, name=f"2D cpu {cpu_name}, all slices", trained=True)
            )
            runs.append(
                run_2d(
                    paper, data, fraction=0.3, min_slices=8, name=f"2D paper {paper_name}, R=30%", trained=paper_trained
                )
            )
            for run in runs[-5:]:
                log(
                    f"  {run.data:<12} {run.pipeline:<48} F1 {run.macro_f1:.3f}  {run.seconds_per_series:.3f} s/series"
                    f" ({run.cpu_seconds_per_series:.3f} CPU s/series)"
                )
    return runs


def _median_runs(runs: Sequence[Run]) -> list[Run]:
    """One row per (pipeline, data): median seconds over repeats (F1 is deterministic)."""
    grouped: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        grouped.setdefault((run.pipeline, run.data), []).append(run)
    out = []
    for group in grouped.values():
        first = group[0]
        out.append(
            Run(
                first.pipeline,
                first.data,
                first.macro_f1,
                statistics.median(r.seconds_per_series for r in group),
                first.slices_decoded_per_series,
                first.n_errors,
                first.trained,
                statistics.median(r.cpu_seconds_per_series for r in group),
                min(r.seconds_per_series for r in group),
            )
        )
    return out


def print_table(runs: Sequence[Run], *, header: str) -> None:
    print(header)
    print(
        "| data | pipeline | macro F1 | s/series (median) | x vs 3D | s/series (best) | x vs 3D | CPU s/series "
        "| x vs 3D | slices decoded/series | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = {r.data: r for r in runs if r.pipeline.startswith("3D")}
    for run in runs:
        f1 = f"{run.macro_f1:.3f}" if run.trained else f"({run.macro_f1:.3f}, untrained)"
        b = base.get(run.data)
        ratios = [
            b.seconds_per_series / run.seconds_per_series if b else float("nan"),
            b.min_seconds_per_series / run.min_seconds_per_series if b else float("nan"),
            b.cpu_seconds_per_series / run.cpu_seconds_per_series if b else float("nan"),
        ]
        print(
            f"| {run.data} | {run.pipeline} | {f1} | {run.seconds_per_series:.3f} | {ratios[0]:.2f} | "
            f"{run.min_seconds_per_series:.3f} | {ratios[1]:.2f} | {run.cpu_seconds_per_series:.3f} | "
            f"{ratios[2]:.2f} | {run.slices_decoded_per_series:.0f} | {run.n_errors} |"
        )


def verdict(runs: Sequence[Run]) -> str:
    uncompressed = {r.pipeline: r for r in runs if r.data == "uncompressed"}
    base = next(r for name, r in uncompressed.items() if name.startswith("3D"))
    serving = next(r for name, r in uncompressed.items() if name.startswith("2D cpu") and name.endswith("R=30%"))
    ratio = base.seconds_per_series / serving.seconds_per_series
    cpu_ratio = base.cpu_seconds_per_series / serving.cpu_seconds_per_series
    ok = ratio >= 2.0 and serving.macro_f1 >= base.macro_f1
    return (
        f"cpu serving default vs 3D baseline (uncompressed): {ratio:.2f}x faster end to end (median wall; "
        f"{cpu_ratio:.2f}x less CPU time), macro F1 "
        f"{serving.macro_f1:.3f} vs {base.macro_f1:.3f} -> {'PASS' if ok else 'FAIL'} "
        "(target: >= 2x faster at equal or better F1)"
    )


def _allocator(preload: str) -> str:
    """The allocator this process runs with: a preloaded library counts only if it exists (else ld.so ignored it)."""
    loaded = [entry for entry in preload.replace(":", " ").split() if Path(entry).is_file()]
    for name in ("tcmalloc", "jemalloc"):
        if any(name in entry for entry in loaded):
            return name
    return "glibc malloc"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.classifier", description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctphase-bench"), help="where missing data/models go")
    parser.add_argument("--train-data", type=Path, default=None, help="phantom training set (default WORK/train)")
    parser.add_argument("--test-data", type=Path, default=None, help="uncompressed test set (default WORK/test)")
    parser.add_argument("--n-test-per-class", type=int, default=10, help="test series per phase when generated")
    parser.add_argument("--cpu-model", type=Path, default=None, help="cpu preset model (default WORK/model-cpu)")
    parser.add_argument("--paper-model", type=Path, default=None, help="paper preset model (default: untrained)")
    parser.add_argument("--baseline3d", type=Path, default=None, help="3D baseline dir (default WORK/baseline3d)")
    parser.add_argument("--epochs-3d", type=int, default=12)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="torch threads")
    parser.add_argument("--repeats", type=int, default=1, help="timing repeats per pipeline (median reported)")
    parser.add_argument("--no-jpeg2000", action="store_true", help="skip the JPEG 2000 copies")
    parser.add_argument(
        "--mixed-data",
        type=Path,
        default=None,
        help="optional extra labelled phantom set (e.g. 40 per class, mixed compression) run through every pipeline: "
        "more series for the F1 comparison",
    )
    args = parser.parse_args(argv)
    args.train_data = args.train_data or args.work / "train"
    args.test_data = args.test_data or args.work / "test"
    args.cpu_model = args.cpu_model or args.work / "model-cpu"
    args.paper_model = args.paper_model or args.work / "model-paper-untrained"
    args.baseline3d = args.baseline3d or args.work / "baseline3d"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    ensure_dataset(args.train_data, n_per_class=40, seed=1, compression=None)
    ensure_dataset(args.test_data, n_per_class=args.n_test_per_class, seed=7, compression="none")
    ensure_cpu_model(args.cpu_model, args.train_data, seed=1)
    ensure_untrained_paper_model(args.paper_model)
    ensure_baseline3d(args.baseline3d, args.train_data, epochs=args.epochs_3d)
    sets = [load_test_set(args.test_data, "uncompressed")]
    if not args.no_jpeg2000:
        sets.append(write_jpeg2000_copy(sets[0], args.work / "test-jpeg2000"))
    if args.mixed_data is not None:
        sets.append(load_test_set(args.mixed_data, "mixed"))
    slices = np.asarray(sets[0].n_slices)
    allocator = _allocator(os.environ.get("LD_PRELOAD", ""))
    header = (
        f"\n{len(slices)} test series ({slices.min()}-{slices.max()} slices, mean {slices.mean():.0f}); "
        f"torch {torch.__version__}, {args.threads} threads, {allocator}; seconds are end to end "
        "(read_series + decode + preprocess + network + vote), pipelined, page cache evicted\n"
    )
    runs = _median_runs(run_all(args, sets))
    print_table(runs, header=header)
    print()
    print(verdict(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
