"""Label Studio client: the only module of ctphase that imports ``label_studio_sdk``.

Sections (each owned by one part of the system; keep them separate):

1. connection: build an SDK client from settings.
2. project bootstrap (``ctphase ls init`` / ``import`` / ``status``): project, ML backend, webhook headers,
   the "Review first" view, local storage for previews, task listing and creation, counts.
3. active-learning gateway (the loop): annotations in, predictions out (see ``backend.gateway``).

Facts about Label Studio 1.23.2 this module relies on (each checked by tests/e2e):

- ``ml.update`` without both ``url`` and ``project`` answers 500, so updates always send both.
- Creating an ML backend auto-creates a project webhook at ``<url>/webhook``; Label Studio does not send the
  backend's basic auth on ordinary event webhooks, so the shared-secret header is set on that webhook.
- ``tasks:predictions_score`` ordering only averages predictions whose ``model_version`` equals the project's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.types.import_api_request import ImportApiRequest

from backend.gateway import GatewayError, LsAnnotation, LsTask, parse_annotation

if TYPE_CHECKING:
    from backend.config import Settings

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# ====================================================================================================================
# 1. Connection
# ====================================================================================================================

DEFAULT_TIMEOUT_S: Final[float] = 60.0

LabelStudioClient: TypeAlias = LabelStudio
"""The SDK client type, for annotations in modules that must not import ``label_studio_sdk``."""


class LabelStudioSettingsMissingError(GatewayError):
    """CTPHASE_LABEL_STUDIO_URL or CTPHASE_LABEL_STUDIO_API_KEY is missing."""

    kind = "label_studio_not_configured"


def connect(settings: Settings, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> LabelStudio:
    """Return an SDK client for the Label Studio named in ``settings`` (legacy token or personal access token).

    Raises:
        LabelStudioSettingsMissingError: the URL or the API key is not set.
    """
    if settings.label_studio_url is None or settings.label_studio_api_key is None:
        raise LabelStudioSettingsMissingError(
            "set CTPHASE_LABEL_STUDIO_URL (e.g. http://127.0.0.1:8080) and CTPHASE_LABEL_STUDIO_API_KEY "
            "(Label Studio > Account & Settings > Access token)"
        )
    return LabelStudio(  # type: ignore[no-untyped-call]
        base_url=settings.label_studio_url,
        api_key=settings.label_studio_api_key.get_secret_value(),
        timeout=timeout_s,
    )


def _api_error(operation: str, error: ApiError) -> GatewayError:
    body = error.body if isinstance(error.body, (str, dict, list)) else repr(error.body)
    return GatewayError(f"Label Studio {operation} failed: HTTP {error.status_code}: {str(body)[:500]}")


# ====================================================================================================================
# 2. Project bootstrap (ctphase ls init / import / status)
# ====================================================================================================================

REVIEW_VIEW_TITLE: Final[str] = "Review first"
REVIEW_ORDERING: Final[tuple[str, ...]] = ("tasks:predictions_score",)
"""Ascending prediction score: the backend's review priority puts tasks to review first at the lowest score."""
PREVIEW_STORAGE_TITLE: Final[str] = "ctphase previews"
SERIES_UID_KEY: Final[str] = "series_uid"


@dataclass(frozen=True)
class ProjectRef:
    """A Label Studio project found or created by :func:`ensure_project`.

    Attributes:
        id: Label Studio project id.
        title: project title.
        created: True when this call created it.
    """

    id: int
    title: str
    created: bool


@dataclass(frozen=True)
class ProjectCounts:
    """Task counts of one project.

    Attributes:
        total: number of tasks.
        labeled: tasks with at least one completed annotation.
        predictions: prediction objects in the project (all model versions).
    """

    total: int
    labeled: int
    predictions: int

    @property
    def unlabeled(self) -> int:
        """Tasks without a completed annotation."""
        return self.total - self.labeled


