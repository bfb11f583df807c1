"""The training slice cache: each labelled series' slices decoded, windowed and resized once, stored as uint8.

Training reads every slice many times (one pass per epoch); decoding DICOM each time would dominate on CPU. So each
series contributes up to ``k`` slices, *spread along z* (one random slice in each of ``k`` equal strata of the
series): the network must recognise the phase from any slice the inference sampler may pick, chest and pelvis
included, so the cache is not biased towards the mid-abdomen. The choice of slices is a pure function of the series
uid, so the cache is reusable across runs.

Each series is one ``.npy`` file (uint8 [k, c, S, S], the [0, 1] window values times 255) named by a key over the
series uid, its slice count, the chosen slice indices and the preprocessing; files are written atomically (temp file
+ rename) and opened as read-only memory maps, so a shared cache folder (e.g. beside a model store) is safe to reuse
and to delete at any time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from backend.ml.dicom import DicomReadError, SeriesInfo, load_slices
from backend.ml.phases import Phase, phase_index

log = logging.getLogger(__name__)

CACHE_VERSION: Final[int] = 1
"""Bump when the cache file layout or the meaning of the stored values changes."""


class CacheBuildCancelledError(Exception):
    """``should_stop()`` returned True while the cache was being built."""


@dataclass(frozen=True)
class LabeledSeries:
    """A series and its phase label; the study id comes from ``series.study_instance_uid``."""

    series: SeriesInfo
    phase: Phase


@dataclass(frozen=True)
class CachedSeries:
    """The cached slices of one labelled series.

    Attributes:
        series_instance_uid: SeriesInstanceUID.
        study_instance_uid: StudyInstanceUID (the unit of the train/validation split).
        label: phase index in ``PHASES`` order.
        slice_indices: int64 [k], which slices of the sorted series are cached (ascending).
        images: uint8 [k, c, S, S], window values in [0, 1] times 255 (a read-only memory map).
    """

    series_instance_uid: str
    study_instance_uid: str
    label: int
    slice_indices: NDArray[np.int64]
    images: NDArray[np.uint8]

    @property
    def n_cached(self) -> int:
        """Number of cached slices ``k``."""
        return int(self.images.shape[0])


def spread_indices(n_slices: int, k: int, *, series_uid: str) -> NDArray[np.int64]:
    """Up to ``k`` slice indices spread over the whole series: one random index in each of ``k`` equal strata.

    Args:
        n_slices: slices in the series.
        k: budget; all slices are returned when ``n_slices <= k``.
        series_uid: seeds the choice (same uid -> same indices, in every process).

    Returns:
        int64 [min(k, n_slices)], ascending, unique.

    Raises:
        ValueError: ``k`` < 1 or ``n_slices`` < 0.
    """
    if k < 1:
        raise ValueError(f"slice budget k must be >= 1, got {k}")
    if n_slices < 0:
        raise ValueError(f"n_slices must be >= 0, got {n_slices}")
    if n_slices <= k:
        return np.arange(n_slices, dtype=np.int64)
    digest = hashlib.sha256(f"cache:{series_uid}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:16], "little"))
    edges = np.linspace(0, n_slices, k + 1)
    low = np.floor(edges[:-1]).astype(np.int64)
    high = np.maximum(np.floor(edges[1:]).astype(np.int64), low + 1)
    return np.asarray(rng.integers(low, high), dtype=np.int64)


def cache_key(
    series: SeriesInfo,
    indices: NDArray[np.int64],
    *,
    windows: Sequence[tuple[float, float]],
    size: int,
    crop_body: bool = False,
    resize_first: bool = False,
) -> str:
    """Hex key naming a series' cache file: uid, slice count, first/last file, indices and preprocessing."""
    parts: dict[str, Any] = {
        "version": CACHE_VERSION,
        "uid": series.series_instance_uid,
        "n": series.n_slices,
        "first": str(series.slices[0].path) if series.slices else "",
        "last": str(series.slices[-1].path) if series.slices else "",
        "indices": [int(i) for i in indices],
        "windows": [[float(c), float(w)] for c, w in windows],
        "size": int(size),
    }
    if crop_body:  # absent when False, so caches written before the crop existed stay valid
        parts["crop"] = "body"
    if resize_first:  # likewise
        parts["order"] = "resize, then window"
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _to_uint8(images: NDArray[np.float32]) -> NDArray[np.uint8]:
    return np.asarray(np.clip(np.rint(images * 255.0), 0, 255), dtype=np.uint8)


