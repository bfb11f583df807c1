"""The prediction pipeline on small DICOM series with a tiny network: sampling, voting, errors, CSV round trip."""

from __future__ import annotations

import argparse
import csv
import threading

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from backend.cli.predict import register
from backend.ml.dicom import CorruptDicomError, NoSeriesError, load_slices, read_series, scan
from backend.ml.evaluate import run_evaluation
from backend.ml.network import Preset, build_manifest, create_network, load_model, save_model
from backend.ml.phases import PHASES
from backend.ml.predict import (
    PREDICTION_CSV_COLUMNS,
    PredictOptions,
    predict_many,
    predict_series,
    second_look_threshold,
)
from backend.ml.sampling import DEFAULT_SECOND_LOOK_BELOW, sample_indices
from backend.ml.series_head import SeriesHead
from backend.ml.voting import head_features, vote

ROWS = 24


def write_ct_series(folder, *, n_slices, level_hu, corrupt=False, seed=0):
    """A small axial CT series: a disc of `level_hu` in air, one file per slice; `corrupt` = undecodable JPEG 2000."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    series_uid, study_uid = generate_uid(), generate_uid()
    yy, xx = np.mgrid[:ROWS, :ROWS]
    disc = (yy - ROWS / 2) ** 2 + (xx - ROWS / 2) ** 2 < (ROWS / 3) ** 2
    for i in range(n_slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = JPEG2000Lossless if corrupt else ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{i:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SeriesNumber, ds.InstanceNumber = 1, i + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, float(-5 * i)]  # written head -> feet; the reader must sort
        ds.SliceThickness, ds.PixelSpacing = 5, [1.5, 1.5]
        ds.Rows = ds.Columns = ROWS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        hu = np.where(disc, level_hu + 20 * rng.standard_normal((ROWS, ROWS)), -1000)
        if corrupt:
            ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51 not a codestream" * 4])
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)
    return series_uid


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    preset = Preset(name="tiny", arch="test_efficientnet", image_size=32, windows=((50.0, 400.0), (40.0, 80.0)))
    model_dir = tmp_path_factory.mktemp("model") / "tiny"
    save_model(model_dir, network=create_network(preset), manifest=build_manifest(preset, fingerprint="t", metrics={}))
    return model_dir


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three readable series of different lengths and one whose pixel data cannot be decoded."""
    root = tmp_path_factory.mktemp("series")
    uids = {
        "a": write_ct_series(root / "a", n_slices=40, level_hu=40, seed=1),
        "b": write_ct_series(root / "b", n_slices=5, level_hu=180, seed=2),
        "c": write_ct_series(root / "c", n_slices=23, level_hu=110, seed=3),
        "bad": write_ct_series(root / "bad", n_slices=4, level_hu=0, corrupt=True),
    }
    return root, uids


def test_predict_series_votes_on_the_seeded_sample(model, dataset):
    root, uids = dataset
    series = read_series(root / "a")
    prediction = predict_series(model, series, chunk_size=5)
    expected_indices = sample_indices(40, series_uid=uids["a"])
    np.testing.assert_array_equal(prediction.slice_indices, expected_indices)
    assert prediction.n_slices == 40
    assert prediction.n_sampled == 12
    assert prediction.slice_probabilities.shape == (12, 4)
    images = load_slices(series, expected_indices.tolist(), windows=model.windows, image_size=32)
    direct = model.predict_proba(images)
    np.testing.assert_allclose(prediction.slice_probabilities, direct, atol=1e-5)
    expected = vote(direct)
    assert prediction.vote.phase == expected.phase
    assert prediction.vote.vote_fractions == expected.vote_fractions
    np.testing.assert_allclose(prediction.vote.mean_probabilities, expected.mean_probabilities, atol=1e-5)
    assert prediction.phase in PHASES
    assert prediction.seconds > 0
    assert predict_series(model, series, chunk_size=5).vote == prediction.vote, "same series, same answer"
    # Another batch size may take other CPU kernels: equal up to float rounding, never a different sample.
    rebatched = predict_series(model, series)
    np.testing.assert_array_equal(rebatched.slice_indices, prediction.slice_indices)
    np.testing.assert_allclose(rebatched.vote.mean_probabilities, prediction.vote.mean_probabilities, atol=1e-6)


def test_short_series_reads_every_slice(model, dataset):
    root, _ = dataset
    prediction = predict_series(model, read_series(root / "b"))
    assert (prediction.n_slices, prediction.n_sampled) == (5, 5)


def test_classify_all_keeps_every_slice_and_votes_on_the_sample(model, dataset):
    root, _ = dataset
    series = read_series(root / "c")
    sampled = predict_series(model, series, method="mean")
    everything = predict_series(model, series, method="mean", classify_all=True)
    np.testing.assert_array_equal(everything.slice_indices, np.arange(23))
    assert everything.voted.sum() == sampled.n_sampled == everything.n_sampled
    np.testing.assert_allclose(everything.slice_probabilities[everything.voted], sampled.slice_probabilities, atol=1e-5)
    assert everything.vote.phase == sampled.vote.phase


