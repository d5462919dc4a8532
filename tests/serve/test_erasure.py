"""Deleting a user over the API leaves no byte of their id in the store file or in
any checkpoint version, and erases what the model learned about them alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from freshrec.learn.checkpoints import Checkpoints
from freshrec.settings import LearnSettings, ModelSettings
from tests.serve.conftest import Server, make_settings, start_server, wait_for

VICTIM = "victim-7f3a9c1e"
STAYS = "stays-5b2d8e40"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Server]:
    settings = make_settings(tmp_path)
    settings = settings.model_copy(
        update={
            "model": ModelSettings(dim=16, history_length=8, heads=2, use_user_ids=True),
            "learn": LearnSettings(epochs=1, batch_size=64, max_wait_ms=50, checkpoint_every=20),
        }
    )
    yield from start_server(tmp_path, settings, events=600)


def files(data: Path) -> list[Path]:
    return [p for p in data.rglob("*") if p.is_file() and p.suffix in {".db", ".db-wal", ".db-shm", ".state", ".json"}]


def holding(data: Path, text: str) -> list[Path]:
    return [p for p in files(data) if text.encode() in p.read_bytes()]


def test_deleting_a_user_erases_every_trace(served: Server) -> None:
    data = served.settings.data_dir
    checkpoints = Checkpoints(data / "checkpoints")
    with served.api() as c:
        for user in (VICTIM, STAYS):
            events = [{"user_id": user, "item_id": f"i{n * 7 % 120:06d}", "type": "purchase"} for n in range(40)]
            assert c.send_events(events)["accepted"] == 40

        def checkpointed() -> bool:  # a version holds the victim's learned row
            current = checkpoints.current()
            if current is None:
                return False
            _, state = checkpoints.load(current.version)
            if VICTIM not in state["user_ids"]:
                return False
            table = state["model"]["trainer"]["net"]["user_id.weight"]
            return bool(torch.count_nonzero(table[state["user_ids"].index(VICTIM)]) > 0)

        wait_for(checkpointed, timeout=60, every=0.5)
        _, state = checkpoints.load(checkpoints.current().version)  # type: ignore[union-attr]
        row = state["user_ids"].index(VICTIM)
        holds = checkpoints.current().version  # type: ignore[union-attr]
        events = [{"user_id": STAYS, "item_id": f"i{n * 7 % 120:06d}", "type": "click"} for n in range(40)]
        assert c.send_events(events)["accepted"] == 40
        # a second version that holds the victim (online ones are spaced by their cost)
        wait_for(lambda: checkpoints.current().version > holds, timeout=60, every=0.2)  # type: ignore[union-attr]
        assert holding(data, VICTIM), "the id should be on disk before the deletion"

        c.delete_user(VICTIM)
        assert c.status()["erasures_pending"] in (0, 1)  # 0 once the learner was that quick
        wait_for(lambda: c.status()["erasures_pending"] == 0, timeout=60)  # carried out
        assert "freshrec_erasures_pending 0.0" in c.metrics()
        # while it runs, within a bounded time: no byte left in the database, its WAL or a checkpoint
        wait_for(lambda: holding(data, VICTIM) == [], timeout=30)
        assert c.history(VICTIM)["events"] == []

    served.engine.stop()  # the learner writes its last checkpoint; no `freshrec compact`
    wait_for(lambda: not served.engine.process.is_alive(), timeout=60)

    assert holding(data, VICTIM) == []
    assert any(p.suffix == ".db" for p in holding(data, STAYS)), "the search must find what was not deleted"
    erased = 0
    for version in checkpoints.list():
        _, state = checkpoints.load(version.version)
        if len(state["user_ids"]) <= row:
            continue  # from before the victim's first event
        erased += 1
        assert state["user_ids"][row] is None
        model = state["model"]
        assert torch.count_nonzero(model["trainer"]["net"]["user_id.weight"][row]) == 0
        assert not (model["buffer"]["data"]["user"][: model["buffer"]["size"]] == row).any()
        for optimizer in model["trainer"]["optimizers"]:
            for per_param in optimizer["state"].values():
                for value in per_param.values():
                    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == len(state["user_ids"]):
                        assert torch.count_nonzero(value[row]) == 0
    assert erased >= 2  # the two versions written before the deletion (and any after)