def find_project(client: LabelStudio, project: str) -> ProjectRef | None:
    """Find a project by numeric id or exact title; None when there is none.

    Raises:
        GatewayError: Label Studio answered an error, or several projects carry that title.
    """
    try:
        if project.isdigit():
            try:
                found = client.projects.get(id=int(project))
            except ApiError as error:
                if error.status_code == 404:
                    return None
                raise
            return ProjectRef(id=_require_id(found.id, "project"), title=found.title or "", created=False)
        listed: Iterable[Any] = client.projects.list(title=project)
        matches = [p for p in listed if p.title == project]
    except ApiError as error:
        raise _api_error(f"finding project {project!r}", error) from error
    if len(matches) > 1:
        ids = ", ".join(str(p.id) for p in matches)
        raise GatewayError(f"several Label Studio projects are titled {project!r} (ids {ids}): pass the id instead")
    if not matches:
        return None
    return ProjectRef(id=_require_id(matches[0].id, "project"), title=project, created=False)


def ensure_project(client: LabelStudio, *, project: str, label_config: str, description: str = "") -> ProjectRef:
    """Create the project (by title) or bring an existing one's label config and review settings up to date.

    Args:
        client: SDK client.
        project: numeric id of an existing project, or the title to find or create.
        label_config: the labeling interface XML (``plugin/label_config.xml``).
        description: project description shown in Label Studio.

    Returns:
        The project, with ``created`` telling whether it is new.

    Raises:
        GatewayError: Label Studio refused the label config or answered another error.
    """
    existing = find_project(client, project)
    settings: dict[str, Any] = {
        "label_config": label_config,
        "description": description,
        # The label stream follows the backend's score too (lowest first), not only the "Review first" view.
        "sampling": "Uncertainty sampling",
        "show_collab_predictions": True,
    }
    try:
        if existing is None:
            if project.isdigit():
                raise GatewayError(f"Label Studio has no project with id {project}")
            created = client.projects.create(title=project, **settings)
            return ProjectRef(id=_require_id(created.id, "project"), title=project, created=True)
        client.projects.update(id=existing.id, **settings)
    except ApiError as error:
        raise _api_error(f"creating/updating project {project!r}", error) from error
    return existing


def ensure_ml_backend(
    client: LabelStudio,
    *,
    project: int,
    url: str,
    title: str = "ctphase",
    basic_auth: tuple[str, str] | None = None,
) -> int:
    """Connect the ctphase backend to the project (create, or update the one with the same URL or title).

    ``ml.update`` always carries ``url`` and ``project`` (without them Label Studio 1.23.2 answers 500).

    Args:
        client: SDK client.
        project: Label Studio project id.
        url: the backend's base URL as Label Studio reaches it (``http://api:9090``), without ``/predict``.
        title: the ML backend's title in Label Studio.
        basic_auth: (user, password) when the backend requires HTTP basic auth.

    Returns:
        The ML backend id.

    Raises:
        GatewayError: Label Studio refused (e.g. 403 when ``ML_BLOCK_LOCAL_IP``/``SSRF_PROTECTION_ENABLED`` block a
            private address) or could not reach the backend.
    """
    url = url.rstrip("/")
    auth: dict[str, Any] = {"auth_method": "NONE"}
    if basic_auth is not None:
        auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": basic_auth[0], "basic_auth_pass": basic_auth[1]}
    try:
        backends = list(client.ml.list(project=project))
        mine = [b for b in backends if (b.url or "").rstrip("/") == url] or [b for b in backends if b.title == title]
        if mine:
            backend_id = _require_id(mine[0].id, "ML backend")
            client.ml.update(id=backend_id, url=url, project=project, title=title, is_interactive=False, **auth)
            return backend_id
        created = client.ml.create(project=project, url=url, title=title, is_interactive=False, **auth)
    except ApiError as error:
        raise _api_error(
            f"connecting ML backend {url} (if 403: start Label Studio with ML_BLOCK_LOCAL_IP=false and "
            "SSRF_PROTECTION_ENABLED=false for a backend on a private address)",
            error,
        ) from error
    return _require_id(created.id, "ML backend")


