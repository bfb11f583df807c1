"""Wiring of the active-learning loop: settings, database sessions, the Label Studio gateway and the job queue.

One :class:`Loop` per process. The API process builds it in its app factory (embedded mode starts its background
threads there), a Celery worker builds one per worker process, the CLI builds one per command. Every service
function of the loop (``backend.annotations``, ``backend.retrain``, ``backend.prelabel``, ``backend.reconcile``)
takes the :class:`Loop` as its first argument, so the same code runs under Celery, in the embedded executor and
inline, and tests inject a fake gateway and an inline queue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from backend.db import make_engine, make_session_factory

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from backend.config import Settings
    from backend.gateway import LabelStudioGateway
    from backend.inference import InferenceService
    from backend.jobs import JobQueue

logger = logging.getLogger(__name__)

QueueMode = Literal["auto", "inline", "embedded", "celery"]


@dataclass
class Loop:
    """Everything a loop service needs.

    Attributes:
        settings: the process settings.
        sessions: session factory of the loop's database.
        gateway: Label Studio access, or None when Label Studio is not configured (pre-labeling and reconciliation
            are then skipped with a log line).
        queue: where follow-up work goes (training jobs, pre-labeling, reconciliation).
        stopping: set when the process shuts down; running jobs stop at their next check.
        engine: the engine this loop created and disposes on :meth:`close` (None when sessions were injected).
        inference_service: the predictor pre-labeling uses (the API passes its own to share the network cache;
            built on first use otherwise).
    """

    settings: Settings
    sessions: sessionmaker[Session]
    gateway: LabelStudioGateway | None
    queue: JobQueue = field(init=False)
    stopping: threading.Event = field(default_factory=threading.Event)
    engine: Engine | None = None
    inference_service: InferenceService | None = None
    _owned_closers: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def inference(self) -> InferenceService:
        """The inference service (champion lookup, network cache, series resolution, prediction log)."""
        with self._lock:
            if self.inference_service is None:
                from backend.inference import InferenceService
                from backend.metrics import ServiceMetrics
                from backend.registry import ModelCache
                from backend.resolve import SeriesResolver

                resolver = SeriesResolver(settings=self.settings)
                self._owned_closers.append(resolver.close)
                self.inference_service = InferenceService(
                    settings=self.settings,
                    sessions=self.sessions,
                    cache=ModelCache(
                        store=self.settings.model_store,
                        max_size=self.settings.model_cache_size,
                        device=self.settings.device,
                    ),
                    resolver=resolver,
                    metrics=ServiceMetrics(),
                )
            return self.inference_service

    def close(self) -> None:
        """Stop background work and release the database engine and clients this loop owns."""
        self.stopping.set()
        queue = getattr(self, "queue", None)
        if queue is not None:
            queue.close()
        for closer in self._owned_closers:
            closer()
        self._owned_closers.clear()
        if self.engine is not None:
            self.engine.dispose()


def build_loop(
    settings: Settings,
    *,
    sessions: sessionmaker[Session] | None = None,
    gateway: LabelStudioGateway | Literal["installed"] | None = "installed",
    queue: QueueMode = "auto",
    inference_service: InferenceService | None = None,
) -> Loop:
    """Build the loop for ``settings``.

    Args:
        settings: the process settings.
        sessions: an existing session factory (the API shares its own); else a new engine is created and owned.
        gateway: ``"installed"`` loads the gateway the ``plugin`` package registers (None when Label Studio is not
            configured); tests pass a fake; None disables Label Studio access.
        queue: ``celery`` sends to the broker, ``embedded`` runs background threads in this process (start them
            with ``loop.queue.start()``), ``inline`` runs follow-up work synchronously in the caller (CLI, tests).
            ``auto`` is ``celery`` when ``settings.broker_url`` is set, else ``inline``.
        inference_service: share an existing predictor (the API's), else one is built on first use.
    """
    from backend.gateway import load_gateway
    from backend.jobs import CeleryQueue, EmbeddedQueue, InlineQueue

    engine = None
    if sessions is None:
        engine = make_engine(settings.database_url)
        sessions = make_session_factory(engine)
    resolved = load_gateway(settings) if gateway == "installed" else gateway
    loop = Loop(
        settings=settings, sessions=sessions, gateway=resolved, engine=engine, inference_service=inference_service
    )
    mode = queue
    if mode == "auto":
        mode = "celery" if settings.broker_url is not None else "inline"
    if mode == "celery":
        loop.queue = CeleryQueue(settings)
    elif mode == "embedded":
        loop.queue = EmbeddedQueue(loop)
    else:
        loop.queue = InlineQueue(loop)
    logger.debug("loop built with %s queue", mode)
    return loop
