"""Discovery and sorting on real DICOM files (pydicom's test data) and on controlled synthetic series."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from backend.ml import dicom
from backend.ml.dicom import (
    CorruptDicomError,
    DicomReadError,
    MissingPixelDataError,
    MixedOrientationError,
    MultipleSeriesError,
    NoSeriesError,
    NotCTError,
    NotDicomError,
    UnsupportedTransferSyntaxError,
    read_series,
    scan,
)
from tests.reader.synthetic import copy_testdata, data_file, edited_copy, write_ct, write_series

CT2 = "dicomdirtests/77654033/CT2"  # out of z-order InstanceNumbers, irregular spacing
CT5N = "dicomdirtests/98892001/CT5N"  # InstanceNumber runs against the position


def _testdata_dir(relative: str) -> Path:
    return data_file("CT_small.dcm").parent / relative


def test_ct_small_header_fields() -> None:
    series = read_series(data_file("CT_small.dcm"))
    reference = pydicom.dcmread(data_file("CT_small.dcm"), stop_before_pixels=True)
    assert series.series_instance_uid == reference.SeriesInstanceUID
    assert series.study_instance_uid == reference.StudyInstanceUID
    assert series.modality == "CT"
    assert series.n_slices == 1
    assert (series.rows, series.columns) == (128, 128)
    assert series.slice_thickness_mm == pytest.approx(float(reference.SliceThickness))
    assert series.pixel_spacing_mm == pytest.approx(tuple(float(v) for v in reference.PixelSpacing))
    assert series.slices[0].frame is None
    # axial orientation: the position along the normal is the z of ImagePositionPatient
    assert series.slices[0].position_mm == pytest.approx(float(reference.ImagePositionPatient[2]))
    assert series.metadata.kvp == pytest.approx(float(reference.KVP))
    assert series.metadata.convolution_kernel == str(reference.ConvolutionKernel)
    assert series.problems == ()


def test_ct2_sorted_by_position_with_the_gap_reported(tmp_path: Path) -> None:
    # File names that sort in the opposite order of the positions: order must come from geometry.
    source = sorted(_testdata_dir(CT2).iterdir())
    positions = {p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in source}
    for rank, path in enumerate(sorted(source, key=lambda p: -positions[p])):
        shutil.copyfile(path, tmp_path / f"{rank:02d}_{path.name}")
    series = read_series(tmp_path)
    got = [s.position_mm for s in series.slices]
    assert got == sorted(positions.values())
    assert [s.instance_number for s in series.slices] == [18, 180, 181, 182]
    assert any("gap" in p and "202.50 mm" in p for p in series.problems), series.problems


def test_sort_uses_position_not_instance_number() -> None:
    series = read_series(_testdata_dir(CT5N))
    numbers = [s.instance_number for s in series.slices]
    positions = [s.position_mm for s in series.slices]
    assert positions == sorted(positions)  # type: ignore[type-var]
    assert numbers == [10, 9, 8, 7, 6]


def test_flipped_orientation_still_runs_feet_to_head(tmp_path: Path) -> None:
    # Row cosine (-1, 0, 0): the raw normal points to the feet; slices must still be ordered by increasing z.
    write_series(tmp_path, n=4, names=["d", "c", "b", "a"], orientation=(-1, 0, 0, 0, 1, 0))
    series = read_series(tmp_path)
    assert [s.position_mm for s in series.slices] == [0.0, 2.0, 4.0, 6.0]
    assert [s.path.name for s in series.slices] == ["d", "c", "b", "a"]


def test_oblique_series_sorted_along_its_normal(tmp_path: Path) -> None:
    # A gantry-tilted series: slice normal (0, sin, cos); positions step along the normal.
    tilt = np.deg2rad(20.0)
    orientation = (1.0, 0.0, 0.0, 0.0, float(np.cos(tilt)), float(-np.sin(tilt)))
    normal = np.array([0.0, np.sin(tilt), np.cos(tilt)])
    uid = generate_uid()
    for i, name in enumerate(["x3", "x1", "x2", "x0"]):
        step = int(name[1])
        write_ct(
            tmp_path / name,
            stored=np.zeros((8, 8), np.int16),
            series_uid=uid,
            position=tuple(float(v) for v in normal * 3.0 * step + np.array([5.0, -7.0, 11.0])),
            orientation=orientation,
            instance=10 - i,
        )
    series = read_series(tmp_path)
    assert [s.path.name for s in series.slices] == ["x0", "x1", "x2", "x3"]
    steps = np.diff([s.position_mm for s in series.slices])  # type: ignore[arg-type]
    assert steps == pytest.approx([3.0, 3.0, 3.0], abs=1e-3)


def test_instance_number_fallback_without_geometry(tmp_path: Path) -> None:
    uid = generate_uid()
    for name, number in [("a", 3), ("b", 1), ("c", 2)]:
        write_ct(tmp_path / name, stored=np.zeros((8, 8), np.int16), series_uid=uid, position=None, instance=number)
    series = read_series(tmp_path)
    assert [s.instance_number for s in series.slices] == [1, 2, 3]
    assert all(s.position_mm is None for s in series.slices)
    assert any("ordered by InstanceNumber" in p for p in series.problems)


def test_duplicates_reported(tmp_path: Path) -> None:
    # 693_J2KR and 693_UNCR are the same image (same SOPInstanceUID) in two transfer syntaxes.
    copy_testdata("693_J2KR.dcm", tmp_path / "a.dcm")
    copy_testdata("693_UNCR.dcm", tmp_path / "b.dcm")
    series = read_series(tmp_path)
    assert series.n_slices == 1
    assert any("duplicate image" in p for p in series.problems)
    # Two different images at one position: both kept, reported.
    other = tmp_path / "other"
    uid, _ = write_series(other, n=3)
    write_ct(other / "again.dcm", stored=np.zeros((32, 32), np.int16), series_uid=uid, position=(0, 0, 2.0))
    series = read_series(other)
    assert series.n_slices == 4
    assert any("duplicate positions" in p for p in series.problems)


def test_mixed_orientation_refused(tmp_path: Path) -> None:
    ct_small = data_file("CT_small.dcm")
    edited_copy(ct_small, tmp_path / "s1.dcm", SOPInstanceUID=generate_uid(), ImagePositionPatient=[0, 0, 0])
    edited_copy(ct_small, tmp_path / "s2.dcm", SOPInstanceUID=generate_uid(), ImagePositionPatient=[0, 0, 5])
    edited_copy(
        ct_small, tmp_path / "s3.dcm", SOPInstanceUID=generate_uid(), ImageOrientationPatient=[1, 0, 0, 0, 0, -1]
    )
    with pytest.raises(MixedOrientationError, match="mixed orientations") as caught:
        read_series(tmp_path)
    assert "2 ImageOrientationPatient values" in caught.value.reason
    assert caught.value.path == tmp_path
    # scan: the series is not returned; each of its files is skipped with the reason; other series survive.
    copy_testdata("CT_small.dcm", tmp_path / "other" / "ct.dcm")
    edited_copy(ct_small, tmp_path / "other" / "ct.dcm", SeriesInstanceUID=generate_uid())
    result = scan(tmp_path)
    assert [s.n_slices for s in result.series] == [1]
    assert {s.path.name for s in result.skipped} == {"s1.dcm", "s2.dcm", "s3.dcm"}
    assert all("mixed orientations" in s.reason for s in result.skipped)


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("MR_small.dcm", NotCTError, "modality 'MR' is not CT"),
        ("rtplan.dcm", NotCTError, "modality 'RTPLAN' is not CT"),
        ("waveform_ecg.dcm", NotCTError, "modality 'ECG' is not CT"),
        ("US1_J2KR.dcm", NotCTError, "modality 'US' is not CT"),
        ("liver.dcm", NotCTError, "modality 'SEG' is not CT"),
        ("eCT_Supplemental.dcm", None, ""),
        ("dicomdirtests/DICOMDIR", NotCTError, "DICOMDIR"),
        ("ExplVR_LitEndNoMeta.dcm", NotCTError, "RTPLAN"),  # preamble-less, still parsed
        ("rtplan_truncated.dcm", NotCTError, "modality 'RTPLAN' is not CT"),
        ("README.txt", NotDicomError, "not a DICOM file"),
    ],
)
def test_rejections_name_the_file_and_reason(name: str, error: type[DicomReadError] | None, words: str) -> None:
    path = data_file("CT_small.dcm").parent / name if "/" in name or name == "README.txt" else data_file(name)
    if error is None:
        assert read_series(path).n_slices >= 1
        return
    with pytest.raises(error) as caught:
        read_series(path)
    assert words in caught.value.reason
    assert caught.value.path == path
    assert str(caught.value) == f"{path}: {caught.value.reason}"


def test_localizer_refused() -> None:
    folder = data_file("CT_small.dcm").parent / "dicomdirtests/98892001/CT2N"
    result = scan(folder)
    assert result.series == ()
    assert len(result.skipped) == 2
    assert all("localizer" in s.reason for s in result.skipped)


def test_missing_pixel_data(tmp_path: Path) -> None:
    # A real CT header without pixel data (pydicom's DICOMDIR test image) and CT_small with Pixel Data removed.
    tiny = data_file("CT_small.dcm").parent / "dicomdirtests/TINY_ALPHA/PT000000/ST000000/SE000000/IM000000"
    with pytest.raises(MissingPixelDataError, match="no Pixel Data"):
        read_series(tiny)
    stripped = edited_copy(data_file("CT_small.dcm"), tmp_path / "nopix.dcm", PixelData=None)
    with pytest.raises(MissingPixelDataError, match="no Pixel Data") as caught:
        read_series(stripped)
    assert caught.value.path == stripped


def test_truncated_zero_byte_and_text_files(tmp_path: Path) -> None:
    raw = data_file("CT_small.dcm").read_bytes()
    (tmp_path / "cut_pixels.dcm").write_bytes(raw[: len(raw) - 5000])
    (tmp_path / "cut_header.dcm").write_bytes(raw[:1000])
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("patient list\nnothing to see\n")
    (tmp_path / "tiny").write_bytes(b"DI")
    expectations = {
        "cut_pixels.dcm": (CorruptDicomError, "truncated: pixel data needs 32768 bytes"),
        "cut_header.dcm": (CorruptDicomError, "ends inside its header"),
        "empty.dcm": (NotDicomError, "empty file (0 bytes)"),
        "notes.txt": (NotDicomError, "not a DICOM file"),
        "tiny": (NotDicomError, "not a DICOM file"),
    }
    for name, (error, words) in expectations.items():
        with pytest.raises(error) as caught:
            read_series(tmp_path / name)
        assert words in caught.value.reason, (name, caught.value.reason)
    result = scan(tmp_path)
    assert result.series == ()
    assert {s.path.name: s.reason for s in result.skipped}.keys() == expectations.keys()
    with pytest.raises(NoSeriesError, match="no readable CT series in 5 files"):
        read_series(tmp_path)


def test_series_with_a_truncated_slice_is_flagged(tmp_path: Path) -> None:
    uid, paths = write_series(tmp_path, n=5)
    paths[2].write_bytes(paths[2].read_bytes()[:-100])
    result = scan(tmp_path)
    (series,) = result.series
    assert series.series_instance_uid == uid
    assert series.n_slices == 4
    assert [s.path.name for s in result.skipped] == [paths[2].name]
    assert any("1 file(s) of this series skipped" in p and "truncated" in p for p in series.problems)


def test_unknown_transfer_syntax(tmp_path: Path) -> None:
    path = write_ct(tmp_path / "odd.dcm", stored=np.zeros((8, 8), np.int16), series_uid=generate_uid())
    raw = path.read_bytes()
    explicit, unknown = b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.9.9.9\x00"  # same length: meta stays valid
    assert raw.count(explicit) == 1
    path.write_bytes(raw.replace(explicit, unknown))
    with pytest.raises(UnsupportedTransferSyntaxError, match="not supported"):
        read_series(path)


@pytest.mark.parametrize("group", [0x0009, 0x0029])
def test_header_longer_than_the_head_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group: int) -> None:
    # A 48 KB private block before Pixel Data: the header no longer fits the head read. Before group 0028 the
    # walker cannot finish and pydicom reads the header; after it, Pixel Data is found at the end of the file.
    uid, paths = write_series(tmp_path, n=3)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.private_block(group, "CTPHASE TEST", create=True).add_new(0x01, "OB", b"\x01" * (3 * dicom.HEAD_BYTES))
        ds.save_as(path)
    assert paths[0].stat().st_size > 3 * dicom.HEAD_BYTES
    if group > 0x0028:

        def no_pydicom(*args: object, **kwargs: object) -> None:
            raise AssertionError("the walker should not need pydicom here")

        monkeypatch.setattr(dicom, "_header_from_pydicom", no_pydicom)
    series = read_series(tmp_path)
    assert series.series_instance_uid == uid
    assert [s.position_mm for s in series.slices] == [0.0, 2.0, 4.0]
    paths[1].write_bytes(paths[1].read_bytes()[:-10])
    if group > 0x0028:
        monkeypatch.undo()
    with pytest.raises(CorruptDicomError, match="truncated"):
        read_series(paths[1])


def test_preamble_less_ct_is_accepted(tmp_path: Path) -> None:
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    ds.preamble = None
    ds.file_meta = FileMetaDataset()
    ds.save_as(tmp_path / "raw.dcm", implicit_vr=True, little_endian=True)  # no preamble, no file meta
    assert (tmp_path / "raw.dcm").read_bytes()[128:132] != b"DICM"
    series = read_series(tmp_path / "raw.dcm")
    assert series.series_instance_uid == ds.SeriesInstanceUID


def test_enhanced_ct_frames() -> None:
    path = data_file("eCT_Supplemental.dcm")
    series = read_series(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence]
    assert series.n_slices == 2
    assert [s.frame for s in series.slices] == [int(np.argmin(z)), int(np.argmax(z))]
    assert [s.position_mm for s in series.slices] == sorted(z)
    assert series.slice_thickness_mm == pytest.approx(10.0)  # from the shared Pixel Measures functional group


def test_scan_groups_several_series_and_read_series_refuses_them(tmp_path: Path) -> None:
    uid_a, _ = write_series(tmp_path / "deep" / "er" / "a", n=3)
    uid_b, _ = write_series(tmp_path / "b", n=2, series_uid=None)
    copy_testdata("CT_small.dcm", tmp_path / "CT_small")  # no extension
    result = scan(tmp_path)
    counts = {s.series_instance_uid: s.n_slices for s in result.series}
    assert counts[uid_a] == 3
    assert counts[uid_b] == 2
    assert len(counts) == 3
    assert result.skipped == ()
    with pytest.raises(MultipleSeriesError, match="3 CT series"):
        read_series(tmp_path)


def test_missing_path() -> None:
    with pytest.raises(NoSeriesError, match="no such file or folder"):
        scan(Path("/nonexistent/ctphase"))


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "693_J2KR.dcm",
        "693_UNCI.dcm",
        "bad_sequence.dcm",
        "explicit_VR-UN.dcm",
        "J2K_pixelrep_mismatch.dcm",
        "MR_small.dcm",
        "rtplan.dcm",
        "emri_small.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_fast_header_walk_matches_pydicom(name: str) -> None:
    # The bounded head walker and the pydicom fallback must agree on every field discovery uses.
    path = data_file(name)
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(dicom.HEAD_BYTES)

    def outcome(read: object) -> object:
        try:
            header = read()  # type: ignore[operator]
        except DicomReadError as error:
            return type(error), error.reason
        except dicom._WalkError as error:
            return f"fallback: {error!r}"
        return header.series_uid, header.study_uid, header.frames

    with dicom._quiet():
        fast = outcome(lambda: dicom._header_from_walk(path, head, size))
        slow = outcome(lambda: dicom._header_from_pydicom(path, size, force=False))
    assert fast == slow, (fast, slow)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
@pytest.mark.parametrize("undefined", [False, True])
def test_fast_header_walk_handles_sequences(tmp_path: Path, syntax: str, undefined: bool) -> None:
    path = write_ct(
        tmp_path / "seq.dcm",
        stored=np.zeros((16, 16), np.int16),
        series_uid=generate_uid(),
        position=(1.5, 2.5, -3.25),
        transfer_syntax=syntax,
        extra={"ReferencedImageSequence": [_reference_item(), _reference_item()]},
    )
    if undefined:  # undefined-length sequence and items, with a nested sequence: the walker must skip them
        ds = pydicom.dcmread(path)
        ds["ReferencedImageSequence"].is_undefined_length = True
        for item in ds.ReferencedImageSequence:
            item.is_undefined_length_sequence_item = True
            item.PurposeOfReferenceCodeSequence = [Dataset()]
            item.PurposeOfReferenceCodeSequence[0].CodeValue = "121311"
            item["PurposeOfReferenceCodeSequence"].is_undefined_length = True
        ds.save_as(path)
        assert b"\xfe\xff\xdd\xe0" in path.read_bytes()  # a sequence delimitation item was written
    head = path.read_bytes()[: dicom.HEAD_BYTES]
    header = dicom._header_from_walk(path, head, path.stat().st_size)
    assert header.frames == dicom._header_from_pydicom(path, path.stat().st_size, force=False).frames
    assert header.frames[0].position == (1.5, 2.5, -3.25)


def _reference_item() -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = generate_uid()
    item.ImagePositionPatient = [9.0, 9.0, 9.0]  # nested: must not be taken for the image's own position
    return item
