"""What every route of the HTTP API shares: the outermost middleware (body size,
timing), the one error model and its handlers, API-key checks, JSON bodies
parsed strictly, and the OpenAPI pieces the routes declare."""

import json
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from freshrec.ingest.validate import check_id
from freshrec.serve.auth import AuthError, Keys, Role
from freshrec.serve.batching import Overloaded
from freshrec.serve.explain import Ranked
from freshrec.serve.intake import Problem
from freshrec.serve.metrics import Metrics
from freshrec.serve.rules import RuleError, parse
from freshrec.serve.schemas import ErrorBody
from freshrec.storage.base import StoreBusy

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


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
    503: (
        "The store does not answer, its write lock stayed busy, or (recommendations) the server is over "
        "capacity: the request waited longer than `serve.shed_after_ms` (`Retry-After`; nothing was stored)."
    ),
}


def answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of an operation for the OpenAPI document: all in one model."""
    return {status: {"model": ErrorBody, "description": ANSWERS[status]} for status in statuses}


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


async def read_json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise Problem(400, f"request body is not valid UTF-8: {exc}") from None
    except ValueError as exc:
        raise Problem(400, f"request body is not valid JSON: {exc}") from None


def body_schema(model: type[Any], many: int) -> dict[str, Any]:
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


def ranked_json(items: list[Ranked], explain: bool) -> list[dict[str, Any]]:
    """The ``items`` of a response, as plain JSON (the hot path skips pydantic)."""
    out = []
    for r in items:
        row: dict[str, Any] = {"item_id": r.item_id, "score": r.score, "title": r.title, "explanation": r.explanation}
        if explain:
            row["reason"] = r.reason
            row["because"] = [
                {"item_id": b.item_id, "title": b.title, "type": b.type.value, "value": b.value, "weight": b.weight}
                for b in r.because
            ]
        out.append(row)
    return out


def split_values(values: Iterable[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


class Access:
    """The API-key checks, as dependencies: ``reader``, ``writer``, ``admin``."""

    def __init__(self, keys: Keys):
        bearer = HTTPBearer(auto_error=False, description="An API key as a bearer token.")
        header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")

        def need(role: Role) -> Any:
            async def check(
                credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
                key: Annotated[str | None, Security(header)],
            ) -> None:
                keys.check(key or (credentials.credentials if credentials else None), role)

            return Depends(check)

        self.reader, self.writer, self.admin = need(Role.READ), need(Role.WRITE), need(Role.ADMIN)


def valid_rule(text: str, named: dict[str, str], field: str = "filter") -> str:
    """The business rule ``text`` is, or the one of ``[serve] rules`` it names, parsed
    here so that a bad one is answered 422 with the position of its first problem."""
    if not text.strip():
        return ""
    rule = named.get(text.strip(), text)
    try:
        parse(rule)
    except RuleError as exc:
        raise Problem(422, f"{field}: {exc}", ({"index": 0, "field": field, "message": str(exc)},)) from None
    return rule


def valid_boost(text: str, named: dict[str, str]) -> tuple[str, float] | None:
    """``RULE:SHARE`` (e.g. ``attributes.on_sale == true:0.3``) as a rule and a share in (0, 1]."""
    if not text.strip():
        return None
    rule, colon, share = text.rpartition(":")
    try:
        value = float(share) if colon else float("nan")
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1 or not rule.strip():
        message = f"expected RULE:SHARE with a share in (0, 1], e.g. attributes.on_sale == true:0.3; got {text!r}"
        raise Problem(422, f"boost: {message}", ({"index": 0, "field": "boost", "message": message},))
    return valid_rule(rule, named, "boost"), value


def valid_id(value: str, what: str, max_length: int) -> str:
    """``value`` as an id of a path, or a 422 that names ``what``."""
    try:
        return check_id(value, max_length)
    except ValueError as exc:
        raise Problem(422, f"{what} {exc}") from None


def install_error_handlers(app: FastAPI) -> None:
    """Every error in the one model, :class:`~freshrec.serve.schemas.ErrorBody`."""

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

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(Problem)
    async def problem(request: Request, exc: Problem) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.detail}
        if exc.errors:
            body["errors"] = list(exc.errors)
        return JSONResponse(body, status_code=exc.status)
