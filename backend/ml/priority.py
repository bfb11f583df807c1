"""Review priority: which series a radiologist should look at first.

Label Studio (Community edition) can order the review queue only by the prediction ``score``, ascending, so the
score we write is ``1 - priority``: the series most worth a human look gets the lowest score and comes first.

The priority combines three components, each in [0, 1] (higher = more worth reviewing):

- **uncertainty** ``u = ((1 - m) + H) / 2``, where ``m`` is the vote margin (share of sampled slices voting for the
  winning phase minus the share of the runner-up) and ``H`` is the normalised entropy (``H / ln 4``) of the mean
  per-class probabilities renormalised to sum to one. The margin captures disagreement between slices; the entropy
  captures slices that are individually unsure even when they agree.
- **others** ``o = 1`` when the predicted phase is ``others`` (delayed, early arterial, transitional: the phases the
  network confuses most and the ones a protocol rarely asks for), else the renormalised ``others`` probability.
- **conflict** ``c = prior_confidence`` when the DICOM metadata prior (series description, contrast tags, timing)
  names a phase different from the image prediction, else 0. A confident metadata/image disagreement means one of
  them is wrong, and both kinds of error are worth finding.

``priority = w_u * u + w_o * o + w_c * c`` with weights summing to one (default ``0.5, 0.2, 0.3``), and
``score = 1 - priority``. All components are stored with each prediction (``prediction_log.components``) so the
order can be explained and the weights re-tuned from logged data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Final

from backend.ml.phases import N_PHASES, PHASES, Phase, as_phase

_OTHERS_INDEX: Final[int] = PHASES.index("others")


@dataclass(frozen=True)
class PriorityWeights:
    """Weights of the priority components; they must be non-negative and sum to one."""

    uncertainty: float = 0.5
    others: float = 0.2
    conflict: float = 0.3

    def __post_init__(self) -> None:
        values = (self.uncertainty, self.others, self.conflict)
        if any(v < 0 or not math.isfinite(v) for v in values):
            raise ValueError(f"priority weights must be finite and non-negative, got {values}")
        if not math.isclose(sum(values), 1.0, abs_tol=1e-6):
            raise ValueError(f"priority weights must sum to 1, got {sum(values):.6f} from {values}")


DEFAULT_WEIGHTS: Final[PriorityWeights] = PriorityWeights()


@dataclass(frozen=True)
class ReviewPriority:
    """The review priority of one series prediction and its parts (all floats in [0, 1]).

    Attributes:
        uncertainty: vote-margin/entropy uncertainty ``u``.
        others: ``others`` component ``o``.
        conflict: metadata/image conflict component ``c``.
        prior_phase: the phase the DICOM metadata suggests, or None when the metadata says nothing.
        priority: weighted sum, higher = review earlier.
        score: ``1 - priority``, the Label Studio prediction score (ascending order = review order).
    """

    uncertainty: float
    others: float
    conflict: float
    prior_phase: Phase | None
    priority: float
    score: float

    def as_components(self) -> dict[str, float | str | None]:
        """Return the JSON-ready dict stored in ``prediction_log.components``."""
        return asdict(self)


def _validated(values: Sequence[float], name: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if len(out) != N_PHASES:
        raise ValueError(f"{name} must have {N_PHASES} values (one per phase {PHASES}), got {len(out)}")
    if any(not math.isfinite(v) or v < 0.0 or v > 1.0 + 1e-6 for v in out):
        raise ValueError(f"{name} must be finite values in [0, 1], got {out}")
    return out


def vote_margin(vote_fractions: Sequence[float]) -> float:
    """Share of votes for the winner minus the runner-up.

    Args:
        vote_fractions: float [4], share of sampled slices voting each phase (sums to ~1).

    Returns:
        The margin in [0, 1]; 1 means every slice voted the same phase.
    """
    fractions = sorted(_validated(vote_fractions, "vote_fractions"), reverse=True)
    return min(1.0, max(0.0, fractions[0] - fractions[1]))


def normalized_entropy(probabilities: Sequence[float]) -> float:
    """Entropy of per-class probabilities renormalised to sum to one, divided by ``ln 4``.

    Args:
        probabilities: float [4], mean per-class sigmoid probabilities of a series (need not sum to one).

    Returns:
        Entropy in [0, 1]; all-zero probabilities count as uniform (1.0).
    """
    probs = _validated(probabilities, "probabilities")
    total = sum(probs)
    if total <= 0.0:
        return 1.0
    entropy = -sum((p / total) * math.log(p / total) for p in probs if p > 0.0)
    return min(1.0, max(0.0, entropy / math.log(N_PHASES)))


def review_priority(
    *,
    phase: str,
    vote_fractions: Sequence[float],
    probabilities: Sequence[float],
    prior_phase: str | None = None,
    prior_confidence: float = 0.0,
    weights: PriorityWeights = DEFAULT_WEIGHTS,
) -> ReviewPriority:
    """Compute the review priority of one series prediction (see the module docstring for the formula).

    Args:
        phase: the predicted phase of the series.
        vote_fractions: float [4], share of sampled slices voting each phase, in phase order.
        probabilities: float [4], mean per-class probabilities in phase order.
        prior_phase: phase suggested by the DICOM metadata prior, or None when it has no opinion.
        prior_confidence: confidence of that prior in [0, 1] (ignored when ``prior_phase`` is None).
        weights: component weights (sum to one).

    Returns:
        The priority, its components and the Label Studio score (``1 - priority``).

    Raises:
        ValueError: unknown phase names, wrong vector lengths or values outside [0, 1].
    """
    predicted = as_phase(phase)
    prior = as_phase(prior_phase) if prior_phase is not None else None
    if not (math.isfinite(prior_confidence) and 0.0 <= prior_confidence <= 1.0):
        raise ValueError(f"prior_confidence must be in [0, 1], got {prior_confidence}")
    probs = _validated(probabilities, "probabilities")
    uncertainty = 0.5 * ((1.0 - vote_margin(vote_fractions)) + normalized_entropy(probs))
    total = sum(probs)
    others_share = probs[_OTHERS_INDEX] / total if total > 0.0 else 1.0 / N_PHASES
    others = 1.0 if predicted == "others" else others_share
    conflict = prior_confidence if prior is not None and prior != predicted else 0.0
    priority = weights.uncertainty * uncertainty + weights.others * others + weights.conflict * conflict
    priority = min(1.0, max(0.0, priority))
    return ReviewPriority(
        uncertainty=round(uncertainty, 6),
        others=round(others, 6),
        conflict=round(conflict, 6),
        prior_phase=prior,
        priority=round(priority, 6),
        score=round(1.0 - priority, 6),
    )
