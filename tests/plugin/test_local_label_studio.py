"""The local Label Studio runner's environment and credentials, the demo's settings hand-off, the CLI wiring."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from backend.cli import build_parser
from backend.config import Settings
from plugin.demo import DemoPaths, demo_settings, settings_env
from plugin.local_label_studio import Credentials, label_studio_env


def test_env_lets_label_studio_call_a_local_backend(tmp_path: Path) -> None:
    credentials = Credentials.generate()
    env = label_studio_env(
        data_dir=tmp_path / "data",
        url="http://127.0.0.1:8089",
        files_root=tmp_path / "files",
        credentials=credentials,
        inherited={"PATH": "/usr/bin", "LABEL_STUDIO_PORT": "1", "DJANGO_DB": "x", "CTPHASE_DATABASE_URL": "y"},
    )
    assert env["ML_BLOCK_LOCAL_IP"] == "false"
    assert env["SSRF_PROTECTION_ENABLED"] == "false"  # both are needed, see LABEL_STUDIO.md
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["LABEL_STUDIO_BASE_DATA_DIR"] == str(tmp_path / "data")
    assert env["LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert env["LOCAL_FILES_DOCUMENT_ROOT"] == str(tmp_path / "files")
    assert env["LABEL_STUDIO_USER_TOKEN"] == credentials.token
    assert env["PATH"] == "/usr/bin"
    assert "LABEL_STUDIO_PORT" not in env
    assert "DJANGO_DB" not in env
    assert "CTPHASE_DATABASE_URL" not in env


def test_existing_data_dir_gets_no_user_variables(tmp_path: Path) -> None:
    env = label_studio_env(data_dir=tmp_path, url="http://x", files_root=None, credentials=None, inherited={})
    assert env["LOCAL_FILES_SERVING_ENABLED"] == "false"
    assert not {"LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LOCAL_FILES_DOCUMENT_ROOT"} & set(env)


def test_credentials_are_generated_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    first = Credentials.load_or_create(path)
    assert len(first.token) == 40
    int(first.token, 16)
    assert Credentials.load_or_create(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["email"] == "admin@example.com"


def test_settings_survive_the_trip_through_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = DemoPaths(tmp_path)
    settings = demo_settings(paths, port=9191, ls_url="http://127.0.0.1:8189", ls_token="t" * 40)
    env = settings_env(settings)
    assert env["CTPHASE_DICOM_ROOTS"] == json.dumps([str(paths.phantoms)])
    assert env["CTPHASE_LABEL_STUDIO_API_KEY"] == "t" * 40
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    again = Settings()
    assert again.model_dump() == settings.model_dump()
    assert again.webhook_secret is not None
    assert settings.webhook_secret is not None
    assert again.webhook_secret.get_secret_value() == settings.webhook_secret.get_secret_value()
    # secrets are generated once per work dir
    assert demo_settings(paths, port=1, ls_url=None, ls_token=None).admin_token == settings.admin_token


def test_cli_registers_ls_and_demo() -> None:
    parser = build_parser()
    args = parser.parse_args(["ls", "import", "/data/x", "--limit", "3"])
    assert (args.ls_command, args.path, args.limit) == ("import", Path("/data/x"), 3)
    assert parser.parse_args(["ls", "init", "--backend-url", "http://api:9090"]).backend_url == "http://api:9090"
    assert parser.parse_args(["ls", "status"]).func.__name__ == "_status"
    demo = parser.parse_args(["demo", "--no-label-studio", "--port", "9999"])
    assert (demo.with_label_studio, demo.port) == (False, 9999)
    assert parser.parse_args(["demo"]).with_label_studio is True
