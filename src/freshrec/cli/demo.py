"""``freshrec demo``: a synthetic shop, the server, and simulated users clicking.

The shop comes from the synthetic generator: a catalog and a week of history.
Then simulated users ask the server for recommendations and act according to
their hidden tastes, which all drift to new ones within a few seconds of each
other during the demo, so the dashboard shows the dip and how fast the model
follows. Each user scans the list and clicks an item of a topic they like with
a probability that grows with their taste for it; if nothing appeals, they find
something on their own. The dashboard's online hit rate (clicks on served
items, out of all clicks) shows how well the model keeps up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import numpy as np
import typer

from freshrec.cli.context import app_of, console, out
from freshrec.cli.serve import Engine
from freshrec.datasets.files import read_records
from freshrec.datasets.synthetic import GeneratorSettings, World, generate
from freshrec.ingest.importer import import_events, import_items
from freshrec.serve.auth import Keys

CLICK_SCALE = 0.35
"""Chance of clicking a served item of the user's favourite topic (less for other topics)."""


@dataclass
class Tally:
    """Clicks on served items versus all clicks, per window of the demo."""

    served_clicks: list[int] = field(default_factory=list)
    clicks: list[int] = field(default_factory=list)
    errors: int = 0
    last_error: str = ""
    seconds: float = 0.0
    """How long the shoppers have been at it."""

    def add(self, window: int, hit: bool) -> None:
        while len(self.clicks) <= window:
            self.clicks.append(0)
            self.served_clicks.append(0)
        self.clicks[window] += 1
        self.served_clicks[window] += hit

    def rates(self, window_s: float | None = None) -> list[float]:
        """The share per window; with ``window_s``, of the windows that ran to their end
        (a last window of a few seconds says nothing), unless none did."""
        rates = [h / c if c else float("nan") for h, c in zip(self.served_clicks, self.clicks, strict=True)]
        if window_s is not None and self.seconds >= window_s:
            return rates[: int(self.seconds // window_s)]
        return rates


class Shoppers:
    """Simulated users of a :class:`World`. Each starts with the taste they had at the
    end of the generated history and drifts, during the demo, to a new one drawn
    at random: the model must follow them from what they click."""

    def __init__(self, world: World, drift_after_s: float, drift_width_s: float, seed: int):
        self.world = world
        self.rng = np.random.default_rng(seed + 1)
        self.start = time.time()
        n = world.settings.users
        self.before = np.stack([world.taste(u, world.end) for u in range(n)])
        self.after = self.rng.dirichlet(np.full(self.before.shape[1], 0.25), size=n)
        self.drift = self.start + drift_after_s + self.rng.uniform(0, drift_after_s / 6, size=n)
        self.width = drift_width_s

    def taste(self, user: int, now: float) -> np.ndarray:
        w = 1.0 / (1.0 + np.exp(-(now - self.drift[user]) / self.width))
        return np.asarray((1 - w) * self.before[user] + w * self.after[user])

    def pick_from(self, user: int, served: list[str], now: float) -> str | None:
        taste = self.taste(user, now)
        for item_id in served:
            topic = self.world.item_topic[int(item_id[1:])]
            if self.rng.random() < CLICK_SCALE * taste[topic] / taste.max():
                return item_id
        return None

    def find(self, user: int, now: float) -> str:
        taste = self.taste(user, now)
        topic = self.rng.choice(len(taste), p=taste)
        weights = self.world.item_popularity * (self.world.item_topic == topic)
        return str(self.world.items[int(self.rng.choice(len(weights), p=weights / weights.sum()))]["item_id"])


def simulate(
    url: str,
    shoppers: Shoppers,
    rate: float,
    stop: threading.Event,
    tally: Tally,
    window_s: float,
    on_ready: Callable[[], None] = lambda: None,
) -> None:
    """Drive simulated users against the server at ``rate`` actions per second, from
    the moment it is ready (then ``on_ready`` is called)."""
    world, rng = shoppers.world, shoppers.rng
    with httpx.Client(base_url=url, timeout=10.0) as client:
        while not stop.is_set():
            try:
                got = client.get("/health/ready")
                if got.status_code == 200 and got.json().get("model_served"):
                    break
            except httpx.TransportError:
                pass
            stop.wait(0.5)
        on_ready()
        started = time.monotonic()
        n = 0
        while not stop.is_set():
            user = int(rng.choice(world.settings.users, p=world.activity))
            user_id = f"u{user:05d}"
            now = time.time()
            try:
                served = [i["item_id"] for i in client.get(f"/v1/users/{user_id}/recommendations?k=10").json()["items"]]
                item = shoppers.pick_from(user, served, now)
                hit = item is not None
                events: list[dict[str, Any]] = [
                    {"user_id": user_id, "item_id": item or shoppers.find(user, now), "type": "click"}
                ]
                if rng.random() < 0.15:
                    events.append({"user_id": user_id, "item_id": events[0]["item_id"], "type": "cart"})
                client.post("/v1/events", json=events).raise_for_status()
                tally.add(int((time.monotonic() - started) // window_s), hit)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                if stop.is_set():  # the server is shutting down
                    break
                tally.errors += 1
                tally.last_error = f"{type(exc).__name__}: {exc}"
            n += 1
            tally.seconds = time.monotonic() - started
            stop.wait(max(0.0, started + n / rate - time.monotonic()))


def demo_cmd(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port of the server (0: any free port).")] = 8000,
    items: Annotated[int, typer.Option(help="Catalog size.")] = 500,
    users: Annotated[
        int,
        typer.Option(
            help="Number of simulated users. With few, each has seen most items of their topics and "
            "the hit rate falls as they run out of unseen ones."
        ),
    ] = 200,
    history: Annotated[
        int,
        typer.Option(
            help="Events of history generated before the demo starts. With a few thousand the model "
            "learns little more than popularity and the hit rate stays flat; the default gives it enough to rise."
        ),
    ] = 20_000,
    rate: Annotated[float, typer.Option(help="Simulated user actions per second.")] = 20.0,
    drift_after: Annotated[
        float, typer.Option(help="Seconds before users' tastes drift to new ones (all within a sixth of that).")
    ] = 90.0,
    duration: Annotated[
        float | None, typer.Option(help="Stop this many seconds after the shoppers start (default: Ctrl-C).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Run a simulated shop against a live server: open the printed URL to watch it learn."""
    state = app_of(ctx)
    settings = state.settings
    gen = GeneratorSettings(
        items=items, users=users, events=history, seed=seed, days=7.0, start=time.time() - 7 * 86_400
    )
    folder = settings.data_dir / "demo"
    paths = generate(gen, folder)
    console.print(f"generated {items:,} items, {users:,} users and {history:,} events of history in {folder}")
    with state.store() as store:
        validator = state.validator()
        for report in (
            import_items(store, read_records(paths["items"]), validator),
            import_events(store, read_records(paths["events"]), validator),
        ):
            console.print(report.summary())
        state.embed(store)
        engine = Engine(store, settings, Keys(settings.serve, open=True), "127.0.0.1", port)
        stop = threading.Event()
        tally = Tally()
        window = 30.0
        shoppers = Shoppers(World(gen), drift_after, drift_after / 10, seed)

        def finish() -> None:
            stop.set()
            driver.join(timeout=15)
            engine.stop()

        def start_clock() -> None:
            if duration is not None:
                threading.Timer(duration, finish).start()

        def drive() -> None:
            while not engine.server.started and not stop.is_set():
                time.sleep(0.05)
            url = engine.url
            out.print(f"\nfreshrec demo running at {url}/ (try {url}/?user=u00000); Ctrl-C to stop\n", highlight=False)
            simulate(url, shoppers, rate, stop, tally, window, on_ready=start_clock)

        driver = threading.Thread(target=drive, name="freshrec-demo-users", daemon=True)
        driver.start()
        try:
            engine.run()
        finally:
            stop.set()
            driver.join(timeout=15)
    rates = ", ".join("–" if np.isnan(r) else f"{r:.2f}" for r in tally.rates(window))
    errors = f"{tally.errors} errors" + (f", the last: {tally.last_error}" if tally.errors else "")
    out.print(
        f"share of clicks on recommended items, per {window:.0f} s: {rates or 'none yet'}"
        f" ({sum(tally.clicks):,} clicks, {errors})",
        highlight=False,
    )
