"""The metadata prior on hand-built SeriesMetadata."""

from __future__ import annotations

import pytest

from backend.ml.dicom import SeriesMetadata
from backend.ml.prior import contrast_delay_s, metadata_prior, parse_dicom_time


def _meta(
    description: str = "", *, agent: str = "", start: str = "", acquisition: str = "", series_time: str = ""
) -> SeriesMetadata:
    return SeriesMetadata(
        series_description=description,
        series_number=3,
        body_part_examined="ABDOMEN",
        contrast_bolus_agent=agent,
        contrast_bolus_route="IV",
        contrast_bolus_volume_ml=None,
        contrast_bolus_start_time=start,
        acquisition_time=acquisition,
        series_time=series_time,
        study_date="20240101",
        manufacturer="ACME",
        convolution_kernel="B30f",
        kvp=120.0,
    )


@pytest.mark.parametrize(
    ("description", "phase"),
    [
        ("ABD ART 1.25mm", "arterial"),
        ("Arterial phase", "arterial"),
        ("Portal venous 5mm", "venous"),
        ("ABD PV", "venous"),
        ("Delayed 3min", "others"),
        ("early arterial", "others"),
        ("NON CON ABDOMEN", "non_contrast"),
        ("Abdomen plain", "non_contrast"),
        ("native", "non_contrast"),
        ("ABD W/O", "non_contrast"),
    ],
)
def test_description_patterns(description: str, phase: str) -> None:
    prior = metadata_prior(_meta(description))
    assert prior.phase == phase
    assert 0.0 < prior.confidence <= 0.9
    assert any("SeriesDescription" in line for line in prior.evidence)


@pytest.mark.parametrize(
    ("acquisition", "phase"),
    [
        ("100015", "others"),  # 15 s: early arterial
        ("100035", "arterial"),
        ("100110", "venous"),  # 70 s
        ("100200", "venous"),  # 120 s, weaker
        ("100500", "others"),  # 300 s: delayed
        ("100050", None),  # 50 s: ambiguous
    ],
)
def test_timing_bands(acquisition: str, phase: str | None) -> None:
    prior = metadata_prior(_meta(agent="Omnipaque", start="100000", acquisition=acquisition))
    assert prior.phase == phase
    assert any("delay" in line for line in prior.evidence)


def test_timing_beats_a_contradicting_description() -> None:
    prior = metadata_prior(_meta("ABD ART", agent="Iomeron", start="120000", acquisition="120115"))
    assert prior.phase == "venous"
    assert prior.confidence == pytest.approx(0.35)


def test_agreement_is_most_confident() -> None:
    prior = metadata_prior(_meta("Portal venous", agent="Iomeron", start="120000", acquisition="120110"))
    assert prior.phase == "venous"
    assert prior.confidence == pytest.approx(0.85)


def test_agent_contradicts_non_contrast_description() -> None:
    prior = metadata_prior(_meta("plain", agent="Omnipaque"))
    assert prior.phase == "non_contrast"
    assert prior.confidence <= 0.2


def test_nothing_known() -> None:
    prior = metadata_prior(_meta("ABDOMEN 5mm", agent="Omnipaque"))
    assert prior.phase is None
    assert prior.confidence == 0.0
    assert metadata_prior(_meta("ABDOMEN 5mm")).phase == "non_contrast"  # no agent at all: weak evidence


def test_time_parsing_and_midnight() -> None:
    assert parse_dicom_time("235959.5") == pytest.approx(86399.5)
    assert parse_dicom_time("10:30:00") == pytest.approx(37800.0)
    assert parse_dicom_time("1030") == pytest.approx(37800.0)
    assert parse_dicom_time("garbage") is None
    assert contrast_delay_s(_meta(start="235950", acquisition="000030")) == pytest.approx(40.0)
    assert contrast_delay_s(_meta(start="080000", acquisition="200000")) is None  # 12 h: bogus
    assert contrast_delay_s(_meta(start="100000", series_time="100040")) == pytest.approx(40.0)
