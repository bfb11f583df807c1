"""What ``ctphase ls init|import|status`` do, as functions (the CLI, ``ctphase demo`` and the e2e tests call them).

``init_project`` is idempotent: it creates or updates the project, connects (or updates) the ML backend, puts the
shared-secret header on the backend's webhook, creates the "Review first" view and, when previews are served by
Label Studio, the Local Files storage that grants access to them. Running it again changes nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Final

from backend.gateway import GatewayError
from backend.previews import check_preview_serving, ensure_preview, label_studio_preview_dir, preview_url
from plugin import client as ls
from plugin.client import LabelStudioClient
from plugin.importer import ImportReport, import_series

if TYPE_CHECKING:
    from backend.config import Settings
    from backend.ml.dicom import ScanResult, SeriesInfo

logger = logging.getLogger(__name__)

PROJECT_DESCRIPTION: Final[str] = (
    "Contrast phase of abdominal CT series (non-contrast, arterial, venous, others). Predictions come from the "
    "ctphase ML backend; open the 'Review first' tab to see uncertain, 'others' and metadata-conflicting series first."
)


def label_config_xml() -> str:
    """The labeling interface shipped with the package (``plugin/label_config.xml``)."""
    return files("plugin").joinpath("label_config.xml").read_text(encoding="utf-8")


@dataclass(frozen=True)
class InitResult:
    """Ids of what :func:`init_project` created or updated.

    Attributes:
        project: the project.
        ml_backend_id: the connected ML backend.
        webhook_id: the backend's webhook (with the shared-secret header).
        view_id: the "Review first" Data Manager tab.
        storage_id: the Local Files storage for previews, None when previews are served by the backend.
        webhook_authenticated: False when no webhook secret is configured (webhooks then arrive unauthenticated).
    """

    project: ls.ProjectRef
    ml_backend_id: int
    webhook_id: int
    view_id: int
    storage_id: int | None
    webhook_authenticated: bool


def webhook_headers(settings: Settings) -> dict[str, str]:
    """The header Label Studio must send on webhooks (``{webhook_secret_header: secret}``), empty when unset."""
    if settings.webhook_secret is None:
        return {}
    return {settings.webhook_secret_header: settings.webhook_secret.get_secret_value()}


def init_project(client: LabelStudioClient, settings: Settings, *, project: str, backend_url: str) -> InitResult:
    """Create or update the project and wire it to the backend (see the module docstring).

    Args:
        client: SDK client.
        settings: basic auth, webhook secret, preview settings.
        project: project title (created when missing) or id.
        backend_url: the backend's base URL as Label Studio reaches it.

    Raises:
        backend.gateway.GatewayError: a Label Studio call failed (the message says which and why).
        backend.previews.PreviewConfigError: the preview folder is not inside Label Studio's document root.
    """
    ref = ls.ensure_project(client, project=project, label_config=label_config_xml(), description=PROJECT_DESCRIPTION)
    basic_auth = None
    if settings.basic_auth_user is not None and settings.basic_auth_password is not None:
        basic_auth = (settings.basic_auth_user, settings.basic_auth_password.get_secret_value())
    ml_backend_id = ls.ensure_ml_backend(client, project=ref.id, url=backend_url, basic_auth=basic_auth)
    headers = webhook_headers(settings)
    webhook_id = ls.ensure_backend_webhook(client, project=ref.id, backend_url=backend_url, headers=headers)
    view_id = ls.ensure_review_view(client, project=ref.id)
    storage_id = None
    if settings.label_studio_files_root is not None:
        check_preview_serving(settings)  # the folder layout, before Label Studio is asked
        settings.preview_dir.mkdir(parents=True, exist_ok=True)
        storage_id = ls.ensure_local_storage(client, project=ref.id, path=str(label_studio_preview_dir(settings)))
    return InitResult(
        project=ref,
        ml_backend_id=ml_backend_id,
        webhook_id=webhook_id,
        view_id=view_id,
        storage_id=storage_id,
        webhook_authenticated=bool(headers),
    )


def require_project(client: LabelStudioClient, project: str) -> ls.ProjectRef:
    """The project by title or id.

    Raises:
        backend.gateway.GatewayError: no such project (run ``ctphase ls init`` first) or a Label Studio error.
    """
    found = ls.find_project(client, project)
    if found is None:
        raise GatewayError(f"Label Studio has no project {project!r}: run 'ctphase ls init' first")
    return found


@dataclass(frozen=True)
class PreviewFunction:
    """Renders (or finds in the cache) a series' preview and returns the URL to put in its task."""

    settings: Settings

    def __call__(self, series: SeriesInfo) -> str:
        url = preview_url(self.settings, series.series_instance_uid)
        ensure_preview(series, preview_dir=self.settings.preview_dir)
        return url


def import_path(
    client: LabelStudioClient, settings: Settings, *, project_id: int, path: Path, limit: int | None = None
) -> tuple[ImportReport, ScanResult]:
    """Scan ``path`` and create one task per series not in the project yet (rendering their previews).

    Returns:
        (the import report, the scan result with its skipped files).

    Raises:
        backend.ml.dicom.NoSeriesError: ``path`` does not exist.
        backend.gateway.GatewayError: a Label Studio call failed.
    """
    from backend.ml.dicom import scan

    found = scan(path)
    store = ls.LabelStudioTaskStore(client=client, project=project_id)
    report = import_series(
        found.series,
        store=store,
        dicom_roots=settings.dicom_roots,
        preview=PreviewFunction(settings),
        limit=limit,
    )
    return report, found
