"""Turn discovered CT series into Label Studio tasks, one per SeriesInstanceUID, idempotently.

``ctphase ls import PATH`` scans ``PATH`` (headers only), asks the project which ``series_uid`` values already have a
task, renders previews for the new series only and creates their tasks in one request. Re-importing the same folder
therefore adds nothing. (Two imports racing on the same project could both create a task for a new series; run
imports one at a time.)

Task data (the keys ``plugin/label_config.xml`` shows, plus what the backend needs)::

    series              location the backend resolves: the series folder (or single file), relative to the
                        DICOM root that contains it (backend.resolve accepts paths relative to a root)
    series_uid, study_uid
    preview             PNG URL (Label Studio local files, or the backend route)
    series_description, slices, acquisition, study_order, contrast, metadata_prior, conflict   (display text)

No patient identifiers go into tasks: no names, ids, birth dates or study dates.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from backend.ml.prior import (
    contrast_delay_s,
    has_contrast_agent,
    metadata_prior,
    parse_dicom_time,
    phase_from_delay,
    phase_from_description,
)

if TYPE_CHECKING:
    from backend.ml.dicom import SeriesInfo
    from backend.ml.phases import Phase

PHASE_LABELS: Mapping[str, str] = {
    "non_contrast": "Non-contrast",
    "arterial": "Arterial",
    "venous": "Venous",
    "others": "Others",
}
"""Phase -> the Choices value in plugin/label_config.xml."""

_EXPECTED_ORDER: Mapping[str, int] = {"non_contrast": 0, "arterial": 1, "venous": 2}
"""Usual acquisition order within a multiphase study (``others`` can come anywhere)."""

CONFIDENT_PRIOR: float = 0.5


class TaskStore(Protocol):
    """The tasks of one Label Studio project, as the importer needs them."""

    def existing_series_uids(self) -> set[str]:
        """SeriesInstanceUIDs that already have a task."""
        ...

    def create_tasks(self, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        """Create one task per data dict; returns the new task ids."""
        ...


@dataclass(frozen=True)
class Skipped:
    """A series that got no task, and why (the reason names no patient data)."""

    series_uid: str
    reason: str


@dataclass(frozen=True)
class ImportReport:
    """What an import did.

    Attributes:
        created: new task ids.
        already_imported: series that had a task before this import.
        skipped: series left out, with the reason.
    """

    created: tuple[int, ...]
    already_imported: tuple[str, ...]
    skipped: tuple[Skipped, ...] = field(default_factory=tuple)


# --- series location -----------------------------------------------------------------------------------------------


def series_location(series: SeriesInfo) -> Path:
    """The folder holding all of the series' files, or the file itself for a single-file (Enhanced) series."""
    paths = {ref.path for ref in series.slices}
    if len(paths) == 1:
        return next(iter(paths))
    parents = {path.parent for path in paths}
    if len(parents) == 1:
        return next(iter(parents))
    return Path(_common_path(sorted(parents)))


def _common_path(paths: Sequence[Path]) -> Path:
    common = paths[0]
    for path in paths[1:]:
        while common != path and common not in path.parents:
            common = common.parent
    return common


def shared_locations(all_series: Iterable[SeriesInfo]) -> set[Path]:
    """Locations (see :func:`series_location`) that hold files of more than one series.

    The backend reads exactly one series from a task's location, so such series cannot be imported as they are.
    """
    uids_under: dict[Path, set[str]] = defaultdict(set)
    locations: dict[str, Path] = {}
    for series in all_series:
        locations[series.series_instance_uid] = series_location(series)
        for folder in {ref.path.parent for ref in series.slices}:
            for ancestor in (folder, *folder.parents):
                uids_under[ancestor].add(series.series_instance_uid)
        for path in {ref.path for ref in series.slices}:
            uids_under[path].add(series.series_instance_uid)
    return {location for location in locations.values() if len(uids_under[location]) > 1}


def series_reference(location: Path, dicom_roots: Sequence[Path]) -> str | None:
    """The task's ``series`` value: ``location`` relative to the DICOM root holding it (POSIX), or None if outside.

    A location equal to a root is given as ``"."``.
    """
    resolved = location.resolve()
    for root in dicom_roots:
        root_resolved = root.resolve()
        if resolved == root_resolved or root_resolved in resolved.parents:
            return resolved.relative_to(root_resolved).as_posix()
    return None


# --- display text ---------------------------------------------------------------------------------------------------


