"""``/v1/events``: feedback in."""

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from freshrec.ingest.validate import EventIn
from freshrec.serve.http import Access, answers, body_schema, read_json
from freshrec.serve.schemas import Accepted
from freshrec.serve.service import Service


def router(service: Service, access: Access) -> APIRouter:
    routes = APIRouter(tags=["events"])

    @routes.post(
        "/v1/events",
        status_code=202,
        response_model=Accepted,
        dependencies=[access.writer],
        responses=answers(400, 413, 422, 503),
        openapi_extra=body_schema(EventIn, service.settings.serve.max_events_per_request),
    )
    async def post_events(request: Request) -> Accepted:
        """Store one event or a list; all are stored, or none (422 lists every bad field)."""
        accepted, duplicates = await run_in_threadpool(service.intake.events, await read_json(request))
        return Accepted(accepted=accepted, duplicates=duplicates)

    return routes
