"""Operations: status, the dashboard's data, health and Prometheus metrics."""

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from freshrec.serve.http import Access, answers
from freshrec.serve.service import Service


def router(service: Service, access: Access) -> APIRouter:
    routes = APIRouter(tags=["operations"])

    @routes.get("/v1/status", dependencies=[access.reader])
    async def status() -> dict[str, Any]:
        """Model version, log and learned offsets, learner state, online hit rate."""
        return service.figures.status()

    @routes.get("/v1/stats", dependencies=[access.reader])
    async def stats() -> dict[str, Any]:
        """The dashboard's data: current status and per-second series."""
        return {"status": service.figures.status(), "series": service.live.series()}

    @routes.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @routes.get("/health/ready", responses=answers(503))
    async def ready() -> JSONResponse:
        """200 while the store answers (the catalog is loaded before the server listens),
        with or without a learned model: until the first arrives, requests are answered by
        the text and popularity fallback, and a load balancer should send them. Whether a
        model is served is ``model_served`` in the body, ``/v1/status`` and ``/metrics``.

        503 while a large catalog's first candidate index is built (seconds to a minute):
        requests would score every item meanwhile, a million items' 15 ms each, and a
        server sent its share of traffic then falls behind."""
        try:
            await service.read(service.store.last_offset)
        except Exception as exc:
            return JSONResponse({"detail": f"store unavailable: {type(exc).__name__}"}, status_code=503)
        if service.ranker.retrieval.warming:
            return JSONResponse({"detail": "building the candidate index"}, status_code=503)
        return JSONResponse({"status": "ready", **service.figures.status()})

    @routes.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return routes
