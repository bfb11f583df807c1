"""HTTP routes: thin functions over the services, with the auth dependencies.

Label Studio-facing routes (``/setup``, ``/predict``, ``/versions``) need HTTP basic auth when
``CTPHASE_BASIC_AUTH_USER``/``_PASSWORD`` are set. ``/health`` answers without credentials (for load balancers and
probes) but refuses *wrong* credentials, so a misconfigured Label Studio connection shows up as an error at once.
``/webhook`` needs the shared secret header (``CTPHASE_WEBHOOK_SECRET`` in ``CTPHASE_WEBHOOK_SECRET_HEADER``) when a
secret is set; valid basic auth is accepted too, because Label Studio's "Start training" call carries basic auth but
no custom headers. Admin routes need ``Authorization: Bearer <CTPHASE_ADMIN_TOKEN>``. ``/metrics`` is open (no
secrets or patient data in it). Every comparison is constant-time; secrets and headers are never logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

from anyio import CapacityLimiter, to_thread
from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Request, Response, status
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from backend.config import Settings
from backend.inference import InferenceService, TaskOutcome
from backend.labelconfig import PhaseTarget, phase_target
from backend.metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from backend.registry import (
    ChampionChange,
    ModelCache,
    all_labels,
    check_project,
    list_versions,
    prediction_counts,
    project_from_label_studio,
    register_version,
    resolve_champion,
)
from backend.registry import promote as registry_promote
from backend.registry import rollback as registry_rollback
from backend.resolve import SeriesResolver
from backend.schemas import (
    ChampionOut,
    ChoicesResult,
    ChoicesValue,
    HealthResponse,
    PredictRequest,
    PredictResponse,
    PromoteIn,
    RegisteredOut,
    RegisterIn,
    RollbackIn,
    SetupRequest,
    SetupResponse,
    TaskPrediction,
    VersionOut,
    VersionsOut,
    VersionsResponse,
    WebhookAccepted,
)
from backend.tables import ModelVersion

if TYPE_CHECKING:
    from backend.loop import Loop

logger = logging.getLogger(__name__)

MAX_CACHED_CONFIGS: Final[int] = 1024


class LabelConfigCache:
    """Phase targets per project, from the label config sent to ``/setup`` (bounded; thread-safe enough: dict ops)."""

    def __init__(self) -> None:
        self._targets: dict[str, PhaseTarget] = {}

    def remember(self, project: str, label_config: str) -> PhaseTarget:
        """Parse and cache ``label_config`` for ``project`` (raises LabelConfigError when unusable)."""
        target = phase_target(label_config)
        if len(self._targets) >= MAX_CACHED_CONFIGS and project not in self._targets:
            self._targets.pop(next(iter(self._targets)))
        self._targets[project] = target
        return target

    def target(self, project: str, label_config: str | None) -> PhaseTarget:
        """The target for a ``/predict`` call: from its own label config, else the one cached at ``/setup``.

        Raises:
            LabelConfigError: neither is available, or the config has no usable Choices control.
        """
        if label_config:
            return self.remember(project, label_config)
        cached = self._targets.get(project)
        if cached is None:
            from backend.errors import LabelConfigError

            raise LabelConfigError(
                f"no label config for project {project!r}: send label_config with /predict or call /setup with the "
                "project's schema first (Label Studio does both)"
            )
        return cached


@dataclass
class ServiceState:
    """Everything the routes need (one per app, stored on ``app.state.ctphase``)."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    metrics: ServiceMetrics
    cache: ModelCache
    resolver: SeriesResolver
    inference: InferenceService
    label_configs: LabelConfigCache = field(default_factory=LabelConfigCache)
    limiter: CapacityLimiter | None = None
    loop: Loop | None = None

    def dispatch_event(self, payload: dict[str, Any]) -> None:
        """Hand a webhook payload to the active-learning loop (runs after the response, in a worker thread)."""
        action = payload.get("action")
        if self.loop is None:
            logger.info("webhook %s received; active-learning loop disabled, nothing stored", action)
            return
        from backend.annotations import handle_event

        try:
            outcome = handle_event(self.loop, payload)
        except Exception:
            self.metrics.errors.labels(kind="webhook").inc()
            logger.exception("webhook %s processing failed", action)
            return
        logger.info("webhook %s processed: %s", action, getattr(outcome, "status", outcome))


def get_state(request: Request) -> ServiceState:
    """The app's :class:`ServiceState`."""
    state: ServiceState = request.app.state.ctphase
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


# --- auth ----------------------------------------------------------------------------------------------------


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _basic_ok(settings: Settings, credentials: tuple[str, str] | None) -> bool:
    if settings.basic_auth_user is None or settings.basic_auth_password is None or credentials is None:
        return False
    user_ok = _equal(credentials[0], settings.basic_auth_user)
    password_ok = _equal(credentials[1], settings.basic_auth_password.get_secret_value())
    return user_ok and password_ok