def format_time(value: str) -> str:
    """DICOM TM (``HHMMSS.FFFFFF``) as ``HH:MM:SS``; "" when empty or malformed."""
    seconds = parse_dicom_time(value)
    if seconds is None:
        return ""
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def acquisition_seconds(series: SeriesInfo) -> float | None:
    """Seconds since midnight of AcquisitionTime (else SeriesTime), None when neither parses."""
    metadata = series.metadata
    seconds = parse_dicom_time(metadata.acquisition_time)
    return seconds if seconds is not None else parse_dicom_time(metadata.series_time)


def study_orders(all_series: Iterable[SeriesInfo]) -> dict[str, tuple[int, int]]:
    """SeriesInstanceUID -> (1-based position, number of series) within its study, by acquisition time.

    Series without a usable time come last, ordered by SeriesNumber.
    """
    by_study: dict[str, list[SeriesInfo]] = defaultdict(list)
    for series in all_series:
        by_study[series.study_instance_uid].append(series)
    orders: dict[str, tuple[int, int]] = {}
    for members in by_study.values():

        def key(series: SeriesInfo) -> tuple[int, float, int]:
            seconds = acquisition_seconds(series)
            number = series.metadata.series_number if series.metadata.series_number is not None else 1 << 30
            return (seconds is None, seconds if seconds is not None else 0.0, number)

        for position, series in enumerate(sorted(members, key=key), start=1):
            orders[series.series_instance_uid] = (position, len(members))
    return orders


def metadata_conflicts(series: SeriesInfo, *, earlier: Sequence[SeriesInfo]) -> list[str]:
    """Disagreements within the header metadata worth a radiologist's attention.

    Args:
        series: the series.
        earlier: series of the same study acquired before it.

    Returns:
        One short line per conflict (empty when consistent): timing versus description, a contrast agent on a
        series described as non-contrast, and a phase acquired after a later phase of the usual protocol order.
    """
    metadata = series.metadata
    problems: list[str] = []
    described, _ = phase_from_description(metadata.series_description)
    delay = contrast_delay_s(metadata)
    if delay is not None and described is not None:
        timed, _, _ = phase_from_delay(delay)
        if timed is not None and timed != described:
            problems.append(
                f"description says {PHASE_LABELS[described]}, timing ({delay:.0f} s) says {PHASE_LABELS[timed]}"
            )
    if described == "non_contrast" and has_contrast_agent(metadata):
        problems.append("described as non-contrast but a contrast agent is recorded")
    mine = _confident_prior(series)
    if mine is not None and mine in _EXPECTED_ORDER:
        rank = _EXPECTED_ORDER[mine]
        before = [p for p in map(_confident_prior, earlier) if p is not None and _EXPECTED_ORDER.get(p, -1) > rank]
        if before:
            latest = max(before, key=lambda p: _EXPECTED_ORDER[p])
            problems.append(f"{PHASE_LABELS[mine]} by metadata but acquired after a {PHASE_LABELS[latest]} series")
    return problems


def _confident_prior(series: SeriesInfo) -> Phase | None:
    prior = metadata_prior(series.metadata)
    return prior.phase if prior.confidence >= CONFIDENT_PRIOR else None


def task_data(
    series: SeriesInfo,
    *,
    reference: str,
    preview: str,
    order: tuple[int, int],
    earlier: Sequence[SeriesInfo] = (),
) -> dict[str, Any]:
    """The Label Studio task data of one series (see the module docstring for the keys).

    Args:
        series: the series.
        reference: its ``series`` value (:func:`series_reference`).
        preview: its preview URL.
        order: (position, count) within its study (:func:`study_orders`).
        earlier: series of the same study acquired before it (for the order conflict).
    """
    metadata = series.metadata
    thickness = f"{series.slice_thickness_mm:g} mm" if series.slice_thickness_mm else "unknown thickness"
    slices = f"{series.n_slices} slices x {thickness}"
    positions = [ref.position_mm for ref in series.slices if ref.position_mm is not None]
    if len(positions) >= 2:
        slices += f", coverage {max(positions) - min(positions):.0f} mm"
    acquired = format_time(metadata.acquisition_time) or format_time(metadata.series_time) or "unknown"
    prior = metadata_prior(metadata)
    prior_text = "no opinion"
    if prior.phase is not None:
        prior_text = f"{PHASE_LABELS[prior.phase]} (confidence {prior.confidence:.2f})"
    if prior.evidence:
        prior_text += ": " + "; ".join(prior.evidence)
    conflicts = metadata_conflicts(series, earlier=earlier)
    return {
        "series": reference,
        "series_uid": series.series_instance_uid,
        "study_uid": series.study_instance_uid,
        "preview": preview,
        "series_description": metadata.series_description.strip() or "(none)",
        "slices": slices,
        "acquisition": f"{acquired}" + (f", series number {metadata.series_number}" if metadata.series_number else ""),
        "study_order": f"{order[0]} of {order[1]} series in this study (by acquisition time)",
        "contrast": contrast_text(series),
        "metadata_prior": prior_text,
        "conflict": "; ".join(conflicts) if conflicts else "none",
    }


