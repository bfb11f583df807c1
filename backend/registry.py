"""Model registry: immutable model versions, the champion alias per project, promote / rollback, network cache.

Projects: the Label Studio project id as text (``"7"``), or ``Settings.default_project`` (``"default"``). Champion
lookup falls back from the Label Studio project to the default project, so a model registered without
``--project`` serves every project that has no champion of its own; a project-specific champion always wins.

Versions are numbered per project (1, 2, ...); their public label (what Label Studio shows as ``model_version``) is
``ctphase-<project>-v<n>`` so labels never collide across projects. Artifacts live in the model store at
``<model_store>/<project>/v<n>-<sha8>/`` (``model.safetensors`` + ``manifest.json``); ``artifact_uri`` is that path
relative to the store, so the store can move.

Promote and rollback are one upsert / update of the ``champion`` row plus a ``champion_event`` row, in one
transaction. Rollback returns to the champion that preceded the current one: the ``from_version_id`` of the latest
promote event that made the current champion; repeated rollbacks walk further back.

The network cache (:class:`ModelCache`) keeps a few loaded networks per process keyed by version id (LRU,
thread-safe); ``load_model`` verifies the sha256 of the weights on load, and the cache also checks it against the
registered checksum. Because the champion is read from the database on every request (one indexed query), a promote
or rollback from another process changes what ``/predict`` serves without a restart.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.db import utcnow
from backend.errors import (
    ArtifactRegistrationError,
    NothingToRollBackError,
    RegistryError,
    VersionNotFoundError,
)
from backend.tables import Champion, ChampionEvent, ModelVersion, PredictionLog, version_label

if TYPE_CHECKING:
    from backend.ml.network import LoadedModel

logger = logging.getLogger(__name__)

_PROJECT_RE: Final[re.Pattern[str]] = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
_LABEL_RE: Final[re.Pattern[str]] = re.compile(r"(?:ctphase-(?P<project>.+)-)?v?(?P<number>\d+)")
_REGISTER_ATTEMPTS: Final[int] = 5


def check_project(project: str) -> str:
    """Validate a registry project name (Label Studio id or a name; also used as a folder name).

    Raises:
        RegistryError: empty, too long, or characters other than letters, digits, ``_``, ``.``, ``-``.
    """
    if _PROJECT_RE.fullmatch(project) is None:
        raise RegistryError(
            f"invalid project {project!r}: use 1-64 letters, digits, '_', '.' or '-' (a Label Studio project id)"
        )
    return project


def project_from_label_studio(value: str | None, *, default: str) -> str:
    """The registry project of a Label Studio ``project`` field (``"<id>.<created timestamp>"`` -> ``"<id>"``).

    Returns ``default`` when the field is missing or empty.
    """
    if value is None or not str(value).strip():
        return default
    return check_project(str(value).strip().split(".", 1)[0])


# --- queries -------------------------------------------------------------------------------------------------


def list_versions(session: Session, *, project: str) -> list[ModelVersion]:
    """Every version of ``project``, newest first."""
    stmt = select(ModelVersion).where(ModelVersion.project == project).order_by(ModelVersion.version.desc())
    return list(session.scalars(stmt))


def prediction_counts(session: Session, *, version_ids: list[int]) -> dict[int, int]:
    """Number of logged predictions per model version id."""
    if not version_ids:
        return {}
    stmt = (
        select(PredictionLog.model_version_id, func.count())
        .where(PredictionLog.model_version_id.in_(version_ids))
        .group_by(PredictionLog.model_version_id)
    )
    return {int(vid): int(n) for vid, n in session.execute(stmt) if vid is not None}


def all_labels(session: Session) -> list[str]:
    """Public labels of every registered version (all projects), newest first."""
    rows = session.execute(
        select(ModelVersion.project, ModelVersion.version).order_by(ModelVersion.created_at.desc())
    ).all()
    return [version_label(project, version) for project, version in rows]


def get_version(session: Session, *, project: str, version: int | str) -> ModelVersion:
    """Find a version of ``project`` by number (``3``, ``"3"``, ``"v3"``) or label (``"ctphase-7-v3"``).

    Raises:
        VersionNotFoundError: no such version (the message lists the existing ones).
    """
    number: int | None = version if isinstance(version, int) else None
    if isinstance(version, str):
        match = _LABEL_RE.fullmatch(version.strip())
        if match is not None and match.group("project") in (None, project):
            number = int(match.group("number"))
    row = None
    if number is not None:
        row = session.scalars(
            select(ModelVersion).where(ModelVersion.project == project, ModelVersion.version == number)
        ).one_or_none()
    if row is None:
        existing = ", ".join(v.label for v in list_versions(session, project=project)) or "none"
        raise VersionNotFoundError(f"no model version {version!r} in project {project!r} (registered: {existing})")
    return row


def champion_of(session: Session, *, project: str) -> ModelVersion | None:
    """The champion of exactly ``project`` (no fallback), or None."""
    stmt = select(ModelVersion).join(Champion, Champion.model_version_id == ModelVersion.id)
    return session.scalars(stmt.where(Champion.project == project)).one_or_none()


def resolve_champion(session: Session, *, project: str, default_project: str) -> ModelVersion | None:
    """The version that serves ``project``: its own champion, else the default project's, else None (one query)."""
    stmt = (
        select(Champion.project, ModelVersion)
        .join(ModelVersion, Champion.model_version_id == ModelVersion.id)
        .where(Champion.project.in_({project, default_project}))
    )
    found: dict[str, ModelVersion] = dict(session.execute(stmt).all())
    return found.get(project) or found.get(default_project)


