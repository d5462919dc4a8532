"""The fast lane answers recommendation requests exactly as FastAPI's route does, and
hands everything it does not take to FastAPI unchanged."""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshrec.serve.api import create_app
from freshrec.serve.auth import Keys
from freshrec.serve.lane import PARAMETERS, FastLane
from freshrec.serve.routes.users import RECOMMENDATIONS
from tests.serve.conftest import ADMIN, READ, WRITE, Server

Sent = tuple[str, str, list[tuple[str, str]], dict[str, str]]
"""Method, path, query pairs, headers."""


def lane_of(app: FastAPI) -> FastLane:
    layer: Any = app.middleware_stack
    while not isinstance(layer, FastLane):
        layer = layer.app
    return layer


class Pair:
    """The same service behind two applications: with the lane and without."""

    def __init__(self, server: Server):
        service = server.engine.service
        keys = Keys(server.settings.serve)
        self.laned, self.plain = create_app(service, keys), create_app(service, keys, lane=False)
        self.loop = asyncio.new_event_loop()

    def answers(self, sent: Sent) -> tuple[tuple[int, str, Any], tuple[int, str, Any], bool]:
        """Both applications' answers (status, content type, body without the list's
        random id) on one model version, and whether the lane answered."""
        for _ in range(5):
            before = self.lane_answered()
            laned, plain = (self.loop.run_until_complete(self._send(app, sent)) for app in (self.laned, self.plain))
            took = self.lane_answered() > before
            versions = {(r[2] or {}).get("model_version") if isinstance(r[2], dict) else None for r in (laned, plain)}
            if len(versions) == 1:  # the learner did not publish between the two
                return laned, plain, took
        raise AssertionError("the model changed between every pair of requests")

    def lane_answered(self) -> int:
        return lane_of(self.laned).answered if self.laned.middleware_stack is not None else 0

    async def _send(self, app: FastAPI, sent: Sent) -> tuple[int, str, Any]:
        method, path, query, headers = sent
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lane.test") as client:
            url = path + ("?" + urlencode(query) if query else "")
            r = await client.request(method, url, headers=headers)
        try:
            body = r.json()
        except ValueError:
            body = r.text
        if isinstance(body, dict):
            body.pop("recommendation_id", None)
        return r.status_code, r.headers.get("content-type", ""), body


def path(user: str) -> str:
    return RECOMMENDATIONS.replace("{user_id}", quote(user, safe=""))


@pytest.fixture(scope="module")
def pair(server: Server) -> Iterator[Pair]:
    both = Pair(server)
    yield both
    both.loop.close()


def test_the_lane_reads_the_route_s_parameters_and_no_other(pair: Pair) -> None:
    """A parameter added to the route and not to the lane would be ignored by it."""
    schema = pair.plain.openapi()["paths"][RECOMMENDATIONS]["get"]
    assert {p["name"] for p in schema["parameters"] if p["in"] == "query"} == PARAMETERS


def test_common_requests_take_the_lane_and_answer_as_the_route_does(server: Server, pair: Pair) -> None:
    user = Counter(str(e["user_id"]) for e in server.events).most_common(1)[0][0]
    item = str(server.events[0]["item_id"])
    read, bearer = {"X-API-Key": READ}, {"Authorization": f"Bearer {WRITE}"}
    taken: list[Sent] = [
        ("GET", path(user), [], read),
        ("GET", path(user), [("k", "7"), ("explain", "true")], read),
        ("GET", path(user), [("k", "010"), ("exclude_seen", "0"), ("explain", "false")], bearer),
        ("GET", path(user), [("exclude", f"{item},nothing"), ("exclude", "x"), ("categories", "")], read),
        ("GET", path(user), [("filter", "cheap"), ("boost", "attributes.price < 30:0.5")], {"X-API-Key": ADMIN}),
        ("GET", path("nobody yet"), [("k", "3")], read),  # no history: the popular list
        ("GET", path(user), [("filter", "attributes.price << 3")], read),  # 422 from the route's own check
        ("GET", path(user), [("boost", "cheap:1.5")], read),
        ("GET", path("x" * 1000), [], read),  # too long an id: 422 from the shared function
    ]
    passed_on: list[Sent] = [
        ("GET", path(user), [("k", "0")], read),
        ("GET", path(user), [("k", "abc")], read),
        ("GET", path(user), [("k", "1"), ("k", "2")], read),
        ("GET", path(user), [("k", "5000")], read),
        ("GET", path(user), [("explain", "yes")], read),
        ("GET", path(user), [("exclude_seen", "False")], read),
        ("GET", path(user), [("other", "1")], read),
        ("GET", path(user), [("filter", "a" * 2001)], read),
        ("GET", path(user), [], {}),  # no key: 401
        ("GET", path(user), [], {"X-API-Key": "not-a-key-0123456789"}),
        ("GET", path(user), [], {"Authorization": f"Basic {READ}"}),
        ("GET", path(user), [], {**read, "Origin": "https://shop.example"}),
        ("GET", path(user) + "/", [], read),
        ("GET", "/v1/users//recommendations", [], read),
        ("HEAD", path(user), [], read),
        ("POST", path(user), [], read),
    ]
    for sent in taken + passed_on:
        laned, plain, took = pair.answers(sent)
        assert laned == plain, sent
        assert took == (sent in taken), sent
    assert pair.answers(taken[0])[0][0] == 200 and pair.answers(taken[6])[0][0] == 422


WORDS = ["", "1", "0", "7", "010", "true", "false", "True", "yes", "-1", "201", "1e1", " 5", "cheap", "a,b", "%", "é"]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    query=st.lists(
        st.tuples(st.sampled_from([*sorted(PARAMETERS), "kk", "Explain"]), st.sampled_from(WORDS)), max_size=5
    ),
    key=st.sampled_from([READ, WRITE, ADMIN, "", "short"]),
)
def test_any_query_gets_the_same_answer_with_the_lane_as_without(
    server: Server, pair: Pair, query: Any, key: str
) -> None:
    user = str(server.events[-1]["user_id"])
    laned, plain, _ = pair.answers(("GET", path(user), query, {"X-API-Key": key} if key else {}))
    assert laned == plain, query


def test_the_lane_is_where_the_real_server_answers(server: Server) -> None:
    app = server.engine.server.config.app
    lane = lane_of(app)
    before = lane.answered
    with server.api(READ) as c:
        c.recommend(str(server.events[-1]["user_id"]), k=5)
    assert lane.answered == before + 1
    assert inspect.signature(create_app).parameters["lane"].default is True
