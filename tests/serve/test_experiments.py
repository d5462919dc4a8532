"""An A/B experiment on a real server: two arms learned side by side by the learner
process, users served by their arm's model, events credited to the lists they name."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from freshrec.client import FreshrecError
from freshrec.experiments import assign
from freshrec.settings import ExperimentSettings, LearnSettings, ModelSettings
from tests.serve.conftest import ADMIN, READ, WRITE, Server, make_settings, start_server, wait_for
from tests.serve.test_erasure import holding

ARMS = {"control": {"share": 0.5}, "short": {"share": 0.5, "model": {"history_length": 2}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("experiment")
    settings = make_settings(data).model_copy(
        update={
            "experiment": ExperimentSettings.model_validate({"name": "lengths", "arms": ARMS}),
            # user rows and frequent checkpoints: a deleted user's learned row must leave every arm's
            "model": ModelSettings(dim=16, history_length=8, heads=2, use_user_ids=True),
            "learn": LearnSettings(epochs=1, batch_size=64, max_wait_ms=50, checkpoint_every=20),
        }
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


def test_the_dashboard_shows_each_arm_with_its_intervals(server: Server, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tests.serve.test_dashboard import CHROMIUM, FLAGS

    with server.api(ADMIN) as fr:
        wait_for(lambda: fr.experiment("lengths")["serving_arms"], timeout=120)
        fr.start_experiment("lengths")
        for n in range(6):
            fr.recommend(f"u{n:05d}", k=3)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(server.url)
        page.evaluate(f"localStorage.setItem('freshrec-key', '{READ}')")
        page.reload()
        expect(page.locator("#experiment")).to_be_visible()
        expect(page.locator("#experiment-name")).to_have_text("lengths")
        expect(page.locator("#experiment-status")).to_contain_text("running")
        expect(page.locator("#arms tbody tr")).to_have_count(2)
        expect(page.locator('#arms tr[data-arm="short"]')).to_contain_text("[")  # an interval
        expect(page.locator('#arms tr[data-arm="control"]')).to_contain_text("control")
        expect(page.locator("#chart-arms path").first).to_be_attached()
        page.fill("#user-id", "u00001")
        page.click("#user-form button")
        expect(page.locator("#rec-version")).to_contain_text(f"arm {assign(server.settings.experiment, 'u00001')}")
        shot = Path(os.environ.get("FRESHREC_SCREENSHOTS", tmp_path)) / "experiment.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()


def test_a_deleted_user_is_erased_from_every_arm(server: Server) -> None:
    data, victim = server.settings.data_dir, "victim-arms-0c4e1b"
    arm = data / "arms" / "short"
    with server.api(ADMIN) as fr:
        events = [{"user_id": victim, "item_id": f"i{n * 7 % 120:06d}", "type": "purchase"} for n in range(40)]
        assert fr.send_events(events)["accepted"] == 40
        wait_for(lambda: holding(arm, victim) != [], timeout=60, every=0.5)  # the arm's checkpoint has them
        fr.delete_user(victim)
        wait_for(lambda: fr.status()["erasures_pending"] == 0, timeout=60)
        wait_for(lambda: holding(data, victim) == [], timeout=30)  # the default's files and the arm's
