"""Reader benchmark: where the time goes when a 300-slice CT series is discovered, sampled and decoded.

Prints, measured in one run on one warm series (best of ``--repeat`` interleaved runs each):
  (a) reading the raw bytes of every file (the I/O floor),
  (b) discovery + geometric sort from headers (``read_series``),
  (c) decoding a 30 % sample to HU (``read_hu`` on 90 indices),
  (d) decoding every slice to HU,
and the ratios (b+c)/a and d/(b+c). Acceptance: (b+c) <= ~40 % of d, i.e. d/(b+c) >= 2.5.
For reference it also times a full pydicom header parse of every file (what discovery avoids).

The series comes from ``backend.ml.phantom.write_phantom_series`` when that module is available, else it is
synthesised here (512x512 int16 slices written with pydicom). Usage::

    .venv/bin/python bench/reader.py [--slices 300] [--repeat 7] [--runs 2] [--transfer-syntax jpegls] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from backend.ml.dicom import read_hu, read_series


def write_series(out: Path, n_slices: int, *, transfer_syntax: str) -> str:
    """Write a venous-phase series of ``n_slices`` slices into ``out``; returns a one-line description."""
    try:
        from backend.ml.phantom import write_phantom_series
    except ImportError:
        if transfer_syntax != "explicit_little":
            raise SystemExit("compressed series need backend.ml.phantom") from None
        return _synthesise(out, n_slices)
    record = write_phantom_series(out, phase="venous", seed=0, n_slices=n_slices, transfer_syntax=transfer_syntax)
    return f"phantom series ({record.transfer_syntax}, {record.slice_thickness_mm} mm)"


def _synthesise(out: Path, n_slices: int) -> str:
    """Fallback when the phantom module is missing: 512x512 int16 slices, explicit VR little endian."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-256:256, -256:256]
    body = (yy / 200.0) ** 2 + (xx / 240.0) ** 2 < 1.0
    series_uid, study_uid = generate_uid(), generate_uid()
    order = rng.permutation(n_slices)  # file names unrelated to the slice order
    for i in range(n_slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SeriesDescription = "bench venous"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-250.0, -250.0, -1.25 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness, ds.PixelSpacing = 1.25, [0.98, 0.98]
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        hu = np.where(body, rng.normal(60.0, 20.0, body.shape), -1000.0)
        ds.PixelData = (hu + 1024.0).astype("<i2").tobytes()
        ds.save_as(out / f"IM{order[i]:05d}", enforce_file_format=True)
    return "synthesised series (explicit VR little endian; backend.ml.phantom not available)"


def _read_all(files: list[Path]) -> None:
    for path in files:
        with path.open("rb") as handle:
            handle.read()


def _pydicom_headers(files: list[Path]) -> None:
    import pydicom

    for path in files:
        pydicom.dcmread(path, stop_before_pixels=True)


def run(folder: Path, *, repeat: int) -> dict[str, float]:
    """Time the steps on the series in ``folder``; returns the best seconds per step.

    The steps are interleaved (a, b, c, d, a, b, ...) so that a burst of load on a shared machine hits every step
    alike instead of one step's repeats.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".csv")
    series = read_series(folder)
    n = series.n_slices
    sample = np.sort(np.random.default_rng(0).choice(n, size=round(0.3 * n), replace=False)).tolist()
    _read_all(files)  # warm the page cache
    read_hu(series, sample)
    steps: dict[str, Callable[[], Any]] = {
        "a_raw_bytes": lambda: _read_all(files),
        "b_discover_sort": lambda: read_series(folder),
        "c_decode_sample": lambda: read_hu(series, sample),
        "d_decode_all": lambda: read_hu(series, range(n)),
        "pydicom_headers": lambda: _pydicom_headers(files),
    }
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(repeat):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - start)
    return {**best, "n_slices": float(n), "n_sample": float(len(sample))}


def report(t: dict[str, float]) -> None:
    a, b, c, d = t["a_raw_bytes"], t["b_discover_sort"], t["c_decode_sample"], t["d_decode_all"]
    n, k = int(t["n_slices"]), int(t["n_sample"])
    print(f"(a) raw bytes of all {n} files (I/O floor)      {a * 1e3:8.1f} ms")
    print(f"(b) discover + sort from headers              {b * 1e3:8.1f} ms  ({b / n * 1e6:.0f} us/file)")
    print(f"(c) decode the {k}-slice sample to HU           {c * 1e3:8.1f} ms")
    print(f"(d) decode all {n} slices to HU                {d * 1e3:8.1f} ms")
    print(f"    for reference: pydicom headers of all files {t['pydicom_headers'] * 1e3:6.1f} ms")
    print(f"(b+c)/(a) = {(b + c) / a:5.2f}    d/(b+c) = {d / (b + c):4.2f}    (b+c)/d = {(b + c) / d:5.1%}")
    verdict = "PASS" if d / (b + c) >= 2.5 else "FAIL"
    print(f"acceptance (b+c) <= 40% of d: {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=7, help="interleaved runs per step; the best is kept")
    parser.add_argument(
        "--transfer-syntax",
        default="explicit_little",
        help="phantom transfer syntax: explicit_little, implicit_little, jpeg2000, jpegls, jpeg_lossless, rle",
    )
    parser.add_argument("--runs", type=int, default=2, help="independent measurement rounds (noisy machines)")
    parser.add_argument("--keep", type=Path, help="write the series here (reused when it already has files)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ctphase-bench-") as tmp:
        folder = args.keep or Path(tmp) / "series"
        folder.mkdir(parents=True, exist_ok=True)
        if not any(folder.iterdir()):
            start = time.perf_counter()
            print(f"writing {write_series(folder, args.slices, transfer_syntax=args.transfer_syntax)} ...", flush=True)
            print(f"  written in {time.perf_counter() - start:.1f} s")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, series in {folder}")
        ratios = []
        for round_ in range(1, args.runs + 1):
            print(f"-- run {round_}")
            timings = run(folder, repeat=args.repeat)
            report(timings)
            b_c = timings["b_discover_sort"] + timings["c_decode_sample"]
            ratios.append(timings["d_decode_all"] / b_c)
        print(f"d/(b+c) over runs: {', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
