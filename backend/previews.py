"""Series previews: a cache of rendered PNGs, the URL a task points at, and an authenticated route.

One PNG per series, rendered once by :func:`backend.ml.preview.render_series_png` and stored as
``<preview_dir>/<RENDERER_VERSION>/<SeriesInstanceUID>.png`` (a new renderer version renders again; old folders
can be deleted). Writes are atomic (temporary file + ``os.replace``), so concurrent imports of the same series
are harmless.

How the annotator's browser gets the image (``task.data["preview"]``):

- **Label Studio local files** (preferred; used when ``label_studio_files_root`` is set): the preview folder lies
  inside Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT`` and a Local Files storage on the project covers it
  (``ctphase ls init`` connects it); the task carries ``/data/local-files/?d=<path>`` and Label Studio serves
  the file with its own session or token auth. The browser never talks to the backend.
- **The backend route** ``GET /previews/<uid>.png`` (:func:`create_preview_router`), behind the app's auth
  dependency (basic auth or admin token). Label Studio loads images from the annotator's browser, which does
  not send those credentials, so this suits API clients and deployments without basic auth; the task then
  carries ``<ml_backend_url>/previews/<uid>.png``.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.responses import FileResponse

from backend.errors import CtphaseError
from backend.ml.preview import RENDERER_VERSION

if TYPE_CHECKING:
    from backend.config import Settings
    from backend.ml.dicom import SeriesInfo

logger = logging.getLogger(__name__)

UID_PATTERN: Final[re.Pattern[str]] = re.compile(r"[0-9]+(\.[0-9]+)*")
MAX_UID_LENGTH: Final[int] = 64
PREVIEW_ROUTE: Final[str] = "/previews"


class PreviewConfigError(CtphaseError):
    """Previews cannot be served with the current settings (the message says which setting to change)."""

    kind = "preview_config"


class InvalidSeriesUidError(CtphaseError):
    """A SeriesInstanceUID is not a DICOM UID (digits and dots, at most 64 characters)."""

    kind = "invalid_series_uid"


def check_uid(series_uid: str) -> str:
    """Return ``series_uid`` if it is a valid DICOM UID (it becomes a file name).

    Raises:
        InvalidSeriesUidError: anything but digits and single dots, or longer than 64 characters.
    """
    if len(series_uid) > MAX_UID_LENGTH or UID_PATTERN.fullmatch(series_uid) is None:
        raise InvalidSeriesUidError("a SeriesInstanceUID is digits separated by dots, at most 64 characters")
    return series_uid


def preview_relpath(series_uid: str) -> PurePosixPath:
    """Cache path of a series' preview relative to the preview folder: ``<renderer version>/<uid>.png``."""
    return PurePosixPath(RENDERER_VERSION) / f"{check_uid(series_uid)}.png"


def cached_preview(preview_dir: Path, series_uid: str) -> Path | None:
    """The cached PNG of a series, or None when it has not been rendered (by this renderer version)."""
    path = preview_dir / preview_relpath(series_uid)
    return path if path.is_file() else None


