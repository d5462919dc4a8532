"""What FastAPI's routing costs a recommendation request, and what the fast lane saves.

    python benchmarks/lane.py [--items 2000] [--users 200] [--rounds 3]

Builds a small shop (hashing encoder, SQLite in a temporary folder) and the service
over it, then two applications over the same service: the default (the fast lane of
``freshrec.serve.lane`` in front of FastAPI) and FastAPI alone. Each request is one
ASGI call of ``GET /v1/users/{id}/recommendations?k=10`` with a read key, no network,
so the difference is the framework's dispatch alone (routing, the key's security
schemes, the query's validation, the middleware stack). The two are timed in
alternating rounds of every user five times; no model is served, so the requests rank
by text (the dispatch does not depend on what ranks). Writes RESULTS.md, section "lane".
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from freshrec.datasets.files import read_records
from freshrec.datasets.synthetic import GeneratorSettings, generate
from freshrec.encoders import build_encoder, embed_items
from freshrec.ingest.importer import import_events, import_items
from freshrec.ingest.validate import Validator
from freshrec.serve.api import create_app
from freshrec.serve.auth import Keys
from freshrec.serve.service import Service
from freshrec.settings import EncoderSettings, ServeSettings, Settings
from freshrec.storage import SQLiteStore
from harness import write_section

KEY = "bench-read-key-0000000"


async def call(app: Any, user: str) -> None:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": f"/v1/users/{user}/recommendations", "raw_path": f"/v1/users/{user}/recommendations".encode(),
        "root_path": "", "query_string": b"k=10", "headers": [(b"host", b"bench"), (b"x-api-key", KEY.encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    if sent[0]["status"] != 200:
        raise RuntimeError(f"{user}: {sent}")


async def timed(apps: dict[str, Any], users: list[str], rounds: int) -> dict[str, list[float]]:
    """Microseconds per request of each application, one figure per round."""
    out: dict[str, list[float]] = {name: [] for name in apps}
    for app in apps.values():  # warm both
        for user in users:
            await call(app, user)
    for _ in range(rounds):
        for name, app in apps.items():
            started = time.perf_counter()
            for _ in range(5):
                for user in users:
                    await call(app, user)
            out[name].append((time.perf_counter() - started) / (5 * len(users)) * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        settings = Settings(
            data_dir=data, encoder=EncoderSettings(model="hashing"), serve=ServeSettings(read_keys=[SecretStr(KEY)])
        )
        paths = generate(GeneratorSettings(items=args.items, users=args.users, events=args.users * 100), data / "gen")
        with SQLiteStore(data / "freshrec.db") as store:
            validator = Validator(settings.ingest)
            import_items(store, read_records(paths["items"]), validator)
            import_events(store, read_records(paths["events"]), validator)
            embed_items(store, build_encoder(settings.encoder))
            service = Service(store, settings)
            keys = Keys(settings.serve)
            apps = {"fast lane": create_app(service, keys), "FastAPI alone": create_app(service, keys, lane=False)}
            users = [f"u{n:05d}" for n in range(args.users)]
            figures = asyncio.run(timed(apps, users, args.rounds))
    rows = "".join(f"| {name} | {' / '.join(f'{x:.0f}' for x in values)} µs |\n" for name, values in figures.items())
    saved = [b - a for a, b in zip(figures["fast lane"], figures["FastAPI alone"], strict=True)]
    body = (
        f"`python benchmarks/lane.py --items {args.items} --users {args.users} --rounds {args.rounds}`, "
        f"run on {dt.date.today()}: one recommendation request as an ASGI call (no network, no model: "
        "ranked by text), each round every user five times, the two applications alternating.\n\n"
        "| application | per request, each round |\n| --- | --- |\n"
        f"{rows}\nThe lane saves {min(saved):.0f} to {max(saved):.0f} µs of the event loop per request.\n"
    )
    write_section("lane", "The fast lane of recommendation requests", body)


if __name__ == "__main__":
    main()
