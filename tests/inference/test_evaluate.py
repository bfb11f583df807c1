"""Evaluation metrics against hand-computed values; bootstrap; ROC/AUC; F1 versus R; the report folder."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest

from backend.ml.evaluate import (
    MISSING,
    EvaluationError,
    SliceTable,
    bootstrap_scores,
    confusion_matrix,
    curve_voting,
    fraction_curve,
    percentile_interval,
    roc_auc,
    roc_curve,
    run_evaluation,
    scores_from_confusion,
)
from backend.ml.phases import PHASES
from backend.ml.sampling import sample_indices
from backend.ml.series_head import HEAD_FEATURES, fit_series_head
from backend.ml.voting import head_features, vote

# 10 series: true / predicted (-1 = no prediction)
TRUE = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
PRED = np.array([0, 0, 1, 1, 1, 2, 2, -1, 3, 0])


def test_confusion_matrix_with_missing_column():
    confusion = confusion_matrix(TRUE, PRED)
    expected = np.array(
        [
            [2, 1, 0, 0, 0],
            [0, 2, 1, 0, 0],
            [0, 0, 1, 0, 1],
            [1, 0, 0, 1, 0],
        ]
    )
    np.testing.assert_array_equal(confusion, expected)
    assert confusion[:, MISSING].sum() == 1


def test_precision_recall_f1_by_hand():
    scores = scores_from_confusion(confusion_matrix(TRUE, PRED))
    # non_contrast: TP 2, predicted 3 (2 + 1 from others), actual 3
    # arterial: TP 2, predicted 3, actual 3; venous: TP 1, predicted 2, actual 2 (one missing)
    # others: TP 1, predicted 1, actual 2
    precision = np.array([2 / 3, 2 / 3, 1 / 2, 1.0])
    recall = np.array([2 / 3, 2 / 3, 1 / 2, 1 / 2])
    f1 = 2 * precision * recall / (precision + recall)
    np.testing.assert_allclose(scores["precision"], precision)
    np.testing.assert_allclose(scores["recall"], recall)
    np.testing.assert_allclose(scores["f1"], f1)
    assert scores["macro_f1"] == pytest.approx(f1.mean())
    assert scores["accuracy"] == pytest.approx(6 / 10)


def test_undefined_scores():
    # "others" never predicted and never present: undefined, left out of the macro mean
    scores = scores_from_confusion(confusion_matrix(np.array([0, 1]), np.array([0, 1])))
    assert np.isnan(scores["precision"][3])
    assert np.isnan(scores["recall"][3])
    assert np.isnan(scores["f1"][3])
    assert scores["macro_f1"] == pytest.approx(1.0)
    # "venous" present but never predicted: precision 0, recall 0, F1 0
    scores = scores_from_confusion(confusion_matrix(np.array([0, 2]), np.array([0, 0])))
    assert scores["precision"][2] == 0.0
    assert scores["f1"][2] == 0.0
    assert scores["precision"][0] == pytest.approx(0.5)
    assert scores["macro_f1"] == pytest.approx((2 * 0.5 * 1.0 / 1.5 + 0.0) / 2)


def test_confusion_rejects_bad_labels():
    with pytest.raises(ValueError, match="y_pred"):
        confusion_matrix(np.array([0]), np.array([4]))


def test_auc_known_case_and_curve_area():
    positive = np.array([True, True, False, False, True, False])
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.3, 0.1])
    # pairs (pos, neg): 9 in total; positives 0.9 and 0.8 beat all 3 negatives (6); 0.3 beats 0.1, ties 0.3 (1.5)
    assert roc_auc(positive, scores) == pytest.approx(7.5 / 9)
    fpr, tpr, thresholds = roc_curve(positive, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert thresholds[0] == np.inf
    assert float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) == pytest.approx(7.5 / 9)
    assert roc_auc(np.array([True, True]), np.array([0.1, 0.2])) != roc_auc(np.array([True, True]), np.zeros(2))


def test_auc_perfect_and_undefined():
    assert roc_auc(np.array([False, True]), np.array([0.1, 0.9])) == 1.0
    assert roc_auc(np.array([True, False]), np.array([0.1, 0.9])) == 0.0
    assert np.isnan(roc_auc(np.array([True, True]), np.array([0.1, 0.9])))


def _one_hot_clusters(true, pred):
    clusters = np.zeros((true.size, 4, 5), dtype=np.int64)
    clusters[np.arange(true.size), true, np.where(pred < 0, MISSING, pred)] = 1
    return clusters


def test_bootstrap_is_reproducible_and_contains_the_point_estimate():
    rng = np.random.default_rng(3)
    true = rng.integers(0, 4, size=120)
    pred = np.where(rng.random(120) < 0.8, true, rng.integers(0, 4, size=120))
    clusters = _one_hot_clusters(true, pred)
    started = time.perf_counter()
    first = bootstrap_scores(clusters, n_resamples=5000, seed=11)
    assert time.perf_counter() - started < 5.0, "5,000 resamples must be vectorised"
    second = bootstrap_scores(clusters, n_resamples=5000, seed=11)
    np.testing.assert_array_equal(first["macro_f1"], second["macro_f1"])
    other = bootstrap_scores(clusters, n_resamples=5000, seed=12)
    assert not np.array_equal(first["macro_f1"], other["macro_f1"])
    point = scores_from_confusion(clusters.sum(axis=0))
    for key in ("macro_f1", "f1", "precision", "recall", "accuracy"):
        low, high = percentile_interval(first[key])
        assert np.all(low <= point[key]), key
        assert np.all(point[key] <= high), key
        assert np.all(high - low > 0), key
    assert first["f1"].shape == (5000, 4)


def test_cluster_bootstrap_is_wider_than_pretending_slices_are_independent():
    # 40 series of 50 slices; whole series are right or wrong, so slices are perfectly correlated
    rng = np.random.default_rng(5)
    true = np.repeat(rng.integers(0, 4, size=40), 1)
    wrong = rng.random(40) < 0.25
    clusters = np.zeros((40, 4, 5))
    for i in range(40):
        clusters[i, true[i], (true[i] + 1) % 4 if wrong[i] else true[i]] = 50
    by_series = bootstrap_scores(clusters, n_resamples=2000, seed=0)
    slices = np.concatenate(
        [np.eye(20)[[true[i] * 5 + ((true[i] + 1) % 4 if wrong[i] else true[i])]].repeat(50, 0) for i in range(40)]
    ).reshape(-1, 4, 5)
    by_slice = bootstrap_scores(slices, n_resamples=2000, seed=0)
    width = np.subtract(*percentile_interval(by_series["accuracy"])[::-1])
    naive = np.subtract(*percentile_interval(by_slice["accuracy"])[::-1])
    assert width > 3 * naive


def _synthetic_slices(n_series=40, n_slices=60, accuracy=0.62, seed=0):
    """Slices are right with probability `accuracy`, else a random wrong class."""
    rng = np.random.default_rng(seed)
    labels, probabilities, indices, counts = {}, {}, {}, {}
    for s in range(n_series):
        uid = f"1.2.3.{s}"
        label = s % 4
        right = rng.random(n_slices) < accuracy
        winners = np.where(right, label, (label + rng.integers(1, 4, size=n_slices)) % 4)
        probs = rng.uniform(0.0, 0.4, size=(n_slices, 4))
        probs[np.arange(n_slices), winners] = rng.uniform(0.5, 1.0, size=n_slices)
        labels[uid], probabilities[uid] = label, probs
        indices[uid], counts[uid] = np.arange(n_slices), n_slices
    return labels, SliceTable(probabilities=probabilities, slice_index=indices, n_slices=counts)


@pytest.mark.parametrize("method", ["majority", "mean", "weighted"])
def test_f1_versus_r_rises_and_matches_the_inference_vote(method):
    labels, slices = _synthetic_slices()
    curve = fraction_curve(labels, slices, repeats=4, method=method)
    mean = curve.macro_f1.mean(axis=0)
    assert curve.macro_f1.shape == (4, 100)
    assert mean[0] < 0.8, "1% of 60 slices is a single slice: about the slice accuracy"
    assert mean[-1] > 0.95, "all 60 slices: the majority is nearly always right"
    assert mean[29] > mean[0] + 0.15
    assert np.all(curve.macro_f1[:, -1] == curve.macro_f1[0, -1]), "R=100% is the same for every repeat"
    np.testing.assert_allclose(curve.mean_slices[[0, 29, 99]], [1, 18, 60])
    # repeat 0 at R=30% must reproduce exactly what inference computes: sample_indices + vote
    expected = []
    for uid in labels:
        idx = sample_indices(60, series_uid=uid, fraction=0.3, min_slices=1)
        expected.append(PHASES.index(vote(slices.probabilities[uid][idx], method=method).phase))
    true = np.array(list(labels.values()))
    direct = scores_from_confusion(confusion_matrix(true, np.array(expected)))["macro_f1"]
    assert curve.macro_f1[0, 29] == pytest.approx(direct)


def _head_for(labels, slices, kind=HEAD_FEATURES):
    uids = list(labels)
    features = np.stack([head_features(slices.probabilities[u], kind=kind) for u in uids])
    return fit_series_head(features, np.array([labels[u] for u in uids]), kind=kind).head


@pytest.mark.parametrize("kind", ["weighted_mean_logits", "mean_logits"])
def test_f1_versus_r_with_the_series_head_matches_the_inference_vote(kind):
    labels, slices = _synthetic_slices(accuracy=0.45)
    head = _head_for(labels, slices, kind)
    assert head.features == kind
    curve = fraction_curve(labels, slices, repeats=3, method="head", head=head)
    true = np.array(list(labels.values()))
    for column, fraction in ((29, 0.3), (99, 1.0)):
        expected = []
        for uid in labels:
            idx = sample_indices(60, series_uid=uid, fraction=fraction, min_slices=1)
            decided = vote(slices.probabilities[uid][idx], method="head", head=head)
            expected.append(PHASES.index(decided.phase))
        direct = scores_from_confusion(confusion_matrix(true, np.array(expected)))["macro_f1"]
        assert curve.macro_f1[0, column] == pytest.approx(direct)
    assert curve.macro_f1.mean(axis=0)[99] > curve.macro_f1.mean(axis=0)[0] + 0.2
    with pytest.raises(ValueError, match="series head it was not given"):
        fraction_curve(labels, slices, method="head")


def test_the_curve_votes_by_the_rule_the_predictions_record():
    labels, slices = _synthetic_slices(n_series=20)
    head = _head_for(labels, slices)
    assert curve_voting("auto", recorded=frozenset({"majority"}), head=head) == "majority"
    assert curve_voting("auto", recorded=frozenset({"head"}), head=head) == "head"
    assert curve_voting("auto", recorded=frozenset(), head=None) == "weighted"  # files from before the column
    assert curve_voting("auto", recorded=frozenset(), head=head) == "head"
    assert curve_voting("mean", recorded=frozenset({"head"}), head=None) == "mean"
    with pytest.raises(EvaluationError, match="pass --model MODEL_DIR"):
        curve_voting("auto", recorded=frozenset({"head"}), head=None)
    with pytest.raises(EvaluationError, match="unknown voting rule 'best'"):
        curve_voting("auto", recorded=frozenset({"best"}), head=None)


def test_f1_versus_r_counts_series_without_slices_as_wrong():
    labels, slices = _synthetic_slices(n_series=8, accuracy=1.0)
    labels["9.9.9"] = 0
    curve = fraction_curve(labels, slices, fractions=[1.0], repeats=1)
    assert curve.accuracy[0, 0] == pytest.approx(8 / 9)


def _write_csv(path, columns, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def test_run_evaluation_writes_the_report(tmp_path):
    labels, slices = _synthetic_slices(n_series=12, n_slices=20, accuracy=0.9)
    uids = list(labels)
    _write_csv(
        tmp_path / "labels.csv",
        ["series_instance_uid", "phase"],
        [{"series_instance_uid": u, "phase": PHASES[labels[u]]} for u in uids],
    )
    pred_columns = [
        "series_instance_uid",
        "study_instance_uid",
        "phase",
        "confidence",
        "n_slices",
        "n_sampled",
        *(f"p_{p}" for p in PHASES),
        "error",
    ]
    rows, slice_rows = [], []
    for u in uids[:-1]:
        result = vote(slices.probabilities[u])
        rows.append(
            {
                "series_instance_uid": u,
                "study_instance_uid": "9",
                "phase": result.phase,
                "confidence": result.confidence,
                "n_slices": 20,
                "n_sampled": 20,
                "error": "",
                **{f"p_{p}": v for p, v in zip(PHASES, result.mean_probabilities, strict=True)},
            }
        )
        for i, row in enumerate(slices.probabilities[u]):
            slice_rows.append(
                {
                    "series_instance_uid": u,
                    "slice_index": i,
                    "n_slices": 20,
                    "voted": 1,
                    **{f"p_{p}": v for p, v in zip(PHASES, row, strict=True)},
                }
            )
    rows.append(
        {
            "series_instance_uid": uids[-1],
            "study_instance_uid": "9",
            "phase": "",
            "confidence": "",
            "n_slices": 20,
            "n_sampled": 0,
            "error": "CorruptDicomError: x: truncated",
            **{f"p_{p}": "" for p in PHASES},
        }
    )
    _write_csv(tmp_path / "preds.csv", pred_columns, rows)
    _write_csv(
        tmp_path / "slices.csv",
        ["series_instance_uid", "slice_index", "n_slices", "voted", *(f"p_{p}" for p in PHASES)],
        slice_rows,
    )
    report = run_evaluation(
        predictions_csv=tmp_path / "preds.csv",
        labels_csv=tmp_path / "labels.csv",
        report_dir=tmp_path / "report",
        slices_csv=tmp_path / "slices.csv",
        n_bootstrap=500,
        repeats=2,
    )
    names = {path.name for path in report.files}
    for name in (
        "table5_series.csv",
        "table5_slice.csv",
        "confusion_series.png",
        "roc_slice.png",
        "f1_vs_r.csv",
        "f1_vs_r.png",
        "summary.md",
        "metrics.json",
    ):
        assert name in names
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert report.series.n_missing == 1
    assert report.slice is not None
    assert report.slice.n_missing == 20
    assert "CorruptDicomError" in " ".join(report.notes)
    assert "macro" in report.text
    with (tmp_path / "report" / "table5_series.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["phase"] for row in table] == [*PHASES, "macro"]


def test_bad_labels_file_is_a_precise_error(tmp_path):
    (tmp_path / "labels.csv").write_text("series_instance_uid,phase\n1.2,portal\n")
    (tmp_path / "preds.csv").write_text("series_instance_uid\n")
    with pytest.raises(EvaluationError, match=r"labels.csv:2: unknown phase 'portal'"):
        run_evaluation(
            predictions_csv=tmp_path / "preds.csv", labels_csv=tmp_path / "labels.csv", report_dir=tmp_path / "r"
        )


def _prediction_row(uid, phase):
    probabilities = {f"p_{p}": float(p == phase) for p in PHASES}
    return {"series_instance_uid": uid, "study_instance_uid": "9", "phase": phase, "confidence": 1.0,
            "n_slices": 10, "n_sampled": 3, "error": "", **probabilities}  # fmt: skip


def test_breakdown_by_a_label_column_counts_predictions_per_group(tmp_path):
    truth = [("1", "others", "delayed"), ("2", "others", "transitional"), ("3", "others", "transitional"),
             ("4", "arterial", "late_arterial"), ("5", "venous", "portal_venous")]  # fmt: skip
    predicted = {"1": "others", "2": "venous", "3": "others", "4": "arterial"}  # series 5: no prediction row
    _write_csv(
        tmp_path / "labels.csv",
        ["series_instance_uid", "phase", "subphase", "scanner"],
        [{"series_instance_uid": u, "phase": p, "subphase": s, "scanner": "A" if u < "3" else ""} for u, p, s in truth],
    )
    columns = ["series_instance_uid", "study_instance_uid", "phase", "confidence", "n_slices", "n_sampled",
               *(f"p_{p}" for p in PHASES), "error"]  # fmt: skip
    _write_csv(tmp_path / "preds.csv", columns, [_prediction_row(u, p) for u, p in predicted.items()])
    paths = {"predictions_csv": tmp_path / "preds.csv", "labels_csv": tmp_path / "labels.csv", "n_bootstrap": 50}

    report = run_evaluation(report_dir=tmp_path / "r", **paths)  # subphase: broken down by default
    assert report.by is not None
    assert report.by.column == "subphase"
    row = report.by.groups.index("transitional")
    assert report.by.true_phase[row] == "others"
    assert report.by.counts[row].tolist() == [0, 0, 1, 1, 0]
    assert report.by.correct.tolist() == [1, 1, 0, 1]  # delayed, late_arterial, portal_venous, transitional
    assert report.by.counts[report.by.groups.index("portal_venous")].tolist() == [0, 0, 0, 0, 1]  # missing column
    assert "1/2" in report.text
    with (tmp_path / "r" / "series_by_subphase.csv").open() as handle:
        assert next(csv.DictReader(handle)) == {"subphase": "delayed", "true_phase": "others", "non_contrast": "0",
            "arterial": "0", "venous": "0", "others": "1", "missing": "0", "correct": "1", "n": "1"}  # fmt: skip

    by_scanner = run_evaluation(report_dir=tmp_path / "s", by="scanner", **paths)
    assert by_scanner.by is not None
    assert by_scanner.by.groups == ("(empty)", "A")
    assert by_scanner.by.true_phase == ("mixed", "others")
    with pytest.raises(EvaluationError, match=r"missing column.*kvp"):
        run_evaluation(report_dir=tmp_path / "t", by="kvp", **paths)
    (tmp_path / "plain.csv").write_text("series_instance_uid,phase\n1,others\n")
    assert run_evaluation(report_dir=tmp_path / "u", **{**paths, "labels_csv": tmp_path / "plain.csv"}).by is None
