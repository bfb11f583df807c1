"""Metadata prior: what the DICOM header alone suggests about the contrast phase.

Used in two places: as the cold-start prediction when no network is registered yet (served with a deliberately low
score so every task gets reviewed), and as the "conflict" component of the review priority (a confident metadata
phase that disagrees with the image prediction moves the task up the queue).

Evidence, strongest first:

1. **Timing**: seconds from ``ContrastBolusStartTime`` to ``AcquisitionTime`` (``SeriesTime`` when absent):
   < 25 s early arterial (``others``), 25-45 s ``arterial``, 45-55 s ambiguous (no phase), 55-90 s ``venous``,
   90-150 s late portal (``venous``, weaker), > 150 s delayed (``others``). Delays beyond 6 h are ignored as bogus;
   a negative delay that becomes plausible after adding 24 h is taken to cross midnight.
2. **SeriesDescription** patterns (case-insensitive, on word boundaries): "non con", "plain", "native", "w/o",
   "unenhanced", "pre contrast" -> ``non_contrast``; "early art", "delay", "excretory", "urogram", "equilibrium"
   -> ``others``; "art", "arterial" -> ``arterial``; "portal", "venous", "PV", "PVP" -> ``venous``.
3. **ContrastBolusAgent**: filled in means contrast was given (argues against ``non_contrast``); empty is weak
   evidence for ``non_contrast`` (many scanners leave it empty for contrast series too).

Confidences are heuristic in [0, 0.9]: timing alone 0.5 (0.3 in the fringe bands), description alone 0.5, both
agreeing 0.8, disagreeing 0.3 (timing wins), agent-only 0.15. Evidence strings name the tag and the matched token or
the delay, never free text that could identify a patient.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

from backend.ml.phases import Phase

if TYPE_CHECKING:
    from backend.ml.dicom import SeriesMetadata

PRIOR_VERSION: Final[str] = "metadata-prior-v1"
"""The ``model_version`` string of predictions made by the prior alone."""

MAX_PLAUSIBLE_DELAY_S: Final[float] = 6 * 3600.0

# Order matters: the first pattern that matches wins ("early arterial" before "arterial", "non contrast" before any
# contrast words).
_DESCRIPTION_PATTERNS: Final[tuple[tuple[Phase, re.Pattern[str]], ...]] = (
    (
        "non_contrast",
        re.compile(
            r"\b(non[\s_\-]?con(trast)?|plain|native|w/o|wo[\s_\-]?con(trast)?|unenhanced|"
            r"pre[\s_\-]?con(trast)?|without[\s_\-]contrast|nc)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "others",
        re.compile(
            r"\b(early[\s_\-]?art(erial)?|delay(ed)?|excret(ory|ion)?|urogra(m|phy)|equilibrium|nephrographic)\b",
            re.IGNORECASE,
        ),
    ),
    ("arterial", re.compile(r"\b(art|arterial|late[\s_\-]?art(erial)?)\b", re.IGNORECASE)),
    ("venous", re.compile(r"\b(portal([\s_\-]?venous)?|venous|ven|pv|pvp)\b", re.IGNORECASE)),
)

_NO_AGENT: Final[frozenset[str]] = frozenset({"", "none", "no", "n/a", "na", "0"})


class MetadataPrior(NamedTuple):
    """The prior's answer (unpacks as ``phase, confidence, evidence``).

    Attributes:
        phase: the suggested phase, or None when the header says nothing usable.
        confidence: heuristic confidence in [0, 0.9] (0 when ``phase`` is None).
        evidence: one short line per observation that contributed, in order of strength.
    """

    phase: Phase | None
    confidence: float
    evidence: tuple[str, ...]


def parse_dicom_time(value: str) -> float | None:
    """Seconds since midnight of a DICOM TM value (``HHMMSS.FFFFFF``, ``HHMM``, ``HH`` or ``HH:MM:SS``).

    Returns:
        Seconds as float, or None when the value is empty or malformed.
    """
    text = value.strip().replace(":", "")
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?", text)
    if match is None:
        return None
    hours, minutes, seconds, fraction = match.groups()
    h, m, s = int(hours), int(minutes or 0), int(seconds or 0)
    if h > 23 or m > 59 or s > 60:
        return None
    return h * 3600.0 + m * 60.0 + s + (float(fraction) if fraction else 0.0)


def contrast_delay_s(metadata: SeriesMetadata) -> float | None:
    """Seconds from bolus start to acquisition (AcquisitionTime, else SeriesTime), or None when unknown or bogus."""
    start = parse_dicom_time(metadata.contrast_bolus_start_time)
    acquired = parse_dicom_time(metadata.acquisition_time)
    if acquired is None:
        acquired = parse_dicom_time(metadata.series_time)
    if start is None or acquired is None:
        return None
    delay = acquired - start
    if delay < 0 and delay + 86400.0 <= MAX_PLAUSIBLE_DELAY_S:
        delay += 86400.0  # crossed midnight
    if delay < 0 or delay > MAX_PLAUSIBLE_DELAY_S:
        return None
    return delay


def phase_from_delay(delay_s: float) -> tuple[Phase | None, float, str]:
    """Map a bolus-to-acquisition delay to (phase or None, confidence, evidence line)."""
    bands: Sequence[tuple[float, Phase | None, float, str]] = (
        (25.0, "others", 0.3, "early arterial"),
        (45.0, "arterial", 0.5, "arterial"),
        (55.0, None, 0.0, "between arterial and portal venous"),
        (90.0, "venous", 0.5, "portal venous"),
        (150.0, "venous", 0.3, "late portal venous"),
    )
    for upper, phase, confidence, name in bands:
        if delay_s < upper:
            return phase, confidence, f"bolus-to-acquisition delay {delay_s:.0f} s: {name}"
    return "others", 0.5, f"bolus-to-acquisition delay {delay_s:.0f} s: delayed"


def phase_from_description(description: str) -> tuple[Phase | None, str]:
    """Match the SeriesDescription against the phase patterns; returns (phase or None, evidence line)."""
    for phase, pattern in _DESCRIPTION_PATTERNS:
        match = pattern.search(description)
        if match is not None:
            return phase, f"SeriesDescription contains {match.group(0).lower()!r}: {phase}"
    return None, ""


def has_contrast_agent(metadata: SeriesMetadata) -> bool:
    """True when ContrastBolusAgent names an agent (not empty, "none" or "no")."""
    return metadata.contrast_bolus_agent.strip().lower() not in _NO_AGENT


def metadata_prior(metadata: SeriesMetadata) -> MetadataPrior:
    """Suggest a phase from DICOM header metadata alone (see the module docstring for the rules).

    Args:
        metadata: the series' header metadata (no pixel data needed).

    Returns:
        :class:`MetadataPrior` ``(phase | None, confidence in [0, 0.9], evidence)``.
    """
    evidence: list[str] = []
    delay = contrast_delay_s(metadata)
    timed_phase: Phase | None = None
    timed_confidence = 0.0
    if delay is not None:
        timed_phase, timed_confidence, line = phase_from_delay(delay)
        evidence.append(line)
    described_phase, line = phase_from_description(metadata.series_description)
    if line:
        evidence.append(line)
    agent = has_contrast_agent(metadata)
    evidence.append("ContrastBolusAgent present" if agent else "ContrastBolusAgent empty")

    phase, confidence = _combine(timed_phase, timed_confidence, described_phase)
    if phase is None and timed_phase is None and described_phase is None and not agent:
        phase, confidence = "non_contrast", 0.15
    elif phase == "non_contrast" and agent:
        confidence = min(confidence, 0.2)
        evidence.append("contrast agent recorded although the description says non-contrast")
    elif phase is not None and phase != "non_contrast" and agent:
        confidence = min(0.9, confidence + 0.05)
    return MetadataPrior(phase=phase, confidence=round(confidence, 4), evidence=tuple(evidence))


def _combine(
    timed_phase: Phase | None, timed_confidence: float, described_phase: Phase | None
) -> tuple[Phase | None, float]:
    if timed_phase is not None and described_phase is not None:
        if timed_phase == described_phase:
            return timed_phase, 0.8
        return timed_phase, 0.3
    if timed_phase is not None:
        return timed_phase, timed_confidence
    if described_phase is not None:
        return described_phase, 0.5
    return None, 0.0
