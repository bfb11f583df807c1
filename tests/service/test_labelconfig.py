"""Finding the phase control in label configs users would plausibly write."""

from __future__ import annotations

import pytest

from backend.errors import LabelConfigError
from backend.labelconfig import choice_to_phase, phase_target


@pytest.mark.parametrize(
    ("value", "phase"),
    [
        ("Non-contrast", "non_contrast"),
        ("Non contrast", "non_contrast"),
        ("NC", "non_contrast"),
        ("plain", "non_contrast"),
        ("Native", "non_contrast"),
        ("ARTERIAL", "arterial"),
        ("Late arterial", "arterial"),
        ("Venous", "venous"),
        ("Portal venous", "venous"),
        ("portal-venous phase", "venous"),
        ("PV", "venous"),
        ("Others", "others"),
        ("Other", "others"),
        ("Delayed", "others"),
        ("Liver", None),
        ("", None),
    ],
)
def test_choice_to_phase(value: str, phase: str | None) -> None:
    assert choice_to_phase(value) == phase


def test_custom_names_and_spellings() -> None:
    config = """
    <View>
      <Header value="Which contrast phase?"/>
      <Image name="ct_slice" value="$image"/>
      <Choices name="quality" toName="ct_slice"><Choice value="Good"/><Choice value="Bad"/></Choices>
      <Choices name="contrast" toName="ct_slice" choice="single">
        <Choice value="Plain"/><Choice value="Arterial"/><Choice value="Portal venous"/><Choice value="Delayed"/>
      </Choices>
    </View>"""
    target = phase_target(config)
    assert (target.from_name, target.to_name) == ("contrast", "ct_slice")
    assert target.choices == {
        "non_contrast": "Plain",
        "arterial": "Arterial",
        "venous": "Portal venous",
        "others": "Delayed",
    }


def test_alias_is_emitted() -> None:
    config = """<View><Text name="t" value="$series"/>
      <Choices name="phase" toName="t">
        <Choice value="Non-contrast" alias="NC"/><Choice value="Arterial" alias="ART"/>
        <Choice value="Venous" alias="PV"/><Choice value="Others" alias="OTH"/>
      </Choices></View>"""
    assert phase_target(config).choices == {"non_contrast": "NC", "arterial": "ART", "venous": "PV", "others": "OTH"}


def test_control_named_phase_preferred() -> None:
    choices = '<Choice value="NC"/><Choice value="Arterial"/><Choice value="Venous"/><Choice value="Other"/>'
    config = (
        f'<View><Image name="img" value="$i"/><Choices name="first" toName="img">{choices}</Choices>'
        f'<Choices name="phase_review" toName="img">{choices}</Choices></View>'
    )
    assert phase_target(config).from_name == "phase_review"


def test_missing_phase_is_actionable() -> None:
    config = """<View><Image name="img" value="$i"/>
      <Choices name="phase" toName="img"><Choice value="Arterial"/><Choice value="Venous"/></Choices></View>"""
    with pytest.raises(LabelConfigError) as info:
        phase_target(config)
    message = str(info.value)
    assert "no choice for non_contrast, others" in message
    assert "<Choice value=" in message


def test_no_choices_control() -> None:
    with pytest.raises(LabelConfigError, match="no <Choices> control"):
        phase_target('<View><Image name="img" value="$i"/><Labels name="l" toName="img"/></View>')


def test_invalid_xml() -> None:
    with pytest.raises(LabelConfigError, match="not valid XML"):
        phase_target("<View><Choices")