def test_unreadable_series_raises_its_typed_error(model, dataset):
    root, _ = dataset
    with pytest.raises(CorruptDicomError):
        predict_series(model, read_series(root / "bad"))


def test_stream_isolates_errors_and_keeps_order(model, dataset, tmp_path):
    root, uids = dataset
    (tmp_path / "empty").mkdir()
    sources = [root / "a", root / "bad", tmp_path / "empty", root / "b"]
    outcomes = list(predict_many(model, sources, options=PredictOptions(chunk_size=4, queue_depth=1)))
    assert [o.source for o in outcomes] == [str(s) for s in sources]
    assert outcomes[0].prediction is not None
    assert outcomes[0].series_instance_uid == uids["a"]
    assert outcomes[1].prediction is None
    assert isinstance(outcomes[1].exception, CorruptDicomError)
    assert outcomes[1].series_instance_uid == uids["bad"]
    assert outcomes[1].error.startswith("CorruptDicomError: ")
    assert isinstance(outcomes[2].exception, NoSeriesError)
    assert outcomes[2].series_instance_uid == ""
    assert outcomes[3].prediction is not None
    assert outcomes[3].prediction.n_sampled == 5


def test_closing_the_stream_early_stops_the_decoder(model, dataset):
    root, _ = dataset
    before = threading.active_count()
    stream = predict_many(model, [root / "a"] * 6, options=PredictOptions(chunk_size=2, queue_depth=1))
    next(stream)
    stream.close()
    assert threading.active_count() == before