def _unauthorized(detail: str, scheme: str) -> HTTPException:
    return HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": scheme})


def require_basic_auth(request: Request, state: StateDep) -> None:
    """Require valid basic auth when it is configured."""
    settings = state.settings
    if settings.basic_auth_user is None:
        return
    credentials = _basic_credentials(request)
    if credentials is None:
        raise _unauthorized("basic auth required: set the ML backend's user and password in Label Studio", "Basic")
    if not _basic_ok(settings, credentials):
        raise _unauthorized("wrong basic auth user or password", "Basic")


def health_auth(request: Request, state: StateDep) -> None:
    """Let ``/health`` answer without credentials, but refuse wrong ones."""
    if state.settings.basic_auth_user is None or request.headers.get("authorization") is None:
        return
    if not _basic_ok(state.settings, _basic_credentials(request)):
        raise _unauthorized("wrong basic auth user or password", "Basic")


def require_webhook_secret(request: Request, state: StateDep) -> None:
    """Require the shared secret header (or valid basic auth) when a webhook secret is configured."""
    settings = state.settings
    if settings.webhook_secret is None:
        return
    given = request.headers.get(settings.webhook_secret_header)
    if given is not None and _equal(given, settings.webhook_secret.get_secret_value()):
        return
    if _basic_ok(settings, _basic_credentials(request)):
        return
    if given is None:
        raise _unauthorized(f"webhook secret header {settings.webhook_secret_header} missing", "Secret")
    raise _unauthorized(f"wrong webhook secret in {settings.webhook_secret_header}", "Secret")


def require_admin(request: Request, state: StateDep) -> None:
    """Require ``Authorization: Bearer <CTPHASE_ADMIN_TOKEN>``."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("admin routes need 'Authorization: Bearer <CTPHASE_ADMIN_TOKEN>'", "Bearer")
    if not _equal(token.strip(), state.settings.admin_token.get_secret_value()):
        raise _unauthorized("wrong admin token", 'Bearer error="invalid_token"')


BasicAuth = Depends(require_basic_auth)
AdminAuth = Depends(require_admin)

ls_router = APIRouter(tags=["label-studio"])
admin_router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminAuth])
ops_router = APIRouter(tags=["operations"])


# --- Label Studio protocol ---------------------------------------------------------------------------------------


@ls_router.get("/health", dependencies=[Depends(health_auth)])
async def health() -> HealthResponse:
    """Liveness for Label Studio (1 s timeout there): answers without touching the database."""
    return HealthResponse()


@ls_router.post("/setup", dependencies=[BasicAuth])
async def setup(body: SetupRequest, state: StateDep) -> SetupResponse:
    """Cache the project's label config and report the version that will serve it."""
    project = project_from_label_studio(body.project, default=state.settings.default_project)
    if body.label_schema:
        state.label_configs.remember(project, body.label_schema)
    label = await to_thread.run_sync(partial(state.inference.serving_label, project=project))
    return SetupResponse(model_version=label)


@ls_router.post("/predict", dependencies=[BasicAuth])
async def predict(body: PredictRequest, background: BackgroundTasks, state: StateDep) -> PredictResponse:
    """One prediction per task, in order (an unreadable series gets an empty result with score 0).

    The ``prediction_log`` rows are written after the response is sent (a background task).
    """
    project = project_from_label_studio(body.project, default=state.settings.default_project)
    target = state.label_configs.target(project, body.label_config)
    if not body.tasks:
        return PredictResponse(results=[])
    tasks = [task.model_dump() for task in body.tasks]
    run = partial(state.inference.predict, tasks, project=project, record=False)
    outcomes = await to_thread.run_sync(run, limiter=state.limiter)
    background.add_task(state.inference.record, outcomes, project=project)
    return PredictResponse(results=[_task_prediction(outcome, target) for outcome in outcomes])


def _task_prediction(outcome: TaskOutcome, target: PhaseTarget) -> TaskPrediction:
    result = []
    if outcome.phase is not None:
        value = ChoicesValue(choices=[target.choice_for(outcome.phase)])
        result.append(ChoicesResult(from_name=target.from_name, to_name=target.to_name, value=value))
    return TaskPrediction(result=result, score=outcome.score, model_version=outcome.model_version)


