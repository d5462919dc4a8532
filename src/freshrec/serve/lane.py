"""A fast lane for the hottest request, ``GET /v1/users/{user_id}/recommendations``.

FastAPI's routing through every router, its dependency solving (two security schemes,
seven query parameters) and its stack of middleware cost the event loop about a third
of a millisecond per request (``python benchmarks/lane.py``): close to a tenth of a
recommendation's processor time on a million-item shop, where the loop is busy most of
the time at 200 requests/s and requests queue. The lane sits outside FastAPI and answers
the common form of the request itself, with the function the route calls
(:func:`~freshrec.serve.routes.users.recommended`) and the response class it returns.

It takes only what it can read without interpreting: known parameters each given once
(the list ones any number of times), ``k`` as plain digits within range, booleans
spelled ``true``/``false``/``1``/``0``, a key of a role that may read, no ``Origin``
header (CORS stays with its middleware) and no ``root_path``. Anything else goes on to
FastAPI unchanged, so that every error and every edge case has one implementation; an
exception raised while answering goes to the application's own handlers, so a 503 or
a 422 of a bad rule reads the same either way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from freshrec.serve.auth import Keys, Role
from freshrec.serve.http import ASGIApp, Receive, Scope, Send
from freshrec.serve.routes.users import recommended
from freshrec.serve.service import Service

Handlers = Callable[[], dict[Any, Callable[..., Any]]]

_BOOLEANS = {"true": True, "false": False, "1": True, "0": False}
_FLAGS = (("exclude_seen", "true"), ("explain", "false"))
"""The boolean parameters and their defaults."""
_LISTS = ("categories", "exclude")
_SCALARS = ("k", "exclude_seen", "explain", "filter", "boost")
PARAMETERS = frozenset((*_LISTS, *_SCALARS))
"""The query parameters the lane reads (the route's, by their names in the URL)."""
MAX_RULE = 2_000
"""The route's ``max_length`` of ``filter`` and ``boost``."""


class FastLane:
    """ASGI middleware in front of the FastAPI application (see the module's docstring).

    ``route`` is what the lane puts in the scope as the route it served, for the
    request metrics (:class:`~freshrec.serve.http.Guard`); ``handlers`` returns the
    application's exception handlers. ``answered`` counts the requests it answered."""

    def __init__(self, app: ASGIApp, service: Service, keys: Keys, route: Any, handlers: Handlers):
        self.app = app
        self.service = service
        self.keys = keys
        self.route = route
        self.handlers = handlers
        self.answered = 0
        self._queue_header = service.settings.serve.queue_header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = self._read(scope) if scope["type"] == "http" else None
        if request is None:
            await self.app(scope, receive, send)
            return
        self.answered += 1
        scope["route"] = self.route
        response: Response
        try:
            response = JSONResponse(await recommended(self.service, *request))
        except Exception as exc:
            handler = _handler(self.handlers(), exc)
            if handler is None:
                raise
            response = handler(Request(scope, receive), exc)
            if inspect.isawaitable(response):
                response = await response
        await response(scope, receive, send)

    def _read(self, scope: Scope) -> tuple[Any, ...] | None:
        """The arguments of :func:`recommended` for a request the lane takes, else ``None``."""
        if scope["method"] != "GET" or scope.get("root_path"):
            return None
        parts = scope["path"].split("/")
        if len(parts) != 5 or parts[:3] != ["", "v1", "users"] or parts[4] != "recommendations" or not parts[3]:
            return None
        if not self._may_read(scope):
            return None
        try:
            query = scope["query_string"].decode("ascii")
        except UnicodeDecodeError:
            return None
        values: dict[str, list[str]] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name not in PARAMETERS or (name in _SCALARS and name in values):
                return None
            values.setdefault(name, []).append(value)
        one = {name: v[0] for name, v in values.items() if name in _SCALARS}
        k = one.get("k", "10")
        if not (k.isascii() and k.isdigit() and len(k) <= 6 and 1 <= int(k) <= self.service.settings.serve.max_k):
            return None
        flags = [_BOOLEANS.get(one.get(name, by_default)) for name, by_default in _FLAGS]
        if None in flags or any(len(one.get(name, "")) > MAX_RULE for name in ("filter", "boost")):
            return None
        categories, exclude = values.get("categories", []), values.get("exclude", [])
        rule, boost = one.get("filter", ""), one.get("boost", "")
        return parts[3], int(k), flags[0], categories, exclude, flags[1], rule, boost, self._queued(scope)

    def _queued(self, scope: Scope) -> str | None:
        """The ``serve.queue_header`` header's value (its first), if any."""
        if not self._queue_header:
            return None
        return next((v.decode("latin-1") for n, v in scope["headers"] if n == self._queue_header), None)

    def _may_read(self, scope: Scope) -> bool:
        """A key of a role that may read, found as FastAPI's security schemes find it;
        no ``Origin`` and no repeated key header (those go on to FastAPI)."""
        key, bearer = None, None
        for name, value in scope["headers"]:
            if name == b"origin":
                return False
            if name == b"x-api-key":
                if key is not None:
                    return False
                key = value.decode("latin-1")
            elif name == b"authorization":
                if bearer is not None:
                    return False
                scheme, _, token = value.decode("latin-1").partition(" ")
                bearer = token if scheme.lower() == "bearer" and token else ""
        role = self.keys.role_of(key or bearer or None)
        return role is not None and role >= Role.READ


def _handler(handlers: dict[Any, Callable[..., Any]], exc: Exception) -> Callable[..., Any] | None:
    """The application's handler of ``exc``, as Starlette's exception middleware finds it:
    by the exception's classes, nearest first, but not ``Exception``'s (Starlette leaves
    that one to its outermost middleware, which answers 500 and raises again)."""
    return next((handlers[c] for c in type(exc).__mro__ if c is not Exception and c in handlers), None)
