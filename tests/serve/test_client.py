"""The Python client against a real server: every route, errors, sync and async."""

from __future__ import annotations

import asyncio

import pytest

from freshrec.client import AsyncClient, Client, FreshrecError
from tests.serve.conftest import ADMIN, READ, WRITE, Server, wait_for


def test_the_client_covers_every_route(server: Server) -> None:
    with Client(server.url, key=ADMIN) as fr:
        assert fr.ready() and fr.readiness()["model_served"] and fr.live()["status"] == "alive"
        assert fr.status()["model_version"] is not None
        assert isinstance(fr.stats(), dict)
        assert "freshrec_model_version" in fr.metrics()
        sent = fr.send_events([{"user_id": "client-u", "item_id": "i000001", "type": "click"}])
        assert sent == {"accepted": 1, "duplicates": 0}
        assert fr.history("client-u")["events"][0]["item_id"] == "i000001"
        recs = fr.recommend("client-u", k=4, explain=True, categories=(), filter="attributes.price < 1000")
        assert recs["user_id"] == "client-u" and len(recs["items"]) == 4
        guest = fr.recommend_guest([{"item_id": "i000002", "type": "click"}], k=3, boost="cheap:0.5")
        assert len(guest["items"]) == 3 and set(guest) == {"model_version", "items", "recommendation_id", "variant"}
        assert fr.experiments() == []  # none configured (tests/serve/test_experiments.py runs one)
        with pytest.raises(FreshrecError, match="no experiment"):
            fr.stop_experiment("colours")
        assert len(fr.similar("i000001", k=3)["items"]) == 3
        assert fr.trending(k=2, window="hour")["window"] == "hour"
        written = fr.put_items([{"item_id": "client-item", "title": "A client's lamp", "categories": ["Home"]}])
        assert written["items"] == 1
        assert fr.put_item("client-item", {"title": "A client's brass lamp"})["title"] == "A client's brass lamp"
        assert fr.item("client-item")["categories"] == []  # PUT replaces the whole item
        fr.delete_item("client-item")
        fr.delete_user("client-u")
        wait_for(lambda: fr.history("client-u")["events"] == [])
        job = fr.put_items([{"item_id": f"client-bulk-{n}", "title": f"Bulk thing {n}"} for n in range(8)])["job"]
        assert job is not None and fr.job(job["job_id"])["job_id"] == job["job_id"]


def test_errors_carry_the_status_the_detail_and_each_bad_field(server: Server) -> None:
    with Client(server.url, key=READ) as fr:
        with pytest.raises(FreshrecError) as caught:
            fr.recommend("u", filter="price <")
        assert caught.value.status == 422 and "position" in caught.value.detail
        assert caught.value.errors[0]["field"] == "filter"
        with pytest.raises(FreshrecError) as denied:
            fr.send_events({"user_id": "u", "item_id": "i", "type": "click"})  # a read key cannot write
        assert denied.value.status == 403
        with pytest.raises(FreshrecError) as missing:
            fr.item("no-such-item")
        assert missing.value.status == 404
    with Client(server.url, key=WRITE) as fr, pytest.raises(FreshrecError) as bad:
        fr.send_events([{"user_id": "u", "item_id": "i", "type": "stare"}])
    assert bad.value.status == 422 and bad.value.errors[0]["field"] == "type"
    with Client("http://127.0.0.1:9", timeout=0.5) as nowhere:  # nothing listens there
        assert not nowhere.ready()


def test_the_async_client_answers_as_the_sync_one(server: Server) -> None:
    async def calls() -> tuple[dict[str, object], list[object], bool]:
        async with AsyncClient(server.url, key=READ) as fr:
            recs, guest = await asyncio.gather(
                fr.recommend("u00001", k=3), fr.recommend_guest([{"item_id": "i000003", "type": "view"}], k=3)
            )
            with pytest.raises(FreshrecError, match="404"):
                await fr.item("no-such-item")
            assert (await fr.readiness())["model_served"] and await fr.live()
            return dict(recs), list(guest["items"]), await fr.ready()

    recs, guest, ready = asyncio.run(calls())
    assert recs["user_id"] == "u00001" and len(recs["items"]) == 3  # type: ignore[arg-type]
    assert len(guest) == 3 and ready
