"""An A/B experiment on a real server: two arms learned side by side by the learner
process, users served by their arm's model, events credited to the lists they name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from freshrec.client import FreshrecError
from freshrec.experiments import assign
from tests.serve.conftest import ADMIN, READ, WRITE, Server, make_settings, start_server, wait_for

ARMS = {"control": {"share": 0.5}, "short": {"share": 0.5, "model": {"history_length": 2}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("experiment")
    settings = make_settings(data).model_copy(
        update={"experiment": make_settings(data).experiment.model_validate({"name": "lengths", "arms": ARMS})}
    )
    yield from start_server(data, settings)


def test_each_user_gets_their_arms_model_and_events_credit_the_lists_they_name(server: Server) -> None:
    config = server.settings.experiment
    with server.api(ADMIN) as fr:
        wait_for(lambda: fr.experiment("lengths")["serving_arms"], timeout=120)
        users = [f"u{n:05d}" for n in range(25)]
        lists = {u: fr.recommend(u, k=5) for u in users}
        for user, served in lists.items():
            assert served["variant"] == assign(config, user)
        assert {s["variant"] for s in lists.values()} == {"control", "short"}
        summary = fr.experiment("lengths")
        assert summary["arms"]["short"]["own_model"] and not summary["arms"]["control"]["own_model"]
        assert summary["arms"]["short"]["model_version"] is not None
        assert sum(a["lists"] for a in summary["arms"].values()) == len(users)

        clicker, other = users[0], users[1]
        mine = lists[clicker]
        rid, first, second = mine["recommendation_id"], mine["items"][0]["item_id"], mine["items"][1]["item_id"]
        outside = next(i for i in ("i000000", "i000001", "i000002") if i not in {x["item_id"] for x in mine["items"]})
        fr.send_events(
            [
                {"user_id": clicker, "item_id": first, "type": "click", "recommendation_id": rid},
                {"user_id": clicker, "item_id": second, "type": "purchase", "recommendation_id": rid},
                {"user_id": clicker, "item_id": first, "type": "view", "recommendation_id": rid},  # no conversion
                {"user_id": clicker, "item_id": outside, "type": "click", "recommendation_id": rid},  # not in it
                {"user_id": other, "item_id": first, "type": "click", "recommendation_id": rid},  # not theirs
                {"user_id": clicker, "item_id": second, "type": "cart", "recommendation_id": "f" * 24},  # unknown
            ]
        )
        arm = fr.experiment("lengths")["arms"][mine["variant"]]
        assert (arm["clicked"], arm["attributed"]) == (1, 2)
        assert arm["click_through"] == pytest.approx(1 / arm["lists"])
        low, high = arm["click_through_interval"]
        assert 0 <= low < arm["click_through"] < high <= 1
        stored = [
            e for e in server.store.user_history(clicker, 10) if (e.context or {}).get("recommendation_id") == rid
        ]
        assert len(stored) == 4  # in the log like any event, the list's id in its context
        metrics = fr.metrics()
        assert (
            f'freshrec_experiment_attributed_events_total{{experiment="lengths",variant="{mine["variant"]}"}} 2.0'
            in metrics
        )
        assert 'freshrec_experiment_lists_total{experiment="lengths",variant="short"}' in metrics

        # the counts outlive the process: written to the store within a second
        def saved() -> dict[str, dict[str, int]]:
            got = server.store.published("experiment:lengths:counts")
            return json.loads(got[1]) if got is not None else {}

        wait_for(lambda: saved().get(mine["variant"], {}).get("attributed") == 2, timeout=10)
        assert (server.settings.data_dir / "arms" / "short" / "checkpoints").is_dir()


def test_an_experiment_is_stopped_started_and_concluded_without_a_restart(server: Server) -> None:
    with server.api(ADMIN) as fr:
        wait_for(lambda: fr.experiment("lengths")["serving_arms"], timeout=120)
        assert fr.stop_experiment("lengths")["status"] == "stopped"
        assert {fr.recommend(f"u{n:05d}", k=3)["variant"] for n in range(10)} == {"default"}
        assert fr.start_experiment("lengths")["status"] == "running"
        assert {fr.recommend(f"u{n:05d}", k=3)["variant"] for n in range(25)} == {"control", "short"}
        with pytest.raises(FreshrecError) as bad:
            fr.conclude_experiment("lengths", "nobody")
        assert bad.value.status == 422 and "not an arm" in bad.value.detail
        concluded = fr.conclude_experiment("lengths", "short")
        assert (concluded["status"], concluded["winner"]) == ("concluded", "short")
        assert {fr.recommend(f"u{n:05d}", k=3)["variant"] for n in range(10)} == {"short"}
        assert json.loads(server.store.published("experiment:lengths")[1])["winner"] == "short"  # type: ignore[index]
        fr.start_experiment("lengths")
    with server.api(READ) as reader, pytest.raises(FreshrecError) as denied:
        reader.stop_experiment("lengths")
    assert denied.value.status == 403
    with server.api(WRITE) as writer, pytest.raises(FreshrecError) as unknown:
        writer.experiment("other")
    assert unknown.value.status == 404
