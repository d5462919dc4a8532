"""``/v1/users``: recommendations, history, erasure."""

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from freshrec.serve import guests
from freshrec.serve.guests import GuestIn
from freshrec.serve.http import (
    Access,
    answers,
    ranked_json,
    read_json,
    split_values,
    valid_boost,
    valid_id,
    valid_rule,
)
from freshrec.serve.ranker import Options
from freshrec.serve.routes.items import Boost, Categories, Rule
from freshrec.serve.schemas import EventOut, GuestRecommendations, History, Recommendations
from freshrec.serve.service import Service

RECOMMENDATIONS = "/v1/users/{user_id}/recommendations"


async def recommended(
    service: Service,
    user_id: str,
    k: int = 10,
    exclude_seen: bool = True,
    categories: Sequence[str] = (),
    exclude: Sequence[str] = (),
    explain: bool = False,
    rule: str = "",
    boost: str = "",
    queued: str | None = None,
) -> dict[str, Any]:
    """The body of ``GET /v1/users/{user_id}/recommendations`` for parameters that passed
    their type and range checks: the route and the fast lane both answer with it.
    ``queued``: the ``serve.queue_header`` header's value, if any."""
    user_id = valid_id(user_id, "user_id", service.settings.ingest.max_id_length)
    named = service.settings.serve.rules
    rule, boosted = valid_rule(rule, named), valid_boost(boost, named)
    excluded, only = tuple(split_values(exclude)), tuple(split_values(categories))
    options = Options(k, excluded, only, exclude_seen, explain, rule, boosted)
    served = await service.recommend(user_id, options, queued)
    return {
        "user_id": user_id,
        "model_version": served.version,
        "items": ranked_json(served.items, explain),
        "recommendation_id": served.recommendation_id,
        "variant": served.variant,
    }


def router(service: Service, access: Access) -> APIRouter:
    routes = APIRouter(tags=["users"])
    header = service.settings.serve.queue_header

    def queued_at(request: Request) -> str | None:
        return request.headers.get(header) if header else None

    max_id = service.settings.ingest.max_id_length
    K = Annotated[int, Query(ge=1, le=service.settings.serve.max_k, description="Length of the list.")]

    @routes.get(
        RECOMMENDATIONS,
        response_model=Recommendations,
        dependencies=[access.reader],
        responses=answers(422, 503),
    )
    async def recommendations(
        request: Request,
        user_id: Annotated[str, Path()],
        k: K = 10,
        exclude_seen: bool = True,
        categories: Categories = [],  # noqa: B006
        exclude: Annotated[list[str], Query(description="Item ids never to return (comma-separated).")] = [],  # noqa: B006
        explain: bool = False,
        rule: Rule = "",
        boost: Boost = "",
    ) -> JSONResponse:
        # Runs on the event loop, not in the thread pool: it only reads (SQLite: this
        # thread's own connection, which never waits for a writer; PostgreSQL: one round
        # trip through psycopg's async pool) and computes, and the hop to a worker
        # thread cost more than it saved. Most requests do not get here: the fast lane
        # (freshrec.serve.lane) answers them with the same function.
        queued = queued_at(request)
        return JSONResponse(
            await recommended(service, user_id, k, exclude_seen, categories, exclude, explain, rule, boost, queued)
        )

    @routes.post(
        "/v1/recommendations",
        response_model=GuestRecommendations,
        dependencies=[access.reader],
        responses=answers(400, 413, 422, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": GuestIn.model_json_schema(ref_template="#/components/schemas/{model}")
                    }
                },
            }
        },
    )
    async def guest(request: Request) -> JSONResponse:
        """Recommendations for someone the store does not know (a guest, a session before
        login) from the history in the body, with the options of the stored path. Nothing
        about them is stored, logged or remembered."""
        settings = service.settings.serve
        history, options = guests.parse(await read_json(request), service.validator, settings.max_k, settings.rules)
        served = await service.recommend_guest(history, options, queued_at(request))
        return JSONResponse(
            {
                "model_version": served.version,
                "items": ranked_json(served.items, options.explain),
                "recommendation_id": served.recommendation_id,
                "variant": served.variant,
            }
        )

    @routes.get(
        "/v1/users/{user_id}/history", response_model=History, dependencies=[access.reader], responses=answers(422)
    )
    async def history(user_id: str, n: Annotated[int, Query(ge=1, le=1000)] = 50) -> History:
        """The user's last ``n`` events, newest first."""
        user_id = valid_id(user_id, "user_id", max_id)
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

    @routes.delete("/v1/users/{user_id}", status_code=204, dependencies=[access.admin], responses=answers(422, 503))
    def delete_user(user_id: str) -> Response:
        """Forget a user: their events, history and the learner's state of them."""
        service.delete_user(valid_id(user_id, "user_id", max_id))
        return Response(status_code=204)

    return routes
