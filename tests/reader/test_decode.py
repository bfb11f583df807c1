"""Decoding to HU, windowing and resizing, checked against expectations computed independently of the reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from backend.ml.dicom import (
    AIR_HU,
    DEFAULT_WINDOWS,
    CorruptDicomError,
    DicomReadError,
    load_slices,
    read_hu,
    read_series,
    resize,
    scan,
    window,
)
from tests.reader.synthetic import copy_testdata, data_file, edited_copy, pixel_data_offset, write_ct, write_series


def test_ct_small_hu_from_raw_bytes() -> None:
    # Stored values read straight from the file bytes, then the header's rescale applied by hand.
    path = data_file("CT_small.dcm")
    header = pydicom.dcmread(path, stop_before_pixels=True)
    offset = pixel_data_offset(path)
    raw = np.frombuffer(path.read_bytes(), dtype="<i2", count=128 * 128, offset=offset).reshape(128, 128)
    expected = raw.astype(np.float64) * float(header.RescaleSlope) + float(header.RescaleIntercept)
    assert float(header.RescaleIntercept) == -1024.0  # CT_small's documented rescale
    hu = read_hu(read_series(path), [0])
    assert hu.shape == (1, 128, 128)
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu[0], expected.astype(np.float32))
    assert hu[0, 64, 64] == float(raw[64, 64]) - 1024.0


@pytest.mark.parametrize(
    ("compressed", "uncompressed"), [("693_J2KR.dcm", "693_UNCR.dcm"), ("693_J2KI.dcm", "693_UNCI.dcm")]
)
def test_jpeg2000_matches_its_uncompressed_twin(compressed: str, uncompressed: str) -> None:
    # pydicom-data ships each JPEG 2000 image with the same image uncompressed (J2KI: the decoded lossy image).
    a = read_hu(read_series(data_file(compressed)), [0])
    b = read_hu(read_series(data_file(uncompressed)), [0])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_lossless_codecs_round_trip_ct_small(tmp_path: Path, syntax: str) -> None:
    source = data_file("CT_small.dcm")
    ds = pydicom.dcmread(source)
    ds.compress(syntax)
    ds.save_as(tmp_path / "compressed.dcm")
    assert pydicom.dcmread(tmp_path / "compressed.dcm", stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(
        read_hu(read_series(tmp_path / "compressed.dcm"), [0]), read_hu(read_series(source), [0])
    )


def test_deflated_file_is_read(tmp_path: Path) -> None:
    # Deflated explicit VR: the header walker hands over to pydicom, decoding falls back to a whole-file read.
    source = data_file("CT_small.dcm")
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm")
    assert source.read_bytes()[-100:] not in (tmp_path / "deflated.dcm").read_bytes()  # really compressed
    np.testing.assert_array_equal(
        read_hu(read_series(tmp_path / "deflated.dcm"), [0]), read_hu(read_series(source), [0])
    )


def test_jpeg_lossless_unsigned_12_bit_with_intercept() -> None:
    # bad_sequence.dcm: JPEG Lossless SV1, unsigned, BitsStored 12, intercept -1024.
    path = data_file("bad_sequence.dcm")
    ds = pydicom.dcmread(path)
    assert (ds.PixelRepresentation, ds.BitsStored, float(ds.RescaleIntercept)) == (0, 12, -1024.0)
    hu = read_hu(read_series(path), [0])[0]
    stored = ds.pixel_array.astype(np.float64)
    np.testing.assert_array_equal(hu, (stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.float32))
    # A zoomed abdominal slice: mostly soft tissue, some gas, nothing below air.
    assert float(hu.min()) >= -1024.0
    assert -1024.0 <= float(np.percentile(hu, 1)) < -800.0
    assert 0.0 < float(np.median(hu)) < 100.0


def test_plausible_hu_for_air_and_tissue() -> None:
    hu = read_hu(read_series(data_file("693_UNCR.dcm")), [0])[0]
    corner = hu[:32, :32]  # outside the patient: padding / air
    centre = hu[224:288, 224:288]  # inside the abdomen
    assert float(np.median(corner)) == pytest.approx(AIR_HU, abs=50.0)
    assert -200.0 < float(np.median(centre)) < 200.0


def test_signed_and_unsigned_storage_give_the_same_hu(tmp_path: Path) -> None:
    hu_values = np.array([[-1024, -1000, -100, 0], [40, 60, 400, 3071]], dtype=np.int32)
    uid = generate_uid()
    write_ct(
        tmp_path / "u" / "1.dcm", stored=(hu_values + 1024).astype(np.uint16), series_uid=uid, signed=False
    )  # unsigned, intercept -1024
    write_ct(tmp_path / "s" / "1.dcm", stored=hu_values.astype(np.int16), series_uid=uid, intercept=0.0)
    unsigned = read_hu(read_series(tmp_path / "u"), [0])[0]
    signed = read_hu(read_series(tmp_path / "s"), [0])[0]
    np.testing.assert_array_equal(unsigned, hu_values.astype(np.float32))
    np.testing.assert_array_equal(signed, hu_values.astype(np.float32))


def test_bits_stored_12_masks_and_sign_extends(tmp_path: Path) -> None:
    # Words with garbage above bit 11 (as left by old overlay planes): only the low 12 bits are the value.
    signed_words = np.array([[0x0FFB, 0x07FF, 0xF005, 0x0800]], dtype=np.uint16)  # -5, 2047, 5, -2048
    unsigned_words = np.array([[0x0FFB, 0xF005, 0x1001, 0x0000]], dtype=np.uint16)  # 4091, 5, 1, 0
    write_ct(
        tmp_path / "s" / "a.dcm",
        stored=signed_words.view(np.int16),
        series_uid=generate_uid(),
        bits_stored=12,
        intercept=0.0,
    )
    write_ct(tmp_path / "u" / "a.dcm", stored=unsigned_words, series_uid=generate_uid(), bits_stored=12, signed=False)
    signed = read_hu(read_series(tmp_path / "s"), [0])[0]
    unsigned = read_hu(read_series(tmp_path / "u"), [0])[0]
    np.testing.assert_array_equal(signed, [[-5.0, 2047.0, 5.0, -2048.0]])
    np.testing.assert_array_equal(unsigned, [[4091.0 - 1024.0, 5.0 - 1024.0, 1.0 - 1024.0, -1024.0]])


def test_rescale_slope(tmp_path: Path) -> None:
    stored = np.array([[0, 100, 2000, 4000]], dtype=np.uint16)
    write_ct(tmp_path / "a.dcm", stored=stored, series_uid=generate_uid(), signed=False, slope=0.5, intercept=-1000.0)
    hu = read_hu(read_series(tmp_path / "a.dcm"), [0])[0]
    np.testing.assert_array_equal(hu, stored * 0.5 - 1000.0)


def test_pixel_padding_value_becomes_air(tmp_path: Path) -> None:
    source = data_file("CT_small.dcm")
    ds = pydicom.dcmread(source)
    assert ds.PixelPaddingValue == -2000
    arr = ds.pixel_array.copy()
    arr[:10, :] = -2000  # padding rows
    ds.PixelData = arr.astype("<i2").tobytes()
    ds.save_as(tmp_path / "padded.dcm")
    hu = read_hu(read_series(tmp_path / "padded.dcm"), [0])[0]
    assert np.all(hu[:10] == AIR_HU)
    np.testing.assert_array_equal(hu[10:], arr[10:].astype(np.float32) - 1024.0)
    # Unsigned storage with a padding range: every stored value in [0, 10] is padding.
    stored = np.array([[0, 5, 10, 11, 1024, 2048]], dtype=np.uint16)
    write_ct(
        tmp_path / "range.dcm", stored=stored, series_uid=generate_uid(), signed=False, padding=0, padding_limit=10
    )
    hu = read_hu(read_series(tmp_path / "range.dcm"), [0])[0]
    np.testing.assert_array_equal(hu, [[AIR_HU, AIR_HU, AIR_HU, 11 - 1024.0, 0.0, 1024.0]])


def test_693_padding_value_is_applied() -> None:
    path = data_file("693_UNCR.dcm")
    ds = pydicom.dcmread(path)
    padded = ds.pixel_array == int(ds.PixelPaddingValue)
    assert padded.any()
    hu = read_hu(read_series(path), [0])[0]
    assert np.all(hu[padded] == AIR_HU)
    np.testing.assert_array_equal(hu[~padded], ds.pixel_array[~padded].astype(np.float32) + float(ds.RescaleIntercept))


def test_enhanced_ct_per_frame_rescale(tmp_path: Path) -> None:
    source = data_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(source)
    stored = ds.pixel_array.astype(np.float64)  # [2, 512, 512]
    # Give each frame its own intercept in the per-frame groups (the shared group keeps -1024).
    for frame, intercept in enumerate((-1000.0, -900.0)):
        transform = pydicom.Dataset()
        transform.RescaleIntercept = intercept
        transform.RescaleSlope = 1.0
        transform.RescaleType = "HU"
        ds.PerFrameFunctionalGroupsSequence[frame].PixelValueTransformationSequence = [transform]
    ds.save_as(tmp_path / "enhanced.dcm")
    series = read_series(tmp_path / "enhanced.dcm")
    hu = read_hu(series, range(series.n_slices))
    for row, ref in enumerate(series.slices):
        assert ref.frame is not None
        np.testing.assert_array_equal(hu[row], (stored[ref.frame] + (-1000.0, -900.0)[ref.frame]).astype(np.float32))
    # The unmodified file: the shared group's intercept applies to both frames.
    original = read_series(source)
    hu = read_hu(original, [0, 1])
    for row, ref in enumerate(original.slices):
        np.testing.assert_array_equal(hu[row], (stored[ref.frame] - 1024.0).astype(np.float32))  # type: ignore[index]


def test_read_hu_decodes_only_the_requested_files(tmp_path: Path) -> None:
    _, paths = write_series(tmp_path, n=6)
    series = read_series(tmp_path)
    for path in paths[1:]:
        path.write_bytes(b"gone")  # any read of these would fail
    hu = read_hu(series, [0, 0])
    np.testing.assert_array_equal(hu, np.full((2, 32, 32), 1000.0 - 1024.0, np.float32))
    with pytest.raises(CorruptDicomError) as caught:
        read_hu(series, [3])
    assert caught.value.path == paths[3]


def test_read_hu_order_and_errors(tmp_path: Path) -> None:
    write_series(tmp_path, n=5, names=["e", "d", "c", "b", "a"])
    series = read_series(tmp_path)
    hu = read_hu(series, [4, 0, 2])
    assert [float(h[0, 0]) for h in hu] == [1004.0 - 1024.0, 1000.0 - 1024.0, 1002.0 - 1024.0]
    with pytest.raises(IndexError, match="out of range"):
        read_hu(series, [5])
    with pytest.raises(IndexError):
        read_hu(series, [-1])
    (tmp_path / "e").unlink()
    with pytest.raises(DicomReadError, match="cannot read"):
        read_hu(series, [0])


def test_corrupt_compressed_pixel_data(tmp_path: Path) -> None:
    raw = data_file("693_J2KR.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[: len(raw) // 2])
    series = read_series(tmp_path / "cut.dcm")  # encapsulated: the header alone cannot tell
    with pytest.raises(CorruptDicomError, match="cannot decode pixel data") as caught:
        read_hu(series, [0])
    assert caught.value.path == tmp_path / "cut.dcm"


def test_window_values_and_channels() -> None:
    hu = np.array([[[-1024.0, -150.0, 50.0, 150.0, 250.0, 3000.0]]], dtype=np.float32)
    out = window(hu)
    assert out.shape == (1, 1, 1, 6)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 0.0, 0.5, 0.75, 1.0, 1.0], atol=1e-6)
    two = window(hu, [(50.0, 400.0), (-600.0, 1500.0)])
    assert two.shape == (1, 2, 1, 6)
    np.testing.assert_allclose(two[0, 1, 0], np.clip((hu[0, 0] + 1350.0) / 1500.0, 0, 1), atol=1e-6)
    assert DEFAULT_WINDOWS == ((50.0, 400.0),)
    with pytest.raises(ValueError, match="width > 0"):
        window(hu, [(0.0, 0.0)])
    with pytest.raises(ValueError, match=r"\[n, y, x\]"):
        window(hu[0])


def test_resize_shapes_and_antialiasing() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((3, 2, 128, 96), dtype=np.float32)
    assert resize(images, 64).shape == (3, 2, 64, 64)
    assert resize(images, 224).shape == (3, 2, 224, 224)
    constant = np.full((1, 1, 100, 100), 0.25, np.float32)
    np.testing.assert_allclose(resize(constant, 37), 0.25, atol=1e-6)
    # A one-pixel checkerboard shrunk 8x: antialiasing averages it to ~0.5 everywhere (no aliasing).
    board = (np.indices((256, 256)).sum(axis=0) % 2).astype(np.float32)[None, None]
    small = resize(board, 32)
    assert float(small.std()) < 0.02
    assert float(small.mean()) == pytest.approx(0.5, abs=0.01)


def test_load_slices(tmp_path: Path) -> None:
    write_series(tmp_path, n=20, size=64)
    series = read_series(tmp_path)
    windows = [(50.0, 400.0), (0.0, 2000.0)]
    indices = [19, 3, 7, 0, 12]
    out = load_slices(series, indices, windows=windows, image_size=48, chunk_size=2)
    assert out.shape == (5, 2, 48, 48)
    assert out.dtype == np.float32
    assert float(out.min()) >= 0.0
    assert float(out.max()) <= 1.0
    hu = np.array([1000.0 + i - 1024.0 for i in indices], np.float32)
    np.testing.assert_allclose(out[:, 0, 20, 20], np.clip((hu + 150.0) / 400.0, 0, 1), atol=1e-5)
    np.testing.assert_allclose(out[:, 1, 20, 20], np.clip((hu + 1000.0) / 2000.0, 0, 1), atol=1e-5)
    assert load_slices(series, [], windows=windows, image_size=48).shape == (0, 2, 48, 48)


def test_load_slices_on_real_ct() -> None:
    series = read_series(data_file("693_J2KR.dcm"))
    out = load_slices(series, [0], windows=DEFAULT_WINDOWS, image_size=224)
    assert out.shape == (1, 1, 224, 224)
    assert float(out.min()) >= 0.0
    assert float(out.max()) <= 1.0
    assert 0.05 < float(out.mean()) < 0.95


def test_scan_then_read_a_compressed_folder(tmp_path: Path) -> None:
    for name in ("693_J2KR.dcm", "bad_sequence.dcm", "explicit_VR-UN.dcm", "J2K_pixelrep_mismatch.dcm"):
        copy_testdata(name, tmp_path / name)
    edited = edited_copy(data_file("CT_small.dcm"), tmp_path / "ct_small_copy.dcm", SeriesInstanceUID=generate_uid())
    result = scan(tmp_path)
    assert len(result.series) == 5
    assert result.skipped == ()
    for series in result.series:
        hu = read_hu(series, range(series.n_slices))
        assert hu.shape == (series.n_slices, series.rows, series.columns)
        assert np.isfinite(hu).all()
        assert float(hu.min()) >= -3000.0
        assert float(hu.max()) <= 4000.0
    assert edited in {s.slices[0].path for s in result.series}


@pytest.fixture(scope="module")
def phantom_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A small uncompressed phantom series and its HU (the phantom writer is another module's code)."""
    phantom = pytest.importorskip("backend.ml.phantom")
    folder = tmp_path_factory.mktemp("phantom") / "explicit_little"
    phantom.write_phantom_series(folder, phase="arterial", seed=3, n_slices=10, matrix=64)
    series = read_series(folder)
    return folder.parent, read_hu(series, range(series.n_slices))


@pytest.mark.parametrize("syntax", ["jpeg_lossless", "jpegls", "jpeg2000", "rle", "implicit_little"])
def test_phantom_transfer_syntaxes_decode_to_the_same_hu(
    phantom_reference: tuple[Path, np.ndarray], syntax: str
) -> None:
    # Same seed, another encoding: the phantom's own JPEG Lossless encoder, pydicom's encoders; decoded by plugins.
    from backend.ml.phantom import write_phantom_series

    root, reference = phantom_reference
    record = write_phantom_series(
        root / syntax, phase="arterial", seed=3, n_slices=10, matrix=64, transfer_syntax=syntax
    )
    series = read_series(root / syntax)
    assert pydicom.dcmread(series.slices[0].path, stop_before_pixels=True).file_meta.TransferSyntaxUID != (
        "1.2.840.10008.1.2.1"
    )
    assert series.n_slices == record.n_slices == 10
    np.testing.assert_array_equal(read_hu(series, range(series.n_slices)), reference)
