"""The one Settings class (environment prefix ``CTPHASE_``) and :func:`get_settings`.

Nothing else in the code base reads environment variables. Tests build ``Settings(...)`` explicitly and pass it to
the app factory (``backend.main.create_app(settings)``) instead of mutating a global.

Embedded defaults make ``ctphase serve`` work with nothing else installed: a SQLite file in the working directory,
a model store folder next to it, no Redis (``broker_url=None`` runs jobs in-process). ``CTPHASE_DATABASE_URL`` switches
to PostgreSQL (``postgresql+psycopg://user:pass@host:5432/db``).

List fields accept a JSON list (``CTPHASE_DICOM_ROOTS='["/data/a", "/data/b"]'``) or a comma-separated string
(``CTPHASE_DICOM_ROOTS=/data/a,/data/b``).

Secrets: in ``environment="production"`` the settings refuse to load when the admin token or the webhook secret is
missing or still the development default, and when basic auth has a user but no (or the default) password.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backend.ml.sampling import (
    DEFAULT_FRACTION,
    DEFAULT_MIN_SLICES,
    DEFAULT_SECOND_LOOK_BELOW,
    DEFAULT_SECOND_LOOK_FRACTION,
)
from backend.ml.voting import DEFAULT_VOTING, VotingChoice

DEFAULT_SECRET: Final[str] = "changethis"  # noqa: S105  (the refused development default)
"""Development default of every secret; refused when ``environment="production"``."""

ENV_PREFIX: Final[str] = "CTPHASE_"


def _split_list(value: Any) -> Any:
    """Accept a JSON list or a comma-separated string for a list field (other values pass through)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    return [item.strip() for item in text.split(",") if item.strip()]


class Settings(BaseSettings):
    """Every setting of the service, the worker and the CLI (environment variables ``CTPHASE_<FIELD>``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=None,
        extra="ignore",
        validate_default=True,
        protected_namespaces=(),
    )

    # --- deployment -------------------------------------------------------------------------------------------
    environment: Literal["development", "production"] = "development"
    database_url: str = "sqlite:///./ctphase.db"
    model_store: Path = Path("./model-store")
    default_project: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$",
        description="registry project used when a Label Studio project has no champion of its own, and by the CLI",
    )
    log_json: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- secrets and auth -------------------------------------------------------------------------------------
    admin_token: SecretStr = SecretStr(DEFAULT_SECRET)
    basic_auth_user: str | None = None
    basic_auth_password: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    webhook_secret_header: str = "X-Ctphase-Webhook-Secret"  # noqa: S105  (a header name)

    # --- Label Studio and series sources ----------------------------------------------------------------------
    label_studio_url: str | None = None
    label_studio_api_key: SecretStr | None = None
    dicom_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    series_fetch_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    series_data_key: str = "series"
    fetch_timeout_s: float = Field(default=30.0, gt=0)
    fetch_max_bytes: int = Field(default=2 * 1024**3, gt=0, description="largest series download, bytes")

    # --- inference ----------------------------------------------------------------------------------------------
    sample_fraction: float = Field(default=DEFAULT_FRACTION, gt=0.0, le=1.0)
    min_slices: int = Field(default=DEFAULT_MIN_SLICES, ge=1)
    second_look_below: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description=f"vote again on a wider sample below this confidence (unset: {DEFAULT_SECOND_LOOK_BELOW} for a "
        "series head, else never)",
    )
    second_look_fraction: float = Field(default=DEFAULT_SECOND_LOOK_FRACTION, gt=0.0, le=1.0)
    voting: VotingChoice = DEFAULT_VOTING
    device: str = "auto"
    torch_threads: int | None = Field(default=None, ge=1)
    inference_concurrency: int = Field(default=1, ge=1, description="series predicted at once per process")
    model_cache_size: int = Field(default=2, ge=1, description="networks kept in memory per process")

    # --- active learning loop ---------------------------------------------------------------------------------
    broker_url: str | None = None
    retrain_after_n_labels: int = Field(default=20, ge=1)
    promotion_margin: float = Field(default=0.0, ge=0.0)
    auto_promote: bool = True
    train_preset: str | None = None
    train_epochs: int = Field(default=15, ge=1)
    reconcile_interval_s: float = Field(default=300.0, gt=0)
    job_heartbeat_timeout_s: float = Field(
        default=120.0, gt=0, description="a running job silent this long is failed as 'worker lost'"
    )
    job_time_limit_s: float = Field(
        default=6 * 3600.0, gt=0, description="longest training job; Celery time limits and visibility timeout"
    )
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=1.0, description="share of studies held out")
    train_warm_start: bool = Field(default=True, description="start retraining from the champion's weights")
    preview_dir: Path = Path("./ctphase-data/previews")

    # --- Label Studio project bootstrap and previews (ctphase ls init / import, plugin/) ---------------------------
    label_studio_project: str = Field(
        default="CT contrast phase", min_length=1, description="project title (created by `ctphase ls init`) or id"
    )
    ml_backend_url: str | None = Field(
        default=None, description="this backend's base URL as Label Studio reaches it, e.g. http://api:9090"
    )
    label_studio_files_root: Path | None = Field(
        default=None, description="Label Studio's LOCAL_FILES_DOCUMENT_ROOT as Label Studio sees it (previews)"
    )
    label_studio_preview_dir: Path | None = Field(
        default=None, description="preview_dir as Label Studio sees it (default: preview_dir, same machine)"
    )

    @field_validator("dicom_roots", "series_fetch_hosts", mode="before")
    @classmethod
    def _lists_from_text(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("series_fetch_hosts")
    @classmethod
    def _lower_hosts(cls, value: list[str]) -> list[str]:
        return [host.lower() for host in value]

    @field_validator("label_studio_url")
    @classmethod
    def _strip_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        problems: list[str] = []
        if (self.basic_auth_user is None) != (self.basic_auth_password is None):
            problems.append("set both CTPHASE_BASIC_AUTH_USER and CTPHASE_BASIC_AUTH_PASSWORD, or neither")
        if self.environment == "production":
            problems.extend(self._production_secret_problems())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _production_secret_problems(self) -> list[str]:
        problems: list[str] = []
        hint = "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        checks = {
            "CTPHASE_ADMIN_TOKEN": self.admin_token,
            "CTPHASE_WEBHOOK_SECRET": self.webhook_secret,
        }
        if self.basic_auth_user is not None:
            checks["CTPHASE_BASIC_AUTH_PASSWORD"] = self.basic_auth_password
        for name, secret in checks.items():
            value = None if secret is None else secret.get_secret_value()
            if not value or value == DEFAULT_SECRET:
                problems.append(
                    f"{name} must be set to a non-default secret when CTPHASE_ENVIRONMENT=production {hint}"
                )
        return problems

    @property
    def is_sqlite(self) -> bool:
        """True when the database is the embedded SQLite file."""
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings read from the environment (cached; built on first use)."""
    return Settings()
