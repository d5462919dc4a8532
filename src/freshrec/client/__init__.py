"""A typed Python client of the freshrec HTTP API, sync (:class:`Client`) and async
(:class:`AsyncClient`), on httpx. It imports nothing else of freshrec, so an
application that only calls a freshrec server needs no model, store or server code::

    from freshrec.client import Client

    with Client("http://127.0.0.1:8000", key="...") as fr:
        fr.send_events([{"user_id": "u1", "item_id": "i1", "type": "click"}])
        for item in fr.recommend("u1", k=5, filter="attributes.price < 50")["items"]:
            print(item["item_id"], item["score"])

Every method maps to one route (``docs``: the server's ``/docs``). An answer that is
not a success raises :class:`FreshrecError` with the status, the server's one-line
``detail`` and its per-field ``errors``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import httpx
from typing_extensions import Unpack

from freshrec.client.routes import (
    Accepted,
    Call,
    FreshrecError,
    Json,
    ListOptions,
    Ranked,
    Recommendations,
    Routes,
    Trending,
)

__all__ = [
    "Accepted",
    "AsyncClient",
    "Call",
    "Client",
    "FreshrecError",
    "Json",
    "ListOptions",
    "Ranked",
    "Recommendations",
    "Routes",
    "Trending",
]


def _request(call: Call) -> dict[str, Any]:
    params = {k: v for k, v in call.params.items() if v != ""}
    return {"method": call.method, "url": call.path, "params": params, "json": call.body}


def _answer(call: Call, response: httpx.Response) -> Any:
    if response.status_code >= 400 or (call.path == "/health/ready" and response.status_code != 200):
        try:
            body = response.json()
            detail, errors = str(body.get("detail", response.reason_phrase)), body.get("errors") or []
        except (ValueError, AttributeError):
            detail, errors = response.text or response.reason_phrase, []
        raise FreshrecError(response.status_code, detail, errors)
    if call.empty:
        return None
    return response.text if call.text else response.json()


def _headers(key: str | None) -> dict[str, str]:
    return {"X-API-Key": key} if key else {}


class Client:
    """The API over one httpx connection pool. ``key``: an API key of the role the calls
    need (read, write, admin). Use as a context manager, or call :meth:`close`."""

    def __init__(
        self, url: str = "http://127.0.0.1:8000", key: str | None = None, timeout: float = 10.0, **httpx_options: Any
    ):
        self.http = httpx.Client(base_url=url, headers=_headers(key), timeout=timeout, **httpx_options)

    def call(self, call: Call) -> Any:
        return _answer(call, self.http.request(**_request(call)))

    def send_events(self, events: Json | Sequence[Json]) -> Accepted:
        """Store events (one or a list of up to [serve] max_events_per_request); all or none."""
        return self.call(Routes.send_events(events))  # type: ignore[no-any-return]

    def put_items(self, items: Json | Sequence[Json]) -> Json:
        return self.call(Routes.put_items(items))  # type: ignore[no-any-return]

    def put_item(self, item_id: str, item: Json) -> Json:
        return self.call(Routes.put_item(item_id, item))  # type: ignore[no-any-return]

    def item(self, item_id: str) -> Json:
        return self.call(Routes.item(item_id))  # type: ignore[no-any-return]

    def delete_item(self, item_id: str) -> None:
        self.call(Routes.delete_item(item_id))

    def similar(self, item_id: str, k: int = 10, categories: Iterable[str] = (), filter: str = "") -> Json:
        return self.call(Routes.similar(item_id, k, categories, filter))  # type: ignore[no-any-return]

    def trending(
        self, k: int = 10, window: Literal["hour", "day", "week"] = "day", categories: Iterable[str] = ()
    ) -> Trending:
        return self.call(Routes.trending(k, window, categories))  # type: ignore[no-any-return]

    def job(self, job_id: str) -> Json:
        return self.call(Routes.job(job_id))  # type: ignore[no-any-return]

    def recommend(self, user_id: str, k: int = 10, **options: Unpack[ListOptions]) -> Recommendations:
        return self.call(Routes.recommend(user_id, k, **options))  # type: ignore[no-any-return]

    def recommend_guest(self, history: Sequence[Json], k: int = 10, **options: Unpack[ListOptions]) -> Recommendations:
        """For someone the store does not know; ``options`` as :meth:`recommend`'s."""
        return self.call(Routes.recommend_guest(history, k, **options))  # type: ignore[no-any-return]

    def history(self, user_id: str, n: int = 50) -> Json:
        return self.call(Routes.history(user_id, n))  # type: ignore[no-any-return]

    def delete_user(self, user_id: str) -> None:
        self.call(Routes.delete_user(user_id))

    def status(self) -> Json:
        return self.call(Routes.status())  # type: ignore[no-any-return]

    def stats(self) -> Json:
        return self.call(Routes.stats())  # type: ignore[no-any-return]

    def live(self) -> Json:
        """``/health/live``: the process answers (it needs neither store nor model)."""
        return self.call(Routes.live())  # type: ignore[no-any-return]

    def readiness(self) -> Json:
        """``/health/ready``'s body (``model_served``: whether a learned model ranks yet)."""
        return self.call(Routes.ready())  # type: ignore[no-any-return]

    def ready(self) -> bool:
        """Whether the server is ready (its store answers, its catalog is loaded, a large catalog's
        first candidate index is built)."""
        try:
            self.call(Routes.ready())
        except (FreshrecError, httpx.TransportError):  # not ready, or not there at all
            return False
        return True

    def metrics(self) -> str:
        return self.call(Routes.metrics())  # type: ignore[no-any-return]

    def experiments(self) -> list[Json]:
        """The configured experiment (a list of none or one) with its figures per arm."""
        return self.call(Routes.experiments())["experiments"]  # type: ignore[no-any-return]

    def experiment(self, name: str) -> Json:
        return self.call(Routes.experiment(name))  # type: ignore[no-any-return]

    def start_experiment(self, name: str) -> Json:
        """Serve each user their arm's model (again); needs an admin key."""
        return self.call(Routes.start_experiment(name))  # type: ignore[no-any-return]

    def stop_experiment(self, name: str) -> Json:
        """Serve every user the default model; the arms keep learning."""
        return self.call(Routes.stop_experiment(name))  # type: ignore[no-any-return]

    def conclude_experiment(self, name: str, winner: str) -> Json:
        """Serve every user ``winner``'s model from now on."""
        return self.call(Routes.conclude_experiment(name, winner))  # type: ignore[no-any-return]

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """:class:`Client`'s methods, awaited."""

    def __init__(
        self, url: str = "http://127.0.0.1:8000", key: str | None = None, timeout: float = 10.0, **httpx_options: Any
    ):
        self.http = httpx.AsyncClient(base_url=url, headers=_headers(key), timeout=timeout, **httpx_options)

    async def call(self, call: Call) -> Any:
        return _answer(call, await self.http.request(**_request(call)))

    async def send_events(self, events: Json | Sequence[Json]) -> Accepted:
        return await self.call(Routes.send_events(events))  # type: ignore[no-any-return]

    async def put_items(self, items: Json | Sequence[Json]) -> Json:
        return await self.call(Routes.put_items(items))  # type: ignore[no-any-return]

    async def put_item(self, item_id: str, item: Json) -> Json:
        return await self.call(Routes.put_item(item_id, item))  # type: ignore[no-any-return]

    async def item(self, item_id: str) -> Json:
        return await self.call(Routes.item(item_id))  # type: ignore[no-any-return]

    async def delete_item(self, item_id: str) -> None:
        await self.call(Routes.delete_item(item_id))

    async def similar(self, item_id: str, k: int = 10, categories: Iterable[str] = (), filter: str = "") -> Json:
        return await self.call(Routes.similar(item_id, k, categories, filter))  # type: ignore[no-any-return]

    async def trending(
        self, k: int = 10, window: Literal["hour", "day", "week"] = "day", categories: Iterable[str] = ()
    ) -> Trending:
        return await self.call(Routes.trending(k, window, categories))  # type: ignore[no-any-return]

    async def job(self, job_id: str) -> Json:
        return await self.call(Routes.job(job_id))  # type: ignore[no-any-return]

    async def recommend(self, user_id: str, k: int = 10, **options: Unpack[ListOptions]) -> Recommendations:
        return await self.call(Routes.recommend(user_id, k, **options))  # type: ignore[no-any-return]

    async def recommend_guest(
        self, history: Sequence[Json], k: int = 10, **options: Unpack[ListOptions]
    ) -> Recommendations:
        return await self.call(Routes.recommend_guest(history, k, **options))  # type: ignore[no-any-return]

    async def history(self, user_id: str, n: int = 50) -> Json:
        return await self.call(Routes.history(user_id, n))  # type: ignore[no-any-return]

    async def delete_user(self, user_id: str) -> None:
        await self.call(Routes.delete_user(user_id))

    async def status(self) -> Json:
        return await self.call(Routes.status())  # type: ignore[no-any-return]

    async def stats(self) -> Json:
        return await self.call(Routes.stats())  # type: ignore[no-any-return]

    async def live(self) -> Json:
        return await self.call(Routes.live())  # type: ignore[no-any-return]

    async def readiness(self) -> Json:
        return await self.call(Routes.ready())  # type: ignore[no-any-return]

    async def ready(self) -> bool:
        try:
            await self.call(Routes.ready())
        except (FreshrecError, httpx.TransportError):
            return False
        return True

    async def metrics(self) -> str:
        return await self.call(Routes.metrics())  # type: ignore[no-any-return]

    async def experiments(self) -> list[Json]:
        """The configured experiment (a list of none or one) with its figures per arm."""
        return (await self.call(Routes.experiments()))["experiments"]  # type: ignore[no-any-return]

    async def experiment(self, name: str) -> Json:
        return await self.call(Routes.experiment(name))  # type: ignore[no-any-return]

    async def start_experiment(self, name: str) -> Json:
        """Serve each user their arm's model (again); needs an admin key."""
        return await self.call(Routes.start_experiment(name))  # type: ignore[no-any-return]

    async def stop_experiment(self, name: str) -> Json:
        """Serve every user the default model; the arms keep learning."""
        return await self.call(Routes.stop_experiment(name))  # type: ignore[no-any-return]

    async def conclude_experiment(self, name: str, winner: str) -> Json:
        """Serve every user ``winner``'s model from now on."""
        return await self.call(Routes.conclude_experiment(name, winner))  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
