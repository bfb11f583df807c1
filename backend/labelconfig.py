"""Find the phase control in a Label Studio label config.

Users name their controls and spell their choices freely (``<Choices name="contrast" toName="ct">`` with
``"Non-contrast"``, ``"Portal venous"``, ``"Delayed"``...). :func:`phase_target` finds the ``<Choices>`` control
whose choices cover all four phases and returns the names and the exact choice strings to put in results.

Matching of choice values to phases is case-insensitive and ignores spaces, hyphens, underscores and a trailing
"phase": "Non-contrast", "Non contrast", "noncontrast", "NC", "Plain", "Native", "Unenhanced" -> non_contrast;
"Arterial", "Late arterial", "Art" -> arterial; "Venous", "Portal venous", "Portal", "PV", "PVP" -> venous;
"Others", "Other", "Delayed", "Delay", "Excretory" -> others. A ``<Choice alias="...">`` is what Label Studio
stores in results, so the alias is emitted when present (and also matched).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Final

from backend.errors import LabelConfigError
from backend.ml.phases import PHASES, Phase

MAX_CONFIG_CHARS: Final[int] = 1_000_000

_SYNONYMS: Final[dict[Phase, tuple[str, ...]]] = {
    "non_contrast": (
        "noncontrast",
        "nc",
        "plain",
        "native",
        "unenhanced",
        "nonenhanced",
        "precontrast",
        "withoutcontrast",
        "noncon",
    ),
    "arterial": ("arterial", "art", "latearterial", "lateart"),
    "venous": ("venous", "portalvenous", "portal", "pv", "pvp", "portalven"),
    "others": ("others", "other", "delayed", "delay", "excretory", "late"),
}
_LOOKUP: Final[dict[str, Phase]] = {word: phase for phase, words in _SYNONYMS.items() for word in words}


def choice_to_phase(value: str) -> Phase | None:
    """Map a choice value as a user would spell it to a phase, or None when it names no phase.

    >>> choice_to_phase("Non-contrast"), choice_to_phase("Portal venous phase"), choice_to_phase("Liver")
    ('non_contrast', 'venous', None)
    """
    key = re.sub(r"[\s_\-/]+", "", value.strip().lower())
    if key.endswith("phase") and key != "phase":
        key = key[: -len("phase")]
    return _LOOKUP.get(key)


@dataclass(frozen=True)
class PhaseTarget:
    """Where and how to write the phase into a Label Studio result.

    Attributes:
        from_name: the Choices control's ``name``.
        to_name: the object it labels (its ``toName``; the first one when it lists several).
        choices: phase -> the exact string to emit in ``value.choices``.
    """

    from_name: str
    to_name: str
    choices: dict[Phase, str]

    def choice_for(self, phase: Phase) -> str:
        """The choice string for ``phase``."""
        return self.choices[phase]


@dataclass(frozen=True)
class _Control:
    name: str
    to_name: str
    values: tuple[str, ...]
    mapped: dict[Phase, str]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _controls(root: ET.Element) -> list[_Control]:
    found: list[_Control] = []
    for element in root.iter():
        if _local(element.tag).lower() != "choices":
            continue
        values: list[str] = []
        mapped: dict[Phase, str] = {}
        for choice in element.iter():
            if _local(choice.tag).lower() != "choice":
                continue
            value = choice.get("value", "")
            alias = choice.get("alias")
            values.append(value)
            phase = choice_to_phase(value) or (choice_to_phase(alias) if alias else None)
            if phase is not None and phase not in mapped:
                mapped[phase] = alias or value
        to_name = (element.get("toName") or "").split(",")[0].strip()
        found.append(_Control(element.get("name", ""), to_name, tuple(values), mapped))
    return found


def _describe(control: _Control) -> str:
    missing = [p for p in PHASES if p not in control.mapped]
    problems = []
    if missing:
        problems.append(f"no choice for {', '.join(missing)}")
    if not control.name:
        problems.append("no name attribute")
    if not control.to_name:
        problems.append("no toName attribute")
    return f"<Choices name={control.name!r}> with values {list(control.values)}: {'; '.join(problems)}"


def phase_target(label_config: str) -> PhaseTarget:
    """Find the phase control of a label config.

    The first ``<Choices>`` with a ``name``, a ``toName`` and one choice for each of the four phases wins; a control
    whose name contains "phase" is preferred when several qualify.

    Args:
        label_config: the project's label config XML.

    Returns:
        The :class:`PhaseTarget`.

    Raises:
        LabelConfigError: the XML does not parse, or no Choices control covers the four phases (the message says
            which controls were found and what each lacks).
    """
    if len(label_config) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"label config is {len(label_config)} characters; more than {MAX_CONFIG_CHARS}")
    try:
        root = ET.fromstring(label_config)  # noqa: S314  (from the Label Studio admin; expat limits expansion)
    except ET.ParseError as exc:
        raise LabelConfigError(f"label config is not valid XML: {exc}") from exc
    controls = _controls(root)
    usable = [c for c in controls if c.name and c.to_name and len(c.mapped) == len(PHASES)]
    if usable:
        usable.sort(key=lambda c: "phase" not in c.name.lower())
        best = usable[0]
        return PhaseTarget(from_name=best.name, to_name=best.to_name, choices=dict(best.mapped))
    hint = (
        'add e.g. <Choices name="phase" toName="image" choice="single"> with <Choice value="Non-contrast"/>, '
        '<Choice value="Arterial"/>, <Choice value="Venous"/>, <Choice value="Others"/>'
    )
    if not controls:
        raise LabelConfigError(f"label config has no <Choices> control for the contrast phase; {hint}")
    found = "; ".join(_describe(c) for c in controls)
    raise LabelConfigError(f"no <Choices> control in the label config covers the four phases ({found}); {hint}")