@ls_router.post("/webhook", dependencies=[Depends(require_webhook_secret)])
async def webhook(request: Request, background: BackgroundTasks, state: StateDep) -> WebhookAccepted:
    """Accept a Label Studio event at once; the loop processes it after the response."""
    try:
        payload = await request.json()
    except ValueError:
        raise HTTPException(status_code=400, detail="webhook body must be a JSON object") from None
    if not isinstance(payload, dict):
        raise HTTPException(status_code=400, detail="webhook body must be a JSON object")
    background.add_task(state.dispatch_event, payload)
    action = payload.get("action")
    return WebhookAccepted(action=action if isinstance(action, str) else None)


@ls_router.get("/versions", dependencies=[BasicAuth])
async def versions(state: StateDep) -> VersionsResponse:
    """Every registered version label, plus the metadata prior's."""
    from backend.ml.prior import PRIOR_VERSION

    def query() -> list[str]:
        with state.sessions() as session:
            return all_labels(session)

    labels = await to_thread.run_sync(query)
    return VersionsResponse(versions=[*labels, PRIOR_VERSION])


# --- operations ----------------------------------------------------------------------------------------------


@ops_router.get("/metrics", include_in_schema=False)
async def metrics(state: StateDep) -> Response:
    """Prometheus text exposition."""
    return Response(content=state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


# --- admin -----------------------------------------------------------------------------------------------------


def _project(state: ServiceState, project: str | None) -> str:
    return check_project(project) if project else state.settings.default_project


def _version_out(version: ModelVersion, *, champion_id: int | None, counts: dict[int, int]) -> VersionOut:
    return VersionOut(
        id=version.id,
        project=version.project,
        version=version.version,
        label=version.label,
        preset=version.preset,
        arch=version.arch,
        classes=list(version.classes),
        sha256=version.sha256,
        artifact_uri=version.artifact_uri,
        metrics=dict(version.metrics),
        training_job_id=version.training_job_id,
        parent_version_id=version.parent_version_id,
        created_at=version.created_at,
        is_champion=version.id == champion_id,
        n_predictions=counts.get(version.id, 0),
    )


def _change_out(change: ChampionChange) -> ChampionOut:
    return ChampionOut(
        project=change.project,
        champion=change.current.label,
        previous=change.previous.label if change.previous is not None else None,
        action=change.action,
    )


def _actor(request: Request) -> str:
    host = request.client.host if request.client is not None else "unknown"
    return f"admin-api@{host}"


@admin_router.get("/versions")
async def admin_versions(state: StateDep, project: str | None = None) -> VersionsOut:
    """Versions of a project (default: the default project) with their metrics and prediction counts."""
    name = _project(state, project)

    def query() -> VersionsOut:
        with state.sessions() as session:
            rows = list_versions(session, project=name)
            champion = resolve_champion(session, project=name, default_project=state.settings.default_project)
            counts = prediction_counts(session, version_ids=[v.id for v in rows])
            champion_id = champion.id if champion is not None else None
            return VersionsOut(
                project=name,
                champion=champion.label if champion is not None else None,
                champion_project=champion.project if champion is not None else None,
                versions=[_version_out(v, champion_id=champion_id, counts=counts) for v in rows],
            )

    return await to_thread.run_sync(query)


@admin_router.post("/promote")
async def admin_promote(body: PromoteIn, request: Request, state: StateDep) -> ChampionOut:
    """Make a version the project's champion (served from the next request on)."""
    name = _project(state, body.project)
    actor = _actor(request)

    def change() -> ChampionOut:
        with state.sessions.begin() as session:
            return _change_out(registry_promote(session, project=name, version=body.version, actor=actor))

    return await to_thread.run_sync(change)


@admin_router.post("/rollback")
async def admin_rollback(body: RollbackIn, request: Request, state: StateDep) -> ChampionOut:
    """Return the project's champion to the previous one."""
    name = _project(state, body.project)
    actor = _actor(request)

    def change() -> ChampionOut:
        with state.sessions.begin() as session:
            return _change_out(registry_rollback(session, project=name, actor=actor))

    return await to_thread.run_sync(change)


@admin_router.post("/register", status_code=201)
async def admin_register(body: RegisterIn, request: Request, state: StateDep) -> RegisteredOut:
    """Copy a model directory on the server into the store, verify it, register it (and optionally promote it)."""
    name = _project(state, body.project)
    actor = _actor(request)
    source = Path(body.path)
    if not source.is_absolute():
        source = state.settings.model_store / source

    def register() -> RegisteredOut:
        with state.sessions.begin() as session:
            row = register_version(session, project=name, model_dir=source, store=state.settings.model_store)
            if body.promote:
                registry_promote(session, project=name, version=row.version, actor=actor)
            counts: dict[int, int] = {}
            champion_id = row.id if body.promote else None
            return RegisteredOut(
                version=_version_out(row, champion_id=champion_id, counts=counts), promoted=body.promote
            )

    return await to_thread.run_sync(register, limiter=state.limiter)
