"""Series -> sampled slices -> network -> vote, for one series or a stream of many.

The data path is built around where the time goes on CPU (see the performance notes): header discovery is a
head-read done by :mod:`backend.ml.dicom`; only the sampled slices are decoded; preprocessing runs in chunks of
``chunk_size`` slices; and a producer thread decodes the next chunk (or the next series) while the network runs on
the current one, through a bounded queue, so decoding hides behind inference instead of preceding it.

Errors are per series: a :class:`~backend.ml.dicom.DicomReadError` (or any other failure while *reading* one
series) becomes that series' :class:`SeriesOutcome` error; the stream goes on with the next series. Failures of the
network itself are not data errors and propagate.

For evaluation, ``classify_all=True`` runs the network on every slice but still votes only on the canonical sample:
the per-slice probabilities of the whole series are kept in :attr:`SeriesPrediction.slice_probabilities`, so the
F1-versus-R curve can later be derived by sub-sampling them with :func:`~backend.ml.sampling.sample_indices` at each
R, without running the network again.

A **second look**: a series whose vote's confidence is below ``second_look_below`` (by default only a series decided
by its model's series head, below :data:`~backend.ml.sampling.DEFAULT_SECOND_LOOK_BELOW`; see
:func:`second_look_threshold`) is voted again on a wider nested sample (``second_look_fraction`` of its slices, all
by default). The wider sample holds the first one, so only the new slices are decoded (none with ``classify_all``,
which keeps evaluation runs and plain runs in agreement); a helper thread decodes the next chunk of them while the
network runs on the current one. If a new slice cannot be read, the series keeps its first vote (logged); a network
failure propagates as before.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from backend.ml.phases import N_PHASES, PHASES, Phase
from backend.ml.sampling import (
    DEFAULT_FRACTION,
    DEFAULT_MIN_SLICES,
    DEFAULT_SECOND_LOOK_BELOW,
    DEFAULT_SECOND_LOOK_FRACTION,
    sample_indices,
)
from backend.ml.voting import DEFAULT_VOTING, SeriesVote, VotingChoice, VotingMethod, resolve_voting, vote

if TYPE_CHECKING:
    from backend.ml.dicom import SeriesInfo
    from backend.ml.network import LoadedModel
    from backend.ml.series_head import SeriesHead

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 16
"""Slices decoded and preprocessed together (small chunks are much faster than one big array on these CPUs)."""

DEFAULT_QUEUE_DEPTH = 4
"""Decoded chunks the producer may run ahead of the network (bounds memory: 4 x 16 x 224 x 224 float32 = 13 MB)."""


def _empty_indices() -> NDArray[Any]:
    return np.zeros(0, dtype=np.int64)


def _empty_probs() -> NDArray[Any]:
    return np.zeros((0, N_PHASES), dtype=np.float32)


def _empty_mask() -> NDArray[Any]:
    return np.zeros(0, dtype=bool)


@dataclass(frozen=True)
class SeriesPrediction:
    """The prediction for one series.

    Attributes:
        series_instance_uid: SeriesInstanceUID.
        study_instance_uid: StudyInstanceUID.
        vote: the series decision (see :mod:`backend.ml.voting`).
        n_slices: slices in the series.
        n_sampled: slices that voted (the R% sample, or the wider sample of a second look).
        seconds: wall time from the start of reading this series to its vote (in a stream, reading overlaps with
            the previous series' inference, so these do not add up to the total).
        slice_indices: int64 [k], positions (in the sorted series) of the slices the network classified.
        slice_probabilities: float32 [k, 4], the network's sigmoid probabilities for those slices.
        voted: bool [k], which of those slices are in the sample that voted (all True unless ``classify_all``).
        second_look: the first vote was unsure and the series was voted again on a wider sample.
    """

    series_instance_uid: str
    study_instance_uid: str
    vote: SeriesVote
    n_slices: int
    n_sampled: int
    seconds: float
    slice_indices: NDArray[Any] = field(default_factory=_empty_indices, compare=False, repr=False)
    slice_probabilities: NDArray[Any] = field(default_factory=_empty_probs, compare=False, repr=False)
    voted: NDArray[Any] = field(default_factory=_empty_mask, compare=False, repr=False)
    second_look: bool = False

    @property
    def phase(self) -> Phase:
        """The predicted phase."""
        return self.vote.phase

    @property
    def confidence(self) -> float:
        """The vote's confidence in [0, 1] (see :class:`~backend.ml.voting.SeriesVote`)."""
        return self.vote.confidence


@dataclass(frozen=True)
class SeriesOutcome:
    """One series of a stream: a prediction or the reason there is none.

    Attributes:
        source: what was asked for: the series folder/file path, or the SeriesInstanceUID of a given SeriesInfo.
        series_instance_uid: the uid, or "" when the series could not even be read.
        study_instance_uid: the study uid, or "".
        n_slices: slices in the series (0 when unknown).
        prediction: the prediction, None on error.
        error: ``"<ExceptionType>: <message>"`` on error, else None.
        exception: the original exception on error (for callers that map types to responses).
    """

    source: str
    series_instance_uid: str
    study_instance_uid: str
    n_slices: int
    prediction: SeriesPrediction | None
    error: str | None = None
    exception: Exception | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class PredictOptions:
    """How to sample, vote and batch (shared by :func:`predict_series` and :func:`predict_many`).

    Attributes:
        sample_fraction: R, the share of slices that vote, in (0, 1].
        min_slices: at least this many slices vote (all of them when the series is shorter).
        method: ``"auto"`` (the model's series head where it has one, else ``"weighted"``), ``"majority"``
            (paper), ``"mean"``, ``"weighted"`` or ``"head"`` (see :mod:`backend.ml.voting`).
        chunk_size: slices decoded, preprocessed and sent to the network together.
        classify_all: run the network on every slice (evaluation); the vote still uses only the sample.
        queue_depth: decoded chunks the producer thread may hold ahead of the network.
        advise_kernel: before decoding a series, tell the kernel (``posix_fadvise(WILLNEED)``) which files will be
            read, so that cold files are fetched in parallel by asynchronous readahead instead of one at a time.
        second_look_below: vote again on a wider sample when the first vote's confidence is below this; None:
            :data:`~backend.ml.sampling.DEFAULT_SECOND_LOOK_BELOW` for series decided by a series head, no second
            look for the vote-share rules (see :func:`second_look_threshold`); 0 disables it.
        second_look_fraction: share of the slices that vote in a second look, in (0, 1].
    """

    sample_fraction: float = DEFAULT_FRACTION
    min_slices: int = DEFAULT_MIN_SLICES
    method: VotingChoice = DEFAULT_VOTING
    chunk_size: int = DEFAULT_CHUNK_SIZE
    classify_all: bool = False
    queue_depth: int = DEFAULT_QUEUE_DEPTH
    advise_kernel: bool = True
    second_look_below: float | None = None
    second_look_fraction: float = DEFAULT_SECOND_LOOK_FRACTION

    def __post_init__(self) -> None:
        if not (0.0 < self.sample_fraction <= 1.0):
            raise ValueError(f"sample_fraction must be in (0, 1], got {self.sample_fraction}")
        if self.min_slices < 1:
            raise ValueError(f"min_slices must be >= 1, got {self.min_slices}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.queue_depth < 1:
            raise ValueError(f"queue_depth must be >= 1, got {self.queue_depth}")
        if self.second_look_below is not None and not (0.0 <= self.second_look_below <= 1.0):
            raise ValueError(f"second_look_below must be in [0, 1], got {self.second_look_below}")
        if not (0.0 < self.second_look_fraction <= 1.0):
            raise ValueError(f"second_look_fraction must be in (0, 1], got {self.second_look_fraction}")


def second_look_threshold(below: float | None, *, rule: VotingMethod) -> float:
    """The confidence under which a series decided by ``rule`` gets a second look (0: never).

    Args:
        below: an explicit threshold (any rule), or None for the default: :data:`DEFAULT_SECOND_LOOK_BELOW` when
            the series head decides, 0 for ``weighted``, ``majority`` and ``mean``, whose confidences are vote
            shares that a 4-class slice vote rarely takes above 0.7.
        rule: the voting rule that decides (after ``auto`` is resolved).
    """
    if below is not None:
        return below
    return DEFAULT_SECOND_LOOK_BELOW if rule == "head" else 0.0


# --- messages from the producer thread to the consumer -------------------------------------------------------


@dataclass(frozen=True)
class _SeriesStart:
    key: int
    source: str
    series: SeriesInfo
    classified: NDArray[Any]  # int64 [k] slices the network will see
    voted: NDArray[Any]  # bool [k]
    started: float


@dataclass(frozen=True)
class _Chunk:
    key: int
    images: NDArray[Any]  # float32 [m, c, S, S] in [0, 1]


@dataclass(frozen=True)
class _SeriesEnd:
    key: int


@dataclass(frozen=True)
class _SeriesFailed:
    key: int
    source: str
    series: SeriesInfo | None
    exception: Exception


@dataclass(frozen=True)
class _StreamFailed:
    exception: BaseException


_Message = _SeriesStart | _Chunk | _SeriesEnd | _SeriesFailed | _StreamFailed | None


class _StoppedError(Exception):
    """The consumer went away; the producer thread ends quietly."""


def _plan(series: SeriesInfo, options: PredictOptions) -> tuple[NDArray[Any], NDArray[Any]]:
    """Return (slices to classify int64 [k], bool [k] mask of those that vote)."""
    sample = sample_indices(
        series.n_slices,
        series_uid=series.series_instance_uid,
        fraction=options.sample_fraction,
        min_slices=options.min_slices,
    )
    if not options.classify_all:
        return sample, np.ones(sample.shape[0], dtype=bool)
    classified = np.arange(series.n_slices, dtype=np.int64)
    voted = np.zeros(series.n_slices, dtype=bool)
    voted[sample] = True
    return classified, voted


def advise_willneed(paths: Iterable[Path]) -> None:
    """Ask the kernel to start reading these files now (asynchronous readahead); best effort, never raises.

    A sampled series reads scattered files; on a cold page cache, reading them one after the other waits for
    each in turn. The hint lets the disk serve them concurrently while the first ones are being decoded.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:  # not available on this platform (e.g. macOS, Windows)
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # the read itself will report the problem for this series
        try:
            advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


class _Decoder:
    """Decodes, windows and resizes chunks of slices into network input, reusing its buffers (one per thread)."""

    def __init__(
        self,
        *,
        windows: Sequence[tuple[float, float]],
        image_size: int,
        crop_body: bool,
        resize_first: bool,
        chunk_size: int,
    ) -> None:
        self._windows = tuple((float(c), float(w)) for c, w in windows)
        self._image_size = image_size
        self._crop_body = crop_body
        self._resize_first = resize_first
        self._chunk_size = chunk_size
        self._buffer_cache: tuple[NDArray[np.float32], NDArray[np.float32] | None] | None = None

    @classmethod
    def for_model(cls, model: LoadedModel, *, chunk_size: int) -> _Decoder:
        """A decoder producing ``model``'s input (its manifest's windows and size, its crop and resize order)."""
        return cls(
            windows=[(float(c), float(w)) for c, w in model.manifest.windows],
            image_size=int(model.manifest.image_size),
            crop_body=model.crop_body,
            resize_first=model.resize_first,
            chunk_size=chunk_size,
        )

    def _buffers(self, series: SeriesInfo) -> tuple[NDArray[np.float32], NDArray[np.float32] | None]:
        """HU and windowed float32 buffers [chunk, rows, cols] / [chunk, c, rows, cols], reused across chunks.

        No windowed buffer when the model resizes before windowing (it windows the small image).
        """
        shape = (self._chunk_size, series.rows, series.columns)
        if self._buffer_cache is None or self._buffer_cache[0].shape != shape:
            windowed = None if self._resize_first else np.empty((shape[0], len(self._windows), *shape[1:]), np.float32)
            self._buffer_cache = (np.empty(shape, dtype=np.float32), windowed)
        return self._buffer_cache

    def load(self, series: SeriesInfo, indices: list[int]) -> NDArray[np.float32]:
        """Decode, window and resize at most ``chunk_size`` slices: float32 [m, c, S, S] in [0, 1] (a fresh array)."""
        from backend.ml.dicom import read_hu, to_network_input

        hu_buffer, window_buffer = self._buffers(series)
        m = len(indices)
        hu = read_hu(series, indices, out=hu_buffer[:m])
        return to_network_input(
            hu,
            windows=self._windows,
            image_size=self._image_size,
            crop_body=self._crop_body,
            resize_first=self._resize_first,
            window_buffer=None if window_buffer is None else window_buffer[:m],
        )


class _Producer:
    """Reads series and decodes their chunks on a background thread, feeding a bounded queue."""

    def __init__(self, sources: Iterable[SeriesInfo | Path], *, options: PredictOptions, decoder: _Decoder) -> None:
        self._sources = sources
        self._options = options
        self._decoder = decoder
        self.queue: queue.Queue[_Message] = queue.Queue(maxsize=options.queue_depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ctphase-decode", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end and wait for it (it checks between puts and between chunks)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self.queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)

    def _put(self, message: _Message) -> None:
        while True:
            if self._stop.is_set():
                raise _StoppedError
            try:
                self.queue.put(message, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            for key, source in enumerate(self._sources):
                self._one(key, source)
            self._put(None)
        except _StoppedError:
            return
        except BaseException as exc:  # the source iterator itself failed: end the stream with its error
            try:
                self._put(_StreamFailed(exc))
            except _StoppedError:
                return

    def _one(self, key: int, source: SeriesInfo | Path) -> None:
        from backend.ml.dicom import read_series

        started = time.perf_counter()
        label = str(source) if isinstance(source, Path) else source.series_instance_uid
        series: SeriesInfo | None = None
        try:
            series = read_series(source) if isinstance(source, Path) else source
            if series.n_slices == 0:
                raise ValueError(f"series {series.series_instance_uid} has no slices to classify")
            classified, voted = _plan(series, self._options)
            if self._options.advise_kernel:
                advise_willneed(dict.fromkeys(series.slices[i].path for i in classified.tolist()))
            self._put(_SeriesStart(key, label, series, classified, voted, started))
            step = self._options.chunk_size
            for begin in range(0, classified.shape[0], step):
                chunk = classified[begin : begin + step].tolist()
                images = self._decoder.load(series, chunk)
                self._put(_Chunk(key, images))
            self._put(_SeriesEnd(key))
        except _StoppedError:
            raise
        except Exception as exc:  # a reading/decoding failure belongs to this series only
            logger.debug("series %s failed: %s: %s", label, type(exc).__name__, exc)
            self._put(_SeriesFailed(key, label, series, exc))


def _outcome_error(failed: _SeriesFailed) -> SeriesOutcome:
    series = failed.series
    return SeriesOutcome(
        source=failed.source,
        series_instance_uid=series.series_instance_uid if series is not None else "",
        study_instance_uid=series.study_instance_uid if series is not None else "",
        n_slices=series.n_slices if series is not None else 0,
        prediction=None,
        error=f"{type(failed.exception).__name__}: {failed.exception}",
        exception=failed.exception,
    )


@dataclass(frozen=True)
class _Read:
    """The slices of one series that the network has classified so far."""

    classified: NDArray[Any]  # int64 [k], sorted slice positions
    probabilities: NDArray[Any]  # float32 [k, 4]
    voted: NDArray[Any]  # bool [k], the slices that vote


class _SecondLook:
    """Widens the read of unsure series on the consuming thread.

    The next chunk of new slices is decoded on a helper thread while the network runs on the current one (meanwhile
    the producer is usually blocked on its full queue, so its core is free).
    """

    def __init__(self, model: LoadedModel, options: PredictOptions) -> None:
        self._model = model
        self._options = options
        self._decoder = _Decoder.for_model(model, chunk_size=options.chunk_size)
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        """Stop the helper thread (after its current chunk)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def widen(self, series: SeriesInfo, read: _Read) -> _Read | None:
        """``read`` widened to the second-look sample, decoding only the slices not yet classified.

        Returns:
            The widened read, or None when the wider sample adds no slice or one of its new slices cannot be read
            (the series then keeps its first vote; the failure is logged without identifiers).
        """
        options = self._options
        wider = sample_indices(
            series.n_slices,
            series_uid=series.series_instance_uid,
            fraction=max(options.second_look_fraction, options.sample_fraction),
            min_slices=options.min_slices,
        )
        if wider.shape[0] <= int(read.voted.sum()):
            return None
        new = np.setdiff1d(wider, read.classified, assume_unique=True)
        chunks = [new[b : b + options.chunk_size].tolist() for b in range(0, new.shape[0], options.chunk_size)]
        rows = [read.probabilities]
        if chunks:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctphase-second-look")
            pending = self._pool.submit(self._decoder.load, series, chunks[0])
            for following in [*chunks[1:], None]:
                try:
                    images = pending.result()
                except Exception as exc:  # a reading failure of the new slices: the first vote stands
                    logger.warning("second look abandoned, the first vote stands: %s", type(exc).__name__)
                    return None
                if following is not None:  # the decoder's buffers are free again: its output is a fresh array
                    pending = self._pool.submit(self._decoder.load, series, following)
                rows.append(np.asarray(self._model.predict_proba(images), dtype=np.float32))
        classified = np.concatenate([read.classified, new])
        order = np.argsort(classified, kind="stable")
        return _Read(
            classified=classified[order],
            probabilities=np.concatenate(rows, axis=0)[order],
            voted=np.isin(classified[order], wider),
        )


def _finish(
    start: _SeriesStart,
    probs: list[NDArray[Any]],
    *,
    head: SeriesHead | None,
    second: _SecondLook,
    options: PredictOptions,
) -> SeriesOutcome:
    series = start.series
    slice_probs = np.concatenate(probs, axis=0) if probs else _empty_probs()
    if slice_probs.shape[0] != start.classified.shape[0]:
        raise RuntimeError(
            f"series {series.series_instance_uid}: the network returned {slice_probs.shape[0]} rows for "
            f"{start.classified.shape[0]} slices"
        )
    read = _Read(
        classified=start.classified, probabilities=slice_probs.astype(np.float32, copy=False), voted=start.voted
    )
    series_vote = vote(read.probabilities[read.voted], method=options.method, head=head)
    wider = None
    if series_vote.confidence < second_look_threshold(options.second_look_below, rule=series_vote.method):
        wider = second.widen(series, read)
    if wider is not None:
        read = wider
        series_vote = vote(read.probabilities[read.voted], method=options.method, head=head)
    prediction = SeriesPrediction(
        series_instance_uid=series.series_instance_uid,
        study_instance_uid=series.study_instance_uid,
        vote=series_vote,
        n_slices=series.n_slices,
        n_sampled=int(read.voted.sum()),
        seconds=time.perf_counter() - start.started,
        slice_indices=read.classified,
        slice_probabilities=read.probabilities,
        voted=read.voted,
        second_look=wider is not None,
    )
    return SeriesOutcome(
        source=start.source,
        series_instance_uid=series.series_instance_uid,
        study_instance_uid=series.study_instance_uid,
        n_slices=series.n_slices,
        prediction=prediction,
    )


def predict_many(
    model: LoadedModel,
    sources: Iterable[SeriesInfo | Path],
    *,
    options: PredictOptions | None = None,
) -> Iterator[SeriesOutcome]:
    """Predict a stream of series, decoding ahead on a background thread while the network runs.

    Args:
        model: the loaded network; its manifest gives the windows and the input size.
        sources: already-discovered series (:class:`~backend.ml.dicom.SeriesInfo`) or paths that each hold exactly
            one series (read with :func:`~backend.ml.dicom.read_series` on the producer thread, so header reading
            overlaps with inference too). Consumed lazily.
        options: sampling, voting and batching options.

    Yields:
        One :class:`SeriesOutcome` per source, in order. A series that cannot be read or decoded yields an outcome
        with ``error`` set; the stream continues.

    Raises:
        ValueError: ``options.method`` is ``head`` and the model has no series head (before any series is read).
        Exception: whatever the network raises, or an exception raised by the ``sources`` iterator itself.
    """
    options = options or PredictOptions()
    resolve_voting(options.method, model.manifest.series_head)
    producer = _Producer(sources, options=options, decoder=_Decoder.for_model(model, chunk_size=options.chunk_size))
    second = _SecondLook(model, options)
    producer.start()
    current: _SeriesStart | None = None
    probs: list[NDArray[Any]] = []
    try:
        while True:
            message = producer.queue.get()
            if message is None:
                return
            if isinstance(message, _StreamFailed):
                raise message.exception
            if isinstance(message, _SeriesStart):
                current, probs = message, []
            elif isinstance(message, _Chunk):
                probs.append(np.asarray(model.predict_proba(message.images), dtype=np.float32))
            elif isinstance(message, _SeriesEnd):
                if current is None or current.key != message.key:
                    raise RuntimeError("decode stream out of order: series end without its start")
                yield _finish(current, probs, head=model.manifest.series_head, second=second, options=options)
                current, probs = None, []
            else:
                current, probs = None, []
                yield _outcome_error(message)
    finally:
        producer.stop()
        second.close()


def predict_series(
    model: LoadedModel,
    series: SeriesInfo,
    *,
    sample_fraction: float = DEFAULT_FRACTION,
    min_slices: int = DEFAULT_MIN_SLICES,
    method: VotingChoice = DEFAULT_VOTING,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    classify_all: bool = False,
    second_look_below: float | None = None,
    second_look_fraction: float = DEFAULT_SECOND_LOOK_FRACTION,
) -> SeriesPrediction:
    """Predict the phase of one series: sample -> decode in chunks -> network -> vote.

    Decoding of the next chunk overlaps with the network on the current one.

    Args:
        model: the loaded network.
        series: the discovered series (headers only; pixels are decoded here, only for the sampled slices).
        sample_fraction: R, in (0, 1].
        min_slices: at least this many slices vote.
        method: see :class:`PredictOptions`.
        chunk_size: slices per decode/network chunk.
        classify_all: also classify the slices that do not vote (evaluation: keeps every slice's probabilities).
        second_look_below: see :class:`PredictOptions`.
        second_look_fraction: see :class:`PredictOptions`.

    Returns:
        The :class:`SeriesPrediction`.

    Raises:
        backend.ml.dicom.DicomReadError: the sampled slices cannot be decoded (the original exception is re-raised).
        ValueError: invalid options.
    """
    options = PredictOptions(
        sample_fraction=sample_fraction,
        min_slices=min_slices,
        method=method,
        chunk_size=chunk_size,
        classify_all=classify_all,
        second_look_below=second_look_below,
        second_look_fraction=second_look_fraction,
    )
    for outcome in predict_many(model, [series], options=options):
        if outcome.exception is not None:
            raise outcome.exception
        if outcome.prediction is not None:
            return outcome.prediction
    raise RuntimeError(f"series {series.series_instance_uid}: the prediction stream ended without a result")


# --- CSV rows (the ``ctphase predict`` output format, read back by backend.ml.evaluate) ---------------------

PREDICTION_CSV_COLUMNS: tuple[str, ...] = (
    "series_instance_uid",
    "study_instance_uid",
    "phase",
    "confidence",
    "n_slices",
    "n_sampled",
    "second_look",
    *(f"p_{phase}" for phase in PHASES),
    "voting",
    "model_sha256",
    "error",
)
"""Columns of ``preds.csv``. ``n_sampled`` counts the slices that voted; ``second_look`` is 1 when the first vote was
unsure and the series was voted again on a wider sample (``n_sampled`` is then that sample's size). ``p_*`` are
the normalised mean probabilities (whatever the voting method); ``voting`` is the rule that decided the phase
(``head``, ``weighted``, ``majority`` or ``mean``); ``model_sha256`` is the sha256 of the model's weights (which
model wrote the row)."""

SLICE_CSV_COLUMNS: tuple[str, ...] = (
    "series_instance_uid",
    "slice_index",
    "n_slices",
    "voted",
    *(f"p_{phase}" for phase in PHASES),
)
"""Columns of ``slices.csv``: one row per classified slice; ``voted`` is 1 for the slices that voted (the R% sample,
or the wider sample of a second look)."""


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def prediction_row(outcome: SeriesOutcome, *, model_sha256: str = "") -> dict[str, str]:
    """One ``preds.csv`` row (all values as strings; empty phase and probabilities on error)."""
    row = dict.fromkeys(PREDICTION_CSV_COLUMNS, "")
    row["model_sha256"] = model_sha256
    row["series_instance_uid"] = outcome.series_instance_uid or outcome.source
    row["study_instance_uid"] = outcome.study_instance_uid
    row["n_slices"] = str(outcome.n_slices)
    prediction = outcome.prediction
    if prediction is None:
        row["n_sampled"] = "0"
        row["error"] = outcome.error or "no prediction"
        return row
    row["phase"] = prediction.phase
    row["confidence"] = _fmt(prediction.confidence)
    row["n_sampled"] = str(prediction.n_sampled)
    row["second_look"] = "1" if prediction.second_look else "0"
    row["voting"] = prediction.vote.method
    for phase, p in zip(PHASES, prediction.vote.mean_probabilities, strict=True):
        row[f"p_{phase}"] = _fmt(p)
    return row


def slice_rows(prediction: SeriesPrediction) -> Iterator[dict[str, str]]:
    """The ``slices.csv`` rows of one prediction, in slice order."""
    for position, index in enumerate(prediction.slice_indices.tolist()):
        row = {
            "series_instance_uid": prediction.series_instance_uid,
            "slice_index": str(index),
            "n_slices": str(prediction.n_slices),
            "voted": "1" if bool(prediction.voted[position]) else "0",
        }
        for column, phase in enumerate(PHASES):
            row[f"p_{phase}"] = _fmt(float(prediction.slice_probabilities[position, column]))
        yield row
