"""Settings: list parsing from the environment, default secrets refused in production."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from backend.config import DEFAULT_SECRET, Settings


def test_embedded_defaults() -> None:
    settings = Settings()
    assert settings.database_url == "sqlite:///./ctphase.db"
    assert settings.is_sqlite
    assert settings.environment == "development"
    assert settings.admin_token.get_secret_value() == DEFAULT_SECRET
    assert settings.series_data_key == "series"
    assert settings.webhook_secret_header == "X-Ctphase-Webhook-Secret"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/data/a,/data/b", [Path("/data/a"), Path("/data/b")]),
        ('["/data/a", "/data/b"]', [Path("/data/a"), Path("/data/b")]),
        ("  /data/a  ", [Path("/data/a")]),
        ("", []),
    ],
)
def test_list_fields_from_env(monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[Path]) -> None:
    monkeypatch.setenv("CTPHASE_DICOM_ROOTS", raw)
    monkeypatch.setenv("CTPHASE_SERIES_FETCH_HOSTS", "PACS.example.org, files.example.org:8443")
    settings = Settings()
    assert settings.dicom_roots == expected
    assert settings.series_fetch_hosts == ["pacs.example.org", "files.example.org:8443"]


def test_secrets_are_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTPHASE_ADMIN_TOKEN", "very-secret-admin")
    monkeypatch.setenv("CTPHASE_WEBHOOK_SECRET", "very-secret-hook")
    text = repr(Settings()) + str(Settings().model_dump())
    assert "very-secret-admin" not in text
    assert "very-secret-hook" not in text


def test_production_refuses_default_secrets() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(environment="production")
    message = str(info.value)
    assert "CTPHASE_ADMIN_TOKEN must be set to a non-default secret" in message
    assert "CTPHASE_WEBHOOK_SECRET must be set" in message
    assert "secrets.token_urlsafe" in message


def test_production_refuses_default_basic_auth_password() -> None:
    with pytest.raises(ValidationError, match="CTPHASE_BASIC_AUTH_PASSWORD"):
        Settings(
            environment="production",
            admin_token="a-real-admin-token",
            webhook_secret="a-real-hook-secret",
            basic_auth_user="ls",
            basic_auth_password=DEFAULT_SECRET,
        )


def test_production_accepts_real_secrets() -> None:
    settings = Settings(
        environment="production",
        admin_token="a-real-admin-token",
        webhook_secret="a-real-hook-secret",
        basic_auth_user="ls",
        basic_auth_password="a-real-password",
    )
    assert settings.environment == "production"


def test_basic_auth_needs_both_parts() -> None:
    with pytest.raises(ValidationError, match="CTPHASE_BASIC_AUTH_USER and CTPHASE_BASIC_AUTH_PASSWORD"):
        Settings(basic_auth_user="ls")
