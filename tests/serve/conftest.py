"""A real freshrec server (uvicorn on a free port, SQLite file, learner thread) for the API tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from pydantic import SecretStr

from freshrec.client import Client, FreshrecError
from freshrec.datasets.files import read_records
from freshrec.datasets.synthetic import GeneratorSettings, generate
from freshrec.encoders import build_encoder, embed_items
from freshrec.ingest.importer import import_events, import_items
from freshrec.ingest.validate import Validator
from freshrec.learn.worker import learner_main
from freshrec.serve.auth import Keys
from freshrec.serve.engine import Engine
from freshrec.settings import EncoderSettings, LearnSettings, ModelSettings, ServeSettings, Settings
from freshrec.storage import SQLiteStore

READ, WRITE, ADMIN = "read-key-0123456789", "write-key-0123456789", "admin-key-0123456789"


@dataclass
class Server:
    engine: Engine
    url: str
    store: SQLiteStore
    settings: Settings
    events: list[dict[str, object]]
    """The generated history (all imported before start)."""

    def client(self, key: str | None = ADMIN) -> httpx.Client:
        """Raw HTTP, for requests the typed client would not send (malformed ones)."""
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def api(self, key: str | None = ADMIN) -> Client:
        """The typed client, as an application would call the server."""
        return Client(self.url, key=key, timeout=30.0)


def make_settings(data: Path, **serve: object) -> Settings:
    return Settings(
        data_dir=data,
        encoder=EncoderSettings(model="hashing", hashing_dim=64),
        model=ModelSettings(dim=16, history_length=8, heads=2),
        learn=LearnSettings(epochs=1, batch_size=64, max_wait_ms=50),
        serve=ServeSettings(
            read_keys=[SecretStr(READ)],
            write_keys=[SecretStr(WRITE)],
            admin_keys=[SecretStr(ADMIN)],
            **serve,  # type: ignore[arg-type]
        ),
    )


def served_model(c: Client) -> bool:
    """Whether the server is ready and serves a learned model (503 while a large catalog's
    first candidate index is built)."""
    try:
        return bool(c.readiness().get("model_served"))
    except FreshrecError:
        return False


def start_server(data: Path, settings: Settings, events: int = 1_500) -> Iterator[Server]:
    paths = generate(GeneratorSettings(items=120, users=25, events=events, seed=3), data / "gen")
    store = SQLiteStore(data / "freshrec.db")
    validator = Validator(settings.ingest)
    import_items(store, read_records(paths["items"]), validator)
    import_events(store, read_records(paths["events"]), validator)
    embed_items(store, build_encoder(settings.encoder))
    threads = torch.get_num_threads()
    engine = Engine(store, settings, Keys(settings.serve), "127.0.0.1", 0, learner=learner_main)
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not engine.server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    url = engine.url
    with Client(url) as c:
        while not served_model(c):
            assert time.monotonic() < deadline, "no model within two minutes"
            time.sleep(0.1)
    history = [r.data for r in read_records(paths["events"]) if r.data is not None]
    try:
        yield Server(engine, url, store, settings, history)
    finally:
        engine.stop()
        thread.join(timeout=30)
        store.close()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("served")
    settings = make_settings(
        data,
        max_events_per_request=100,
        max_body_mb=1.0,
        background_items=5,
        rules={"cheap": "attributes.price < 20"},
        queue_header="X-Request-Start",
    )
    yield from start_server(data, settings)


def wait_for(condition: object, timeout: float = 20.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(every)