def ensure_backend_webhook(client: LabelStudio, *, project: int, backend_url: str, headers: Mapping[str, str]) -> int:
    """Make sure the project's webhook to ``<backend_url>/webhook`` exists and sends ``headers`` (the shared secret).

    Label Studio auto-creates this webhook with the ML backend but does not send the backend's basic auth on
    event webhooks; the shared-secret header is how the backend authenticates them.

    Returns:
        The webhook id.

    Raises:
        GatewayError: Label Studio answered an error.
    """
    webhook_url = backend_url.rstrip("/") + "/webhook"
    try:
        hooks = [h for h in client.webhooks.list(project=str(project)) if h.url == webhook_url]
        if hooks:
            hook_id = _require_id(hooks[0].id, "webhook")
            client.webhooks.update(
                id=hook_id,
                url=webhook_url,
                headers=dict(headers),
                is_active=True,
                send_payload=True,
                send_for_all_actions=True,
            )
            return hook_id
        created = client.webhooks.create(
            project=project,
            url=webhook_url,
            headers=dict(headers),
            is_active=True,
            send_payload=True,
            send_for_all_actions=True,
        )
    except ApiError as error:
        raise _api_error(f"setting the webhook {webhook_url}", error) from error
    return _require_id(created.id, "webhook")


def ensure_review_view(client: LabelStudio, *, project: int, title: str = REVIEW_VIEW_TITLE) -> int:
    """Create (or fix the ordering of) the Data Manager tab that lists the lowest prediction score first.

    Returns:
        The view id.

    Raises:
        GatewayError: Label Studio answered an error.
    """
    data: dict[str, Any] = {"title": title, "ordering": list(REVIEW_ORDERING)}
    try:
        for view in client.views.list(project=project):
            view_data = view.data if isinstance(view.data, dict) else {}
            if view_data.get("title") == title:
                view_id = _require_id(view.id, "view")
                if list(view_data.get("ordering") or []) != list(REVIEW_ORDERING):
                    client.views.update(id=str(view_id), project=project, data={**view_data, **data})
                return view_id
        created = client.views.create(project=project, data=data)
    except ApiError as error:
        raise _api_error(f"creating the {title!r} view", error) from error
    return _require_id(created.id, "view")


def ensure_local_storage(client: LabelStudio, *, project: int, path: str, title: str = PREVIEW_STORAGE_TITLE) -> int:
    """Connect a Local Files storage covering ``path`` so Label Studio serves the previews under it (with its auth).

    Nothing is synced from it: tasks are created by ``ctphase ls import``; the storage only grants access.

    Args:
        client: SDK client.
        project: Label Studio project id.
        path: absolute folder as Label Studio sees it, strictly inside its ``LOCAL_FILES_DOCUMENT_ROOT``.

    Returns:
        The storage id.

    Raises:
        GatewayError: Label Studio refused the path (not under LOCAL_FILES_DOCUMENT_ROOT, missing, or local file
            serving disabled).
    """
    try:
        for storage in client.import_storage.local.list(project=project):
            if storage.path == path:
                return _require_id(storage.id, "local storage")
        created = client.import_storage.local.create(
            project=project, path=path, title=title, use_blob_urls=True, recursive_scan=True
        )
    except ApiError as error:
        raise _api_error(
            f"connecting local storage {path} (Label Studio needs LOCAL_FILES_SERVING_ENABLED=true and the path "
            "inside LOCAL_FILES_DOCUMENT_ROOT)",
            error,
        ) from error
    return _require_id(created.id, "local storage")


