"""The HTTP API (FastAPI), versioned under ``/v1``, plus health, metrics and the dashboard.

Request bodies of events and items are parsed here and validated by the same
:class:`~freshrec.ingest.validate.Validator` as bulk imports, so that an error
names the record and field exactly as ``freshrec import`` would; their
schemas are still published in the OpenAPI document.
"""

import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Response, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from freshrec.ingest.validate import EventIn, ItemIn, check_id
from freshrec.serve.auth import AuthError, Keys, Role
from freshrec.serve.explain import Ranked
from freshrec.serve.metrics import Metrics
from freshrec.serve.ranker import Options
from freshrec.serve.schemas import (
    Accepted,
    ErrorBody,
    EventOut,
    History,
    ItemOut,
    ItemsWritten,
    Recommendations,
    Similar,
)
from freshrec.serve.service import Problem, Service, item_dict
from freshrec.storage.base import StoreBusy

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATIC = resources.files("freshrec.serve") / "static"
Categories = Annotated[list[str], Query(description="Only items in any of these (comma-separated).")]


class _TooLarge(Exception):
    pass


class Guard:
    """Outermost middleware: refuses oversized bodies (413) and times every request."""

    def __init__(self, app: ASGIApp, max_body: int, metrics: Metrics):
        self.app = app
        self.max_body = max_body
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await self._refuse(send)
            self._observe(scope, 413, started)
            return
        seen = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise _TooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except _TooLarge:
            if response_started:
                raise
            status = 413
            await self._refuse(send)
        finally:
            self._observe(scope, status, started)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body larger than {self.max_body:,} bytes"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _observe(self, scope: Scope, status: int, started: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")
        self.metrics.requests.labels(scope.get("method", ""), path, str(status)).observe(time.perf_counter() - started)


ANSWERS = {
    400: "The body is not valid JSON (or not UTF-8).",
    401: "No API key, or an unknown one.",
    403: "The key's role may not do this.",
    404: "No such item, job or path.",
    413: "The body is larger than `serve.max_body_mb`, or holds more records than the document's `maxItems`.",
    422: "A field or parameter is invalid; `errors` locates each (nothing was stored).",
    503: "The store does not answer, or its write lock stayed busy (`Retry-After`; nothing was stored).",
}


def answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of an operation for the OpenAPI document: all in one model."""
    return {status: {"model": ErrorBody, "description": ANSWERS[status]} for status in statuses}


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


async def _json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise Problem(400, f"request body is not valid UTF-8: {exc}") from None
    except ValueError as exc:
        raise Problem(400, f"request body is not valid JSON: {exc}") from None


def _body_schema(model: type[Any], many: int) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"anyOf": [schema, {"type": "array", "items": schema, "maxItems": many}]}
                }
            },
        }
    }


def _ranked(items: list[Ranked], explain: bool) -> list[dict[str, Any]]:
    """The ``items`` of a response, as plain JSON (the hot path skips pydantic)."""
    out = []
    for r in items:
        row: dict[str, Any] = {"item_id": r.item_id, "score": r.score, "title": r.title, "explanation": r.explanation}
        if explain:
            row["because"] = [
                {"item_id": b.item_id, "title": b.title, "type": b.type.value, "value": b.value, "weight": b.weight}
                for b in r.because
            ]
        out.append(row)
    return out


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def create_app(service: Service, keys: Keys) -> FastAPI:
    settings = service.settings.serve
    max_id = service.settings.ingest.max_id_length
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        def tick() -> None:
            while not stop.wait(1.0):
                service.tick()

        thread = threading.Thread(target=tick, name="freshrec-tick", daemon=True)
        thread.start()
        yield
        stop.set()
        thread.join()
        await service.store.aclose()

    app = FastAPI(
        title="freshrec",
        version="1",
        summary="Real-time recommendations that learn from every event.",
        lifespan=lifespan,
        responses=answers(401, 403),
    )
    app.state.service = service
    bearer = HTTPBearer(auto_error=False, description="An API key as a bearer token.")
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")

    def need(role: Role) -> Any:
        async def check(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
            key: Annotated[str | None, Security(header)],
        ) -> None:
            keys.check(key or (credentials.credentials if credentials else None), role)

        return Depends(check)

    reader, writer, admin = need(Role.READ), need(Role.WRITE), need(Role.ADMIN)

    def valid_id(value: str, what: str) -> str:
        try:
            return check_id(value, max_id)
        except ValueError as exc:
            raise Problem(422, f"{what} {exc}") from None

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's own 422 (a query or path parameter out of range), in the project's
        one error model: ``detail`` a sentence, ``errors`` one entry per bad field."""
        errors = [
            {"index": 0, "field": ".".join(str(p) for p in e.get("loc", ())), "message": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        said = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:3])
        return JSONResponse({"detail": f"invalid request: {said}", "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own answers (404 for an unknown path, 405), in the same error model."""
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(StoreBusy)
    async def busy(request: Request, exc: StoreBusy) -> JSONResponse:
        return JSONResponse(
            {"detail": f"{exc}; nothing was stored, retry"}, status_code=503, headers={"Retry-After": "1"}
        )

    @app.exception_handler(Problem)
    async def problem(request: Request, exc: Problem) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.detail}
        if exc.errors:
            body["errors"] = list(exc.errors)
        return JSONResponse(body, status_code=exc.status)

    # -- events and items ---------------------------------------------------------
    errors = answers(400, 413, 422, 503)

    @app.post(
        "/v1/events",
        status_code=202,
        response_model=Accepted,
        dependencies=[writer],
        responses=errors,
        openapi_extra=_body_schema(EventIn, settings.max_events_per_request),
    )
    async def post_events(request: Request) -> Accepted:
        """Store one event or a list; all are stored, or none (422 lists every bad field)."""
        accepted, duplicates = await run_in_threadpool(service.ingest, await _json(request))
        return Accepted(accepted=accepted, duplicates=duplicates)

    @app.post(
        "/v1/items",
        response_model=ItemsWritten,
        dependencies=[writer],
        responses=errors,
        openapi_extra=_body_schema(ItemIn, 100_000),
    )
    async def post_items(request: Request, response: Response) -> ItemsWritten:
        """Add or replace items. Small batches are embedded before the reply; larger ones
        in the background (202 with a job to follow)."""
        count, job = await run_in_threadpool(service.write_items, await _json(request))
        if job is not None:
            response.status_code = 202
        return ItemsWritten(items=count, job=job.as_dict() if job else None)

    @app.put(
        "/v1/items/{item_id}",
        response_model=ItemOut,
        dependencies=[writer],
        responses=errors,
        openapi_extra=_body_schema(ItemIn, 1),
    )
    async def put_item(item_id: str, request: Request) -> ItemOut:
        """Create or replace one item; its embedding is computed before the reply."""
        item_id = valid_id(item_id, "item_id")
        raw = await _json(request)
        if not isinstance(raw, dict):
            raise Problem(422, "the body must be one item object")
        body_id = raw.get("item_id", raw.get("id", item_id))
        if body_id != item_id:
            raise Problem(422, f"the body's item_id {body_id!r} differs from the path's {item_id!r}")
        await run_in_threadpool(service.write_items, {**raw, "item_id": item_id})
        stored = service.get_item(item_id)
        assert stored is not None
        return ItemOut(**item_dict(stored))

    @app.get("/v1/items/{item_id}", response_model=ItemOut, dependencies=[reader], responses=answers(404, 422))
    async def get_item(item_id: str) -> ItemOut:
        item = await service.read(service.get_item, valid_id(item_id, "item_id"))
        if item is None:
            raise Problem(404, f"no item {item_id!r}")
        return ItemOut(**item_dict(item))

    @app.delete("/v1/items/{item_id}", status_code=204, dependencies=[admin], responses=answers(404, 422, 503))
    def delete_item(item_id: str) -> Response:
        """Remove an item from the catalog: it is no longer recommended. Its events stay in the log."""
        if not service.delete_item(valid_id(item_id, "item_id")):
            raise Problem(404, f"no item {item_id!r}")
        return Response(status_code=204)

    @app.get("/v1/jobs/{job_id}", dependencies=[reader], responses=answers(404, 422))
    async def get_job(job_id: str) -> dict[str, Any]:
        job = service.jobs.get(job_id)
        if job is None:
            raise Problem(404, f"no job {job_id!r}")
        return job.as_dict()

    # -- recommendations ---------------------------------------------------------------
    K = Annotated[int, Query(ge=1, le=settings.max_k, description="Length of the list.")]

    @app.get(
        "/v1/users/{user_id}/recommendations",
        response_model=Recommendations,
        dependencies=[reader],
        responses=answers(422),
    )
    async def recommendations(
        user_id: Annotated[str, Path()],
        k: K = 10,
        exclude_seen: bool = True,
        categories: Categories = [],  # noqa: B006
        exclude: Annotated[list[str], Query(description="Item ids never to return (comma-separated).")] = [],  # noqa: B006
        explain: bool = False,
    ) -> JSONResponse:
        # Runs on the event loop, not in the thread pool: it only reads (SQLite: this
        # thread's own connection, which never waits for a writer; PostgreSQL: one round
        # trip through psycopg's async pool) and computes, and the hop to a worker
        # thread cost more than it saved.
        user_id = valid_id(user_id, "user_id")
        options = Options(k, tuple(_split(exclude)), tuple(_split(categories)), exclude_seen, explain)
        version, items = await service.recommend(user_id, options)
        return JSONResponse({"user_id": user_id, "model_version": version, "items": _ranked(items, explain)})

    @app.get(
        "/v1/items/{item_id}/similar",
        response_model=Similar,
        dependencies=[reader],
        responses=answers(404, 422),
    )
    async def similar(
        item_id: str,
        k: K = 10,
        categories: Categories = [],  # noqa: B006
    ) -> JSONResponse:
        item_id = valid_id(item_id, "item_id")
        scoring = service.ranker.scoring
        items = service.ranker.similar(item_id, k, _split(categories))
        if items is None:
            raise Problem(404, f"no recommendable item {item_id!r}")
        return JSONResponse({"item_id": item_id, "model_version": scoring.version, "items": _ranked(items, False)})

    @app.get("/v1/users/{user_id}/history", response_model=History, dependencies=[reader], responses=answers(422))
    async def history(user_id: str, n: Annotated[int, Query(ge=1, le=1000)] = 50) -> History:
        """The user's last ``n`` events, newest first."""
        user_id = valid_id(user_id, "user_id")
        view = service.catalog.view
        events = [
            EventOut(
                event_id=e.event_id,
                item_id=e.item_id,
                title=view.titles[view.codes[e.item_id]] if e.item_id in view.codes else None,
                type=e.type,
                value=e.value,
                timestamp=e.timestamp,
                offset=e.offset,
            )
            for e in reversed(await service.history(user_id, n))
        ]
        return History(user_id=user_id, events=events)

    @app.delete("/v1/users/{user_id}", status_code=204, dependencies=[admin], responses=answers(422, 503))
    def delete_user(user_id: str) -> Response:
        """Forget a user: their events, history and the learner's state of them."""
        service.delete_user(valid_id(user_id, "user_id"))
        return Response(status_code=204)

    # -- operations --------------------------------------------------------------------
    @app.get("/v1/status", dependencies=[reader])
    async def status() -> dict[str, Any]:
        """Model version, log and learned offsets, learner state, online hit rate."""
        return service.status()

    @app.get("/v1/stats", dependencies=[reader])
    async def stats() -> dict[str, Any]:
        """The dashboard's data: current status and per-second series."""
        return {"status": service.status(), "series": service.live.series()}

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/health/ready", responses=answers(503))
    async def ready() -> JSONResponse:
        """200 while the store answers (the catalog is loaded before the server listens),
        with or without a learned model: until the first arrives, requests are answered by
        the text and popularity fallback, and a load balancer should send them. Whether a
        model is served is ``model_served`` in the body, ``/v1/status`` and ``/metrics``."""
        try:
            await service.read(service.store.last_offset)
        except Exception as exc:
            return JSONResponse({"detail": f"store unavailable: {type(exc).__name__}"}, status_code=503)
        return JSONResponse({"status": "ready", **service.status()})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    app.add_middleware(Guard, max_body=int(settings.max_body_mb * 1024 * 1024), metrics=service.metrics)
    return app
