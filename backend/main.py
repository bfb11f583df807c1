"""App factory: ``create_app(settings)`` wires settings, database, services, middleware and error handlers.

Start-up (lifespan): wait for the database and ``alembic upgrade head`` (``migrate=True``), create the inference
limiter, build and start the active-learning loop. Shut-down stops the loop and disposes the engine.

``uvicorn --factory backend.main:app_factory`` serves with settings from the environment; ``ctphase serve`` does the
same with its own host/port options.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Final, Literal

import httpx
from anyio import CapacityLimiter, to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.api import ServiceState, admin_router, ls_router, ops_router
from backend.api_jobs import jobs_router
from backend.config import Settings, get_settings
from backend.db import make_engine, make_session_factory
from backend.errors import (
    ArtifactRegistrationError,
    ChampionUnavailableError,
    CtphaseError,
    LabelConfigError,
    NothingToRollBackError,
    RegistryError,
    SeriesResolveError,
    VersionNotFoundError,
)
from backend.inference import InferenceService
from backend.logging import configure_logging, new_request_id, request_id_var
from backend.metrics import ServiceMetrics
from backend.previews import preview_router
from backend.registry import ModelCache
from backend.resolve import SeriesResolver

logger = logging.getLogger(__name__)

LoopMode = Literal["auto", "embedded", "inline", "celery", "off"]

_STATUS_BY_ERROR: Final[tuple[tuple[type[CtphaseError], int], ...]] = (
    (LabelConfigError, 422),
    (SeriesResolveError, 422),
    (VersionNotFoundError, 404),
    (NothingToRollBackError, 409),
    (ArtifactRegistrationError, 400),
    (RegistryError, 400),
    (ChampionUnavailableError, 503),
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestContextMiddleware:
    """Pure ASGI middleware: request id (``X-Request-ID`` in and out), request metrics, one access log line."""

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = new_request_id(incoming)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status_code = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(route=template, method=method, status=str(status_code)).inc()
            self.metrics.latency.labels(route=template, method=method).observe(elapsed)
            if template not in ("/metrics", "/health"):
                logger.info(
                    "%s %s -> %d in %.1f ms",
                    method,
                    template,
                    status_code,
                    elapsed * 1000.0,
                    extra={"route": template, "status": status_code, "duration_ms": round(elapsed * 1000.0, 2)},
                )
            request_id_var.reset(token)


def _error_response(status_code: int, detail: str, kind: str) -> JSONResponse:
    return JSONResponse(
        status_code=status_code, content={"detail": detail, "kind": kind, "request_id": request_id_var.get()}
    )


def _install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    @app.exception_handler(CtphaseError)
    async def domain_error(_request: Request, exc: CtphaseError) -> JSONResponse:
        status_code = next((code for cls, code in _STATUS_BY_ERROR if isinstance(exc, cls)), 400)
        metrics.errors.labels(kind=exc.kind).inc()
        logger.warning("%s (%d): %s", exc.kind, status_code, exc)
        return _error_response(status_code, str(exc), exc.kind)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error_response(exc.status_code, str(exc.detail), "http")
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Never echo the input back (it may carry series paths): location and message only.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg', '')}" for error in exc.errors()
        )
        return _error_response(422, f"invalid request: {problems}", "validation")

    @app.exception_handler(Exception)
    async def unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
        metrics.errors.labels(kind="internal").inc()
        logger.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return _error_response(500, "internal error: see the server log for this request id", "internal")


def _build_loop(state: ServiceState, mode: LoopMode) -> None:
    if mode == "off":
        return
    from backend.loop import build_loop

    automatic: Literal["embedded", "celery"] = "celery" if state.settings.broker_url is not None else "embedded"
    queue = automatic if mode == "auto" else mode
    state.loop = build_loop(state.settings, sessions=state.sessions, queue=queue, inference_service=state.inference)
    state.loop.queue.start()


def create_app(
    settings: Settings | None = None,
    *,
    migrate: bool = True,
    loop_mode: LoopMode = "auto",
    http_client: httpx.Client | None = None,
) -> FastAPI:
    """Build the service.

    Args:
        settings: the settings (default: :func:`get_settings`, from the environment).
        migrate: wait for the database and upgrade it to the head revision at start-up.
        loop_mode: active-learning loop: ``auto`` (Celery when ``broker_url`` is set, else embedded threads),
            ``embedded``, ``inline`` (webhook work runs synchronously after the response; tests), ``celery``, or
            ``off`` (webhooks are acknowledged and logged only).
        http_client: the client used to fetch series (tests pass one with a mock transport).
    """
    settings = settings if settings is not None else get_settings()
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    metrics = ServiceMetrics()
    cache = ModelCache(
        store=settings.model_store,
        max_size=settings.model_cache_size,
        device=settings.device,
        threads=settings.torch_threads,
    )
    resolver = SeriesResolver(settings=settings, http=http_client)
    inference = InferenceService(settings=settings, sessions=sessions, cache=cache, resolver=resolver, metrics=metrics)
    state = ServiceState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        metrics=metrics,
        cache=cache,
        resolver=resolver,
        inference=inference,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if migrate:
            from backend.prestart import prestart

            await to_thread.run_sync(prestart, settings.database_url)
        state.limiter = CapacityLimiter(settings.inference_concurrency)
        await to_thread.run_sync(_build_loop, state, loop_mode)
        logger.info("ctphase service ready (%s, database %s)", settings.environment, engine.url.get_backend_name())
        try:
            yield
        finally:
            if state.loop is not None:
                await to_thread.run_sync(state.loop.close)
            resolver.close()
            engine.dispose()

    app = FastAPI(
        title="ctphase",
        summary="Contrast phase recognition for abdominal CT: a Label Studio ML backend",
        lifespan=lifespan,
    )
    app.state.ctphase = state
    app.include_router(ls_router)
    app.include_router(admin_router)
    app.include_router(jobs_router)
    app.include_router(ops_router)
    app.include_router(preview_router(settings))
    _install_error_handlers(app, metrics)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory backend.main:app_factory`` (settings and logging from the environment)."""
    settings = get_settings()
    configure_logging(json_lines=settings.log_json, level=settings.log_level)
    return create_app(settings)
