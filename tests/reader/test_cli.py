"""``ctphase scan`` over a folder mixing CT series, non-CT DICOM and junk, called in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest

from backend.cli import main
from tests.reader.synthetic import copy_testdata, data_file, write_series

CT2 = "dicomdirtests/77654033/CT2"


@pytest.fixture
def mixed_folder(tmp_path: Path) -> tuple[Path, dict[str, int], set[str]]:
    """A folder with 3 CT series, non-CT files and junk; returns (root, {series uid: slices}, skipped paths)."""
    root = tmp_path / "incoming"
    series: dict[str, int] = {}
    shutil.copytree(data_file("CT_small.dcm").parent / CT2, root / "patient" / "ct2")
    series[pydicom.dcmread(next((root / "patient" / "ct2").iterdir())).SeriesInstanceUID] = 4
    copy_testdata("CT_small.dcm", root / "single" / "IMG0001")
    series[pydicom.dcmread(data_file("CT_small.dcm"), stop_before_pixels=True).SeriesInstanceUID] = 1
    uid, _ = write_series(root / "a" / "b" / "c", n=7, names=[f"{i}" for i in range(7)])
    series[uid] = 7
    skipped = {
        "other/mr.dcm": copy_testdata("MR_small.dcm", root / "other" / "mr.dcm"),
        "other/plan": copy_testdata("rtplan.dcm", root / "other" / "plan"),
        "other/us_j2k.dcm": copy_testdata("US1_J2KR.dcm", root / "other" / "us_j2k.dcm"),
        "DICOMDIR": copy_testdata("dicomdirtests/DICOMDIR", root / "DICOMDIR"),
    }
    (root / "junk").mkdir()
    (root / "junk" / "empty.dcm").write_bytes(b"")
    (root / "junk" / "notes.txt").write_text("not an image\n")
    raw = data_file("CT_small.dcm").read_bytes()
    (root / "junk" / "truncated.dcm").write_bytes(raw[: len(raw) // 2])
    (root / "junk" / "header_only.dcm").write_bytes(raw[:700])
    names = {"junk/empty.dcm", "junk/notes.txt", "junk/truncated.dcm", "junk/header_only.dcm", *skipped}
    return root, series, names


def test_scan_table(mixed_folder: tuple[Path, dict[str, int], set[str]], capsys: pytest.CaptureFixture[str]) -> None:
    root, series, skipped = mixed_folder
    assert main(["scan", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"3 CT series ({sum(series.values())} slices)" in out
    assert f"{len(skipped)} file(s) skipped" in out
    lines = out.splitlines()
    for uid, n_slices in series.items():
        (line,) = [line for line in lines if line.rstrip().endswith(uid)]
        assert int(line.split()[0]) == n_slices
    skipped_lines = lines[lines.index("skipped:") + 1 :]
    assert {line.strip().split(": ", 1)[0] for line in skipped_lines} == skipped
    assert all(len(line.split(": ", 1)[1]) > 5 for line in skipped_lines)  # every file has a reason
    assert "gap" in out  # the CT2 series' problem is shown


def test_scan_json(mixed_folder: tuple[Path, dict[str, int], set[str]], capsys: pytest.CaptureFixture[str]) -> None:
    root, series, skipped = mixed_folder
    assert main(["scan", str(root), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert {s["series_instance_uid"]: s["n_slices"] for s in document["series"]} == series
    reasons = {s["path"]: s["reason"] for s in document["skipped"]}
    assert set(reasons) == skipped
    assert "modality 'MR' is not CT" in reasons["other/mr.dcm"]
    assert "empty file" in reasons["junk/empty.dcm"]
    assert "not a DICOM file" in reasons["junk/notes.txt"]
    assert "truncated" in reasons["junk/truncated.dcm"]
    assert "truncated" in reasons["junk/header_only.dcm"]
    assert "DICOMDIR" in reasons["DICOMDIR"]
    for entry in document["series"]:
        assert entry["modality"] == "CT"
        assert set(entry) >= {"study_instance_uid", "slice_thickness_mm", "series_description", "problems"}
    ct2 = next(s for s in document["series"] if s["n_slices"] == 4)
    assert ct2["folder"] == "patient/ct2"
    assert ct2["series_description"] == "Routine Brain"
    assert any("gap" in p for p in ct2["problems"])


def test_scan_never_prints_patient_identifiers(
    mixed_folder: tuple[Path, dict[str, int], set[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _, _ = mixed_folder
    names = {str(pydicom.dcmread(p, stop_before_pixels=True).PatientName) for p in root.rglob("IMG*")}
    assert main(["scan", str(root), "--json"]) == 0
    assert main(["scan", str(root)]) == 0
    captured = capsys.readouterr()
    for name in names - {""}:
        assert name not in captured.out
        assert name not in captured.err


def test_scan_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_scan_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(tmp_path)]) == 0
    assert "0 CT series (0 slices)" in capsys.readouterr().out