# --- champion changes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChampionChange:
    """Result of a promote or rollback."""

    project: str
    previous: ModelVersion | None
    current: ModelVersion
    action: str


def _set_champion(session: Session, *, project: str, target: ModelVersion, action: str, actor: str) -> ChampionChange:
    row = session.get(Champion, project, with_for_update=True)
    previous = session.get(ModelVersion, row.model_version_id) if row is not None else None
    if row is None:
        session.add(Champion(project=project, model_version_id=target.id, updated_at=utcnow()))
    else:
        row.model_version_id = target.id
        row.updated_at = utcnow()
    session.add(
        ChampionEvent(
            project=project,
            from_version_id=previous.id if previous is not None else None,
            to_version_id=target.id,
            action=action,
            actor=actor,
            created_at=utcnow(),
        )
    )
    session.flush()
    logger.info(
        "champion of project %s: %s -> %s (%s by %s)",
        project,
        previous.label if previous is not None else "none",
        target.label,
        action,
        actor,
    )
    return ChampionChange(project=project, previous=previous, current=target, action=action)


def promote(
    session: Session, *, project: str, version: int | str, actor: str, action: str = "promote"
) -> ChampionChange:
    """Make ``version`` of ``project`` its champion (caller commits).

    Args:
        session: open session.
        project: registry project.
        version: number, ``"v3"`` or label.
        actor: who asked (``"admin-api"``, ``"cli:<user>"``, ``"worker"``); stored in ``champion_event``.
        action: ``"promote"`` or ``"auto_promote"``.

    Raises:
        VersionNotFoundError: no such version.
        RegistryError: unknown action.
    """
    if action not in ("promote", "auto_promote"):
        raise RegistryError(f"promote action must be 'promote' or 'auto_promote', got {action!r}")
    target = get_version(session, project=project, version=version)
    return _set_champion(session, project=project, target=target, action=action, actor=actor)