def test_source_iterator_failure_propagates(model, dataset):
    root, _ = dataset

    def sources():
        yield root / "b"
        raise RuntimeError("listing failed")

    stream = predict_many(model, sources())
    assert next(stream).prediction is not None
    with pytest.raises(RuntimeError, match="listing failed"):
        next(stream)


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_predict_and_evaluate_cli_round_trip(tiny_model_dir, dataset, tmp_path, capsys):
    root, uids = dataset
    preds, slices = tmp_path / "preds.csv", tmp_path / "slices.csv"
    code = _run_cli(
        [
            "predict",
            str(root),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(preds),
            "--slices-out",
            str(slices),
            "--no-progress",
            "--voting",
            "mean",
        ]
    )
    assert code == 0
    with preds.open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == PREDICTION_CSV_COLUMNS
        rows = {row["series_instance_uid"]: row for row in reader}
    assert set(rows) == set(uids.values())
    bad = rows[uids["bad"]]
    assert bad["phase"] == ""
    assert bad["error"].startswith("CorruptDicomError")
    assert bad["n_slices"] == "4"
    good = rows[uids["a"]]
    assert good["phase"] in PHASES
    assert good["error"] == ""
    assert (good["n_slices"], good["n_sampled"]) == ("40", "12")
    assert sum(float(good[f"p_{p}"]) for p in PHASES) == pytest.approx(1.0, abs=1e-4)
    with slices.open() as handle:
        slice_rows = list(csv.DictReader(handle))
    assert len(slice_rows) == 40 + 5 + 23
    assert sum(row["voted"] == "1" for row in slice_rows) == 12 + 5 + 8

    labels = tmp_path / "labels.csv"
    labels.write_text(
        "series_instance_uid,phase\n"
        + "".join(f"{uid},{phase}\n" for uid, phase in zip(uids.values(), PHASES, strict=True))
    )
    report = tmp_path / "report"
    code = _run_cli(
        [
            "evaluate",
            str(preds),
            str(labels),
            "--report",
            str(report),
            "--slices",
            str(slices),
            "--bootstrap",
            "300",
            "--repeats",
            "2",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "series level: 4 series, 1 without prediction" in out
    assert (report / "f1_vs_r.png").stat().st_size > 0


@pytest.fixture(scope="module")
def headed_model_dir(tmp_path_factory):
    """The tiny network with a series head that favours "others" whenever the others logit rises."""
    preset = Preset(name="tiny", arch="test_efficientnet", image_size=32, windows=((50.0, 400.0), (40.0, 80.0)))
    head = SeriesHead(
        feature_mean=[0.0] * 4,
        feature_scale=[1.0] * 4,
        weights=[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 5.0]],
        bias=[0.0] * 4,
        c=1.0,
        n_series=40,
    )
    model_dir = tmp_path_factory.mktemp("headed") / "tiny"
    manifest = build_manifest(preset, fingerprint="t", metrics={}, series_head=head)
    save_model(model_dir, network=create_network(preset), manifest=manifest)
    return model_dir


def test_a_model_with_a_series_head_votes_with_it_everywhere(
    headed_model_dir, tiny_model_dir, dataset, tmp_path, capsys
):
    root, _ = dataset
    model = load_model(headed_model_dir, device="cpu")
    series = read_series(root / "a")
    prediction = predict_series(model, series, classify_all=True)
    voted = prediction.slice_probabilities[prediction.voted]
    assert prediction.vote.method == "head"
    head = model.manifest.series_head
    expected = head.probabilities(head_features(voted, kind=head.features))
    assert prediction.phase == PHASES[int(expected.argmax())]
    assert prediction.confidence == pytest.approx(float(expected.max()), rel=1e-6)
    first = np.isin(prediction.slice_indices, sample_indices(40, series_uid=series.series_instance_uid))
    weighted = vote(prediction.slice_probabilities[first], method="weighted")
    assert predict_series(model, series, method="weighted").vote == weighted, "vote shares: no second look"

    preds, slices = tmp_path / "preds.csv", tmp_path / "slices.csv"
    argv = ["predict", str(root), "--model", str(headed_model_dir), "--out", str(preds), "--no-progress"]
    assert _run_cli([*argv, "--slices-out", str(slices)]) == 0
    with preds.open() as handle:
        rows = [row for row in csv.DictReader(handle) if not row["error"]]
    assert {row["voting"] for row in rows} == {"head"}
    assert {row["model_sha256"] for row in rows} == {model.manifest.weights_sha256}
    labels = tmp_path / "labels.csv"
    labels.write_text("series_instance_uid,phase\n" + "".join(f"{row['series_instance_uid']},others\n" for row in rows))
    evaluate = ["evaluate", str(preds), str(labels), "--slices", str(slices), "--bootstrap", "50", "--repeats", "1"]
    capsys.readouterr()
    assert _run_cli([*evaluate, "--report", str(tmp_path / "r1")]) == 2
    assert "pass --model MODEL_DIR" in capsys.readouterr().err
    assert _run_cli([*evaluate, "--report", str(tmp_path / "r2"), "--model", str(headed_model_dir)]) == 0
    assert "head vote" in capsys.readouterr().out
    assert _run_cli([*evaluate, "--report", str(tmp_path / "r3"), "--model", str(tiny_model_dir)]) == 2
    assert "pass the model that wrote the predictions" in capsys.readouterr().err

    plain = ["predict", str(root), "--model", str(tiny_model_dir), "--out", str(tmp_path / "p.csv"), "--no-progress"]
    assert _run_cli([*plain, "--voting", "head"]) == 2
    assert "needs a model with a series head" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs a model with a series head"):
        next(predict_many(load_model(tiny_model_dir), [series], options=PredictOptions(method="head")))


def test_predict_cli_on_a_folder_without_series(tiny_model_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM")
    code = _run_cli(
        ["predict", str(tmp_path), "--model", str(tiny_model_dir), "--out", str(tmp_path / "p.csv"), "--no-progress"]
    )
    assert code == 1
    assert (tmp_path / "p.csv").read_text().startswith("series_instance_uid,")
    assert scan(tmp_path).series == ()


def _unsure_head_model_dir(root):
    """The tiny network with a head that gives every phase 1/4 whatever the slices say (always unsure)."""
    preset = Preset(name="tiny", arch="test_efficientnet", image_size=32, windows=((50.0, 400.0), (40.0, 80.0)))
    head = SeriesHead(
        feature_mean=[0.0] * 4,
        feature_scale=[1.0] * 4,
        weights=[[0.0] * 4] * 4,
        bias=[0.0] * 4,
        c=1.0,
        n_series=40,
    )
    model_dir = root / "unsure"
    save_model(
        model_dir,
        network=create_network(preset),
        manifest=build_manifest(preset, fingerprint="t", metrics={}, series_head=head),
    )
    return model_dir


def test_an_unsure_head_vote_looks_again_at_a_wider_nested_sample(dataset, tmp_path):
    root, uids = dataset
    model = load_model(_unsure_head_model_dir(tmp_path), device="cpu")
    series = read_series(root / "a")
    first = sample_indices(40, series_uid=uids["a"])

    once = predict_series(model, series, second_look_below=0.0)
    assert (once.second_look, once.n_sampled) == (False, 12)
    np.testing.assert_array_equal(once.slice_indices, first)

    everything = predict_series(model, series, chunk_size=5)
    assert everything.second_look
    assert everything.vote.method == "head"
    assert everything.n_sampled == 40
    np.testing.assert_array_equal(everything.slice_indices, np.arange(40))
    assert everything.voted.all()
    # The first sample's slices are not classified again: their probabilities are the first look's.
    np.testing.assert_allclose(everything.slice_probabilities[first], once.slice_probabilities, atol=1e-5)
    images = load_slices(series, list(range(40)), windows=model.windows, image_size=32)
    np.testing.assert_allclose(everything.slice_probabilities, model.predict_proba(images), atol=1e-5)

    half = predict_series(model, series, second_look_fraction=0.5)
    assert (half.second_look, half.n_sampled) == (True, 20)
    np.testing.assert_array_equal(half.slice_indices, sample_indices(40, series_uid=uids["a"], fraction=0.5))
    assert set(first.tolist()) <= set(half.slice_indices.tolist()), "the wider sample holds the first one"

    # An evaluation run (every slice classified) votes on exactly the slices a plain run votes on.
    evaluated = predict_series(model, series, second_look_fraction=0.5, classify_all=True)
    assert (evaluated.second_look, evaluated.n_sampled) == (True, 20)
    np.testing.assert_array_equal(evaluated.slice_indices[evaluated.voted], half.slice_indices)
    assert evaluated.vote.phase == half.vote.phase
    assert evaluated.confidence == pytest.approx(half.confidence, abs=1e-6)

    short = predict_series(model, read_series(root / "b"))
    assert (short.second_look, short.n_sampled) == (False, 5), "nothing more to read in a 5-slice series"


def test_vote_share_rules_look_again_only_when_asked(model, dataset):
    root, _ = dataset
    series = read_series(root / "a")
    assert second_look_threshold(None, rule="head") == DEFAULT_SECOND_LOOK_BELOW > 0.0
    assert [second_look_threshold(None, rule=r) for r in ("weighted", "majority", "mean")] == [0.0] * 3
    assert second_look_threshold(0.5, rule="majority") == 0.5
    plain = predict_series(model, series, method="majority")
    assert (plain.second_look, plain.n_sampled) == (False, 12)
    # The mean probability of a 4-class output is below 1: a threshold of 1 looks again at every series.
    asked = predict_series(model, series, method="mean", second_look_below=1.0, second_look_fraction=0.5)
    assert (asked.second_look, asked.n_sampled) == (True, 20)


def test_a_second_look_at_unreadable_slices_keeps_the_first_vote(tmp_path, caplog):
    model = load_model(_unsure_head_model_dir(tmp_path), device="cpu")
    folder = tmp_path / "partly-truncated"
    uid = write_ct_series(folder, n_slices=40, level_hu=60, seed=9)
    series = read_series(folder)
    first = set(sample_indices(40, series_uid=uid).tolist())
    outside = next(i for i in range(40) if i not in first)
    damaged = series.slices[outside].path
    damaged.write_bytes(damaged.read_bytes()[:-200])  # cut short after the scan read its header
    with caplog.at_level("WARNING", logger="backend.ml.predict"):
        prediction = predict_series(model, series)
    assert (prediction.second_look, prediction.n_sampled) == (False, 12)
    assert "second look abandoned" in caplog.text
    assert uid not in caplog.text, "no identifiers in the log"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"second_look_below": 1.5}, "second_look_below"),
        ({"second_look_below": -0.1}, "second_look_below"),
        ({"second_look_fraction": 0.0}, "second_look_fraction"),
        ({"second_look_fraction": 1.2}, "second_look_fraction"),
    ],
)
def test_second_look_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        PredictOptions(**options)