def _write_atomic(path: Path, array: NDArray[np.uint8]) -> None:
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, array, allow_pickle=False)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cache_series(
    example: LabeledSeries,
    *,
    cache_dir: Path,
    windows: Sequence[tuple[float, float]],
    image_size: int,
    k: int,
    crop_body: bool = False,
    resize_first: bool = False,
) -> CachedSeries:
    """Decode (once) and return the cached slices of one series.

    Args:
        example: the labelled series.
        cache_dir: folder of cache files (created if missing).
        windows: (centre, width) HU windows, one channel each.
        image_size: output size in pixels.
        k: slice budget (see :func:`spread_indices`).
        crop_body: crop slices to the body (see :func:`backend.ml.dicom.to_network_input`).
        resize_first: resize in HU, then window (see :func:`backend.ml.dicom.to_network_input`).

    Raises:
        DicomReadError: the series cannot be decoded.
        ValueError: the series has no slices.
    """
    series = example.series
    if series.n_slices == 0:
        raise ValueError(f"series {series.series_instance_uid} has no slices")
    indices = spread_indices(series.n_slices, k, series_uid=series.series_instance_uid)
    key = cache_key(series, indices, windows=windows, size=image_size, crop_body=crop_body, resize_first=resize_first)
    path = cache_dir / f"{key}.npy"
    if not path.is_file():
        images = load_slices(
            series,
            indices.tolist(),
            windows=windows,
            image_size=image_size,
            crop_body=crop_body,
            resize_first=resize_first,
        )
        cache_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, _to_uint8(images))
    stored: NDArray[np.uint8] = np.load(path, mmap_mode="r", allow_pickle=False)
    expected = (len(indices), len(windows), image_size, image_size)
    if stored.dtype != np.uint8 or stored.shape != expected:
        path.unlink(missing_ok=True)
        raise ValueError(f"{path}: cache file has {stored.dtype} {stored.shape}, expected uint8 {expected}; removed")
    return CachedSeries(
        series_instance_uid=series.series_instance_uid,
        study_instance_uid=series.study_instance_uid,
        label=phase_index(example.phase),
        slice_indices=indices,
        images=stored,
    )


@dataclass(frozen=True)
class SliceCache:
    """The cached series of a training run, and the series that could not be decoded.

    Attributes:
        series: cached series, in the order of the examples given (failed ones left out).
        failed: (series uid, reason) of series whose decoding failed.
    """

    series: tuple[CachedSeries, ...]
    failed: tuple[tuple[str, str], ...]


def build_cache(
    examples: Sequence[LabeledSeries],
    *,
    cache_dir: Path,
    windows: Sequence[tuple[float, float]],
    image_size: int,
    k: int,
    crop_body: bool = False,
    resize_first: bool = False,
    workers: int = 2,
    should_stop: Callable[[], bool] | None = None,
    on_series_done: Callable[[], None] | None = None,
) -> SliceCache:
    """Cache every example's slices, decoding missing ones in a small thread pool.

    A series that fails to decode (:class:`~backend.ml.dicom.DicomReadError`) is logged and listed in ``failed``;
    training goes on without it.

    Args:
        examples: labelled series.
        cache_dir: folder of cache files.
        windows: (centre, width) HU windows.
        image_size: pixels.
        k: slices per series.
        crop_body: crop slices to the body.
        resize_first: resize in HU, then window.
        workers: decoding threads (>= 1).
        should_stop: polled between series; True -> :class:`CacheBuildCancelledError`.
        on_series_done: called after each series (progress bars).

    Raises:
        CacheBuildCancelledError: ``should_stop()`` returned True.
    """
    results: dict[int, CachedSeries] = {}
    failed: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="slice-cache") as pool:
        pending: dict[Future[CachedSeries], int] = {
            pool.submit(
                cache_series,
                ex,
                cache_dir=cache_dir,
                windows=windows,
                image_size=image_size,
                k=k,
                crop_body=crop_body,
                resize_first=resize_first,
            ): i
            for i, ex in enumerate(examples)
        }
        try:
            while pending:
                done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                if should_stop is not None and should_stop():
                    raise CacheBuildCancelledError("stopped while building the slice cache")
                for future in done:
                    index = pending.pop(future)
                    _collect(future, examples[index], index, results, failed)
                    if on_series_done is not None:
                        on_series_done()
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return SliceCache(series=tuple(results[i] for i in sorted(results)), failed=tuple(failed))


def _collect(
    future: Future[CachedSeries],
    example: LabeledSeries,
    index: int,
    results: dict[int, CachedSeries],
    failed: list[tuple[str, str]],
) -> None:
    uid = example.series.series_instance_uid
    try:
        results[index] = future.result()
    except (DicomReadError, ValueError, OSError) as exc:
        log.warning("skipping series %s: cannot decode it for training: %s", uid, exc)
        failed.append((uid, str(exc)))
