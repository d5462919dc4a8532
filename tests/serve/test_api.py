"""The HTTP API against a real server: auth, ingest, items, recommendations, freshness."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from freshrec.client import AsyncClient, FreshrecError, Recommendations
from freshrec.model.snapshot import Snapshot
from tests.serve.conftest import ADMIN, READ, WRITE, Server, wait_for


def busy_user(server: Server) -> str:
    return Counter(str(e["user_id"]) for e in server.events).most_common(1)[0][0]


def test_keys_gate_every_role(server: Server) -> None:
    recs = "/v1/users/u00001/recommendations"
    with server.client(None) as anonymous:
        r = anonymous.get(recs)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["detail"]
        assert anonymous.get("/health/live").status_code == 200
    with server.client("wrong-key-0123456789") as wrong:
        assert wrong.get(recs).status_code == 401
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {READ}"}) as bearer:
        assert bearer.get(recs).status_code == 200
    event = {"user_id": "auth-user", "item_id": "i000001", "type": "click"}
    with server.client(READ) as reader:
        assert reader.get(recs).status_code == 200
        r = reader.post("/v1/events", json=event)
        assert r.status_code == 403 and "write" in r.json()["detail"]
    with server.client(WRITE) as writer:
        assert writer.post("/v1/events", json=event).status_code == 202
        assert writer.delete("/v1/users/auth-user").status_code == 403
        assert writer.delete("/v1/items/i000001").status_code == 403
    with server.client(ADMIN) as admin:
        assert admin.delete("/v1/users/auth-user").status_code == 204


def test_events_are_stored_once_and_counted(server: Server) -> None:
    with server.api() as c:
        one = {"user_id": "ingest-user", "item_id": "i000002", "type": "view", "event_id": "ingest-1"}
        assert c.send_events(one) == {"accepted": 1, "duplicates": 0}
        assert c.send_events(one) == {"accepted": 0, "duplicates": 1}
        batch = [{**one, "event_id": f"ingest-{n}", "item_id": f"i{n:06d}", "type": "click"} for n in range(2, 12)]
        assert c.send_events(batch) == {"accepted": 10, "duplicates": 0}
        history = c.history("ingest-user")["events"]
        assert [e["event_id"] for e in history] == [f"ingest-{n}" for n in range(11, 0, -1)]
        metrics = c.metrics()
        assert re.search(r'freshrec_events_ingested_total\{type="click"\} \d+', metrics)


def test_a_bad_event_rejects_the_whole_request(server: Server) -> None:
    with server.client() as c:
        before = c.get("/v1/status").json()["log_offset"]
        batch = [
            {"user_id": "reject-user", "item_id": "i000003", "type": "click"},
            {"user_id": "reject-user", "item_id": "i000003", "type": "rating", "value": 11},
            {"user_id": "reject-user", "item_id": "i000003", "type": "teleport"},
        ]
        r = c.post("/v1/events", json=batch)
        assert r.status_code == 422
        body = r.json()
        assert body["detail"] == "2 of 3 events are invalid; nothing was stored"
        assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, "value"), (2, "type")]
        assert "rating scale" in body["errors"][0]["message"]
        assert c.get("/v1/users/reject-user/history").json()["events"] == []
        assert c.get("/v1/status").json()["log_offset"] == before


def test_malformed_and_oversized_requests_get_clear_errors(server: Server) -> None:
    with server.client() as c:
        r = c.post("/v1/events", content=b'{"user_id": "u", "item_id": "i", "type": "rating", "value": NaN}')
        assert r.status_code == 400 and "NaN" in r.json()["detail"]
        r = c.post("/v1/events", content=b'{"user_id": "\xff"}')
        assert r.status_code == 400 and "UTF-8" in r.json()["detail"]
        many = [{"user_id": "u", "item_id": "i", "type": "click"}] * 101
        r = c.post("/v1/events", json=many)
        assert r.status_code == 413 and "at most 100" in r.json()["detail"]
        r = c.post("/v1/events", content=b"[" + b" " * (2 * 1024 * 1024) + b"]")
        assert r.status_code == 413 and "larger than" in r.json()["detail"]
        r = c.get("/v1/users/bad%01id/recommendations")
        assert r.status_code == 422 and "control" in r.json()["detail"]
        r = c.get("/v1/users/u00001/recommendations?k=0")
        assert r.status_code == 422 and "query.k" in r.json()["detail"]  # FastAPI's own check, our error model
        assert r.json()["errors"][0]["field"] == "query.k"
        assert c.get("/v1/users/u00001/recommendations?k=100000").status_code == 422
        r = c.put("/v1/items/0", json={})  # nothing to embed: it could never be recommended
        assert r.status_code == 422 and "a title, a description, categories or a vector" in r.text
        assert c.get("/v1/items/0").status_code == 404
        r = c.post("/v1/nowhere", json={})
        assert r.status_code == 404 and isinstance(r.json()["detail"], str)


def test_the_openapi_document_lists_every_answer_in_one_error_model(server: Server) -> None:
    with server.client() as c:
        doc = c.get("/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            has_input = operation.get("parameters") or operation.get("requestBody")
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert answer["content"]["application/json"]["schema"] == error, (method, path, status)
            if has_input:
                assert "422" in operation["responses"], (method, path)
    assert {"400", "413", "422"} <= set(doc["paths"]["/v1/events"]["post"]["responses"])


def test_recommendations_follow_the_filters(server: Server) -> None:
    user = busy_user(server)
    with server.api(READ) as c:
        r = c.recommend(user, k=7, explain=True)
        assert set(r) == {"user_id", "model_version", "items", "recommendation_id", "variant"} and r["user_id"] == user
        assert re.fullmatch(r"[0-9a-f]{24}", r["recommendation_id"]) and r["variant"] == "default"
        assert re.fullmatch(r"\d+\.\d+", r["model_version"] or "")
        items = r["items"]
        assert len(items) == 7 and len({i["item_id"] for i in items}) == 7
        scores = [i["score"] for i in items]
        assert scores == sorted(scores, reverse=True)
        seen = {e["item_id"] for e in c.history(user, n=1000)["events"]}
        assert not seen & {i["item_id"] for i in items}
        assert all(i["explanation"] and i["title"] for i in items)
        assert all(i["reason"] for i in items)  # the learner's blend ranked them, the feature that placed each
        # explanations only ever name this user's own history
        assert {b["item_id"] for i in items for b in i["because"] or ()} <= seen
        assert seen & {i["item_id"] for i in c.recommend(user, k=50, exclude_seen=False)["items"]}

        category = c.item(items[0]["item_id"])["categories"][0]
        in_cat = c.recommend(user, k=5, categories=[category])["items"]
        assert in_cat and all(category in c.item(i["item_id"])["categories"] for i in in_cat)
        first = items[0]["item_id"]
        without = c.recommend(user, k=7, exclude=[first, "nothing"])
        assert first not in {i["item_id"] for i in without["items"]}


def test_business_rules_filter_every_list_and_a_bad_one_says_where(server: Server) -> None:
    with server.api(READ) as fr, server.client(READ) as c:

        def items(listed: dict[str, Any]) -> list[dict[str, Any]]:
            return [fr.item(i["item_id"]) for i in listed["items"]]

        user = str(server.events[-1]["user_id"])
        rule = 'attributes.price < 30 and attributes.format != "hardcover"'
        for got in (
            items(fr.recommend(user, k=8, filter=rule)),
            items(fr.recommend("nobody-yet", k=8, filter=rule)),  # the popular fallback
            items(fr.similar(str(server.events[0]["item_id"]), k=8, filter=rule)),
        ):
            assert len(got) == 8  # the rule matches more than 8 items: a full list
            assert all(i["attributes"]["price"] < 30 and i["attributes"]["format"] != "hardcover" for i in got)
        cheap = items(fr.recommend(user, k=5, filter="cheap"))  # a name from [serve] rules
        assert len(cheap) == 5 and all(i["attributes"]["price"] < 20 for i in cheap)
        assert len(fr.recommend_guest([], k=4, filter="cheap")["items"]) == 4
        touched = {e["item_id"] for e in server.events if e["user_id"] == user}
        promote = [f"i{n:06d}" for n in range(119, 0, -1) if f"i{n:06d}" not in touched][:2]
        boost = f"item_id in {json.dumps(promote)}:0.4"
        listed = fr.recommend(user, k=5, boost=boost)["items"]
        assert len(listed) == 5 and set(promote) <= {i["item_id"] for i in listed}
        assert [i["score"] for i in listed] == sorted((i["score"] for i in listed), reverse=True)
        for wrong in ("cheap", "cheap:0", "cheap:1.5", ":0.5", "price > 1:0.5"):
            assert c.get(f"/v1/users/{user}/recommendations", params={"boost": wrong}).status_code == 422, wrong
        bad = c.get(f"/v1/users/{user}/recommendations", params={"filter": "attributes.price << 3"})
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["field"] == "filter" and "at position 18" in bad.json()["detail"]
        assert c.post("/v1/recommendations", json={"filter": "price > 1"}).status_code == 422


def test_a_new_user_gets_popular_diverse_items(server: Server) -> None:
    with server.api(READ) as c:
        items = c.recommend("never-seen-before", k=10, explain=True)["items"]
        assert len(items) == 10 and all(i["explanation"] == "popular right now" for i in items)
        top_categories = {c.item(i["item_id"])["categories"][0] for i in items}
        assert len(top_categories) >= 3


def test_a_guest_gets_recommendations_from_an_inline_history_and_nothing_is_kept(server: Server) -> None:
    history = [
        {"item_id": e["item_id"], "type": "click", "timestamp": time.time() - 60 + n}
        for n, e in enumerate(server.events[:5])
    ]
    with server.api(READ) as fr:
        offset = fr.status()["log_offset"]
        body = fr.recommend_guest(history, k=7, explain=True)
        assert set(body) == {"model_version", "items", "recommendation_id", "variant"} and len(body["items"]) == 7
        seen = {h["item_id"] for h in history}
        assert not seen & {i["item_id"] for i in body["items"]}  # exclude_seen, as on the stored path
        because = {b["item_id"] for i in body["items"] for b in i.get("because") or []}
        assert because <= seen and because  # explained by the inline history
        assert len(fr.recommend_guest(history, k=7, exclude_seen=False)["items"]) == 7
        newcomer = fr.recommend_guest([], k=3, explain=True)["items"]
        assert [i["explanation"] for i in newcomer] == ["popular right now"] * 3
        assert fr.status()["log_offset"] == offset  # nothing was stored
        assert fr.history("guest")["events"] == []
    with server.client(READ) as c:  # malformed requests
        bad = c.post(
            "/v1/recommendations",
            json={"history": [{"item_id": "x", "type": "stare"}, {"item_id": "y", "type": "click", "user_id": "u"}]},
        )
        assert bad.status_code == 422
        assert {(e["index"], e["field"]) for e in bad.json()["errors"]} == {(0, "type"), (1, "user_id")}
        assert c.post("/v1/recommendations", json={"k": 10_000}).status_code == 422
        assert c.post("/v1/recommendations", json={"k": 3, "colour": "red"}).status_code == 422
        assert c.post("/v1/recommendations", json=[1, 2]).status_code == 422
        assert c.post("/v1/recommendations", content=b"{").status_code == 400
    assert httpx.post(f"{server.url}/v1/recommendations", json={}).status_code == 401


def test_trending_lists_items_with_their_recent_and_usual_counts(server: Server) -> None:
    """Which items trend is tested with a clock in tests/serve/test_trending.py: here every
    event is seconds old, so recent and usual rates agree."""
    with server.client(READ) as c:
        assert c.get("/v1/items/trending?window=month").status_code == 422
    with server.api(READ) as fr:
        before = fr.trending(k=5, window="hour")
        assert before["window"] == "hour" and len(before["items"]) <= 5
        trending = {t["item_id"] for t in before["items"]}
    item = next(f"i{n:06d}" for n in range(119, 0, -1) if f"i{n:06d}" not in trending)  # of the catalog
    with server.api() as fr:
        events = [{"user_id": f"fan-{n}", "item_id": item, "type": "purchase"} for n in range(40)]
        assert fr.send_events(events)["accepted"] == 40
    with server.api(READ) as fr:

        def listed() -> dict[str, Any] | None:
            return next((i for i in fr.trending(k=200, window="hour")["items"] if i["item_id"] == item), None)

        wait_for(lambda: listed() is not None, timeout=10)  # lists are recomputed at most once a second
        entry = listed()
        assert (
            entry is not None
            and entry["recent"] >= 40
            and entry["title"]
            and set(entry) == {"item_id", "title", "score", "recent", "usual"}
        )
    assert httpx.get(f"{server.url}/v1/items/trending").status_code == 401


def test_an_event_changes_the_very_next_recommendation(server: Server) -> None:
    user = busy_user(server)
    with server.api() as c:
        before = c.recommend(user, k=10)["items"]
        clicked = before[0]["item_id"]
        assert c.send_events({"user_id": user, "item_id": clicked, "type": "purchase"})["accepted"] == 1
        after = c.recommend(user, k=10, explain=True)["items"]
        assert clicked not in {i["item_id"] for i in after}
        assert [i["score"] for i in after[:5]] != [i["score"] for i in before[1:6]]
        assert c.history(user, n=1)["events"][0]["item_id"] == clicked


def test_online_updates_reach_serving(server: Server) -> None:
    with server.api() as c:
        version = c.status()["model_version"]
        events = [{"user_id": f"learn-{n % 7}", "item_id": f"i{n % 90:06d}", "type": "click"} for n in range(100)]
        assert c.send_events(events)["accepted"] == 100

        def learned() -> bool:
            status = c.status()
            return bool(status["learned_offset"] >= status["log_offset"] and status["model_version"] != version)

        wait_for(learned, timeout=30)
        metrics = c.metrics()
        assert "freshrec_learner_lag_events" in metrics and "freshrec_model_version" in metrics


def test_items_are_recommendable_at_once_and_gone_when_deleted(server: Server) -> None:
    with server.api() as c:
        item = {"title": "Zeppelin spare parts", "description": "Airship hull fabric", "categories": ["Airships"]}
        assert c.put_item("airship-1", item)["categories"] == ["Airships"]
        assert c.item("airship-1")["title"] == "Zeppelin spare parts"
        picks = c.recommend(busy_user(server), categories=["airships"])
        assert [i["item_id"] for i in picks["items"]] == ["airship-1"]
        with server.client() as raw:  # the typed client always sends the path's id in the body
            r = raw.put("/v1/items/airship-1", json={"item_id": "other", "title": "x"})
        assert r.status_code == 422 and "differs" in r.json()["detail"]
        c.delete_item("airship-1")
        for gone in (lambda: c.item("airship-1"), lambda: c.similar("airship-1"), lambda: c.delete_item("airship-1")):
            with pytest.raises(FreshrecError) as missing:
                gone()
            assert missing.value.status == 404
        assert c.recommend(busy_user(server), categories=["airships"])["items"] == []


def test_a_large_item_batch_is_embedded_in_the_background(server: Server) -> None:
    with server.api() as c:
        batch = [{"item_id": f"kite-{n}", "title": f"Kite number {n}", "categories": ["Kites"]} for n in range(8)]
        written = c.put_items(batch)
        assert written["items"] == 8
        job = written["job"]["job_id"]
        wait_for(lambda: c.job(job)["state"] == "done")
        assert c.job(job)["done"] == 8
        similar = c.similar("kite-0", k=3)
        assert len(similar["items"]) == 3 and similar["items"][0]["item_id"].startswith("kite-")
        assert c.put_items({"item_id": "kite-x", "title": "Kite"}) == {"items": 1, "job": None}
        with pytest.raises(FreshrecError) as bad:
            c.put_items([{"item_id": "ok", "title": "fine"}, {"item_id": "", "title": "no id"}])
        assert bad.value.status == 422 and bad.value.errors[0]["index"] == 1
        with pytest.raises(FreshrecError, match="404"):
            c.item("ok")


def test_deleting_a_user_forgets_their_history(server: Server) -> None:
    with server.api() as c:
        events = [{"user_id": "leaving", "item_id": f"i{n:06d}", "type": "click"} for n in range(5)]
        c.send_events(events)
        assert len(c.history("leaving")["events"]) == 5
        c.delete_user("leaving")
        assert c.history("leaving")["events"] == []
        items = c.recommend("leaving", explain=True)["items"]
        assert all(i["explanation"] == "popular right now" for i in items)


def test_health_metrics_and_openapi(server: Server) -> None:
    with server.api() as c:  # a request of its own to label (the test passes run alone too)
        c.recommend("metrics-reader", k=3)
    with server.api(None) as fr:
        body = fr.readiness()
        assert body["status"] == "ready" and body["model_served"] is True
        metrics = fr.metrics()
        assert "freshrec_model_served 1.0" in metrics
        names = {line.split("{")[0].split(" ")[0] for line in metrics.splitlines() if line and not line.startswith("#")}
        assert names and all(n.startswith("freshrec_") for n in names)
        for wanted in (
            "freshrec_http_request_duration_seconds_bucket",
            "freshrec_learner_lag_seconds",
            "freshrec_training_loss",
            "freshrec_event_loop_lag_seconds_count",
        ):
            assert wanted in names
        beats = re.search(r"^freshrec_event_loop_lag_seconds_count (\S+)$", metrics, re.M)
        assert beats is not None and float(beats[1]) > 0  # the loop's beat runs in a real server
    if sys.platform == "linux":  # threads that hold the interpreter lock often are not niced (runtime.in_background)
        nice = {t.name: os.getpriority(os.PRIO_PROCESS, t.native_id or 0) for t in threading.enumerate()}
        main = os.getpriority(os.PRIO_PROCESS, os.getpid())
        assert nice["freshrec-model_0"] == nice["freshrec-publisher"] == nice["freshrec-receiver"] == main, nice
        assert 'route="/v1/users/{user_id}/recommendations"' in metrics
    with server.client(None) as c:
        spec = c.get("/openapi.json").json()
        body = spec["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["anyOf"][1]["maxItems"] == 100 and "user_id" in json.dumps(body)
        assert "/v1/users/{user_id}/recommendations" in spec["paths"]


def test_concurrent_requests_never_see_another_users_history(server: Server) -> None:
    """Requests that arrive together share one forward pass of the user encoder;
    each must still get exactly what it gets alone, explained by its own history."""
    users = {f"apart-{n}": [f"i{10 * n + k:06d}" for k in range(5)] for n in range(8)}
    with server.api() as c:
        events = [{"user_id": u, "item_id": i, "type": "purchase"} for u, items in users.items() for i in items]
        assert c.send_events(events)["accepted"] == len(events)

        def learned() -> bool:
            status = c.status()
            return bool(status["learned_offset"] >= status["log_offset"])

        wait_for(learned, timeout=30)
        alone = {u: c.recommend(u, k=10, explain=True, exclude_seen=False) for u in users}

    async def together() -> list[Recommendations]:
        async with AsyncClient(server.url, key=READ, timeout=30) as ac:
            return await asyncio.gather(
                *(ac.recommend(u, k=10, explain=True, exclude_seen=False) for _ in range(4) for u in users)
            )

    for reply in asyncio.run(together()):
        user = str(reply["user_id"])
        assert user in users
        if reply["model_version"] == alone[user]["model_version"]:  # the same list, up to float rounding
            mine, single = reply["items"], alone[user]["items"]
            assert [i["item_id"] for i in mine] == [i["item_id"] for i in single]
            assert [i["score"] for i in mine] == pytest.approx([i["score"] for i in single], abs=1e-3)
        named = {b["item_id"] for item in reply["items"] for b in item["because"] or ()}
        assert named and named <= set(users[user]), (user, named)


def ingested(c: httpx.Client, kind: str) -> float:
    """``freshrec_events_ingested_total`` of one event type, from ``/metrics``."""
    found = re.search(rf'^freshrec_events_ingested_total{{type="{kind}"}} (\S+)$', c.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_repeated_click_is_a_duplicate_and_quarantine_is_reported(server: Server) -> None:
    click = {"user_id": "double-clicker", "item_id": "i000007", "type": "click"}
    with server.client(WRITE) as c:
        assert c.post("/v1/events", json=[click, click]).json() == {"accepted": 1, "duplicates": 1}
        assert c.post("/v1/events", json=click).json() == {"accepted": 0, "duplicates": 1}  # within 2 s
        assert c.post("/v1/events", json={**click, "type": "purchase"}).json() == {"accepted": 1, "duplicates": 0}
        status = c.get("/v1/status").json()
        assert {"quarantined_users", "quarantined_events", "reverted_spikes", "skipped_batches"} <= set(status)
        metrics = c.get("/metrics").text
        assert "freshrec_quarantined_users" in metrics and "freshrec_quarantined_events" in metrics
        assert "freshrec_reverted_spikes_total" in metrics and "freshrec_skipped_batches_total" in metrics
        first = {"event_id": "counted-1", "user_id": "retrier", "item_id": "i000003", "type": "view"}
        assert c.post("/v1/events", json=first).json() == {"accepted": 1, "duplicates": 0}
        counted = ingested(c, "view")
        time.sleep(2.1)  # a client's retry, after the 2 s within which a repeat is a duplicate anyway
        retried = [first, {**first, "event_id": "counted-2", "item_id": "i000004"}]  # a retry plus a new one
        assert c.post("/v1/events", json=retried).json() == {"accepted": 1, "duplicates": 1}
        assert ingested(c, "view") == counted + 1  # the new one counts, the retried one does not


def test_a_tampered_snapshot_runs_no_code_and_is_not_served(server: Server, tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (Path.write_text, (str(tmp_path / "pwned"), "ran"))  # type: ignore[return-value]

    service = server.engine.service
    served = service.ranker.scoring.snapshot
    assert served is not None
    wrong_shape = Snapshot(**{**served.__dict__, "item_ids": [*served.item_ids, "ghost"]})
    for source, data in (("bus", pickle.dumps(Payload())), ("store", wrong_shape.to_bytes())):
        assert service.models.receive(data, source) is None
    assert not (tmp_path / "pwned").exists()
    assert service.ranker.scoring.snapshot is served
    with server.client() as c:
        assert c.get("/health/ready").status_code == 200
        metrics = c.get("/metrics").text
    assert 'freshrec_models_rejected_total{source="bus"} 1.0' in metrics
    assert 'freshrec_models_rejected_total{source="store"} 1.0' in metrics


def test_a_post_behind_another_process_write_lock_gets_503_with_retry_after(server: Server) -> None:
    import sqlite3

    other = sqlite3.connect(server.store.path, isolation_level=None)  # another process's import chunk
    server.store._conn.execute("PRAGMA busy_timeout = 200")  # this server's wait, made short for the test
    event = {"event_id": "behind-lock", "user_id": "busy-user", "item_id": "i000001", "type": "click"}
    try:
        other.execute("BEGIN IMMEDIATE")
        with server.client() as c:
            started = time.monotonic()
            r = c.post("/v1/events", json=event)
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert "nothing was stored" in r.json()["detail"] and time.monotonic() - started < 5
            other.execute("ROLLBACK")
            assert c.post("/v1/events", json=event).status_code == 202  # the retry is stored
            assert [e["event_id"] for e in c.get("/v1/users/busy-user/history").json()["events"]] == ["behind-lock"]
    finally:
        server.store._conn.execute(f"PRAGMA busy_timeout = {server.settings.storage.busy_timeout_ms}")
        other.close()


def test_an_over_capacity_server_answers_503_at_once_instead_of_ranking_late(server: Server) -> None:
    batcher = server.engine.service.batcher
    user = str(server.events[0]["user_id"])
    asks = (
        ("GET", f"/v1/users/{user}/recommendations", {}, None),  # the fast lane's
        ("GET", f"/v1/users/{user}/recommendations", {"Origin": "http://shop.test"}, None),  # FastAPI's route
        ("POST", "/v1/recommendations", {}, {"history": [{"item_id": "i000001", "type": "click"}]}),  # a guest's
    )
    with server.client() as c:

        def shed() -> float:
            line = next(
                s for s in c.get("/metrics").text.splitlines() if s.startswith("freshrec_recommendations_shed_")
            )
            return float(line.split()[-1])

        before, deadline = shed(), batcher.deadline_s
        batcher.deadline_s = 1e-6  # every request waits longer than that for its model pass
        try:
            answers = [c.request(method, path, headers=headers, json=body) for method, path, headers, body in asks]
        finally:
            batcher.deadline_s = deadline
        for r in answers:
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert "over capacity" in r.json()["detail"]
        assert shed() == before + len(asks)
        assert [c.request(m, p, headers=h, json=b).status_code for m, p, h, b in asks] == [200, 200, 200]

        def asked(stamp: str) -> list[int]:  # the three requests, as received by a proxy at ``stamp``
            stamped = [(m, p, {**h, "X-Request-Start": stamp}, b) for m, p, h, b in asks]
            return [c.request(m, p, headers=h, json=b).status_code for m, p, h, b in stamped]

        now = time.time()
        before = shed()
        for stamp in (f"t={now - 5:.3f}", f"{(now - 5) * 1e3:.0f}", f"t={(now - 5) * 1e6:.0f}"):  # queued 5 s
            assert asked(stamp) == [503, 503, 503], stamp
        assert shed() == before + 3 * len(asks)
        # in time, a clock a minute off, a proxy's clock slightly ahead, or no time: ranked
        for stamp in (f"t={now:.3f}", f"t={now - 7200:.3f}", f"t={now + 0.5:.3f}", "t=soon", "nan"):
            assert asked(stamp) == [200, 200, 200], stamp
        assert shed() == before + 3 * len(asks)
