"""Which slices of a series to read: a random R% sample, seeded by the series so it is reproducible.

The paper (Dao et al. 2022) classifies a random R = 30% of a series' slices and takes a majority vote. Choosing the
sample *before* decoding is what makes the method cheap: only the sampled slices are ever decompressed.

The sample is a pure function of ``(n_slices, series_uid, fraction, min_slices, repeat)``: the generator is seeded
from the SHA-256 of the SeriesInstanceUID (never Python's salted ``hash()``), so a series gets the same slices in
every process, on every machine, on every run. Samples are *nested*: one random permutation of the slices is drawn
per series and the first ``k`` entries are kept, so the 10% sample of a series is a subset of its 30% sample. That
makes the F1-versus-R curve of the evaluation smooth (raising R only adds slices).

Nesting also makes a *second look* cheap and consistent: a series whose vote on the R% sample is unsure (confidence
below :data:`DEFAULT_SECOND_LOOK_BELOW`) is voted again on the wider sample of :data:`DEFAULT_SECOND_LOOK_FRACTION`
(``backend.ml.predict``), which holds every slice already read, so only the new slices are decoded.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from numpy.typing import NDArray

DEFAULT_FRACTION = 0.3
"""The paper's R: the share of a series' slices that is read and classified."""

DEFAULT_MIN_SLICES = 8
"""Lower bound on the sample size so that short series (a few thick slices) still get a meaningful vote."""

DEFAULT_SECOND_LOOK_BELOW = 0.7
"""A series decided by a series head with a confidence below this is voted again on a wider sample.

The head's confidence is a probability fitted on held-out series, so one threshold means the same for every model;
the vote-share confidences of the other rules are not (most series of a 4-class slice vote fall below 0.7), so
they get no second look unless one is asked for. Measured with the starter network through ``ctphase predict`` on
5 x 160 phantom series of 30-64 slices (seeds 111 / 101 / 71 / 91 / 61): series macro F1 0.950 / 0.963 / 0.937 /
0.956 / 0.956 -> 0.969 / 0.975 / 0.956 / 0.956 / 0.962, with 2-6 % of the series looked at again and 5-13 % more
slices read. Simulated over 10 random samples per seed from every slice's probabilities: 0.958 on average without,
0.964 with 0.7, 0.966 with 0.8 (twice the extra slices), 0.963 with 0.6."""

DEFAULT_SECOND_LOOK_FRACTION = 1.0
"""Share of the slices that vote in a second look: all of them (a wider 60 % sample gained half as much)."""


def series_rng(series_uid: str, *, repeat: int = 0) -> np.random.Generator:
    """Return a numpy generator seeded from the SHA-256 of ``series_uid`` (and ``repeat``).

    Args:
        series_uid: the SeriesInstanceUID (any non-empty string).
        repeat: 0 for the canonical sample used at inference; other values give independent samples of the same
            series (the evaluation averages the F1-versus-R curve over several repeats).

    Raises:
        ValueError: empty uid or negative repeat.
    """
    if not series_uid:
        raise ValueError("series_uid must be a non-empty string (the SeriesInstanceUID seeds the sample)")
    if repeat < 0:
        raise ValueError(f"repeat must be >= 0, got {repeat}")
    key = series_uid if repeat == 0 else f"{series_uid}#{repeat}"
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def sample_size(n_slices: int, *, fraction: float = DEFAULT_FRACTION, min_slices: int = DEFAULT_MIN_SLICES) -> int:
    """Number of slices to read: ``ceil(fraction * n)``, raised to ``min_slices``, capped at ``n``.

    Raises:
        ValueError: negative ``n_slices``, ``fraction`` outside (0, 1], or ``min_slices`` < 1.
    """
    if n_slices < 0:
        raise ValueError(f"n_slices must be >= 0, got {n_slices}")
    if not (0.0 < fraction <= 1.0) or math.isnan(fraction):
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if min_slices < 1:
        raise ValueError(f"min_slices must be >= 1, got {min_slices}")
    # The small epsilon keeps 0.3 * 10 from becoming 4 through floating-point error (3.0000000000000004).
    wanted = max(min_slices, math.ceil(fraction * n_slices - 1e-9))
    return min(n_slices, wanted)


def sample_indices(
    n_slices: int,
    *,
    series_uid: str,
    fraction: float = DEFAULT_FRACTION,
    min_slices: int = DEFAULT_MIN_SLICES,
    repeat: int = 0,
) -> NDArray[np.int64]:
    """Pick the slices of a series to decode.

    Args:
        n_slices: number of slices in the (geometrically sorted) series.
        series_uid: SeriesInstanceUID; seeds the sample (same uid -> same slices).
        fraction: share of slices to read, in (0, 1]; 1.0 reads every slice.
        min_slices: read at least this many slices (or all of them when the series is shorter).
        repeat: 0 for the canonical sample; > 0 for independent extra samples (evaluation only).

    Returns:
        int64 [k] sorted, unique slice positions in ``[0, n_slices)``, with ``k = sample_size(...)``.

    Raises:
        ValueError: invalid arguments (see :func:`sample_size` and :func:`series_rng`).
    """
    k = sample_size(n_slices, fraction=fraction, min_slices=min_slices)
    if k == n_slices:
        # Still validate the uid so a bad call fails the same way whatever the series length.
        series_rng(series_uid, repeat=repeat)
        return np.arange(n_slices, dtype=np.int64)
    order = series_rng(series_uid, repeat=repeat).permutation(n_slices)
    return np.sort(order[:k]).astype(np.int64, copy=False)
