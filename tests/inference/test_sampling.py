"""Slice sampling: deterministic per SeriesInstanceUID, bounded, nested."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from backend.ml.sampling import sample_indices, sample_size

UID = "1.2.826.0.1.3680043.8.498.12345"


def test_same_uid_same_sample():
    first = sample_indices(200, series_uid=UID)
    second = sample_indices(200, series_uid=UID)
    np.testing.assert_array_equal(first, second)
    assert first.dtype == np.int64
    assert np.all(np.diff(first) > 0), "sorted and unique"


def test_sample_is_stable_across_processes():
    """Python's hash() is salted per process; the sample must not be."""
    code = f"from backend.ml.sampling import sample_indices; print(sample_indices(97, series_uid={UID!r}).tolist())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(sample_indices(97, series_uid=UID).tolist())


def test_different_uids_differ():
    samples = {tuple(sample_indices(300, series_uid=f"{UID}.{i}").tolist()) for i in range(20)}
    assert len(samples) == 20


def test_repeats_differ_and_repeat_zero_is_canonical():
    canonical = sample_indices(300, series_uid=UID)
    np.testing.assert_array_equal(canonical, sample_indices(300, series_uid=UID, repeat=0))
    assert not np.array_equal(canonical, sample_indices(300, series_uid=UID, repeat=1))


@pytest.mark.parametrize(
    ("n", "fraction", "min_slices", "expected"),
    [
        (100, 0.3, 8, 30),
        (10, 0.3, 1, 3),  # no floating-point round-up to 4
        (101, 0.3, 1, 31),  # ceil
        (20, 0.3, 8, 8),  # minimum applies
        (5, 0.3, 8, 5),  # never more than n
        (50, 1.0, 8, 50),
        (1, 0.01, 1, 1),
        (0, 0.3, 8, 0),
    ],
)
def test_fraction_minimum_and_bounds(n, fraction, min_slices, expected):
    assert sample_size(n, fraction=fraction, min_slices=min_slices) == expected
    indices = sample_indices(n, series_uid=UID, fraction=fraction, min_slices=min_slices)
    assert indices.shape == (expected,)
    assert indices.size == 0 or (indices.min() >= 0 and indices.max() < n)
    assert len(set(indices.tolist())) == expected


def test_samples_are_nested():
    small = set(sample_indices(400, series_uid=UID, fraction=0.1, min_slices=1).tolist())
    large = set(sample_indices(400, series_uid=UID, fraction=0.3, min_slices=1).tolist())
    assert small < large


def test_sample_spreads_over_the_series():
    indices = sample_indices(1000, series_uid=UID, fraction=0.3)
    counts = np.bincount(indices // 100, minlength=10)
    assert counts.min() > 15, f"random sample should cover every tenth of the series, got {counts.tolist()}"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_slices": -1, "series_uid": UID}, "n_slices"),
        ({"n_slices": 10, "series_uid": UID, "fraction": 0.0}, "fraction"),
        ({"n_slices": 10, "series_uid": UID, "fraction": 1.5}, "fraction"),
        ({"n_slices": 10, "series_uid": UID, "min_slices": 0}, "min_slices"),
        ({"n_slices": 10, "series_uid": ""}, "series_uid"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_indices(**kwargs)