def contrast_text(series: SeriesInfo) -> str:
    """ContrastBolus* attributes and the bolus-to-acquisition delay as one line."""
    metadata = series.metadata
    parts: list[str] = []
    agent = metadata.contrast_bolus_agent.strip()
    parts.append(f"agent {agent}" if has_contrast_agent(metadata) else "no agent recorded")
    if metadata.contrast_bolus_volume_ml is not None:
        parts.append(f"{metadata.contrast_bolus_volume_ml:g} ml")
    if metadata.contrast_bolus_route.strip():
        parts.append(f"route {metadata.contrast_bolus_route.strip()}")
    start = format_time(metadata.contrast_bolus_start_time)
    if start:
        parts.append(f"bolus start {start}")
    delay = contrast_delay_s(metadata)
    if delay is not None:
        parts.append(f"delay {delay:.0f} s")
    return ", ".join(parts)


# --- import -----------------------------------------------------------------------------------------------------------


def import_series(
    found: Sequence[SeriesInfo],
    *,
    store: TaskStore,
    dicom_roots: Sequence[Path],
    preview: Callable[[SeriesInfo], str],
    limit: int | None = None,
) -> ImportReport:
    """Create one task per series not yet in the project.

    Args:
        found: every series discovered under the imported path (the study order uses all of them).
        store: the project's tasks.
        dicom_roots: the backend's DICOM roots; series outside them are skipped (the backend would refuse them).
        preview: renders (or finds) a series' preview and returns its URL; an exception skips that series.
        limit: create at most this many tasks (the first new series in discovery order).

    Returns:
        What was created, what existed, what was skipped and why.
    """
    existing = store.existing_series_uids()
    orders = study_orders(found)
    shared = shared_locations(found)
    by_study: dict[str, list[SeriesInfo]] = defaultdict(list)
    for series in found:
        by_study[series.study_instance_uid].append(series)
    already: list[str] = []
    skipped: list[Skipped] = []
    tasks: list[dict[str, Any]] = []
    seen: set[str] = set()
    for series in found:
        uid = series.series_instance_uid
        if uid in existing:
            already.append(uid)
            continue
        if uid in seen:
            skipped.append(Skipped(uid, "the same SeriesInstanceUID was found twice under the imported path"))
            continue
        seen.add(uid)
        if limit is not None and len(tasks) >= limit:
            break
        task, problem = _new_task(
            series,
            dicom_roots=dicom_roots,
            shared=shared,
            preview=preview,
            orders=orders,
            study=by_study[series.study_instance_uid],
        )
        if problem is not None:
            skipped.append(Skipped(uid, problem))
        elif task is not None:
            tasks.append(task)
    created = store.create_tasks(tasks) if tasks else []
    return ImportReport(created=tuple(created), already_imported=tuple(already), skipped=tuple(skipped))


def _new_task(
    series: SeriesInfo,
    *,
    dicom_roots: Sequence[Path],
    shared: set[Path],
    preview: Callable[[SeriesInfo], str],
    orders: Mapping[str, tuple[int, int]],
    study: Sequence[SeriesInfo],
) -> tuple[dict[str, Any] | None, str | None]:
    location = series_location(series)
    if location in shared:
        return None, "its folder also holds another series; put each series in its own folder"
    reference = series_reference(location, dicom_roots)
    if reference is None:
        return None, "outside CTPHASE_DICOM_ROOTS (the backend would refuse to read it)"
    try:
        url = preview(series)
    except Exception as error:  # any failure to render skips this series only
        # DicomReadError.reason leaves the path out (paths may carry patient names)
        return None, f"preview failed: {type(error).__name__}: {getattr(error, 'reason', 'see the log')}"
    mine = acquisition_seconds(series)
    earlier = [
        other
        for other in study
        if other.series_instance_uid != series.series_instance_uid
        and mine is not None
        and (seconds := acquisition_seconds(other)) is not None
        and seconds < mine
    ]
    data = task_data(
        series, reference=reference, preview=url, order=orders[series.series_instance_uid], earlier=earlier
    )
    return data, None
