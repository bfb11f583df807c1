"""The contrast phases, in the one fixed order used everywhere (network outputs, CSV columns, manifests)."""

from __future__ import annotations

from typing import Final, Literal, TypeAlias, get_args

Phase: TypeAlias = Literal["non_contrast", "arterial", "venous", "others"]

PHASES: Final[tuple[Phase, ...]] = get_args(Phase)
"""Phase names in network-output order: index ``i`` of a probability vector is ``PHASES[i]``."""

N_PHASES: Final[int] = len(PHASES)


def phase_index(name: str) -> int:
    """Return the output index of a phase name.

    Args:
        name: one of :data:`PHASES`.

    Raises:
        ValueError: the name is not a known phase (the message lists the valid ones).
    """
    try:
        return PHASES.index(name)
    except ValueError:
        raise ValueError(f"unknown phase {name!r}; expected one of {', '.join(PHASES)}") from None


def as_phase(name: str) -> Phase:
    """Validate ``name`` and return it typed as a :data:`Phase`."""
    return PHASES[phase_index(name)]
