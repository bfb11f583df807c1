"""Series resolution: turn a task's series reference into a local path that holds exactly one CT series.

The reference is ``task.data[Settings.series_data_key]`` (default ``"series"``), one of:

- **a local path** (absolute, relative to a DICOM root, or ``file://``): allowed only inside
  ``Settings.dicom_roots``. Any ``..`` component is refused outright; the path is then resolved (following
  symlinks) and must stay inside a root; for a folder, every symlink inside it must resolve inside a root too.
- **a Label Studio URL**: ``/data/local-files/?d=...`` or ``/data/upload/...`` (or the same on
  ``Settings.label_studio_url``), fetched from ``label_studio_url`` with ``Authorization: Token <label_studio_api_key>``
  (a legacy API token; enable legacy tokens in the Label Studio organisation).
- **an http(s) URL** on a host listed in ``Settings.series_fetch_hosts`` (``host`` or ``host:port``). No credentials
  are sent to these hosts and redirects are not followed.

A download is either **one DICOM file** (a single-frame slice or an Enhanced multi-frame CT object) or **a zip of
one series** (detected by its signature, whatever the URL says). Downloads are streamed to a per-request temporary
folder with ``Settings.fetch_timeout_s`` per network operation, ten times that in total, and at most
``Settings.fetch_max_bytes`` bytes both compressed and unpacked; zip members that would land outside the
extraction folder are refused.

Errors are typed (:mod:`backend.errors`) and belong to one task. Their messages never repeat the reference itself
(paths and URLs can carry patient names); logs identify a reference by :func:`ref_digest`.
"""

from __future__ import annotations

import hashlib
import os
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

import httpx

from backend.config import Settings
from backend.errors import (
    DownloadTooLargeError,
    FetchError,
    HostNotAllowedError,
    LabelStudioNotConfiguredError,
    PathNotAllowedError,
    SeriesNotFoundError,
    SeriesRefMissingError,
    UnsafeArchiveError,
)

LABEL_STUDIO_PREFIXES: Final[tuple[str, ...]] = ("/data/local-files/", "/data/local-files?", "/data/upload/")
MAX_ZIP_MEMBERS: Final[int] = 100_000
_CHUNK: Final[int] = 1 << 20

Source = Literal["local", "label_studio", "http"]


@dataclass(frozen=True)
class ResolvedSeries:
    """A series reference made local.

    Attributes:
        path: a folder or a single file holding the series (pass to ``backend.ml.dicom.read_series``).
        source: where it came from.
    """

    path: Path
    source: Source


