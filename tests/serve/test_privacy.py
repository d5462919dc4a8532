"""Pseudonymised user ids: the store never holds a raw user id, the API still
answers by it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from freshrec.ingest.validate import Validator
from freshrec.settings import IngestSettings
from tests.serve.conftest import Server, make_settings, start_server

ALICE = "alice@example.com"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Server]:
    settings = make_settings(tmp_path)
    settings = settings.model_copy(update={"ingest": IngestSettings(pseudonymize_key=SecretStr("k" * 32))})
    yield from start_server(tmp_path, settings, events=400)


def test_user_ids_are_stored_as_pseudonyms_and_answered_by_id(served: Server) -> None:
    pseudonym = Validator(served.settings.ingest).user_key(ALICE)
    assert pseudonym.startswith("p:") and ALICE not in pseudonym
    items = [f"i{n:06d}" for n in range(3, 9)]
    with served.api() as c:
        events = [{"user_id": ALICE, "item_id": i, "type": "purchase"} for i in items]
        assert c.send_events(events)["accepted"] == len(items)
        history = c.history(ALICE)
        assert history["user_id"] == ALICE and [e["item_id"] for e in history["events"]] == items[::-1]
        recs = c.recommend(ALICE, explain=True)["items"]
        assert recs and {b["item_id"] for r in recs for b in r["because"] or ()} <= set(items)

        served.store.compact()
        db = (served.settings.data_dir / "freshrec.db").read_bytes()
        assert ALICE.encode() not in db and pseudonym.encode() in db
        assert all(e.user_id.startswith("p:") for e in served.store.read_events(0, 10_000))

        c.delete_user(ALICE)
        assert c.history(ALICE)["events"] == []
        assert served.store.user_history(pseudonym, 10) == []
