"""The learner inside ``freshrec serve`` waits while another learner holds the store,
says so in ``/v1/status``, serves meanwhile, and takes over once the lease is free."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from freshrec.client import Client
from freshrec.datasets.files import read_records
from freshrec.datasets.synthetic import GeneratorSettings, generate
from freshrec.encoders import build_encoder, embed_items
from freshrec.ingest.importer import import_events, import_items
from freshrec.ingest.validate import Validator
from freshrec.learn.lease import NAME
from freshrec.learn.worker import learner_main
from freshrec.serve.auth import Keys
from freshrec.serve.engine import Engine
from freshrec.storage import SQLiteStore
from tests.serve.conftest import ADMIN, make_settings, wait_for


def test_the_servers_learner_waits_for_the_lease_and_serves_meanwhile(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    paths = generate(GeneratorSettings(items=40, users=10, events=300, seed=2), tmp_path / "gen")
    store = SQLiteStore(tmp_path / "freshrec.db")
    validator = Validator(settings.ingest)
    import_items(store, read_records(paths["items"]), validator)
    import_events(store, read_records(paths["events"]), validator)
    embed_items(store, build_encoder(settings.encoder))
    other = store.take_lease(NAME, "elsewhere:7:abc", ttl_s=settings.learn.lease_s)
    engine = Engine(store, settings, Keys(settings.serve), "127.0.0.1", 0, learner=learner_main)
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: engine.server.started, timeout=60)
        with Client(engine.url, key=ADMIN) as c:
            wait_for(lambda: c.status()["learner"].startswith("waiting for lease"), timeout=60)
            status = c.status()
            assert "elsewhere:7:abc" in status["learner"] and not status["model_served"]
            assert c.ready()  # without a model
            assert len(c.recommend("u0", k=3)["items"]) == 3  # popular items, until a model is served
            time.sleep(1.0)
            assert not list((tmp_path / "checkpoints").glob("model-*"))  # nothing written while waiting
            store.release_lease(NAME, "elsewhere:7:abc", other.token)
            wait_for(lambda: c.status()["model_served"], timeout=120)
    finally:
        engine.stop()
        thread.join(timeout=60)
        store.close()