def ref_digest(ref: str) -> str:
    """A short, non-reversible id of a series reference for logs (sha256, 12 hex digits)."""
    return hashlib.sha256(ref.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def series_ref(data: Mapping[str, Any], *, key: str) -> str:
    """Return the series reference of a task's ``data``.

    Raises:
        SeriesRefMissingError: the key is absent, or its value is not a non-empty string.
    """
    value = data.get(key)
    if isinstance(value, str) and value.strip():
        return value.strip()
    if value is None:
        keys = ", ".join(sorted(str(k) for k in data)) or "none"
        raise SeriesRefMissingError(
            f"task data has no {key!r} key (keys: {keys}); import tasks with the series under {key!r} "
            "or set CTPHASE_SERIES_DATA_KEY"
        )
    raise SeriesRefMissingError(f"task data {key!r} must be a non-empty string, got {type(value).__name__}")


class SeriesResolver:
    """Resolves series references with one HTTP client (thread-safe; call :meth:`close` at shutdown).

    Args:
        settings: DICOM roots, Label Studio URL/key, allowed hosts, limits.
        http: an httpx client to use (tests pass one with a mock transport); created when None.
    """

    def __init__(self, *, settings: Settings, http: httpx.Client | None = None) -> None:
        self._settings = settings
        self._roots = tuple(Path(root).resolve() for root in settings.dicom_roots)
        timeout = httpx.Timeout(settings.fetch_timeout_s)
        self._http = http if http is not None else httpx.Client(timeout=timeout, follow_redirects=False)
        self._owns_http = http is None

    def close(self) -> None:
        """Close the HTTP client (when this resolver created it)."""
        if self._owns_http:
            self._http.close()

    def resolve(self, ref: str, *, workdir: Path) -> ResolvedSeries:
        """Make ``ref`` local.

        Args:
            ref: the task's series reference.
            workdir: an empty per-task folder for downloads (the caller deletes it after the prediction).

        Raises:
            SeriesResolveError: a subclass saying what is wrong (path outside roots, host not allowed, fetch
                failed, too large, unsafe zip...).
        """
        parts = urlsplit(ref)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            if self._is_label_studio_url(ref):
                return self._fetch_label_studio(parts.path + (f"?{parts.query}" if parts.query else ""), workdir)
            return self._fetch_allowed_host(ref, workdir)
        if ref.startswith(LABEL_STUDIO_PREFIXES):
            return self._fetch_label_studio(ref, workdir)
        if scheme == "file":
            return ResolvedSeries(self.local_path(unquote(parts.path)), "local")
        if scheme and len(scheme) > 1:
            raise PathNotAllowedError(f"unsupported URL scheme {scheme!r}: use a path, http(s) or a Label Studio URL")
        return ResolvedSeries(self.local_path(ref), "local")

    # --- local paths -----------------------------------------------------------------------------------------

    def local_path(self, ref: str) -> Path:
        """Resolve a local path inside the DICOM roots.

        Raises:
            PathNotAllowedError: no roots configured, a ``..`` component, or the path (after following
                symlinks) outside every root.
            SeriesNotFoundError: inside a root but missing.
        """
        if not self._roots:
            raise PathNotAllowedError("local series paths are disabled: set CTPHASE_DICOM_ROOTS to the DICOM folders")
        if ".." in PurePosixPath(ref.replace("\\", "/")).parts:
            raise PathNotAllowedError("series path contains '..'; give a path inside CTPHASE_DICOM_ROOTS")
        raw = Path(ref)
        candidates = [raw] if raw.is_absolute() else [root / raw for root in self._roots]
        for candidate in candidates:
            resolved = candidate.resolve()
            if not self._inside_roots(resolved):
                raise PathNotAllowedError(
                    "series path resolves outside every DICOM root (absolute path elsewhere or a symlink escape)"
                )
            if resolved.exists():
                if resolved.is_dir():
                    self._check_inner_links(resolved)
                return resolved
        raise SeriesNotFoundError("series path does not exist inside the DICOM roots")

    def _inside_roots(self, path: Path) -> bool:
        return any(path == root or path.is_relative_to(root) for root in self._roots)

    def _check_inner_links(self, folder: Path) -> None:
        for current, dirs, files in os.walk(folder, followlinks=False):
            for name in (*dirs, *files):
                entry = Path(current) / name
                if entry.is_symlink() and not self._inside_roots(entry.resolve()):
                    raise PathNotAllowedError("series folder contains a symlink that leads outside the DICOM roots")

    # --- downloads ---------------------------------------------------------------------------------------------

    def _is_label_studio_url(self, ref: str) -> bool:
        base = self._settings.label_studio_url
        if base is None:
            return False
        ours, theirs = urlsplit(base), urlsplit(ref)
        same_origin = (ours.scheme.lower(), ours.netloc.lower()) == (theirs.scheme.lower(), theirs.netloc.lower())
        return same_origin and theirs.path.startswith("/data/")

    def _fetch_label_studio(self, path_and_query: str, workdir: Path) -> ResolvedSeries:
        base, key = self._settings.label_studio_url, self._settings.label_studio_api_key
        if base is None or key is None:
            raise LabelStudioNotConfiguredError(
                "task refers to a Label Studio file: set CTPHASE_LABEL_STUDIO_URL and CTPHASE_LABEL_STUDIO_API_KEY"
            )
        headers = {"Authorization": f"Token {key.get_secret_value()}"}
        return ResolvedSeries(self._download(base + path_and_query, headers=headers, workdir=workdir), "label_studio")

    def _fetch_allowed_host(self, url: str, workdir: Path) -> ResolvedSeries:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        allowed = self._settings.series_fetch_hosts
        if host not in allowed and parts.netloc.lower() not in allowed:
            raise HostNotAllowedError(
                f"series host {host!r} is not allowed; add it to CTPHASE_SERIES_FETCH_HOSTS to fetch from it"
            )
        return ResolvedSeries(self._download(url, headers={}, workdir=workdir), "http")

    def _download(self, url: str, *, headers: dict[str, str], workdir: Path) -> Path:
        limit = self._settings.fetch_max_bytes
        deadline = time.monotonic() + 10 * self._settings.fetch_timeout_s
        target = workdir / "download"
        host = urlsplit(url).netloc
        try:
            with self._http.stream("GET", url, headers=headers, follow_redirects=False) as response:
                if response.status_code != httpx.codes.OK:
                    raise FetchError(f"HTTP {response.status_code} from {host} while fetching the series")
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise DownloadTooLargeError(f"series download is {int(declared)} bytes; limit is {limit}")
                size = 0
                with target.open("wb") as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        size += len(chunk)
                        if size > limit:
                            raise DownloadTooLargeError(f"series download exceeds the limit of {limit} bytes")
                        if time.monotonic() > deadline:
                            raise FetchError(f"series download from {host} took longer than the total time limit")
                        out.write(chunk)
        except httpx.TimeoutException as exc:
            raise FetchError(f"timed out fetching the series from {host} ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise FetchError(f"could not fetch the series from {host}: {type(exc).__name__}") from exc
        if size == 0:
            raise FetchError(f"empty response from {host} for the series")
        if zipfile.is_zipfile(target):
            return self._unzip(target, workdir / "series", limit=limit)
        single = workdir / "series.dcm"
        target.replace(single)
        return single

    @staticmethod
    def _unzip(archive: Path, folder: Path, *, limit: int) -> Path:
        folder.mkdir()
        root = folder.resolve()
        try:
            with zipfile.ZipFile(archive) as bundle:
                members = [m for m in bundle.infolist() if not m.is_dir()]
                if len(members) > MAX_ZIP_MEMBERS:
                    raise UnsafeArchiveError(f"series zip holds {len(members)} files; at most {MAX_ZIP_MEMBERS}")
                total = sum(m.file_size for m in members)
                if total > limit:
                    raise UnsafeArchiveError(f"series zip unpacks to {total} bytes; limit is {limit}")
                for member in members:
                    name = PurePosixPath(member.filename.replace("\\", "/"))
                    destination = (root / name).resolve()
                    if name.is_absolute() or ".." in name.parts or not destination.is_relative_to(root):
                        raise UnsafeArchiveError("series zip has a member that would be written outside its folder")
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with bundle.open(member) as source, destination.open("wb") as out:
                        while block := source.read(_CHUNK):
                            out.write(block)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
            raise FetchError(f"series zip cannot be unpacked: {type(exc).__name__}: {exc}") from exc
        finally:
            archive.unlink(missing_ok=True)
        return folder