def ensure_preview(series: SeriesInfo, *, preview_dir: Path) -> Path:
    """Render the series' preview unless it is cached; returns the PNG's path.

    Args:
        series: the series (its slices are decoded: at most 64 of them).
        preview_dir: the cache folder (created when missing).

    Raises:
        InvalidSeriesUidError: the series' UID cannot be a file name.
        backend.ml.dicom.DicomReadError: a sampled slice cannot be decoded.
    """
    from backend.ml.preview import render_series_png

    cached = cached_preview(preview_dir, series.series_instance_uid)
    if cached is not None:
        return cached
    target = preview_dir / preview_relpath(series.series_instance_uid)
    target.parent.mkdir(parents=True, exist_ok=True)
    png = render_series_png(series)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(png)
        Path(tmp_name).chmod(0o644)
        Path(tmp_name).replace(target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    logger.debug("rendered preview for series %s (%d bytes)", series.series_instance_uid, len(png))
    return target


def label_studio_preview_dir(settings: Settings) -> Path:
    """The preview folder as Label Studio sees it (``label_studio_preview_dir``, else ``preview_dir`` resolved)."""
    if settings.label_studio_preview_dir is not None:
        return settings.label_studio_preview_dir
    return settings.preview_dir.resolve()


def check_preview_serving(settings: Settings) -> None:
    """Check that previews can be given a URL with these settings.

    Raises:
        PreviewConfigError: neither ``label_studio_files_root`` nor ``ml_backend_url`` is set, or the preview
            folder is not strictly inside Label Studio's document root.
    """
    if settings.label_studio_files_root is not None:
        root = PurePosixPath(settings.label_studio_files_root.as_posix())
        folder = PurePosixPath(label_studio_preview_dir(settings).as_posix())
        if folder == root or root not in folder.parents:
            raise PreviewConfigError(
                f"the preview folder as Label Studio sees it ({folder}) must be a sub-folder of its "
                f"LOCAL_FILES_DOCUMENT_ROOT ({root}): set CTPHASE_PREVIEW_DIR / CTPHASE_LABEL_STUDIO_PREVIEW_DIR"
            )
    elif settings.ml_backend_url is None:
        raise PreviewConfigError(
            "set CTPHASE_LABEL_STUDIO_FILES_ROOT (Label Studio serves previews from local files; preferred) or "
            "CTPHASE_ML_BACKEND_URL (the backend serves them at /previews/<uid>.png)"
        )


def preview_url(settings: Settings, series_uid: str) -> str:
    """The URL to store in ``task.data["preview"]`` for a series (see the module docstring).

    Raises:
        PreviewConfigError: neither ``label_studio_files_root`` nor ``ml_backend_url`` is set, or the preview
            folder is not inside Label Studio's document root.
    """
    check_preview_serving(settings)
    relpath = preview_relpath(series_uid)
    if settings.label_studio_files_root is not None:
        root = PurePosixPath(settings.label_studio_files_root.as_posix())
        folder = PurePosixPath(label_studio_preview_dir(settings).as_posix())
        return "/data/local-files/?d=" + quote((folder.relative_to(root) / relpath).as_posix(), safe="/")
    assert settings.ml_backend_url is not None  # checked above
    return f"{settings.ml_backend_url.rstrip('/')}{PREVIEW_ROUTE}/{relpath.name}"


def create_preview_router(*, preview_dir: Path, auth: Callable[..., Any]) -> APIRouter:
    """A router serving cached previews at ``GET /previews/<SeriesInstanceUID>.png``, every request through ``auth``.

    Only already rendered previews are served (``ctphase ls import`` renders them); nothing is rendered on
    request, so the route cannot be used to make the backend decode arbitrary series.

    Args:
        preview_dir: the cache folder (``Settings.preview_dir``).
        auth: the app's authentication dependency (raises 401/403 itself); required so the route is never public.
    """
    router = APIRouter(prefix=PREVIEW_ROUTE, tags=["previews"], dependencies=[Depends(auth)])

    @router.get("/{name}", response_class=FileResponse, summary="PNG preview of one series")
    def get_preview(name: str) -> FileResponse:
        uid, dot, extension = name.rpartition(".")
        if not dot or extension.lower() != "png":
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="previews are named <SeriesInstanceUID>.png")
        try:
            path = cached_preview(preview_dir, uid)
        except InvalidSeriesUidError as error:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from None
        if path is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, detail="no preview rendered for this series (run ctphase ls import)"
            )
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    return router


def preview_router(settings: Settings) -> APIRouter:
    """The preview route of the service app, behind the same basic auth as ``/predict`` (``backend.main``)."""
    from backend.api import require_basic_auth

    return create_preview_router(preview_dir=settings.preview_dir, auth=require_basic_auth)
