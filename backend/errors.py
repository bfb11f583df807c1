"""Domain exceptions. They carry no HTTP knowledge; ``backend.main`` maps them to status codes in one place.

Every class has a short ``kind`` used as a Prometheus label and in logs (``errors_total{kind="path_not_allowed"}``).
Messages are actionable and never contain patient identifiers.
"""

from __future__ import annotations

from typing import ClassVar


class CtphaseError(Exception):
    """Base of every ctphase domain error."""

    kind: ClassVar[str] = "error"


# --- database -------------------------------------------------------------------------------------------------


class DatabaseNotReadyError(CtphaseError):
    """The database did not answer within the prestart timeout."""

    kind = "database_not_ready"


class MigrationMismatchError(CtphaseError):
    """The live schema differs from ``backend/tables.py`` (a migration is missing or not applied)."""

    kind = "migration_mismatch"


# --- registry -------------------------------------------------------------------------------------------------


class RegistryError(CtphaseError):
    """Base of model registry errors."""

    kind = "registry"


class VersionNotFoundError(RegistryError):
    """No model version with that number / label / id in the project."""

    kind = "version_not_found"


class NoChampionError(RegistryError):
    """The project (and the default project) has no champion yet."""

    kind = "no_champion"


class NothingToRollBackError(RegistryError):
    """The champion history has no earlier champion to return to."""

    kind = "nothing_to_roll_back"


class ArtifactRegistrationError(RegistryError):
    """A model directory cannot be registered (missing files, bad manifest, checksum mismatch, outside the store)."""

    kind = "artifact_registration"


# --- Label Studio protocol ------------------------------------------------------------------------------------


class LabelConfigError(CtphaseError):
    """The project's label config has no usable Choices control for the phase."""

    kind = "label_config"


# --- series resolution (per task) -----------------------------------------------------------------------------


class SeriesResolveError(CtphaseError):
    """A task's series reference cannot be turned into a local DICOM path."""

    kind = "series_resolve"


class SeriesRefMissingError(SeriesResolveError):
    """The task data lacks the configured series key, or its value is not a non-empty string."""

    kind = "series_ref_missing"


class PathNotAllowedError(SeriesResolveError):
    """A local path lies outside every configured DICOM root (``..``, symlink escape, absolute path elsewhere)."""

    kind = "path_not_allowed"


class SeriesNotFoundError(SeriesResolveError):
    """A local path inside a DICOM root does not exist."""

    kind = "series_not_found"


class HostNotAllowedError(SeriesResolveError):
    """An http(s) URL names a host outside ``Settings.series_fetch_hosts``."""

    kind = "host_not_allowed"


class LabelStudioNotConfiguredError(SeriesResolveError):
    """A Label Studio ``/data/...`` URL arrived but ``label_studio_url`` / ``label_studio_api_key`` are not set."""

    kind = "label_studio_not_configured"


class FetchError(SeriesResolveError):
    """Downloading a series failed (HTTP error, timeout, size limit, bad archive)."""

    kind = "fetch"


class DownloadTooLargeError(FetchError):
    """A download exceeded ``Settings.fetch_max_bytes``."""

    kind = "download_too_large"


class UnsafeArchiveError(FetchError):
    """A downloaded zip holds members that would escape the extraction folder or is too large once unpacked."""

    kind = "unsafe_archive"


# --- serving --------------------------------------------------------------------------------------------------


class ChampionUnavailableError(CtphaseError):
    """The champion's artifact cannot be loaded (missing, corrupt, checksum mismatch): promote another version."""

    kind = "champion_unavailable"
