"""Nuisance variables (geometry, noise, kernel, compression, file layout, description quality) do not predict the phase.

The checks run on the plan of a moderately large dataset (no pixels): per-phase means of continuous variables and
per-phase frequencies of categorical ones must stay close to the pooled values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest

from backend.ml.phantom import SeriesPlan, plan_dataset
from backend.ml.phases import PHASES

N_PER_CLASS = 50


@pytest.fixture(scope="module")
def plans() -> list[SeriesPlan]:
    return plan_dataset(n_per_class=N_PER_CLASS, seed=2024)


CONTINUOUS: dict[str, Callable[[SeriesPlan], float]] = {
    "slice_thickness_mm": lambda p: p.slice_thickness_mm,
    "spacing_mm": lambda p: p.spacing_mm,
    "n_slices": lambda p: float(p.n_slices),
    "matrix": lambda p: float(p.matrix),
    "fov_mm": lambda p: p.fov_mm,
    "pixel_spacing_mm": lambda p: p.pixel_spacing_mm,
    "noise_hu": lambda p: p.noise_hu,
    "blur_mm": lambda p: p.blur_mm,
    "breath_shift_mm": lambda p: p.breath_shift_mm,
    "coverage_length_mm": lambda p: p.spacing_mm * (p.n_slices - 1),
    "s_bottom_mm": lambda p: p.s_bottom_mm,
    "kvp": lambda p: p.kvp,
}
CATEGORICAL: dict[str, Callable[[SeriesPlan], object]] = {
    "transfer_syntax": lambda p: p.transfer_syntax,
    "compressed": lambda p: p.transfer_syntax not in ("explicit_little", "implicit_little"),
    "coverage": lambda p: p.coverage,
    "matrix": lambda p: p.matrix,
    "thickness": lambda p: p.slice_thickness_mm,
    "kernel_sharp": lambda p: p.kernel_sharp,
    "rescale": lambda p: p.rescale,
    "circular_fov": lambda p: p.circular_fov,
    "description_empty": lambda p: p.series_description == "",
    "description_is_wrong": lambda p: p.description_is_wrong,
    "file_naming": lambda p: p.file_naming,
    "instance_numbering": lambda p: p.instance_numbering,
    "nested_dicom_folder": lambda p: p.relative_dir.endswith("/DICOM"),
    "manufacturer": lambda p: p.manufacturer,
}


def test_exact_counts_per_phase(plans: list[SeriesPlan]) -> None:
    assert Counter(plan.phase for plan in plans) == dict.fromkeys(PHASES, N_PER_CLASS)


@pytest.mark.parametrize("name", sorted(CONTINUOUS))
def test_continuous_nuisance_means_do_not_depend_on_phase(plans: list[SeriesPlan], name: str) -> None:
    values = np.array([CONTINUOUS[name](plan) for plan in plans])
    pooled_sd = float(values.std()) or 1.0
    standard_error = pooled_sd / np.sqrt(N_PER_CLASS)
    for phase in PHASES:
        phase_values = np.array([CONTINUOUS[name](plan) for plan in plans if plan.phase == phase])
        deviation = abs(phase_values.mean() - values.mean())
        assert deviation < 3.5 * standard_error, (
            f"{name}: mean {phase_values.mean():.3g} for {phase} vs {values.mean():.3g} pooled "
            f"({deviation / standard_error:.1f} standard errors)"
        )


@pytest.mark.parametrize("name", sorted(CATEGORICAL))
def test_categorical_nuisance_frequencies_do_not_depend_on_phase(plans: list[SeriesPlan], name: str) -> None:
    pooled = Counter(CATEGORICAL[name](plan) for plan in plans)
    total = len(plans)
    for category, count in pooled.items():
        p = count / total
        if p < 0.05:
            continue
        standard_error = np.sqrt(p * (1.0 - p) / N_PER_CLASS)
        for phase in PHASES:
            in_phase = sum(1 for plan in plans if plan.phase == phase and CATEGORICAL[name](plan) == category)
            share = in_phase / N_PER_CLASS
            assert abs(share - p) < 3.5 * standard_error + 0.02, (
                f"{name}={category!r}: {share:.2f} of {phase} vs {p:.2f} pooled"
            )


def test_chi_square_of_thickness_by_phase_is_unremarkable(plans: list[SeriesPlan]) -> None:
    categories = sorted({plan.slice_thickness_mm for plan in plans})
    table = np.array(
        [
            [sum(1 for p in plans if p.phase == phase and p.slice_thickness_mm == c) for c in categories]
            for phase in PHASES
        ],
        dtype=np.float64,
    )
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    chi2 = float(((table - expected) ** 2 / expected).sum())
    dof = (len(PHASES) - 1) * (len(categories) - 1)
    assert chi2 < dof + 4.0 * np.sqrt(2.0 * dof), f"chi-square {chi2:.1f} with {dof} degrees of freedom"


def test_wrong_or_empty_descriptions_are_about_fifteen_percent(plans: list[SeriesPlan]) -> None:
    wrong = np.mean([plan.description_is_wrong for plan in plans])
    assert 0.08 <= wrong <= 0.25
    assert all(plan.description_is_wrong for plan in plans if plan.series_description == "")


def test_series_of_a_study_are_in_acquisition_order(plans: list[SeriesPlan]) -> None:
    order = ("native", "early_arterial", "late_arterial", "transitional", "portal_venous", "delayed")
    studies: dict[int, list[SeriesPlan]] = {}
    for plan in plans:
        studies.setdefault(plan.study_number, []).append(plan)
    assert any(len(series) >= 3 for series in studies.values())
    for series in studies.values():
        series.sort(key=lambda plan: plan.series_number)
        times = [plan.acquisition_time_s for plan in series]
        assert times == sorted(times)
        assert [order.index(plan.subphase) for plan in series] == sorted(order.index(plan.subphase) for plan in series)
        assert len({plan.patient_seed for plan in series}) == 1
        for plan in series:
            if plan.bolus_start_time_s is not None:
                assert plan.subphase != "native"
                assert plan.acquisition_time_s - plan.bolus_start_time_s >= 15.0
