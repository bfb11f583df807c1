"""Import logic with a fake task store: one task per series, idempotent, skips with reasons, display text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from backend.ml.dicom import SeriesInfo
from plugin.importer import (
    import_series,
    metadata_conflicts,
    series_location,
    series_reference,
    shared_locations,
    study_orders,
    task_data,
)
from tests.plugin.conftest import SeriesFactory


class FakeStore:
    """In-memory TaskStore: tasks keyed like Label Studio (ids from 1), data as imported."""

    def __init__(self) -> None:
        self.tasks: dict[int, dict[str, Any]] = {}
        self.create_calls = 0

    def existing_series_uids(self) -> set[str]:
        return {str(data["series_uid"]) for data in self.tasks.values()}

    def create_tasks(self, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        self.create_calls += 1
        ids = []
        for data in tasks:
            task_id = len(self.tasks) + 1
            self.tasks[task_id] = dict(data)
            ids.append(task_id)
        return ids


def _preview(series: SeriesInfo) -> str:
    return f"/data/local-files/?d=previews/{series.series_instance_uid}.png"


def _study(make_series: SeriesFactory) -> list[SeriesInfo]:
    return [
        make_series("1.1", acquisition_time="100000", series_description="ABD NON CON"),
        make_series("1.2", acquisition_time="100040", series_description="ABD ART"),
        make_series("1.3", acquisition_time="100120", series_description="ABD PORTAL VENOUS"),
    ]


def test_reimport_adds_nothing(make_series: SeriesFactory, tmp_path: Path) -> None:
    store = FakeStore()
    found = _study(make_series)
    roots = [tmp_path / "dicom"]
    first = import_series(found, store=store, dicom_roots=roots, preview=_preview)
    assert len(first.created) == 3
    assert not first.already_imported
    assert not first.skipped
    second = import_series(found, store=store, dicom_roots=roots, preview=_preview)
    assert second.created == ()
    assert set(second.already_imported) == {"1.1", "1.2", "1.3"}
    assert len(store.tasks) == 3
    assert store.create_calls == 1  # nothing to create: no request at all
    assert sorted(t["series_uid"] for t in store.tasks.values()) == ["1.1", "1.2", "1.3"]


def test_new_series_are_added_next_to_existing_ones(make_series: SeriesFactory, tmp_path: Path) -> None:
    store = FakeStore()
    found = _study(make_series)
    import_series(found[:2], store=store, dicom_roots=[tmp_path], preview=_preview)
    report = import_series(found, store=store, dicom_roots=[tmp_path], preview=_preview)
    assert [store.tasks[i]["series_uid"] for i in report.created] == ["1.3"]


def test_task_data_points_at_the_series_relative_to_its_root(make_series: SeriesFactory, tmp_path: Path) -> None:
    store = FakeStore()
    import_series(_study(make_series), store=store, dicom_roots=[tmp_path / "dicom"], preview=_preview)
    data = store.tasks[1]
    assert data["series"] == "1.1"
    assert data["series_uid"] == "1.1"
    assert data["study_uid"] == "1.2.3"
    assert data["preview"] == "/data/local-files/?d=previews/1.1.png"
    assert data["study_order"].startswith("1 of 3")


def test_skips_series_outside_the_roots_and_failed_previews(make_series: SeriesFactory, tmp_path: Path) -> None:
    store = FakeStore()
    found = _study(make_series)

    def preview(series: SeriesInfo) -> str:
        if series.series_instance_uid == "1.2":
            raise OSError("disk full")
        return _preview(series)

    report = import_series(found, store=store, dicom_roots=[tmp_path / "elsewhere"], preview=preview)
    assert report.created == ()
    assert {s.reason for s in report.skipped} == {"outside CTPHASE_DICOM_ROOTS (the backend would refuse to read it)"}
    report = import_series(found, store=store, dicom_roots=[tmp_path], preview=preview)
    assert len(report.created) == 2
    assert [(s.series_uid, s.reason.split(":")[0]) for s in report.skipped] == [("1.2", "preview failed")]


def test_series_sharing_a_folder_are_skipped(make_series: SeriesFactory, tmp_path: Path) -> None:
    a = make_series("2.1", folder="mixed")
    b = make_series("2.2", folder="mixed")
    c = make_series("2.3", folder="mixed/sub")
    assert shared_locations([a, b, c]) == {tmp_path / "dicom" / "mixed"}
    store = FakeStore()
    report = import_series([a, b, c], store=store, dicom_roots=[tmp_path], preview=_preview)
    assert [store.tasks[i]["series_uid"] for i in report.created] == ["2.3"]
    assert {s.series_uid for s in report.skipped} == {"2.1", "2.2"}


def test_duplicate_uids_and_limit(make_series: SeriesFactory, tmp_path: Path) -> None:
    twice = [make_series("3.1", folder="x"), make_series("3.1", folder="y"), make_series("3.2"), make_series("3.3")]
    store = FakeStore()
    report = import_series(twice, store=store, dicom_roots=[tmp_path], preview=_preview, limit=2)
    assert [store.tasks[i]["series_uid"] for i in report.created] == ["3.1", "3.2"]
    assert [s.series_uid for s in report.skipped] == ["3.1"]


def test_location_and_reference(make_series: SeriesFactory, tmp_path: Path) -> None:
    series = make_series("4.1", folder="p/q")
    assert series_location(series) == tmp_path / "dicom" / "p" / "q"
    assert series_reference(tmp_path / "dicom" / "p" / "q", [tmp_path / "other", tmp_path / "dicom"]) == "p/q"
    assert series_reference(tmp_path / "dicom", [tmp_path / "dicom"]) == "."
    assert series_reference(tmp_path / "x", [tmp_path / "dicom"]) is None


def test_study_order_by_acquisition_time(make_series: SeriesFactory) -> None:
    found = [
        make_series("5.3", acquisition_time="120300"),
        make_series("5.1", acquisition_time="120000"),
        make_series("5.9", series_number=9),
        make_series("5.2", acquisition_time="120100"),
        make_series("6.1", study="9.9", acquisition_time="080000"),
    ]
    orders = study_orders(found)
    assert [orders[u] for u in ("5.1", "5.2", "5.3", "5.9", "6.1")] == [(1, 4), (2, 4), (3, 4), (4, 4), (1, 1)]


@pytest.mark.parametrize(
    ("metadata", "earlier", "expected"),
    [
        ({"series_description": "PORTAL VENOUS"}, [], []),
        (
            {"series_description": "ARTERIAL", "contrast_bolus_start_time": "100000", "acquisition_time": "100110"},
            [],
            ["description says Arterial, timing (70 s) says Venous"],
        ),
        (
            {"series_description": "NON CONTRAST", "contrast_bolus_agent": "Iohexol"},
            [],
            ["described as non-contrast but a contrast agent is recorded"],
        ),
        (
            {"series_description": "ARTERIAL", "acquisition_time": "100300"},
            [{"series_description": "PORTAL VENOUS", "acquisition_time": "100100"}],
            ["Arterial by metadata but acquired after a Venous series"],
        ),
    ],
)
def test_metadata_conflicts(
    make_series: SeriesFactory, metadata: dict[str, str], earlier: list[dict[str, str]], expected: list[str]
) -> None:
    series = make_series("7.1", **metadata)
    before = [make_series(f"7.{i + 2}", **m) for i, m in enumerate(earlier)]
    assert metadata_conflicts(series, earlier=before) == expected


def test_display_text(make_series: SeriesFactory) -> None:
    series = make_series(
        "8.1",
        n_slices=120,
        series_description="ABD ART",
        series_number=3,
        acquisition_time="101530.25",
        contrast_bolus_agent="Iopromide",
        contrast_bolus_volume_ml=100.0,
        contrast_bolus_start_time="101500",
    )
    data = task_data(series, reference="8.1", preview="u", order=(2, 3))
    assert data["slices"] == "120 slices x 2.5 mm, coverage 298 mm"
    assert data["acquisition"] == "10:15:30, series number 3"
    assert data["contrast"] == "agent Iopromide, 100 ml, bolus start 10:15:00, delay 30 s"
    assert data["metadata_prior"].startswith("Arterial (confidence 0.8")
    assert data["conflict"] == "none"
    assert "20240101" not in " ".join(str(v) for v in data.values())  # no study date in tasks
