"""Tasks -> series -> sampled slices -> network -> votes -> one prediction per task, with its review score.

:class:`InferenceService` is what ``POST /predict`` calls (in a worker thread: everything here blocks). For a batch of
tasks it reads the serving version once (the project's champion, else the default project's; a cheap query per
request, so promotions apply at once), resolves and reads every task's series (errors stay with their task), then
streams the readable series through :func:`backend.ml.predict.predict_many` so decoding overlaps the network.

Scores are review priorities (:func:`backend.ml.priority.review_priority`): low = review first. With no champion
(cold start) the answer comes from the DICOM metadata prior (:mod:`backend.ml.prior`), labelled
``metadata-prior-v1``, with score ``0.3 x prior confidence`` (at most 0.3, so every such task gets reviewed).
A task whose series cannot be resolved or read gets no phase, score 0 and the serving version; its error is logged
by kind without paths or patient identifiers, and stored in ``prediction_log``.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy.orm import Session, sessionmaker

from backend.config import Settings
from backend.errors import ChampionUnavailableError, CtphaseError
from backend.metrics import ServiceMetrics
from backend.ml.phases import Phase
from backend.ml.prior import PRIOR_VERSION, MetadataPrior, metadata_prior
from backend.ml.priority import review_priority
from backend.ml.voting import FALLBACK_VOTING
from backend.registry import ModelCache, resolve_champion
from backend.resolve import SeriesResolver, ref_digest, series_ref
from backend.tables import ModelVersion, PredictionLog

if TYPE_CHECKING:
    from backend.ml.dicom import SeriesInfo
    from backend.ml.network import LoadedModel
    from backend.ml.predict import SeriesOutcome

logger = logging.getLogger(__name__)

COLD_START_MAX_SCORE: Final[float] = 0.3
"""Highest score a metadata-prior prediction can get (low scores are reviewed first)."""


@dataclass(frozen=True)
class TaskOutcome:
    """The answer for one task.

    Attributes:
        task_id: Label Studio task id (None when the request had none).
        phase: predicted phase, or None (error, or a prior with no opinion).
        score: Label Studio score in [0, 1]; low = review first; 0 on error.
        model_version: public version label that answered (``ctphase-7-v3`` or ``metadata-prior-v1``).
        model_version_id: registry id of that version (None for the prior).
        probabilities: float [4] normalised mean probabilities in phase order (None without a network answer).
        components: review-priority parts or prior evidence (stored in ``prediction_log.components``).
        series_instance_uid: the series read, when it could be read.
        n_slices: slices in the series. n_sampled: slices that voted.
        latency_ms: wall time for this task (resolution + reading + network), ms.
        error: ``"<kind>: <message>"`` without paths, or None.
        error_kind: the error kind (metrics label), or None.
    """

    task_id: int | None
    phase: Phase | None
    score: float
    model_version: str
    model_version_id: int | None
    probabilities: tuple[float, ...] | None = None
    components: dict[str, Any] | None = None
    series_instance_uid: str | None = None
    n_slices: int | None = None
    n_sampled: int | None = None
    latency_ms: float = 0.0
    error: str | None = None
    error_kind: str | None = None


@dataclass(frozen=True)
class _Ready:
    index: int
    task_id: int | None
    series: SeriesInfo
    prior: MetadataPrior
    started: float
    prepare_s: float


@dataclass(frozen=True)
class _Serving:
    version: ModelVersion | None
    label: str
    model: LoadedModel | None = field(default=None, repr=False)


def _snake(name: str) -> str:
    name = re.sub(r"Error$", "", name) or name
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def describe_error(exc: BaseException) -> tuple[str, str]:
    """Return ``(kind, message)`` of a per-task error, safe to log (no paths, no patient identifiers).

    DICOM errors give their ``reason`` (without the path), resolution errors their own message (written without
    the reference); anything else only its type.
    """
    from backend.ml.dicom import DicomReadError

    if isinstance(exc, DicomReadError):
        return f"dicom_{_snake(type(exc).__name__)}", exc.reason
    if isinstance(exc, CtphaseError):
        return exc.kind, str(exc)
    return _snake(type(exc).__name__), f"unexpected {type(exc).__name__} while reading the series"


class InferenceService:
    """Predicts tasks for ``/predict`` (thread-safe; one per app).

    Args:
        settings: sampling, voting, series key, default project.
        sessions: database session factory (champion lookup, prediction log).
        cache: loaded networks by version id.
        resolver: series reference resolution.
        metrics: the app's metrics.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: sessionmaker[Session],
        cache: ModelCache,
        resolver: SeriesResolver,
        metrics: ServiceMetrics,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._cache = cache
        self._resolver = resolver
        self._metrics = metrics

    def serving_label(self, *, project: str) -> str:
        """The version label that would answer ``project`` now (the champion's, else the prior's)."""
        with self._sessions() as session:
            version = resolve_champion(session, project=project, default_project=self._settings.default_project)
        return version.label if version is not None else PRIOR_VERSION

    def predict(self, tasks: Sequence[Mapping[str, Any]], *, project: str, record: bool = True) -> list[TaskOutcome]:
        """Predict every task, in order (one outcome per task, whatever fails).

        Args:
            tasks: Label Studio tasks (``{"id": ..., "data": {...}}``).
            project: registry project (Label Studio project id).
            record: write the ``prediction_log`` rows before returning; ``/predict`` passes False and calls
                :meth:`record` after the response is sent, so the database write adds no latency.

        Raises:
            ChampionUnavailableError: the champion's artifact cannot be loaded.
        """
        serving = self._serving(project)
        outcomes: list[TaskOutcome | None] = [None] * len(tasks)
        with tempfile.TemporaryDirectory(prefix="ctphase-predict-") as tmp:
            ready: list[_Ready] = []
            for index, task in enumerate(tasks):
                prepared = self._prepare(index, task, serving=serving, workdir=Path(tmp) / str(index))
                if isinstance(prepared, TaskOutcome):
                    outcomes[index] = prepared
                else:
                    ready.append(prepared)
            if serving.model is not None and serving.version is not None:
                for item, outcome in zip(ready, self._run_network(serving.model, ready), strict=True):
                    outcomes[item.index] = self._from_network(item, outcome, serving)
            else:
                for item in ready:
                    outcomes[item.index] = self._from_prior(item)
        final = [o for o in outcomes if o is not None]
        if len(final) != len(tasks):
            raise RuntimeError(f"{len(final)} outcomes for {len(tasks)} tasks")
        if record:
            self.record(final, project=project)
        return final

    # --- steps -------------------------------------------------------------------------------------------------

    def _serving(self, project: str) -> _Serving:
        with self._sessions() as session:
            version = resolve_champion(session, project=project, default_project=self._settings.default_project)
        if version is None:
            return _Serving(version=None, label=PRIOR_VERSION)
        from backend.ml.network import ModelArtifactError

        try:
            model = self._cache.get(version)
        except (ModelArtifactError, OSError) as exc:
            self._metrics.errors.labels(kind=ChampionUnavailableError.kind).inc()
            raise ChampionUnavailableError(
                f"champion {version.label} cannot be loaded ({exc}); promote or roll back to another version "
                "(ctphase models promote|rollback, or POST /admin/promote|rollback)"
            ) from exc
        return _Serving(version=version, label=version.label, model=model)

    def _prepare(
        self, index: int, task: Mapping[str, Any], *, serving: _Serving, workdir: Path
    ) -> _Ready | TaskOutcome:
        from backend.ml.dicom import read_series

        started = time.perf_counter()
        task_id = _task_id(task)
        data = task.get("data")
        ref = ""
        try:
            ref = series_ref(data if isinstance(data, Mapping) else {}, key=self._settings.series_data_key)
            workdir.mkdir(parents=True)
            resolved = self._resolver.resolve(ref, workdir=workdir)
            series = read_series(resolved.path)
        except Exception as exc:  # any failure to obtain the series belongs to this task only
            return self._failed(task_id, exc, serving=serving, ref=ref, started=started)
        self._metrics.series_read.labels(outcome="ok").inc()
        logger.debug("task %s: series %s, %d slices", task_id, series.series_instance_uid, series.n_slices)
        prior = metadata_prior(series.metadata)
        return _Ready(index, task_id, series, prior, started, time.perf_counter() - started)

    def _failed(
        self,
        task_id: int | None,
        exc: BaseException,
        *,
        serving: _Serving,
        ref: str,
        started: float,
        while_reading: bool = True,
    ) -> TaskOutcome:
        kind, message = describe_error(exc)
        if while_reading:
            self._metrics.series_read.labels(outcome="error").inc()
        self._metrics.errors.labels(kind=kind).inc()
        self._metrics.predictions.labels(source="error").inc()
        logger.warning(
            "task %s: no prediction (%s): %s",
            task_id,
            kind,
            message,
            extra={"task_id": task_id, "error_kind": kind, "series_ref_digest": ref_digest(ref) if ref else None},
        )
        return TaskOutcome(
            task_id=task_id,
            phase=None,
            score=0.0,
            model_version=serving.label,
            model_version_id=serving.version.id if serving.version is not None else None,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            error=f"{kind}: {message}",
            error_kind=kind,
        )

    def _run_network(self, model: LoadedModel, ready: list[_Ready]) -> list[SeriesOutcome]:
        from backend.ml.predict import PredictOptions, predict_many

        if not ready:
            return []
        method = self._settings.voting
        if method == "head" and model.manifest.series_head is None:
            logger.warning(
                "CTPHASE_VOTING=head but model %s has no series head; voting %s",
                model.manifest.weights_sha256[:12],
                FALLBACK_VOTING,
            )
            method = FALLBACK_VOTING
        options = PredictOptions(
            sample_fraction=self._settings.sample_fraction,
            min_slices=self._settings.min_slices,
            method=method,
            second_look_below=self._settings.second_look_below,
            second_look_fraction=self._settings.second_look_fraction,
        )
        return list(predict_many(model, [item.series for item in ready], options=options))

    def _from_network(self, item: _Ready, outcome: SeriesOutcome, serving: _Serving) -> TaskOutcome:
        prediction = outcome.prediction
        if prediction is None:
            exc = outcome.exception or RuntimeError(outcome.error or "no prediction")
            failed = self._failed(item.task_id, exc, serving=serving, ref="", started=item.started, while_reading=False)
            return replace(failed, series_instance_uid=item.series.series_instance_uid)
        vote = prediction.vote
        priority = review_priority(
            phase=vote.phase,
            vote_fractions=vote.vote_fractions,
            probabilities=vote.mean_probabilities,
            prior_phase=item.prior.phase,
            prior_confidence=item.prior.confidence,
        )
        components: dict[str, Any] = {
            **priority.as_components(),
            "confidence": round(vote.confidence, 6),
            "voting": vote.method,
            "second_look": prediction.second_look,
            "prior_confidence": item.prior.confidence,
            "prior_evidence": list(item.prior.evidence),
        }
        self._metrics.slices_decoded.inc(prediction.n_sampled)
        self._metrics.predictions.labels(source="model").inc()
        seconds = item.prepare_s + prediction.seconds
        self._metrics.series_seconds.observe(seconds)
        return TaskOutcome(
            task_id=item.task_id,
            phase=vote.phase,
            score=min(1.0, max(0.0, priority.score)),
            model_version=serving.label,
            model_version_id=serving.version.id if serving.version is not None else None,
            probabilities=tuple(round(float(p), 6) for p in vote.mean_probabilities),
            components=components,
            series_instance_uid=prediction.series_instance_uid,
            n_slices=prediction.n_slices,
            n_sampled=prediction.n_sampled,
            latency_ms=seconds * 1000.0,
        )

    def _from_prior(self, item: _Ready) -> TaskOutcome:
        prior = item.prior
        self._metrics.predictions.labels(source="prior").inc()
        seconds = time.perf_counter() - item.started
        self._metrics.series_seconds.observe(seconds)
        return TaskOutcome(
            task_id=item.task_id,
            phase=prior.phase,
            score=round(COLD_START_MAX_SCORE * prior.confidence, 4),
            model_version=PRIOR_VERSION,
            model_version_id=None,
            components={
                "prior_phase": prior.phase,
                "prior_confidence": prior.confidence,
                "prior_evidence": list(prior.evidence),
            },
            series_instance_uid=item.series.series_instance_uid,
            n_slices=item.series.n_slices,
            n_sampled=0,
            latency_ms=seconds * 1000.0,
        )

    def record(self, outcomes: Sequence[TaskOutcome], *, project: str) -> None:
        """Write one ``prediction_log`` row per outcome (a failure is logged and counted, never raised)."""
        if not outcomes:
            return
        self._metrics.served(project=project, model_version=outcomes[0].model_version)
        rows = [
            PredictionLog(
                project=project,
                task_id=o.task_id,
                series_instance_uid=o.series_instance_uid,
                model_version_id=o.model_version_id,
                model_version=o.model_version,
                phase=o.phase,
                score=o.score,
                probabilities=list(o.probabilities) if o.probabilities is not None else None,
                components=o.components,
                n_slices=o.n_slices,
                n_sampled=o.n_sampled,
                latency_ms=round(o.latency_ms, 3),
                error=o.error,
            )
            for o in outcomes
        ]
        try:
            with self._sessions.begin() as session:
                session.add_all(rows)
        except Exception:  # the answer matters more than its log row
            self._metrics.errors.labels(kind="prediction_log").inc()
            logger.exception("could not write %d prediction_log rows", len(rows))


def _task_id(task: Mapping[str, Any]) -> int | None:
    value = task.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
