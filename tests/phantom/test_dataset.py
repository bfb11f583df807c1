"""Dataset writing: labels.csv, determinism, DICOM validity, study structure, single series, CLI and errors."""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from backend.cli import phantom as phantom_cli
from backend.ml.phantom import (
    DEFAULT_MAX_SLICES,
    LABEL_COLUMNS,
    PhantomError,
    generate_dataset,
    plan_series,
    read_labels,
    render_hu,
    write_labels,
    write_phantom_series,
)
from backend.ml.phases import PHASES

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _tiny(root: Path, seed: int) -> list:
    return generate_dataset(root, n_per_class=1, seed=seed, matrix_sizes=(48,), max_slices=3, workers=1)


def test_same_seed_gives_identical_files_and_labels(tmp_path: Path) -> None:
    first = _tiny(tmp_path / "a", seed=3)
    second = _tiny(tmp_path / "b", seed=3)
    assert first == second
    assert (tmp_path / "a" / "labels.csv").read_bytes() == (tmp_path / "b" / "labels.csv").read_bytes()
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    other = _tiny(tmp_path / "c", seed=4)
    assert {r.series_instance_uid for r in other}.isdisjoint({r.series_instance_uid for r in first})


def test_parallel_workers_write_the_same_dataset(tmp_path: Path) -> None:
    serial = generate_dataset(tmp_path / "s", n_per_class=1, seed=8, matrix_sizes=(48,), max_slices=3, workers=1)
    parallel = generate_dataset(tmp_path / "p", n_per_class=1, seed=8, matrix_sizes=(48,), max_slices=3, workers=2)
    assert serial == parallel
    assert _tree_digest(tmp_path / "s") == _tree_digest(tmp_path / "p")


def test_labels_csv_round_trip(phantom_dataset: Path, tmp_path: Path) -> None:
    records = read_labels(phantom_dataset / "labels.csv")
    header = (phantom_dataset / "labels.csv").read_text(encoding="utf-8").splitlines()[0]
    assert tuple(header.split(",")) == LABEL_COLUMNS
    copy = tmp_path / "labels.csv"
    write_labels(copy, records)
    assert read_labels(copy) == records
    assert copy.read_bytes() == (phantom_dataset / "labels.csv").read_bytes()


def test_read_labels_rejects_bad_files(tmp_path: Path) -> None:
    with pytest.raises(PhantomError, match="cannot read"):
        read_labels(tmp_path / "missing.csv")
    (tmp_path / "columns.csv").write_text("series_instance_uid,phase\n1.2,venous\n", encoding="utf-8")
    with pytest.raises(PhantomError, match="missing column"):
        read_labels(tmp_path / "columns.csv")
    row = "1.2,1.3,{phase},sub,3,5,abdomen,rle,desc,{wrong},a/b\n"
    (tmp_path / "phase.csv").write_text(",".join(LABEL_COLUMNS) + "\n" + row.format(phase="late", wrong="false"))
    with pytest.raises(PhantomError, match=r"line 2.*unknown phase 'late'"):
        read_labels(tmp_path / "phase.csv")
    (tmp_path / "bool.csv").write_text(",".join(LABEL_COLUMNS) + "\n" + row.format(phase="venous", wrong="maybe"))
    with pytest.raises(PhantomError, match="description_is_wrong"):
        read_labels(tmp_path / "bool.csv")


def test_fixture_dataset_layout_and_dicom_validity(phantom_dataset: Path) -> None:
    records = read_labels(phantom_dataset / "labels.csv")
    assert Counter(record.phase for record in records) == dict.fromkeys(PHASES, 2)
    assert [r.series_instance_uid for r in records] == sorted(r.series_instance_uid for r in records)
    for record in records:
        folder = phantom_dataset / record.relative_dir
        files = sorted(path for path in folder.iterdir() if path.is_file())
        assert len(files) == record.n_slices
        datasets = [pydicom.dcmread(path) for path in files]
        for ds in datasets:
            assert ds.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
            assert ds.SOPClassUID == CT_IMAGE_STORAGE
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.Modality == "CT"
            assert ds.SeriesInstanceUID == record.series_instance_uid
            assert ds.StudyInstanceUID == record.study_instance_uid
            assert (ds.get("SeriesDescription") or "") == record.series_description
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert float(ds.SliceThickness) == record.slice_thickness_mm
            assert ds.PatientName.family_name == "PHANTOM"
            for keyword in ("PixelSpacing", "RescaleSlope", "RescaleIntercept", "WindowCenter", "KVP", "Manufacturer"):
                assert keyword in ds, keyword
            assert "ConvolutionKernel" in ds
            assert "FrameOfReferenceUID" in ds
        z = sorted(float(ds.ImagePositionPatient[2]) for ds in datasets)
        steps = np.diff(z)
        assert np.allclose(steps, steps[0], atol=1e-3)
        assert steps[0] > 0
        assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
        assert all(float(ds.SliceLocation) == float(ds.ImagePositionPatient[2]) for ds in datasets)


