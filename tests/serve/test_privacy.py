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
    with served.client() as c:
        events = [{"user_id": ALICE, "item_id": i, "type": "purchase"} for i in items]
        assert c.post("/v1/events", json=events).status_code == 202
        history = c.get(f"/v1/users/{ALICE}/history").json()
        assert history["user_id"] == ALICE and [e["item_id"] for e in history["events"]] == items[::-1]
        recs = c.get(f"/v1/users/{ALICE}/recommendations?explain=true").json()["items"]
        assert recs and {b["item_id"] for r in recs for b in r["because"]} <= set(items)

        served.store.compact()
        db = (served.settings.data_dir / "freshrec.db").read_bytes()
        assert ALICE.encode() not in db and pseudonym.encode() in db
        assert all(e.user_id.startswith("p:") for e in served.store.read_events(0, 10_000))

        assert c.delete(f"/v1/users/{ALICE}").status_code == 204
        assert c.get(f"/v1/users/{ALICE}/history").json()["events"] == []
        assert served.store.user_history(pseudonym, 10) == []