def test_predict_cli_writes_the_second_look(dataset, tmp_path):
    root, uids = dataset
    model_dir = _unsure_head_model_dir(tmp_path)
    rows = {}
    for name, extra in (("default", []), ("never", ["--second-look-below", "0"])):
        out = tmp_path / f"{name}.csv"
        argv = ["predict", str(root), "--model", str(model_dir), "--out", str(out), "--no-progress", *extra]
        assert _run_cli(argv) == 0
        with out.open() as handle:
            rows[name] = {row["series_instance_uid"]: row for row in csv.DictReader(handle)}
    assert (rows["default"][uids["a"]]["second_look"], rows["default"][uids["a"]]["n_sampled"]) == ("1", "40")
    assert (rows["never"][uids["a"]]["second_look"], rows["never"][uids["a"]]["n_sampled"]) == ("0", "12")
    assert rows["default"][uids["b"]]["second_look"] == "0"
    labels = tmp_path / "labels.csv"
    labels.write_text("series_instance_uid,phase\n" + "".join(f"{uid},others\n" for uid in uids.values()))
    report = run_evaluation(
        predictions_csv=tmp_path / "default.csv", labels_csv=labels, report_dir=tmp_path / "report", n_bootstrap=20
    )
    second_looks = sum(row["second_look"] == "1" for row in rows["default"].values())
    assert second_looks >= 1
    assert f"{second_looks} of 4 series were voted again on a wider sample" in report.text
    with pytest.raises(SystemExit) as refused:
        _run_cli(["predict", str(root), "--model", str(model_dir), "--out", "x.csv", "--second-look-below", "2"])
    assert refused.value.code == 2