def iter_task_data(client: LabelStudio, *, project: int) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """Yield ``(task id, task data)`` for every task of the project.

    Raises:
        GatewayError: Label Studio answered an error.
    """
    try:
        listed: Iterable[Any] = client.tasks.list(project=project, fields="task_only")
        for task in listed:
            yield _require_id(task.id, "task"), dict(task.data or {})
    except ApiError as error:
        raise _api_error(f"listing tasks of project {project}", error) from error


def create_tasks(client: LabelStudio, *, project: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
    """Import tasks (``data`` dicts) into the project in one request.

    Returns:
        The new task ids, in order.

    Raises:
        GatewayError: Label Studio answered an error.
    """
    if not tasks:
        return []
    try:
        response = client.projects.import_tasks(
            id=project, request=[ImportApiRequest(data=dict(task)) for task in tasks], return_task_ids=True
        )
    except ApiError as error:
        raise _api_error(f"importing {len(tasks)} tasks into project {project}", error) from error
    task_ids: Sequence[int] = getattr(response, "task_ids", None) or []  # an extra field of the response model
    return [int(task_id) for task_id in task_ids]


@dataclass(frozen=True)
class LabelStudioTaskStore:
    """The task store of one project (implements ``plugin.importer.TaskStore``)."""

    client: LabelStudio
    project: int

    def existing_series_uids(self) -> set[str]:
        """SeriesInstanceUIDs that already have a task in the project."""
        tasks = iter_task_data(self.client, project=self.project)
        return {str(data[SERIES_UID_KEY]) for _, data in tasks if data.get(SERIES_UID_KEY)}

    def create_tasks(self, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        """Create one task per data dict; returns the new task ids."""
        return create_tasks(self.client, project=self.project, tasks=tasks)


def project_counts(client: LabelStudio, *, project: int) -> ProjectCounts:
    """Count the project's tasks, labelled tasks and tasks with predictions.

    Raises:
        GatewayError: Label Studio answered an error.
    """
    try:
        found = client.projects.get(id=project)
    except ApiError as error:
        raise _api_error(f"reading project {project}", error) from error
    total = int(found.task_number or 0)
    labeled = int(found.num_tasks_with_annotations or 0)
    predictions = int(found.total_predictions_number or 0)
    return ProjectCounts(total=total, labeled=labeled, predictions=predictions)


def count_tasks_with_predictions(client: LabelStudio, *, project: int, model_version: str | None = None) -> int:
    """Tasks of the project holding at least one prediction (of ``model_version`` when given).

    Raises:
        GatewayError: Label Studio answered an error.
    """
    try:
        listed: Iterable[Any] = client.tasks.list(project=project, fields="all")
        if model_version is None:
            return sum(1 for task in listed if (task.total_predictions or 0) > 0)
        return sum(
            1 for task in listed if any(_get(p, "model_version") == model_version for p in (task.predictions or []))
        )
    except ApiError as error:
        raise _api_error(f"listing tasks of project {project}", error) from error


def _get(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)


def project_model_version(client: LabelStudio, *, project: int) -> str:
    """The project's ``model_version`` (the prediction version its score ordering uses)."""
    try:
        return str(client.projects.get(id=project).model_version or "")
    except ApiError as error:
        raise _api_error(f"reading project {project}", error) from error


def ensure_project_model_version(client: LabelStudio, *, project: int, model_version: str) -> bool:
    """Point the project's ``model_version`` at ``model_version`` unless it already is; True when it changed.

    Raises:
        GatewayError: Label Studio refused (it must name an existing prediction version or backend title).
    """
    if project_model_version(client, project=project) == model_version:
        return False
    try:
        client.projects.update(id=project, model_version=model_version)
    except ApiError as error:
        raise _api_error(f"setting model_version of project {project}", error) from error
    return True


def _require_id(value: int | None, what: str) -> int:
    if value is None:
        raise GatewayError(f"Label Studio returned a {what} without an id")
    return int(value)


# ====================================================================================================================
# 3. Active-learning gateway (annotations in, predictions out): implemented by the loop, see backend.gateway
# ====================================================================================================================

GATEWAY_PAGE_SIZE: Final[int] = 100
"""Tasks per page when the loop lists a project."""


class SdkGateway:
    """:class:`backend.gateway.LabelStudioGateway` over the Label Studio SDK (one HTTP client, thread-safe).

    Found by the loop through the ``ctphase.gateways`` entry point (:func:`create_gateway`), so ``backend`` never
    imports this package. Every SDK or transport error becomes a :class:`backend.gateway.GatewayError` that names
    the operation.

    Args:
        client: an SDK client (:func:`connect`).
    """

    def __init__(self, client: LabelStudio) -> None:
        self._client = client

    def _call(self, operation: str, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except ApiError as error:
            raise _api_error(operation, error) from error
        except httpx.HTTPError as error:
            raise GatewayError(f"Label Studio {operation} failed: {type(error).__name__}: {error}") from error

    def _tasks(self, project: str) -> Iterator[Any]:
        listed: Iterable[Any] = self._call(
            f"listing tasks of project {project}",
            lambda: self._client.tasks.list(project=int(project), fields="all", page_size=GATEWAY_PAGE_SIZE),
        )
        iterator = iter(listed)
        while True:
            task = self._call(f"listing tasks of project {project}", lambda: next(iterator, None))
            if task is None:
                return
            yield task

    def iter_annotations(self, project: str) -> Iterator[LsAnnotation]:
        """Every annotation of the project (cancelled ones included), with its task's data."""
        for task in self._tasks(project):
            task_id = _require_id(task.id, "task")
            annotations: list[dict[str, Any]] = list(task.annotations or [])
            if any("result" not in a for a in annotations):  # lazily loaded stubs: fetch the full annotations
                listed: Iterable[Any] = self._call(
                    f"listing annotations of task {task_id}", partial(self._client.annotations.list, id=task_id)
                )
                annotations = [a.model_dump() if hasattr(a, "model_dump") else dict(a) for a in listed]
            task_obj = {"id": task_id, "data": dict(task.data or {})}
            for annotation in annotations:
                yield parse_annotation(annotation, task=task_obj, project=project)

    def iter_tasks(self, project: str) -> Iterator[LsTask]:
        """Every task of the project."""
        for task in self._tasks(project):
            yield LsTask(
                id=_require_id(task.id, "task"),
                project=project,
                data=dict(task.data or {}),
                is_labeled=bool(task.is_labeled),
            )

    def get_task(self, task_id: int) -> LsTask:
        """One task by id."""
        task: Any = self._call(f"reading task {task_id}", lambda: self._client.tasks.get(id=str(task_id)))
        return LsTask(
            id=_require_id(task.id, "task"),
            project=str(task.project),
            data=dict(task.data or {}),
            is_labeled=bool(task.is_labeled),
        )

    def get_label_config(self, project: str) -> str:
        """The project's label config XML."""
        found = self._call(f"reading project {project}", lambda: self._client.projects.get(id=int(project)))
        return str(found.label_config or "")

    def create_prediction(
        self, *, task_id: int, result: Sequence[Mapping[str, Any]], score: float, model_version: str
    ) -> None:
        """Attach a prediction to a task."""
        self._call(
            f"writing a prediction for task {task_id}",
            lambda: self._client.predictions.create(
                task=task_id, result=[dict(item) for item in result], score=score, model_version=model_version
            ),
        )

    def set_project_model_version(self, project: str, model_version: str) -> None:
        """Point the project's ``model_version`` at ours (Label Studio's score ordering uses only that version)."""
        self._call(
            f"setting model_version of project {project}",
            lambda: self._client.projects.update(id=int(project), model_version=model_version),
        )


def create_gateway(settings: Settings) -> SdkGateway:
    """Entry point ``ctphase.gateways:label_studio``: the loop's gateway for ``settings``.

    Raises:
        LabelStudioSettingsMissingError: the URL or the API key is not set.
    """
    return SdkGateway(connect(settings))
