"""plugin/label_config.xml: parses, has the image, the four phase choices and the facts, matches the task data."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from backend.labelconfig import phase_target
from plugin.bootstrap import label_config_xml
from plugin.importer import PHASE_LABELS, task_data
from tests.plugin.conftest import SeriesFactory


def _root() -> ET.Element:
    return ET.fromstring(label_config_xml())


def test_image_shows_the_preview() -> None:
    images = _root().findall(".//Image")
    assert [(i.get("name"), i.get("value")) for i in images] == [("image", "$preview")]


def test_phase_choices_are_the_four_phases_in_order() -> None:
    (choices,) = _root().findall(".//Choices")
    assert (choices.get("name"), choices.get("toName"), choices.get("choice")) == ("phase", "image", "single-radio")
    values = [c.get("value") for c in choices.findall("Choice")]
    assert values == ["Non-contrast", "Arterial", "Venous", "Others"]
    assert values == list(PHASE_LABELS.values())


def test_backend_finds_the_phase_control() -> None:
    target = phase_target(label_config_xml())
    assert (target.from_name, target.to_name) == ("phase", "image")
    assert target.choices == {
        "non_contrast": "Non-contrast",
        "arterial": "Arterial",
        "venous": "Venous",
        "others": "Others",
    }


def test_facts_are_shown_from_task_data() -> None:
    texts = {t.get("name"): t.get("value") for t in _root().findall(".//Text")}
    for key in ("series_description", "slices", "acquisition", "study_order", "contrast", "metadata_prior", "conflict"):
        assert texts[key] == f"${key}"


def test_every_variable_of_the_config_is_in_the_task_data(make_series: SeriesFactory) -> None:
    series = make_series("1.2.3.4", series_description="ABD PV", acquisition_time="101500")
    data = task_data(series, reference="a/b", preview="/data/local-files/?d=p/x.png", order=(1, 1))
    variables = set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", label_config_xml()))
    assert variables <= set(data)
    assert all(isinstance(data[key], str) and data[key] for key in variables)
