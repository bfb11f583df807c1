"""Series resolution: local paths confined to the DICOM roots, Label Studio and allowed-host downloads."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import httpx
import pytest

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
from backend.resolve import SeriesResolver, series_ref

DICOM_BYTES = b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\x00\x00\x00\x00"


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    inside = tmp_path / "root"
    (inside / "study" / "series1").mkdir(parents=True)
    (inside / "study" / "series1" / "1.dcm").write_bytes(DICOM_BYTES)
    outside = tmp_path / "outside"
    (outside / "secret").mkdir(parents=True)
    (outside / "secret" / "1.dcm").write_bytes(DICOM_BYTES)
    return inside, outside


def _resolver(root: Path, **overrides: object) -> SeriesResolver:
    return SeriesResolver(settings=Settings(dicom_roots=[root], **overrides))  # type: ignore[arg-type]


def test_series_ref_key() -> None:
    assert series_ref({"series": " /a/b "}, key="series") == "/a/b"
    with pytest.raises(SeriesRefMissingError, match="no 'series' key"):
        series_ref({"image": "x"}, key="series")
    with pytest.raises(SeriesRefMissingError, match="non-empty string"):
        series_ref({"series": 3}, key="series")


def test_local_paths_inside_root(roots: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = roots
    resolver = _resolver(root)
    expected = (root / "study" / "series1").resolve()
    assert resolver.resolve(str(root / "study" / "series1"), workdir=tmp_path).path == expected
    assert resolver.resolve("study/series1", workdir=tmp_path).path == expected
    assert resolver.resolve(f"file://{root}/study/series1", workdir=tmp_path).path == expected
    assert resolver.resolve("study/series1/1.dcm", workdir=tmp_path).path == expected / "1.dcm"
    with pytest.raises(SeriesNotFoundError):
        resolver.resolve("study/missing", workdir=tmp_path)


@pytest.mark.parametrize(
    "make_ref",
    [
        pytest.param(lambda root, outside: "study/../../outside/secret", id="dotdot-relative"),
        pytest.param(lambda root, outside: f"{root}/study/../../outside/secret", id="dotdot-absolute"),
        pytest.param(lambda root, outside: f"{root}/study/series1/..", id="dotdot-inside"),
        pytest.param(lambda root, outside: str(outside / "secret"), id="absolute-outside"),
        pytest.param(lambda root, outside: "/etc/passwd", id="system-file"),
        pytest.param(lambda root, outside: "escape", id="symlink-dir-out"),
        pytest.param(lambda root, outside: "study/with-link", id="symlink-file-inside-folder"),
    ],
)
def test_escapes_are_refused(roots: tuple[Path, Path], tmp_path: Path, make_ref) -> None:
    root, outside = roots
    (root / "escape").symlink_to(outside / "secret", target_is_directory=True)
    (root / "study" / "with-link").mkdir()
    (root / "study" / "with-link" / "1.dcm").symlink_to(outside / "secret" / "1.dcm")
    with pytest.raises(PathNotAllowedError) as info:
        _resolver(root).resolve(make_ref(root, outside), workdir=tmp_path)
    assert str(outside) not in str(info.value)


def test_no_roots_configured(tmp_path: Path) -> None:
    with pytest.raises(PathNotAllowedError, match="CTPHASE_DICOM_ROOTS"):
        SeriesResolver(settings=Settings()).resolve(str(tmp_path), workdir=tmp_path)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, content in members.items():
            bundle.writestr(name, content)
    return buffer.getvalue()


class _Recorder:
    def __init__(self, body: bytes, status: int = 200) -> None:
        self.body, self.status = body, status
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, content=self.body)


def _ls_resolver(tmp_path: Path, handler: _Recorder, **overrides: object) -> SeriesResolver:
    values: dict[str, object] = {
        "dicom_roots": [tmp_path],
        "label_studio_url": "http://ls.local:8080/",
        "label_studio_api_key": "ls-token-123",
        "series_fetch_hosts": "pacs.example.org",
    }
    values.update(overrides)
    return SeriesResolver(
        settings=Settings(**values),  # type: ignore[arg-type]
        http=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def test_label_studio_local_files_zip(tmp_path: Path) -> None:
    handler = _Recorder(_zip({"series/1.dcm": DICOM_BYTES, "series/2.dcm": DICOM_BYTES}))
    workdir = tmp_path / "work"
    workdir.mkdir()
    resolved = _ls_resolver(tmp_path, handler).resolve("/data/local-files/?d=ct/p1/s1.zip", workdir=workdir)
    assert resolved.source == "label_studio"
    assert sorted(p.name for p in resolved.path.rglob("*.dcm")) == ["1.dcm", "2.dcm"]
    request = handler.requests[0]
    assert str(request.url) == "http://ls.local:8080/data/local-files/?d=ct/p1/s1.zip"
    assert request.headers["authorization"] == "Token ls-token-123"


def test_label_studio_upload_single_file(tmp_path: Path) -> None:
    handler = _Recorder(DICOM_BYTES)
    resolved = _ls_resolver(tmp_path, handler).resolve("http://ls.local:8080/data/upload/3/x.dcm", workdir=tmp_path)
    assert resolved.path == tmp_path / "series.dcm"
    assert resolved.path.read_bytes() == DICOM_BYTES


def test_allowed_host_gets_no_token(tmp_path: Path) -> None:
    handler = _Recorder(DICOM_BYTES)
    resolved = _ls_resolver(tmp_path, handler).resolve("https://PACS.example.org/s/1.dcm", workdir=tmp_path)
    assert resolved.source == "http"
    assert "authorization" not in handler.requests[0].headers


def test_other_host_refused(tmp_path: Path) -> None:
    handler = _Recorder(DICOM_BYTES)
    with pytest.raises(HostNotAllowedError, match="CTPHASE_SERIES_FETCH_HOSTS"):
        _ls_resolver(tmp_path, handler).resolve("https://evil.example.com/1.dcm", workdir=tmp_path)
    assert handler.requests == []


def test_label_studio_not_configured(tmp_path: Path) -> None:
    resolver = SeriesResolver(settings=Settings(dicom_roots=[tmp_path]))
    with pytest.raises(LabelStudioNotConfiguredError, match="CTPHASE_LABEL_STUDIO_URL"):
        resolver.resolve("/data/upload/1/x.zip", workdir=tmp_path)


def test_http_error_and_size_limit(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        _ls_resolver(tmp_path, _Recorder(b"", status=404)).resolve("/data/upload/1/x", workdir=tmp_path)
    with pytest.raises(DownloadTooLargeError):
        _ls_resolver(tmp_path, _Recorder(b"x" * 5000), fetch_max_bytes=1000).resolve(
            "/data/upload/1/x", workdir=tmp_path
        )


def test_zip_slip_refused(tmp_path: Path) -> None:
    handler = _Recorder(_zip({"../../evil.dcm": DICOM_BYTES}))
    with pytest.raises(UnsafeArchiveError):
        _ls_resolver(tmp_path, handler).resolve("/data/upload/1/x.zip", workdir=tmp_path)
    assert not (tmp_path.parent / "evil.dcm").exists()


def test_zip_bomb_refused(tmp_path: Path) -> None:
    handler = _Recorder(_zip({"a.dcm": b"\0" * 50_000}))
    with pytest.raises(UnsafeArchiveError, match="unpacks to"):
        _ls_resolver(tmp_path, handler, fetch_max_bytes=10_000).resolve("/data/upload/1/x.zip", workdir=tmp_path)


def test_timeout_is_a_fetch_error(tmp_path: Path) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    resolver = SeriesResolver(
        settings=Settings(label_studio_url="http://ls", label_studio_api_key="k"),
        http=httpx.Client(transport=httpx.MockTransport(slow)),
    )
    with pytest.raises(FetchError, match="timed out"):
        resolver.resolve("/data/upload/1/x", workdir=tmp_path)
