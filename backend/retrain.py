"""Run one training job: claim, dataset, fit, evaluate against the champion, register, maybe promote.

1. **Claim** atomically: ``UPDATE training_job SET status='running' ... WHERE id=:id AND status='queued'``. A second
   delivery of the same message (Celery late acks, a Redis visibility timeout, the maintenance re-enqueue) updates
   no row and returns at once.
2. **Heartbeat**: a thread stamps ``heartbeat_at`` every ``min(30 s, job_heartbeat_timeout_s / 4)`` and reads
   ``cancel_requested``; the training loop polls :meth:`_Heartbeat.should_stop` between batches. If the process is
   killed the stamps stop and :func:`backend.jobs.fail_stale_jobs` fails the job; if the sweep failed a job that is
   in fact alive (a frozen machine that woke up), the next stamp notices and the job stops itself.
3. **Dataset**: usable annotations of the project (a phase, not cancelled, not deleted; the latest annotation per
   task wins), each task's series resolved like ``/predict`` does and its header read -> ``LabeledSeries``.
4. **Held-out studies** by a stable hash of the StudyInstanceUID (a study is held out iff
   ``sha256(uid) / 2**48 < holdout_fraction``), so the rule does not change as labels accumulate and a champion
   trained by an earlier job never saw the studies it is now evaluated on. Tiny datasets fall back to the lowest
   hashes.
5. **Fit** with :func:`backend.ml.train.train_model` (class-weighted BCE), warm-started from the champion when
   ``Settings.train_warm_start`` and the architectures match; progress (epoch, loss, validation macro F1) goes to
   the job row. The artifact is written atomically into the job's scratch folder.
6. **Gate**: candidate and champion predict the *same* held-out series through the serving path (sampled slices +
   vote) and are compared on series-level macro F1. A series head is fitted on exactly these held-out series (they
   are the candidate's validation split, and a champion's split shares studies with them), so comparing through the
   heads would favour whichever model fitted them: with ``auto`` or ``head`` voting the gate votes ``weighted``
   for both and compares the networks. The candidate is promoted when it beats the champion by more
   than nothing and at least ``Settings.promotion_margin`` (with no champion at all it is promoted); with
   ``auto_promote=False`` it waits for an admin.
7. **Register + decide + finish** in one transaction that first locks the job row and requires it to still be
   ``running`` (a job the sweep failed registers nothing). After commit a promotion enqueues re-scoring of the
   project's unlabeled tasks, so the review queue and the project's ``model_version`` follow the new champion.

Whatever happens, the scratch folder is removed; the champion only changes in step 7.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import select, update

from backend.db import utcnow
from backend.errors import CtphaseError
from backend.jobs import JOB_DIR_NAME, get_job, job_work_dir, remove_work_dir, safe_enqueue, usable_label_filter
from backend.ml.phases import phase_index
from backend.ml.voting import FALLBACK_VOTING, VOTING_METHODS, VotingChoice, VotingMethod
from backend.registry import artifact_path, promote, register_version, resolve_champion
from backend.tables import Annotation, ModelVersion, TrainingJob

if TYPE_CHECKING:
    from backend.config import Settings
    from backend.loop import Loop
    from backend.ml.dataset import LabeledSeries
    from backend.ml.train import TrainProgress, TrainResult

logger = logging.getLogger(__name__)

MIN_SERIES: Final[int] = 4
"""Fewest labelled series a job trains on (the rest of the message says why)."""
HEARTBEAT_MAX_INTERVAL_S: Final[float] = 30.0


class DatasetError(CtphaseError):
    """The accumulated labels cannot make a training set (too few series or studies)."""

    kind = "dataset"


class JobLostError(CtphaseError):
    """The job is no longer ``running`` (the stale-job sweep failed it); its result is discarded."""

    kind = "job_lost"


@dataclass(frozen=True)
class Dataset:
    """Labelled series of a project, split by study.

    Attributes:
        train: series to fit on.
        holdout: series of the held-out studies (candidate and champion are compared on these).
        n_labels: usable annotations read.
        skipped: one line per label that could not be used (error kind, no paths).
    """

    train: tuple[LabeledSeries, ...]
    holdout: tuple[LabeledSeries, ...]
    n_labels: int
    skipped: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    """Outcome of the evaluation gate.

    Attributes:
        promote: promote the candidate now.
        text: human-readable decision with the numbers (stored in ``training_job.decision``).
        candidate_f1: held-out series macro F1 of the candidate.
        champion_f1: same for the champion (None without a usable champion).
    """

    promote: bool
    text: str
    candidate_f1: float
    champion_f1: float | None


# --- entry point ------------------------------------------------------------------------------------------------


def run_job(loop: Loop, job_id: int) -> str | None:
    """Run training job ``job_id`` to its end (see the module docstring).

    Never raises for a failure of the job itself: the row records it.

    Returns:
        The job's final status, or None when this call did not claim the job (already claimed or finished).
    """
    worker = f"{socket.gethostname()}:{os.getpid()}"
    if not claim_job(loop, job_id, worker=worker):
        status = _status(loop, job_id)
        logger.info("training job %d not claimed (status %s): duplicate delivery ignored", job_id, status)
        return None
    job = get_job(loop, job_id)
    logger.info("training job %d of project %s claimed by %s", job_id, job.project, worker)
    workdir = job_work_dir(loop.settings, job_id)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    heartbeat = _Heartbeat(loop, job_id)
    heartbeat.start()
    try:
        return _run_claimed(loop, job, workdir=workdir, heartbeat=heartbeat)
    finally:
        heartbeat.stop()
        remove_work_dir(loop.settings, job_id)


def claim_job(loop: Loop, job_id: int, *, worker: str) -> bool:
    """Atomically move a queued job to running; False when it is not queued (duplicate delivery, cancelled)."""
    now = utcnow()
    with loop.sessions() as session:
        result = session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.status == "queued")
            .values(
                status="running",
                started_at=now,
                heartbeat_at=now,
                worker=worker[:255],
                attempts=TrainingJob.attempts + 1,
                progress={"stage": "claimed"},
            )
        )
        session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _status(loop: Loop, job_id: int) -> str:
    with loop.sessions() as session:
        return session.scalar(select(TrainingJob.status).where(TrainingJob.id == job_id)) or "missing"


def _run_claimed(loop: Loop, job: TrainingJob, *, workdir: Path, heartbeat: _Heartbeat) -> str:
    from backend.ml.dataset import CacheBuildCancelledError
    from backend.ml.train import TrainingCancelled

    try:
        decision, text = _train_and_decide(loop, job, workdir=workdir, heartbeat=heartbeat)
    except (TrainingCancelled, CacheBuildCancelledError):
        if heartbeat.lost.is_set():
            logger.warning("training job %d stopped: it was marked failed while running", job.id)
            return "failed"
        if loop.stopping.is_set() and not heartbeat.cancelled.is_set():
            _finish(loop, job.id, status="failed", error="interrupted: the process shut down", decision=None)
            return "failed"
        _finish(loop, job.id, status="cancelled", error=None, decision="cancelled by request")
        return "cancelled"
    except JobLostError as error:
        logger.warning("training job %d: %s", job.id, error)
        return "failed"
    except Exception as error:
        logger.exception("training job %d failed", job.id)
        text = f"{type(error).__name__}: {error}"[:2000]
        _finish(loop, job.id, status="failed", error=text, decision="kept champion (job failed)")
        return "failed"
    logger.info("training job %d succeeded: %s", job.id, text)
    if decision.promote:
        safe_enqueue(lambda: loop.queue.enqueue_prelabel(job.project, None), f"re-scoring of project {job.project}")
    return "succeeded"


def _finish(loop: Loop, job_id: int, *, status: str, error: str | None, decision: str | None) -> None:
    now = utcnow()
    with loop.sessions() as session:
        session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.status == "running")
            .values(status=status, finished_at=now, heartbeat_at=now, error=error, decision=decision)
        )
        session.commit()


# --- the work ---------------------------------------------------------------------------------------------------


def _warm_start_source(loop: Loop, champion: ModelVersion | None, preset: str) -> Path | None:
    """The champion's artifact when the candidate can start from its weights, else ``None`` (train from scratch).

    A champion of the same preset name whose network or input differs (the preset's definition changed in an
    upgrade) is not an error: the job trains from random weights and logs why.
    """
    from backend.ml.network import get_preset, read_manifest, warm_start_problem

    if not loop.settings.train_warm_start or champion is None or champion.preset != preset:
        return None
    source = artifact_path(loop.settings.model_store, champion)
    problem = warm_start_problem(get_preset(preset), read_manifest(source))
    if problem is not None:
        logger.info("not warm-starting from champion %s: %s; training from random weights", champion.label, problem)
        return None
    return source


def _train_and_decide(loop: Loop, job: TrainingJob, *, workdir: Path, heartbeat: _Heartbeat) -> tuple[Decision, str]:
    from backend.ml.train import TrainConfig, train_model

    settings = loop.settings
    heartbeat.report_stage("dataset")
    dataset = build_dataset(loop, project=job.project, workdir=workdir / "series")
    champion = _champion(loop, job.project)
    preset = settings.train_preset or _default_preset()
    init_from = _warm_start_source(loop, champion, preset)
    config = TrainConfig(
        preset=preset,
        epochs=settings.train_epochs,
        seed=job.id,
        device=settings.device,
        threads=settings.torch_threads,
        cache_dir=settings.model_store / JOB_DIR_NAME / "slice-cache",
    )
    heartbeat.report_stage("training", n_train=len(dataset.train), n_holdout=len(dataset.holdout))
    result = train_model(
        dataset.train,
        out_dir=workdir / "candidate",
        config=config,
        progress=heartbeat.report_progress,
        should_stop=heartbeat.should_stop,
        init_from=init_from,
        val_examples=dataset.holdout,
    )
    heartbeat.report_stage("evaluating")
    decision = evaluate_gate(loop, result=result, champion=champion, holdout=dataset.holdout)
    heartbeat.report_stage("registering", candidate_f1=decision.candidate_f1, champion_f1=decision.champion_f1)
    parent_id = champion.id if champion is not None and init_from is not None else None
    _version_id, text = _register_and_finish(loop, job, result=result, decision=decision, parent_id=parent_id)
    return decision, text


def _default_preset() -> str:
    from backend.ml.network import default_preset_name

    return default_preset_name()


def _champion(loop: Loop, project: str) -> ModelVersion | None:
    with loop.sessions() as session:
        return resolve_champion(session, project=project, default_project=loop.settings.default_project)


def _register_and_finish(
    loop: Loop, job: TrainingJob, *, result: TrainResult, decision: Decision, parent_id: int | None
) -> tuple[int, str]:
    """Register the candidate, promote it if decided, and mark the job succeeded, in one transaction.

    Returns:
        The candidate's version id and the final decision text (with the candidate's label).

    Raises:
        JobLostError: the job is no longer running (nothing is registered).
    """
    settings = loop.settings
    with loop.sessions() as session:
        row = session.get(TrainingJob, job.id, with_for_update=True)
        if row is None or row.status != "running":
            raise JobLostError(f"job {job.id} is {row.status if row else 'gone'}; its candidate is discarded")
        version = register_version(
            session,
            project=job.project,
            model_dir=result.model_dir,
            store=settings.model_store,
            training_job_id=job.id,
            parent_version_id=parent_id,
        )
        text = decision.text.replace("{candidate}", version.label)
        if decision.promote:
            promote(session, project=job.project, version=version.version, actor=f"job:{job.id}", action="auto_promote")
        now = utcnow()
        row.status = "succeeded"
        row.finished_at = now
        row.heartbeat_at = now
        row.candidate_version_id = version.id
        row.decision = text
        row.progress = {**(row.progress or {}), "stage": "done"}
        try:
            session.commit()
        except Exception:
            shutil.rmtree(artifact_path(settings.model_store, version), ignore_errors=True)
            raise
        return version.id, text


# --- dataset ----------------------------------------------------------------------------------------------------


def build_dataset(loop: Loop, *, project: str, workdir: Path) -> Dataset:
    """Turn the project's usable labels into train and held-out series (see the module docstring).

    Args:
        loop: the loop.
        project: Label Studio project id.
        workdir: scratch folder for series that must be downloaded (Label Studio or http URLs).

    Raises:
        DatasetError: fewer than :data:`MIN_SERIES` usable series, or fewer than two studies.
    """
    from backend.ml.dataset import LabeledSeries
    from backend.ml.dicom import read_series
    from backend.resolve import SeriesResolver

    with loop.sessions() as session:
        stmt = select(Annotation).where(*usable_label_filter(project)).order_by(Annotation.ls_annotation_id)
        rows = list(session.scalars(stmt))
    latest: dict[int, Annotation] = {}
    for row in rows:
        kept = latest.get(row.task_id)
        if kept is None or _newer(row, kept):
            latest[row.task_id] = row
    by_series: dict[str, LabeledSeries] = {}
    skipped: list[str] = []
    resolver = SeriesResolver(settings=loop.settings)
    try:
        for task_id, row in sorted(latest.items()):
            try:
                folder = workdir / f"task-{task_id}"
                folder.mkdir(parents=True, exist_ok=True)
                series = read_series(resolver.resolve(row.series_ref, workdir=folder).path)
            except Exception as error:  # a bad series costs its label only
                skipped.append(f"task {task_id}: {_error_kind(error)}")
                continue
            by_series[series.series_instance_uid] = LabeledSeries(series=series, phase=row.phase)  # type: ignore[arg-type]
    finally:
        resolver.close()
    if skipped:
        logger.warning("project %s: %d labels unusable: %s", project, len(skipped), "; ".join(skipped[:10]))
    examples = list(by_series.values())
    if len(examples) < MIN_SERIES:
        raise DatasetError(
            f"project {project} has {len(examples)} usable labelled series ({len(rows)} labels, {len(skipped)} "
            f"unreadable); at least {MIN_SERIES} are needed to train"
        )
    train, holdout = holdout_split(examples, fraction=loop.settings.holdout_fraction)
    return Dataset(train=tuple(train), holdout=tuple(holdout), n_labels=len(rows), skipped=tuple(skipped))


def _newer(row: Annotation, other: Annotation) -> bool:
    if row.ls_updated_at is not None and other.ls_updated_at is not None:
        return (row.ls_updated_at, row.ls_annotation_id) > (other.ls_updated_at, other.ls_annotation_id)
    return row.ls_annotation_id > other.ls_annotation_id


def _error_kind(error: BaseException) -> str:
    from backend.inference import describe_error

    kind, message = describe_error(error)
    return f"{kind}: {message}"


def study_hash(study_uid: str) -> float:
    """A stable pseudo-random number in [0, 1) for a StudyInstanceUID (sha256, first 48 bits)."""
    return int(hashlib.sha256(study_uid.encode()).hexdigest()[:12], 16) / float(1 << 48)


def holdout_split(
    examples: Sequence[LabeledSeries], *, fraction: float
) -> tuple[list[LabeledSeries], list[LabeledSeries]]:
    """Split series by study with the stable hash rule (see the module docstring).

    Raises:
        DatasetError: fewer than two studies (one must be held out, one trained on).
    """
    studies = sorted({e.series.study_instance_uid for e in examples}, key=lambda s: (study_hash(s), s))
    if len(studies) < 2:
        raise DatasetError(
            f"labels cover {len(studies)} study; at least 2 are needed (held-out studies compare candidate and "
            "champion on series neither trained on)"
        )
    held = {s for s in studies if study_hash(s) < fraction}
    if not held or len(held) == len(studies):
        held = set(studies[: max(1, min(len(studies) - 1, round(fraction * len(studies))))])
    train = [e for e in examples if e.series.study_instance_uid not in held]
    holdout = [e for e in examples if e.series.study_instance_uid in held]
    return train, holdout


# --- evaluation gate --------------------------------------------------------------------------------------------


def gate_voting(choice: VotingChoice) -> VotingMethod:
    """The vote of the gate: the configured rule, except that heads (``auto``, ``head``) become ``weighted``."""
    if choice in ("auto", "head"):
        return FALLBACK_VOTING
    return next(method for method in VOTING_METHODS if method == choice)


def holdout_macro_f1(model_dir: Path, holdout: Sequence[LabeledSeries], *, settings: Settings) -> float:
    """Series-level macro F1 of a model on held-out series, through the serving path (sample + vote).

    Args:
        model_dir: artifact folder.
        holdout: labelled series.
        settings: sampling fraction, minimum slices, voting method, device.
    """
    import numpy as np

    from backend.ml.evaluate import confusion_matrix, scores_from_confusion
    from backend.ml.network import load_model
    from backend.ml.predict import PredictOptions, predict_many

    model = load_model(model_dir, device=settings.device)
    options = PredictOptions(
        sample_fraction=settings.sample_fraction,
        min_slices=settings.min_slices,
        method=gate_voting(settings.voting),
        second_look_below=settings.second_look_below,
        second_look_fraction=settings.second_look_fraction,
    )
    outcomes = list(predict_many(model, [e.series for e in holdout], options=options))
    truth = np.array([phase_index(e.phase) for e in holdout], dtype=np.int64)
    predicted = np.array(
        [phase_index(o.prediction.vote.phase) if o.prediction is not None else -1 for o in outcomes], dtype=np.int64
    )
    return float(scores_from_confusion(confusion_matrix(truth, predicted))["macro_f1"])


def evaluate_gate(
    loop: Loop, *, result: TrainResult, champion: ModelVersion | None, holdout: Sequence[LabeledSeries]
) -> Decision:
    """Compare the candidate with the champion on the same held-out series and decide (see the module docstring)."""
    from backend.ml.network import ModelArtifactError

    settings = loop.settings
    candidate_f1 = holdout_macro_f1(result.model_dir, holdout, settings=settings)
    studies = len({e.series.study_instance_uid for e in holdout})
    where = f"on {len(holdout)} held-out series from {studies} studies"
    champion_f1: float | None = None
    if champion is None:
        better, why = True, f"first model of the project: held-out macro F1 {candidate_f1:.3f} {where}"
    else:
        try:
            champion_f1 = holdout_macro_f1(artifact_path(settings.model_store, champion), holdout, settings=settings)
        except (ModelArtifactError, OSError) as error:
            logger.warning("champion %s cannot be evaluated (%s); the candidate replaces it", champion.label, error)
            better, why = (
                True,
                f"champion {champion.label} unusable ({type(error).__name__}); candidate F1 {candidate_f1:.3f}",
            )
        else:
            delta = candidate_f1 - champion_f1
            margin = settings.promotion_margin
            better = delta > 0.0 and delta >= margin
            relation = ">=" if better else "<"
            why = (
                f"held-out macro F1 {candidate_f1:.3f} vs champion {champion.label} {champion_f1:.3f} "
                f"({delta:+.3f} {relation} margin {margin:.3f}, must also be > 0) {where}"
            )
    if not better:
        return Decision(False, f"kept champion; candidate {{candidate}}: {why}", candidate_f1, champion_f1)
    if not settings.auto_promote:
        return Decision(False, f"awaiting admin: candidate {{candidate}} is better: {why}", candidate_f1, champion_f1)
    return Decision(True, f"promoted {{candidate}}: {why}", candidate_f1, champion_f1)


# --- heartbeat --------------------------------------------------------------------------------------------------


class _Heartbeat:
    """Keeps a running job's row alive and relays cancellation (one daemon thread per running job)."""

    def __init__(self, loop: Loop, job_id: int) -> None:
        self._loop = loop
        self._job_id = job_id
        self.interval_s = min(HEARTBEAT_MAX_INTERVAL_S, loop.settings.job_heartbeat_timeout_s / 4.0)
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ctphase-heartbeat-{job_id}", daemon=True)
        self._progress: dict[str, Any] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)

    def should_stop(self) -> bool:
        """True when the job should stop: cancel requested, job lost, or the process is shutting down."""
        return self.cancelled.is_set() or self.lost.is_set() or self._loop.stopping.is_set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def beat(self, progress: dict[str, Any] | None = None) -> None:
        """Stamp ``heartbeat_at`` (and ``progress``), read ``cancel_requested``; never raises (a DB blip is logged)."""
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if progress is not None:
            values["progress"] = progress
        try:
            with self._loop.sessions() as session:
                result = session.execute(
                    update(TrainingJob)
                    .where(TrainingJob.id == self._job_id, TrainingJob.status == "running")
                    .values(**values)
                )
                cancel = session.scalar(select(TrainingJob.cancel_requested).where(TrainingJob.id == self._job_id))
                session.commit()
        except Exception:
            logger.exception("heartbeat of training job %d failed; retrying", self._job_id)
            return
        if not result.rowcount:  # type: ignore[attr-defined]
            self.lost.set()
        if cancel:
            self.cancelled.set()

    def report_stage(self, stage: str, **numbers: Any) -> None:
        """Record the job's current stage (dataset, training, evaluating, registering) and numbers."""
        self._progress = {**self._progress, **{k: _json_number(v) for k, v in numbers.items()}, "stage": stage}
        self.beat(dict(self._progress))

    def report_progress(self, progress: TrainProgress) -> None:
        """``train_model`` progress callback: epoch, loss, validation macro F1."""
        self._progress = {
            **self._progress,
            "stage": "training",
            "epoch": progress.epoch,
            "n_epochs": progress.n_epochs,
            "loss": _json_number(progress.loss),
            "val_macro_f1": _json_number(progress.val_macro_f1),
            "seconds": round(progress.seconds, 1),
        }
        self.beat(dict(self._progress))


def _json_number(value: Any) -> Any:
    """NaN/inf are not JSON (PostgreSQL refuses them): store None instead; round floats."""
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value