def rollback(session: Session, *, project: str, actor: str) -> ChampionChange:
    """Return ``project``'s champion to the one before it (caller commits).

    Raises:
        NothingToRollBackError: no champion, or the current champion was the first one.
    """
    current = champion_of(session, project=project)
    if current is None:
        raise NothingToRollBackError(f"project {project!r} has no champion to roll back")
    stmt = (
        select(ChampionEvent)
        .where(
            ChampionEvent.project == project,
            ChampionEvent.to_version_id == current.id,
            ChampionEvent.action.in_(("promote", "auto_promote")),
        )
        .order_by(ChampionEvent.id.desc())
        .limit(1)
    )
    event = session.scalars(stmt).one_or_none()
    if event is None or event.from_version_id is None:
        raise NothingToRollBackError(
            f"{current.label} is the first champion of project {project!r}; there is no earlier one to return to"
        )
    target = session.get(ModelVersion, event.from_version_id)
    if target is None:  # foreign key guarantees it; kept for a precise message on a hand-edited database
        raise NothingToRollBackError(f"previous champion id {event.from_version_id} no longer exists")
    return _set_champion(session, project=project, target=target, action="rollback", actor=actor)


# --- registration --------------------------------------------------------------------------------------------


def artifact_path(store: Path, version: ModelVersion) -> Path:
    """Absolute artifact directory of ``version`` (``artifact_uri`` is relative to the store unless absolute)."""
    uri = Path(version.artifact_uri)
    return uri if uri.is_absolute() else (store / uri).resolve()


def _next_version(session: Session, project: str) -> int:
    current = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.project == project))
    return int(current or 0) + 1


def _verify(model_dir: Path) -> LoadedModel:
    from backend.ml.network import ModelArtifactError, load_model

    try:
        return load_model(model_dir, device="cpu")
    except (ModelArtifactError, OSError, ValueError) as exc:
        raise ArtifactRegistrationError(f"{model_dir}: not a loadable model artifact: {exc}") from exc


def register_version(
    session: Session,
    *,
    project: str,
    model_dir: Path,
    store: Path,
    training_job_id: int | None = None,
    parent_version_id: int | None = None,
) -> ModelVersion:
    """Copy a model directory into the store atomically, verify it, and insert its immutable row (caller commits).

    The artifact files (weights + manifest) are copied to a temporary folder inside the store and loaded there
    (``load_model`` checks the manifest and the weights' sha256). The row is flushed first (the unique version
    number is taken), then the folder is renamed to ``<project>/v<n>-<sha8>`` with ``os.replace``. A folder left at
    that name by an earlier registration whose commit failed is an orphan (no row holds that number) and is
    replaced. Artifacts are never shared between versions.

    Raises:
        ArtifactRegistrationError: missing directory, unloadable artifact or checksum mismatch.
        RegistryError: invalid project name.
    """
    from backend.ml.network import MANIFEST_FILE, WEIGHTS_FILE

    check_project(project)
    source = model_dir.resolve()
    missing = [name for name in (WEIGHTS_FILE, MANIFEST_FILE) if not (source / name).is_file()]
    if missing:
        raise ArtifactRegistrationError(
            f"{model_dir}: not a model directory (missing {', '.join(missing)}; expected the folder save_model wrote)"
        )
    project_dir = store.resolve() / project
    project_dir.mkdir(parents=True, exist_ok=True)
    staging = project_dir / f".incoming-{uuid.uuid4().hex}"
    try:
        staging.mkdir()
        for name in (WEIGHTS_FILE, MANIFEST_FILE):  # only the artifact itself, never the rest of the folder
            shutil.copy2(source / name, staging / name)
        manifest = _verify(staging).manifest
        return _insert_and_place(
            session,
            project=project,
            staging=staging,
            store=store.resolve(),
            manifest_fields=_ManifestFields.of(manifest),
            training_job_id=training_job_id,
            parent_version_id=parent_version_id,
        )
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class _ManifestFields:
    preset: str
    arch: str
    classes: list[str]
    preprocessing: dict[str, object]
    sha256: str
    metrics: dict[str, object]

    @classmethod
    def of(cls, manifest: object) -> _ManifestFields:
        from backend.ml.network import Manifest

        if not isinstance(manifest, Manifest):
            raise ArtifactRegistrationError(f"unexpected manifest type {type(manifest).__name__}")
        preprocessing = dict(manifest.preprocessing)
        preprocessing.setdefault("image_size", manifest.image_size)
        preprocessing.setdefault("windows", [list(w) for w in manifest.windows])
        return cls(
            preset=manifest.preset,
            arch=manifest.arch,
            classes=list(manifest.classes),
            preprocessing=preprocessing,
            sha256=manifest.weights_sha256,
            metrics=dict(manifest.metrics),
        )