def test_studies_share_frame_of_reference_and_follow_acquisition_order(phantom_dataset: Path) -> None:
    order = ("native", "early_arterial", "late_arterial", "transitional", "portal_venous", "delayed")
    by_study: dict[str, list[tuple[int, str, str, str]]] = {}
    for record in read_labels(phantom_dataset / "labels.csv"):
        path = next(p for p in (phantom_dataset / record.relative_dir).iterdir() if p.is_file())
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_study.setdefault(record.study_instance_uid, []).append(
            (int(ds.SeriesNumber), str(ds.AcquisitionTime), record.subphase, str(ds.FrameOfReferenceUID))
        )
    assert any(len(series) > 1 for series in by_study.values())
    for series in by_study.values():
        series.sort()
        assert [s[1] for s in series] == sorted(s[1] for s in series)
        assert [order.index(s[2]) for s in series] == sorted(order.index(s[2]) for s in series)
        assert len({s[3] for s in series}) == 1


def test_contrast_tags_are_plausible(phantom_dataset: Path) -> None:
    for record in read_labels(phantom_dataset / "labels.csv"):
        path = next(p for p in (phantom_dataset / record.relative_dir).iterdir() if p.is_file())
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        start = ds.get("ContrastBolusStartTime")
        if start:
            assert record.phase != "non_contrast"
            assert ds.ContrastBolusAgent
            assert str(ds.AcquisitionTime) > str(start)


def test_write_phantom_series_exact_slices_at_512(tmp_path: Path) -> None:
    record = write_phantom_series(tmp_path / "s", phase="arterial", seed=4, n_slices=3, transfer_syntax="jpegls")
    files = sorted((tmp_path / "s").iterdir())
    assert len(files) == record.n_slices == 3
    assert record.relative_dir == "."
    assert record.phase == "arterial"
    assert record.subphase == "late_arterial"
    ds = pydicom.dcmread(files[0])
    assert (ds.Rows, ds.Columns) == (512, 512)
    assert str(ds.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.80"
    with pytest.raises(PhantomError, match="not empty"):
        write_phantom_series(tmp_path / "s", phase="arterial", seed=4, n_slices=3)


def test_plan_series_validates_options() -> None:
    with pytest.raises(PhantomError, match="not a sub-phase"):
        plan_series(phase="venous", seed=1, subphase="delayed")
    with pytest.raises(PhantomError, match="unknown transfer syntax"):
        plan_series(phase="venous", seed=1, transfer_syntax="jpeg_baseline")
    with pytest.raises(PhantomError, match="unknown coverage"):
        plan_series(phase="venous", seed=1, coverage="head")
    with pytest.raises(ValueError, match="unknown phase"):
        plan_series(phase="portal", seed=1)
    others = {plan_series(phase="others", seed=seed).subphase for seed in range(30)}
    assert others == {"delayed", "early_arterial", "transitional"}


def test_generate_dataset_refuses_non_empty_folder_and_bad_options(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(PhantomError, match="not empty"):
        generate_dataset(tmp_path / "full", n_per_class=1, seed=1)
    with pytest.raises(PhantomError, match="compression"):
        generate_dataset(tmp_path / "new", n_per_class=1, seed=1, compression="lossy")
    with pytest.raises(PhantomError, match="n_per_class"):
        generate_dataset(tmp_path / "new", n_per_class=0, seed=1)


def test_render_hu_subset_matches_full_render() -> None:
    plan = plan_series(phase="venous", seed=21, n_slices=6, matrix=64)
    full = render_hu(plan)
    part = render_hu(plan, indices=[4, 1])
    np.testing.assert_array_equal(part.hu, full.hu[[4, 1]])
    np.testing.assert_array_equal(part.geometry.z_mm, full.geometry.z_mm[[4, 1]])
    assert np.all(np.diff(full.geometry.z_mm) > 0)
    assert replace(plan, n_slices=2).s_positions_mm.shape == (2,)


def test_cli_writes_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    phantom_cli.register(parser.add_subparsers())
    out = tmp_path / "cli"
    options = ["--n-per-class", "1", "--seed", "5", "--matrix", "40", "--max-slices", "2", "--workers", "1"]
    args = parser.parse_args(["phantom", str(out), *options, "--compression", "none"])
    assert args.func(args) == 0
    assert "wrote 4 series" in capsys.readouterr().out
    records = read_labels(out / "labels.csv")
    assert {r.transfer_syntax for r in records} == {"explicit_little"}
    assert args.func(args) == 2  # the folder is no longer empty
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["phantom", str(out), "--n-per-class", "1", "--matrix", "12"])
    defaults = parser.parse_args(["phantom", str(out), "--n-per-class", "1"])
    assert defaults.max_slices == DEFAULT_MAX_SLICES
    assert defaults.matrix is None
