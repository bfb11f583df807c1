"""Every transfer syntax and rescale convention decodes (pydicom + pylibjpeg/pyjpegls) to the same HU."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from backend.ml.phantom import TRANSFER_SYNTAXES, plan_series, render_hu, write_series
from backend.ml.phantom_codec import JpegLosslessEncodeError, encode_jpeg_lossless_sv1
from tests.phantom.helpers import read_volume

RESCALES = ("u12", "u16", "s16", "s16_m1024", "s12", "u16_half")


@pytest.mark.parametrize("rescale", RESCALES)
def test_all_transfer_syntaxes_decode_to_identical_hu(tmp_path: Path, rescale: str) -> None:
    base = plan_series(phase="others", subphase="delayed", seed=5, n_slices=3, matrix=96, coverage="abdomen_pelvis")
    base = replace(base, rescale=rescale, circular_fov=True)
    expected = render_hu(base).hu
    for name, uid in TRANSFER_SYNTAXES.items():
        folder = tmp_path / name
        write_series(replace(base, transfer_syntax=name), folder)
        hu, datasets = read_volume(folder)
        assert {str(ds.file_meta.TransferSyntaxUID) for ds in datasets} == {uid}
        np.testing.assert_array_equal(hu, expected, err_msg=f"{rescale} / {name}")


def test_signed_padding_and_12_bit_limits(tmp_path: Path) -> None:
    plan = replace(
        plan_series(phase="others", subphase="delayed", seed=9, n_slices=2, matrix=64),
        rescale="s16_m1024",
        circular_fov=True,
    )
    write_series(plan, tmp_path / "s")
    _, datasets = read_volume(tmp_path / "s")
    ds = datasets[0]
    assert ds.PixelRepresentation == 1
    assert ds.PixelPaddingValue == -2000
    assert ds.pixel_array.min() == -2000  # outside the reconstruction circle: -3024 HU
    twelve = replace(plan, rescale="u12")
    write_series(twelve, tmp_path / "u12")
    hu, datasets = read_volume(tmp_path / "u12")
    assert datasets[0].BitsStored == 12
    assert datasets[0].pixel_array.min() >= 0
    assert datasets[0].pixel_array.max() <= 4095
    assert hu.min() >= -1024.0


@pytest.mark.parametrize("precision", [10, 12, 16])
def test_jpeg_lossless_encoder_round_trip_edge_cases(precision: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    rng = np.random.default_rng(precision)
    top = (1 << precision) - 1
    images = [
        np.zeros((7, 5), dtype=np.uint16),
        np.full((4, 9), top, dtype=np.uint16),
        rng.integers(0, top + 1, (33, 17)).astype(np.uint16),  # incompressible: long Huffman codes
        np.tile(np.array([0, top], dtype=np.uint16), (6, 6)),  # maximal differences
    ]
    for image in images:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.Rows, ds.Columns = image.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = precision
        ds.HighBit = precision - 1
        ds.PixelRepresentation = 0
        ds.PixelData = encapsulate([encode_jpeg_lossless_sv1(image, precision=precision)])
        np.testing.assert_array_equal(ds.pixel_array, image)


def test_jpeg_lossless_encoder_rejects_bad_input() -> None:
    with pytest.raises(JpegLosslessEncodeError, match="2-D integer"):
        encode_jpeg_lossless_sv1(np.zeros((2, 2, 2), dtype=np.uint16), precision=16)
    with pytest.raises(JpegLosslessEncodeError, match="precision"):
        encode_jpeg_lossless_sv1(np.zeros((2, 2), dtype=np.uint16), precision=17)


def test_pydicom_reads_every_file_of_the_fixture_dataset(phantom_dataset: Path) -> None:
    files = [path for path in phantom_dataset.rglob("*") if path.is_file() and path.name != "labels.csv"]
    assert files
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