def _insert_and_place(
    session: Session,
    *,
    project: str,
    staging: Path,
    store: Path,
    manifest_fields: _ManifestFields,
    training_job_id: int | None,
    parent_version_id: int | None,
) -> ModelVersion:
    for _attempt in range(_REGISTER_ATTEMPTS):
        number = _next_version(session, project)
        relative = Path(project) / f"v{number}-{manifest_fields.sha256[:8]}"
        final = store / relative
        row = ModelVersion(
            project=project,
            version=number,
            preset=manifest_fields.preset,
            arch=manifest_fields.arch,
            classes=manifest_fields.classes,
            preprocessing=manifest_fields.preprocessing,
            artifact_uri=relative.as_posix(),
            sha256=manifest_fields.sha256,
            metrics=manifest_fields.metrics,
            training_job_id=training_job_id,
            parent_version_id=parent_version_id,
            created_at=utcnow(),
        )
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError:
            logger.info("version %d of project %s taken concurrently; retrying", number, project)
            continue
        if final.exists():  # left by a registration whose commit failed: no row owns it
            logger.warning("replacing orphan artifact folder %s", relative.as_posix())
            shutil.rmtree(final)
        staging.replace(final)
        logger.info("registered %s (%s, sha256 %s...)", row.label, row.arch, row.sha256[:12])
        return row
    raise RegistryError(f"could not allocate a version number in project {project!r} after {_REGISTER_ATTEMPTS} tries")


# --- network cache -------------------------------------------------------------------------------------------


class ModelCache:
    """Loaded networks keyed by model version id (LRU of ``max_size``; thread-safe; one load per version).

    Args:
        store: the model store (``artifact_uri`` is relative to it).
        max_size: networks kept in memory.
        device: torch device for loading (``"auto"``, ``"cpu"``, ``"cuda"``...).
        threads: torch intra-op threads set when a network is loaded (None leaves torch's default).
    """

    def __init__(self, *, store: Path, max_size: int = 2, device: str = "auto", threads: int | None = None) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self._store = store
        self._max_size = max_size
        self._device = device
        self._threads = threads
        self._models: OrderedDict[int, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}

    def cached_ids(self) -> list[int]:
        """Version ids currently in memory, least recently used first."""
        with self._lock:
            return list(self._models)

    def get(self, version: ModelVersion) -> LoadedModel:
        """Return the loaded network of ``version``, loading (and verifying) it on first use.

        Raises:
            backend.ml.network.ModelArtifactError: the artifact is missing, corrupt, or its checksum differs from
                the registered one.
        """
        with self._lock:
            model = self._models.get(version.id)
            if model is not None:
                self._models.move_to_end(version.id)
                return model
            load_lock = self._loading.setdefault(version.id, threading.Lock())
        with load_lock:
            with self._lock:
                model = self._models.get(version.id)
            if model is None:
                model = self._load(version)
            with self._lock:
                self._models[version.id] = model
                self._models.move_to_end(version.id)
                while len(self._models) > self._max_size:
                    evicted, _ = self._models.popitem(last=False)
                    logger.info("model cache: evicted version id %d", evicted)
                self._loading.pop(version.id, None)
            return model

    def _load(self, version: ModelVersion) -> LoadedModel:
        from backend.ml.network import ModelArtifactError, load_model

        path = artifact_path(self._store, version)
        model = load_model(path, device=self._device, threads=self._threads)
        if model.manifest.weights_sha256 != version.sha256:
            raise ModelArtifactError(
                f"{path}: weights sha256 {model.manifest.weights_sha256[:12]}... differs from the registered "
                f"{version.sha256[:12]}... of {version.label}; the artifact was replaced: re-register it"
            )
        logger.info("loaded %s from %s on %s", version.label, path, model.device)
        return model
