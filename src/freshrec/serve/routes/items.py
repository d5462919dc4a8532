"""``/v1/items``: the catalog, and similar items."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from freshrec.experiments import DEFAULT_VARIANT
from freshrec.ingest.validate import ItemIn
from freshrec.serve.experiments import new_list_id
from freshrec.serve.http import (
    Access,
    answers,
    body_schema,
    ranked_json,
    read_json,
    split_values,
    valid_id,
    valid_rule,
)
from freshrec.serve.intake import Problem
from freshrec.serve.items import item_dict
from freshrec.serve.schemas import ItemOut, ItemsWritten, Similar, Trending, TrendingItem
from freshrec.serve.service import Service

Window = Literal["hour", "day", "week"]
Boost = Annotated[
    str,
    Query(
        max_length=2_000,
        description="RULE:SHARE: round(SHARE x k) places go to the best-scored items that satisfy RULE "
        "(a rule or a [serve] rules name), each at its own rank; e.g. `attributes.on_sale == true:0.3`.",
    ),
]
Rule = Annotated[
    str,
    Query(
        alias="filter",
        max_length=2_000,
        description='A business rule every item satisfies, e.g. `attributes.price < 50 and "Indie" in categories`, '
        "or the name of one in [serve] rules (grammar: freshrec.serve.rules).",
    ),
]
Categories = Annotated[list[str], Query(description="Only items in any of these (comma-separated).")]


def router(service: Service, access: Access) -> APIRouter:
    routes = APIRouter(tags=["items"])
    max_id = service.settings.ingest.max_id_length
    writing: dict[str, Any] = {"dependencies": [access.writer], "responses": answers(400, 413, 422, 503)}
    K = Annotated[int, Query(ge=1, le=service.settings.serve.max_k, description="Length of the list.")]

    @routes.post("/v1/items", response_model=ItemsWritten, openapi_extra=body_schema(ItemIn, 100_000), **writing)
    async def post_items(request: Request, response: Response) -> ItemsWritten:
        """Add or replace items. Small batches are embedded before the reply; larger ones
        in the background (202 with a job to follow)."""
        count, job = await run_in_threadpool(service.items.write, await read_json(request))
        if job is not None:
            response.status_code = 202
        return ItemsWritten(items=count, job=job.as_dict() if job else None)

    @routes.put("/v1/items/{item_id}", response_model=ItemOut, openapi_extra=body_schema(ItemIn, 1), **writing)
    async def put_item(item_id: str, request: Request) -> ItemOut:
        """Create or replace one item; its embedding is computed before the reply."""
        item_id = valid_id(item_id, "item_id", max_id)
        raw = await read_json(request)
        if not isinstance(raw, dict):
            raise Problem(422, "the body must be one item object")
        body_id = raw.get("item_id", raw.get("id", item_id))
        if body_id != item_id:
            raise Problem(422, f"the body's item_id {body_id!r} differs from the path's {item_id!r}")
        await run_in_threadpool(service.items.write, {**raw, "item_id": item_id})
        stored = service.store.get_item(item_id)
        assert stored is not None
        return ItemOut(**item_dict(stored))

    @routes.get("/v1/items/trending", response_model=Trending, dependencies=[access.reader], responses=answers(422))
    async def trending(
        k: K = 10,
        window: Annotated[Window, Query(description="Recent against usual over this window.")] = "day",
        categories: Categories = [],  # noqa: B006
    ) -> Trending:
        """Items whose recent rate rose most against their usual rate (not the all-time
        popular): in about the last ``window`` against eight windows' rate; items of the
        catalog only, deleted ones left out. (So no item's id can be ``trending``.)"""
        view = service.catalog.view
        wanted = split_values(categories)
        allowed = view.in_categories(wanted) if wanted else view.alive
        out = []
        for t in service.trending.top(window):
            row = view.codes.get(t.item_id)
            if row is not None and view.alive[row] and allowed[row]:
                out.append(
                    TrendingItem(
                        item_id=t.item_id, title=view.titles[row], score=t.score, recent=t.recent, usual=t.usual
                    )
                )
                if len(out) == k:
                    break
        return Trending(window=window, items=out)

    @routes.get(
        "/v1/items/{item_id}", response_model=ItemOut, dependencies=[access.reader], responses=answers(404, 422)
    )
    async def get_item(item_id: str) -> ItemOut:
        item = await service.read(service.store.get_item, valid_id(item_id, "item_id", max_id))
        if item is None:
            raise Problem(404, f"no item {item_id!r}")
        return ItemOut(**item_dict(item))

    @routes.delete(
        "/v1/items/{item_id}", status_code=204, dependencies=[access.admin], responses=answers(404, 422, 503)
    )
    def delete_item(item_id: str) -> Response:
        """Remove an item from the catalog: it is no longer recommended. Its events stay in the log."""
        if not service.items.delete(valid_id(item_id, "item_id", max_id)):
            raise Problem(404, f"no item {item_id!r}")
        return Response(status_code=204)

    @routes.get(
        "/v1/items/{item_id}/similar",
        response_model=Similar,
        dependencies=[access.reader],
        responses=answers(404, 422),
    )
    async def similar(
        item_id: str,
        k: K = 10,
        categories: Categories = [],  # noqa: B006
        rule: Rule = "",
    ) -> JSONResponse:
        item_id = valid_id(item_id, "item_id", max_id)
        rule = valid_rule(rule, service.settings.serve.rules)
        scoring = service.ranker.scoring
        items = service.ranker.similar(item_id, k, split_values(categories), rule)
        if items is None:
            raise Problem(404, f"no recommendable item {item_id!r}")
        return JSONResponse(
            {
                "item_id": item_id,
                "model_version": scoring.version,
                "items": ranked_json(items, False),
                "recommendation_id": new_list_id(),
                "variant": DEFAULT_VARIANT,
            }
        )

    return routes
