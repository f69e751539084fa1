"""The FastAPI application: routes, errors, readiness, and the service behind them.

Routes: ``POST /v1/infer``, ``GET /v1/results/{id}[/{file}]``, ``GET /v1/model``,
``GET /healthz``, ``GET /readyz``, ``GET /metrics``, and the page (``GET /`` and
``/static/...``). With a token configured, ``/v1/*`` and ``/metrics`` need
``Authorization: Bearer <token>`` (compared in constant time); the probes and the page
(which holds nothing but code, and asks for the token) do not.

This module needs the ``serve`` extra (FastAPI): reach it through
:func:`edgemed.serve.load`, which names the extra when it is missing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import io
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.routing import get_route_path

from edgemed.errors import EdgemedError, UsageError
from edgemed.serve.body import ClientGone, UploadLimits, read_body
from edgemed.serve.config import ServeConfig
from edgemed.serve.errors import (
    NotFound,
    NotReady,
    RequestError,
    Unauthorized,
    error_body,
    status_of,
)
from edgemed.serve.metrics import Metrics, MetricsMiddleware
from edgemed.serve.store import ResultStore
from edgemed.serve.workers import Job, WorkerPool

__all__ = ["Service", "create_app"]

log = logging.getLogger("edgemed.serve")

STATIC = Path(__file__).resolve().parent / "static"
NOT_FOR_CLINICAL_USE = "not for clinical use"


class Service:
    """What the routes share: pipelines (built in the background), the queue, the
    result store, the metrics and the readiness state.

    States: ``warming_up`` (loading the model and checking the golden input),
    ``ready``, ``failed`` (loading or the golden check failed: see :attr:`failure`),
    ``draining`` (shutting down: finishing what it has, taking nothing new).
    """

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.store = ResultStore(config.store_count, config.store_bytes)
        self.pool: WorkerPool | None = None
        self.state = "warming_up"
        self.failure: EdgemedError | None = None
        self.golden: dict[str, Any] | None = None
        self.card: dict[str, Any] = {}
        self.limits = UploadLimits(config.max_upload_bytes, config.max_parts, config.body_timeout_s)
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    # -- start-up ------------------------------------------------------------------------

    def start(self) -> None:
        """Load the pipelines and run the golden check in a thread (the probes answer
        meanwhile: /healthz 200, /readyz 503 ``SERVICE_WARMING_UP``)."""
        self._thread = threading.Thread(target=self._warm_up, name="edgemed-warm-up", daemon=True)
        self._thread.start()

    def wait_started(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _warm_up(self) -> None:
        from edgemed.pipeline import Pipeline
        from edgemed.serve.golden import check

        pipelines: list[Pipeline] = []
        try:
            opts = self.config.options
            # One salt for every worker: a given input gets one input_id whichever
            # worker runs it. The modality check is the service's (per request).
            import secrets

            salt = opts.id_salt or secrets.token_bytes(16)
            opts = opts.replace(id_salt=salt)
            opts = dataclasses.replace(opts, check_modality=False)
            for _ in range(self.config.workers):
                if self._closed.is_set():
                    raise NotReady("shut down during start-up", code="SERVICE_DRAINING")
                pipelines.append(Pipeline.from_bundle(self.config.bundle_path, options=opts))
            reports = [check(p) for p in pipelines]
            self.golden = reports[0]
            failed = [r for r in reports if not r["ok"]]
            if failed:
                raise NotReady(
                    "the golden input's result does not match the expected one: "
                    + "; ".join(failed[0]["failures"]),
                    code="SERVICE_GOLDEN_MISMATCH",
                )
            self.card = _model_card(pipelines[0])
            self.metrics.model.info(
                {k: str(v) for k, v in self.card.items() if k not in ("labels", "colors")}
            )
            self.pool = WorkerPool(
                pipelines,
                queue_size=self.config.queue,
                batch_window_s=self.config.batch_window_ms / 1e3,
                observe=self.metrics.observe_stage,
                on_batch=self.metrics.batch.observe,
            )
            self.metrics.bind(self.pool)
            if self._closed.is_set():
                raise NotReady("shut down during start-up", code="SERVICE_DRAINING")
            self.state = "ready"
            self.metrics.ready.set(1)
            log.info("ready: %s", self.golden)
        except Exception as exc:
            if not isinstance(exc, EdgemedError):
                log.exception("start-up failed unexpectedly")
                exc = NotReady(f"start-up failed ({type(exc).__name__})", code="SERVICE_FAILED")
            self.failure = exc
            if self.state != "draining":
                self.state = "failed"
            log.error("not ready: %s", exc)
            if self.pool is None:
                for p in pipelines:
                    p.close()

    # -- readiness -----------------------------------------------------------------------

    def not_ready(self, draining_ok: bool = False) -> NotReady | None:
        """Why the service cannot take work now, or None when it can (``draining_ok``:
        a service that is shutting down still finishes requests already sent)."""
        if self.state == "draining" and not (draining_ok and self.pool is not None):
            return NotReady("the service is shutting down", code="SERVICE_DRAINING")
        if self.pool is not None and self.pool.fatal is not None:
            return NotReady(
                f"the pipeline refuses work after a fatal error ({self.pool.fatal.code})",
                code="SERVICE_PIPELINE_FAILED",
            )
        if self.state == "warming_up":
            return NotReady("loading the model and checking it", code="SERVICE_WARMING_UP")
        if self.state == "failed":
            f = self.failure
            # The cause's own code: BUNDLE_INTEGRITY, SERVICE_GOLDEN_MISMATCH, ...
            return NotReady(
                f.message if f else "start-up failed", code=f.code if f else "SERVICE_FAILED"
            )
        return None

    def drain(self) -> None:
        """Take no new work (SIGTERM); what is queued or running still completes."""
        self.state = "draining"
        self.metrics.ready.set(0)

    def close(self) -> None:
        self._closed.set()
        self.drain()
        if self.pool is not None:
            self.pool.close()


def _model_card(pipe: Any) -> dict[str, Any]:
    from edgemed.io.writers import PALETTE

    b, info = pipe.bundle, pipe.backend.info()
    return {
        "name": b.name,
        "version": b.version,
        "task": b.task,
        "labels": list(b.labels),
        "modalities": list(b.modalities),
        "description": b.description,
        "precision": info.get("precision", pipe.backend.precision),
        "backend": info.get("backend", pipe.backend.name),
        "backend_version": info.get("backend_version", ""),
        "device": info.get("device", ""),
        "intended_use": NOT_FOR_CLINICAL_USE,
        # The overlay's colours per label value, so the page's legend matches the PNG.
        "colors": [list(PALETTE[i % len(PALETTE)]) for i in range(len(b.labels))],
    }


def _parse_spacing(text: str | None) -> tuple[float, ...] | None:
    from edgemed.settings import Options

    if text is None:
        return None
    try:
        numbers = tuple(float(v) for v in text.split(","))
        return Options(spacing=numbers).spacing
    except (ValueError, UsageError):
        raise RequestError(
            "spacing must be X,Y or X,Y,Z in mm, positive numbers", code="REQUEST_SPACING"
        ) from None


#: The strings a query flag may be (pydantic's boolean strings, as FastAPI took them).
_FLAG_VALUES = {
    **dict.fromkeys(("1", "on", "t", "true", "y", "yes"), True),
    **dict.fromkeys(("0", "off", "f", "false", "n", "no"), False),
}


def _query_flag(text: str | None, name: str) -> bool:
    if text is None:
        return False
    value = _FLAG_VALUES.get(text.lower())
    if value is None:
        raise RequestError(f"invalid query parameters: {name}", code="REQUEST_INVALID")
    return value


class _Direct:
    """ASGI middleware: ``POST`` to ``route`` goes straight to its endpoint, everything
    else on to the app.

    Why: at concurrency 1 HTTP may add at most 2 ms to the in-process call, and with
    the caches cold after the model call FastAPI's dispatch (its router's route
    contexts and body limits, the exception middleware and their send wrappers) took
    ~0.35 ms of it, more than the route itself. The route stays registered with the
    app, so other methods get its 405 and the metrics its path; the endpoint's
    EdgemedErrors get the app's JSON answer (``on_error``), anything else reaches the
    app's handler for bugs (Starlette's outermost middleware).
    """

    def __init__(self, app: Any, route: Any, on_error: Any) -> None:
        self.app = app
        self.route = route
        self.on_error = on_error

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or get_route_path(scope) != self.route.path:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # the metrics' label, a 405 included
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await self.route.endpoint(request)
        except EdgemedError as exc:
            response = self.on_error(request, exc)
        await response(scope, receive, send)


def create_app(config: ServeConfig, service: Service | None = None) -> Any:
    """The FastAPI app for ``config`` (the service starts warming up with the app)."""
    svc = service or Service(config)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        svc.start()
        try:
            yield
        finally:
            # Connections have finished (uvicorn waits for them): stop the workers.
            await asyncio.to_thread(svc.close)

    app = FastAPI(
        title="edgemed serve",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # nothing fetched from the internet, no schema pages
    )
    app.state.service = svc

    def error(request: Request, exc: EdgemedError) -> JSONResponse:
        request.scope["edgemed.error_code"] = exc.code
        headers = {}
        retry = getattr(exc, "retry_after", None)
        if retry is not None:
            headers["Retry-After"] = str(retry)
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(error_body(exc.code, exc.message), status_of(exc), headers=headers)

    @app.exception_handler(EdgemedError)
    async def _edgemed_error(request: Request, exc: EdgemedError) -> JSONResponse:
        return error(request, exc)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        request.scope["edgemed.error_code"] = code
        message = {404: "no such route", 405: "method not allowed here"}.get(
            exc.status_code, "request refused"
        )
        return JSONResponse(error_body(code, message), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = sorted({".".join(str(x) for x in e.get("loc", ())[1:]) for e in exc.errors()})
        return error(
            request,
            RequestError(f"invalid query parameters: {', '.join(fields)}", code="REQUEST_INVALID"),
        )

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error %s", type(exc).__name__, exc_info=exc)
        request.scope["edgemed.error_code"] = "INTERNAL"
        return JSONResponse(error_body("INTERNAL", "internal error (see the server log)"), 500)

    token = config.token.encode() if config.token else None

    def authorize(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise Unauthorized("Authorization: Bearer <token> is required", code="AUTH_REQUIRED")
        if not hmac.compare_digest(value.strip().encode(), token):
            raise Unauthorized("the bearer token is not valid", code="AUTH_INVALID")

    def need_ready() -> WorkerPool:
        # While draining, a request that reached us is still served: uvicorn takes no
        # new connections, and what was sent before SIGTERM completes.
        why = svc.not_ready(draining_ok=True)
        if why is not None:
            raise why
        assert svc.pool is not None
        return svc.pool

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        why = svc.not_ready()
        if why is not None:
            request.scope["edgemed.error_code"] = why.code
            body = error_body(why.code, why.message)
            body.update(ready=False, state=svc.state, golden=svc.golden)
            return JSONResponse(body, 503)
        return JSONResponse({"ready": True, "state": svc.state, "golden": svc.golden})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        authorize(request)
        data, ctype = svc.metrics.render()
        return Response(data, media_type=ctype)

    @app.get("/v1/model")
    async def model(request: Request) -> Response:
        authorize(request)
        need_ready()
        return JSONResponse(svc.card)

    async def infer(request: Request) -> Response:
        # A plain Starlette endpoint that _Direct calls past FastAPI's router (see
        # there); so the query is parsed here rather than by FastAPI's parameters.
        authorize(request)
        pool = need_ready()
        query = request.query_params
        precision = query.get("precision")
        loaded = svc.card.get("precision")
        if precision is not None and precision != loaded:
            raise RequestError(
                f"this service runs the {loaded} model; restart it with --precision "
                f"{precision} for that one",
                code="REQUEST_PRECISION",
            )
        any_modality = _query_flag(query.get("any_modality"), "any_modality")
        job_spacing = _parse_spacing(query.get("spacing"))
        if pool.full():  # refuse before reading a body that could not be queued
            raise pool.busy()
        pool.expect()  # a worker holding one slice may wait for this one's body
        try:
            parts = await read_body(request, svc.limits)
        except ClientGone:
            request.scope["edgemed.error_code"] = "CLIENT_DISCONNECTED"
            return Response(status_code=400)  # nobody is there to read it
        finally:
            pool.arrived()  # before submitting: a worker must not wait for its own job
        job = Job(
            id=svc.store.new_id(),
            parts=parts,
            check_modality=config.options.check_modality and not any_modality,
            spacing=job_spacing,
        )
        del parts  # the job holds them; nothing else should keep them alive
        future = pool.submit(job)
        try:
            result, body = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # the client went away while it waited: skip it
            raise
        svc.store.put(job.id, body, result)
        # The stage metrics once the answer is out: nobody waits for them.
        observe = BackgroundTask(svc.metrics.observe_timings, result.timings)
        return Response(body, media_type="application/json", background=observe)

    app.add_route("/v1/infer", infer, methods=["POST"])
    infer_route = next(r for r in app.router.routes if getattr(r, "endpoint", None) is infer)

    @app.get("/v1/results/{rid}")
    async def result_json(request: Request, rid: str) -> Response:
        return await result_file(request, rid, "result.json")

    @app.get("/v1/results/{rid}/{name}")
    async def result_file(request: Request, rid: str, name: str) -> Response:
        authorize(request)
        entry = svc.store.get(rid)
        if entry is None:
            raise NotFound(
                "no result with this id (it may have been evicted)", code="RESULT_NOT_FOUND"
            )
        if name == "result.json":
            return Response(entry.body, media_type="application/json")
        result = entry.result
        files = result.head.artifacts(result) if result.head is not None else {}
        if name not in files:
            raise NotFound("this result has no such file", code="RESULT_FILE_NOT_FOUND")
        media, writer = files[name]

        def render() -> bytes:
            buf = io.BytesIO()
            writer(buf)
            return buf.getvalue()

        data = await asyncio.to_thread(render)  # encoding is CPU work: off the loop
        return Response(data, media_type=media)

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(_Direct, route=infer_route, on_error=error)
    app.add_middleware(MetricsMiddleware, metrics=svc.metrics)  # outermost: times both
    return app
