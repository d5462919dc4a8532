"""The HTTP API (FastAPI), versioned under ``/v1``, plus health, metrics and the dashboard.

One router per resource (:mod:`freshrec.serve.routes`). Request bodies of
events and items are parsed there and validated by the same
:class:`~freshrec.ingest.validate.Validator` as bulk imports, so that an error
names the record and field exactly as ``freshrec import`` would; their schemas
are still published in the OpenAPI document.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from freshrec.serve.auth import Keys
from freshrec.serve.http import Access, Guard, answers, install_error_handlers
from freshrec.serve.lane import FastLane
from freshrec.serve.routes import dashboard, events, experiments, items, jobs, operations, users
from freshrec.serve.service import Service


def create_app(service: Service, keys: Keys, lane: bool = True) -> FastAPI:
    """The application over ``service``; its lifespan starts and closes the service.
    ``lane``: the common recommendation requests take the fast lane
    (:mod:`freshrec.serve.lane`); off, FastAPI answers every request (tests compare)."""
    settings = service.settings.serve

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        beat = asyncio.create_task(service.watch.beat())
        service.watch.start()
        yield
        beat.cancel()
        service.watch.close()
        service.close()
        await service.store.aclose()

    app = FastAPI(
        title="freshrec",
        version="1",
        summary="Real-time recommendations that learn from every event.",
        lifespan=lifespan,
        responses=answers(401, 403),
    )
    app.state.service = service
    install_error_handlers(app)
    access = Access(keys)
    for resource in (events, items, jobs, users, experiments, operations):
        app.include_router(router := resource.router(service, access))
        if resource is users:
            route = next(r for r in router.routes if getattr(r, "path", None) == users.RECOMMENDATIONS)
    dashboard.install(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    if lane:
        app.add_middleware(FastLane, service=service, keys=keys, route=route, handlers=lambda: app.exception_handlers)
    app.add_middleware(Guard, max_body=int(settings.max_body_mb * 1024 * 1024), metrics=service.metrics)
    return app
