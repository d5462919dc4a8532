"""What the client sends and gets: the answers' types and every route as a :class:`Call`
(shared by :class:`~freshrec.client.Client` and :class:`~freshrec.client.AsyncClient`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict
from urllib.parse import quote

Json = dict[str, Any]


class FreshrecError(Exception):
    """An answer that is not a success."""

    def __init__(self, status: int, detail: str, errors: Sequence[Json] = ()):
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.errors = list(errors)


class Accepted(TypedDict):
    accepted: int
    duplicates: int


class Ranked(TypedDict, total=False):
    item_id: str
    score: float
    title: str
    explanation: str | None
    because: list[Json] | None
    reason: str | None


class Recommendations(TypedDict, total=False):
    user_id: str
    model_version: str | None
    items: list[Ranked]
    recommendation_id: str
    """Name it in the events that follow this list (``recommendation_id``): an experiment credits it."""
    variant: str
    """The model variant that ranked the list: an experiment's arm, or ``default``."""


class ListOptions(TypedDict, total=False):
    """The options of a list, as the stored and guest recommendation routes take them."""

    exclude_seen: bool
    categories: Sequence[str]
    exclude: Sequence[str]
    explain: bool
    filter: str
    """A business rule, or the name of one in the server's [serve] rules."""
    boost: str
    """``RULE:SHARE``."""


class Trending(TypedDict):
    window: str
    items: list[Json]


@dataclass(frozen=True)
class Call:
    """One request: what a method of either client sends."""

    method: str
    path: str
    params: Mapping[str, Any] = field(default_factory=dict)
    body: Any = None
    empty: bool = False
    """A 204 answer: no body to read."""
    text: bool = False
    """A text answer (``/metrics``)."""


def _id(value: str) -> str:
    return quote(value, safe="")


def _csv(values: Iterable[str]) -> str:
    return ",".join(values)


class Routes:
    """Every route as a :class:`Call`; :class:`Client` and :class:`AsyncClient` send them."""

    @staticmethod
    def send_events(events: Json | Sequence[Json]) -> Call:
        return Call("POST", "/v1/events", body=events)

    @staticmethod
    def put_items(items: Json | Sequence[Json]) -> Call:
        return Call("POST", "/v1/items", body=items)

    @staticmethod
    def put_item(item_id: str, item: Json) -> Call:
        return Call("PUT", f"/v1/items/{_id(item_id)}", body={**item, "item_id": item_id})

    @staticmethod
    def item(item_id: str) -> Call:
        return Call("GET", f"/v1/items/{_id(item_id)}")

    @staticmethod
    def delete_item(item_id: str) -> Call:
        return Call("DELETE", f"/v1/items/{_id(item_id)}", empty=True)

    @staticmethod
    def similar(item_id: str, k: int = 10, categories: Iterable[str] = (), filter: str = "") -> Call:
        params = {"k": k, "categories": _csv(categories), "filter": filter}
        return Call("GET", f"/v1/items/{_id(item_id)}/similar", params=params)

    @staticmethod
    def trending(k: int = 10, window: Literal["hour", "day", "week"] = "day", categories: Iterable[str] = ()) -> Call:
        return Call("GET", "/v1/items/trending", params={"k": k, "window": window, "categories": _csv(categories)})

    @staticmethod
    def job(job_id: str) -> Call:
        return Call("GET", f"/v1/jobs/{_id(job_id)}")

    @staticmethod
    def recommend(
        user_id: str,
        k: int = 10,
        exclude_seen: bool = True,
        categories: Iterable[str] = (),
        exclude: Iterable[str] = (),
        explain: bool = False,
        filter: str = "",
        boost: str = "",
    ) -> Call:
        params = {
            "k": k,
            "exclude_seen": str(exclude_seen).lower(),
            "categories": _csv(categories),
            "exclude": _csv(exclude),
            "explain": str(explain).lower(),
            "filter": filter,
            "boost": boost,
        }
        return Call("GET", f"/v1/users/{_id(user_id)}/recommendations", params=params)

    @staticmethod
    def recommend_guest(
        history: Sequence[Json],
        k: int = 10,
        exclude_seen: bool = True,
        categories: Sequence[str] = (),
        exclude: Sequence[str] = (),
        explain: bool = False,
        filter: str = "",
        boost: str = "",
    ) -> Call:
        body = {
            "history": list(history),
            "k": k,
            "exclude_seen": exclude_seen,
            "categories": list(categories),
            "exclude": list(exclude),
            "explain": explain,
            "filter": filter,
            "boost": boost,
        }
        return Call("POST", "/v1/recommendations", body=body)

    @staticmethod
    def history(user_id: str, n: int = 50) -> Call:
        return Call("GET", f"/v1/users/{_id(user_id)}/history", params={"n": n})

    @staticmethod
    def delete_user(user_id: str) -> Call:
        return Call("DELETE", f"/v1/users/{_id(user_id)}", empty=True)

    @staticmethod
    def status() -> Call:
        return Call("GET", "/v1/status")

    @staticmethod
    def stats() -> Call:
        return Call("GET", "/v1/stats")

    @staticmethod
    def live() -> Call:
        return Call("GET", "/health/live")

    @staticmethod
    def ready() -> Call:
        return Call("GET", "/health/ready")

    @staticmethod
    def metrics() -> Call:
        return Call("GET", "/metrics", text=True)

    @staticmethod
    def experiments() -> Call:
        return Call("GET", "/v1/experiments")

    @staticmethod
    def experiment(name: str) -> Call:
        return Call("GET", f"/v1/experiments/{_id(name)}")

    @staticmethod
    def start_experiment(name: str) -> Call:
        return Call("POST", f"/v1/experiments/{_id(name)}/start")

    @staticmethod
    def stop_experiment(name: str) -> Call:
        return Call("POST", f"/v1/experiments/{_id(name)}/stop")

    @staticmethod
    def conclude_experiment(name: str, winner: str) -> Call:
        return Call("POST", f"/v1/experiments/{_id(name)}/conclude", body={"winner": winner})
