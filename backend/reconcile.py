"""Periodic reconciliation: pull a project's annotations from Label Studio and repair the ``annotation`` table.

Webhooks have a 1 s timeout and no retry, so some events get lost (backend restarting, network blip, a slow
database). Reconciliation runs every ``Settings.reconcile_interval_s`` (Celery beat, or the embedded maintenance
thread) and on demand (``ctphase jobs reconcile``):

1. every annotation Label Studio lists goes through the same idempotent upsert as a webhook (a newer local row is
   kept, an older one is updated, a missing one is inserted);
2. every live local row of the project that Label Studio no longer lists, and that was first received *before* the
   pull started, is marked deleted (a row that arrived by webhook during the pull is left alone);
3. the automatic retraining rule is re-evaluated (a missed webhook may have been the N-th label).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import select, update

from backend.annotations import maybe_request_training, upsert_annotations
from backend.db import utcnow
from backend.tables import Annotation

if TYPE_CHECKING:
    from backend.loop import Loop

logger = logging.getLogger(__name__)

BATCH: Final[int] = 500


@dataclass(frozen=True)
class ReconcileReport:
    """Outcome of one reconciliation.

    Attributes:
        project: Label Studio project id.
        listed: annotations Label Studio listed.
        changed: rows inserted or updated from the pull.
        deleted: local rows marked deleted because Label Studio no longer has them.
        job_id: a training job the pull triggered, if any.
        skipped: why nothing was done (Label Studio not configured), else None.
    """

    project: str
    listed: int = 0
    changed: int = 0
    deleted: int = 0
    job_id: int | None = None
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def reconcile_project(loop: Loop, *, project: str) -> ReconcileReport:
    """Pull ``project``'s annotations through the gateway and repair the table (see the module docstring).

    Raises:
        backend.gateway.GatewayError: Label Studio could not be read (nothing is marked deleted then).
    """
    if loop.gateway is None:
        return ReconcileReport(project=project, skipped="label_studio_url/api_key not set")
    started = utcnow()
    seen: set[int] = set()
    changed = 0
    annotations = iter(loop.gateway.iter_annotations(project))
    while batch := list(islice(annotations, BATCH)):
        seen.update(a.id for a in batch)
        with loop.sessions() as session:
            changed += upsert_annotations(session, batch, settings=loop.settings)
            session.commit()
    deleted = _delete_unlisted(loop, project=project, listed=seen, started=started)
    job_id = maybe_request_training(loop, project=project)
    report = ReconcileReport(project=project, listed=len(seen), changed=changed, deleted=deleted, job_id=job_id)
    if changed or deleted:
        logger.info("reconciled project %s: %s", project, report.as_dict())
    return report


def _delete_unlisted(loop: Loop, *, project: str, listed: set[int], started: Any) -> int:
    with loop.sessions() as session:
        stmt = select(Annotation.ls_annotation_id).where(
            Annotation.project == project,
            Annotation.deleted.is_(False),
            Annotation.received_at < started,
        )
        gone = [i for i in session.scalars(stmt) if i not in listed]
        for start in range(0, len(gone), BATCH):
            chunk = gone[start : start + BATCH]
            session.execute(update(Annotation).where(Annotation.ls_annotation_id.in_(chunk)).values(deleted=True))
        session.commit()
    if gone:
        logger.info("project %s: %d annotations deleted in Label Studio while no webhook arrived", project, len(gone))
    return len(gone)
