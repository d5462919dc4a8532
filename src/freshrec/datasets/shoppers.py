"""Simulated shoppers for the demo: users of a synthetic :class:`World` who ask a
live server for recommendations and act on their hidden tastes, which drift to
new ones during the run, so the dashboard shows the dip and how fast the model
follows. Each user scans the list and clicks an item of a topic they like with
a probability that grows with their taste for it; if nothing appeals, they find
something on their own. The share of clicks on served items (:class:`Tally`)
shows how well the model keeps up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import numpy as np

from freshrec.client import Client, FreshrecError
from freshrec.datasets.synthetic import World

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
    experiments: list[dict[str, Any]] = field(default_factory=list)
    """The server's experiments with their figures (``GET /v1/experiments``) as the run ended."""

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
    with Client(url) as client:
        while not stop.is_set():
            try:
                if client.readiness().get("model_served"):
                    break
            except (FreshrecError, httpx.TransportError):
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
                listed = client.recommend(user_id, k=10)
                served = [i["item_id"] for i in listed["items"]]
                item = shoppers.pick_from(user, served, now)
                hit = item is not None
                # a click on a served item names its list, as a shop's page would
                named = {"recommendation_id": listed["recommendation_id"]} if hit else {}
                events: list[dict[str, Any]] = [
                    {"user_id": user_id, "item_id": item or shoppers.find(user, now), "type": "click", **named}
                ]
                if rng.random() < 0.15:
                    events.append({"user_id": user_id, "item_id": events[0]["item_id"], "type": "cart", **named})
                client.send_events(events)
                tally.add(int((time.monotonic() - started) // window_s), hit)
            except (FreshrecError, httpx.HTTPError, ValueError, KeyError) as exc:
                if stop.is_set():  # the server is shutting down
                    break
                tally.errors += 1
                tally.last_error = f"{type(exc).__name__}: {exc}"
            n += 1
            tally.seconds = time.monotonic() - started
            stop.wait(max(0.0, started + n / rate - time.monotonic()))
        try:  # the server is still up: it stops after this thread (run_with_shoppers)
            tally.experiments = client.experiments()
        except (FreshrecError, httpx.HTTPError) as exc:
            tally.last_error = f"{type(exc).__name__}: {exc}"


class Server(Protocol):
    """What the shoppers need of the server they drive (``freshrec.serve.engine.Engine``)."""

    @property
    def started(self) -> bool: ...

    @property
    def url(self) -> str: ...

    def run(self) -> None: ...

    def stop(self) -> None: ...


def run_with_shoppers(
    server: Server,
    shoppers: Shoppers,
    rate: float,
    window_s: float,
    duration_s: float | None = None,
    on_url: Callable[[str], None] = lambda url: None,
) -> Tally:
    """Run ``server`` in this thread, with ``shoppers`` driving it from another at
    ``rate`` actions per second, until the server stops (Ctrl-C, SIGTERM) or
    ``duration_s`` after the shoppers started; ``on_url`` hears the server's URL once
    it listens. Returns the tally of clicks."""
    stop = threading.Event()
    tally = Tally()

    def finish() -> None:
        stop.set()
        driver.join(timeout=15)
        server.stop()

    def start_clock() -> None:
        if duration_s is not None:
            threading.Timer(duration_s, finish).start()

    def drive() -> None:
        while not server.started and not stop.is_set():
            time.sleep(0.05)
        on_url(server.url)
        simulate(server.url, shoppers, rate, stop, tally, window_s, on_ready=start_clock)

    driver = threading.Thread(target=drive, name="freshrec-demo-users", daemon=True)
    driver.start()
    try:
        server.run()
    finally:
        stop.set()
        driver.join(timeout=15)
    return tally
