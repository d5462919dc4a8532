"""A synthetic shop: a text-described catalog and users whose tastes drift.

The generator is deterministic for a seed and writes plain files
(``items.jsonl``, ``events.jsonl``, ``users.jsonl``) that the importer reads
like any other data, so demos and tests exercise the real ingestion path.

How users behave (the hidden truth a good recommender should recover):

* each user has two taste distributions over topics, an early one and a late
  one, and moves from the first to the second around a personal drift time;
* a user first picks a topic from their current taste, then an item of that
  topic by a Zipf popularity, among items that already exist (a share of the
  catalog appears while the stream runs: cold items);
* a third of the time a user continues in the sub-category of their previous
  item, which gives the stream sequential structure;
* the event type follows a shopping funnel; ratings are higher for items of
  the user's favourite topics; dislikes land on topics the user avoids.

Events are written as they are drawn. Up to :data:`EXACT_MAX_ITEMS` items each draw
weighs the whole catalog (what every figure measured on generated logs used);
beyond, :class:`GroupSampler` draws from the same distributions in logarithmic
time, so a shop of a million items and ten million events takes minutes, not days.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.datasets.vocabulary import TOPICS
from freshrec.domain import EventType, iso

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

_TYPES = (
    EventType.VIEW, EventType.CLICK, EventType.IMPRESSION, EventType.RATING,
    EventType.FAVORITE, EventType.CART, EventType.PURCHASE, EventType.DISLIKE,
)  # fmt: skip
_TYPE_P = np.array([0.40, 0.25, 0.06, 0.08, 0.06, 0.07, 0.05, 0.03])
EXACT_MAX_ITEMS = 20_000
"""Catalogs up to this size are drawn from by weighing every item (O(items) per event,
the generator's original way, kept so that its small logs stay what they were)."""


@dataclass(frozen=True, slots=True)
class GeneratorSettings:
    items: int = 1_000
    users: int = 200
    events: int = 20_000
    seed: int = 0
    days: float = 30.0
    start: float = DEFAULT_START
    new_item_share: float = 0.2
    """Share of items created while the stream runs (cold-start items)."""
    continue_share: float = 0.33
    """Chance that the next item continues the previous item's sub-category."""

    def __post_init__(self) -> None:
        for name in ("items", "users", "events"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.days <= 0:
            raise ValueError(f"days must be positive, got {self.days}")
        if not 0 <= self.new_item_share <= 1 or not 0 <= self.continue_share <= 1:
            raise ValueError("new_item_share and continue_share must lie in [0, 1]")


class World:
    """The hidden state of the synthetic shop: catalog, users and their tastes."""

    def __init__(self, settings: GeneratorSettings):
        self.settings = s = settings
        self.rng = rng = np.random.default_rng(s.seed)
        n_topics = len(TOPICS)
        self.end = s.start + s.days * 86_400
        self.item_topic = rng.integers(0, n_topics, size=s.items)
        self.item_sub = rng.integers(0, 3, size=s.items)
        born_late = rng.random(s.items) < s.new_item_share
        self.item_created = np.where(born_late, rng.uniform(s.start, self.end, size=s.items), s.start - 86_400)
        self.item_popularity = 1.0 / (1.0 + rng.permutation(s.items)) ** 0.8
        self.items = [self._item(i) for i in range(s.items)]
        self.taste_early = rng.dirichlet(np.full(n_topics, 0.25), size=s.users)
        self.taste_late = rng.dirichlet(np.full(n_topics, 0.25), size=s.users)
        self.drift_time = rng.uniform(s.start, self.end, size=s.users)
        self.activity = rng.lognormal(0.0, 1.0, size=s.users)
        self.activity /= self.activity.sum()
        self.sampler = None if s.items <= EXACT_MAX_ITEMS else GroupSampler(self)

    def taste(self, user: int, t: float) -> np.ndarray:
        """The user's topic distribution at time ``t``."""
        width = (self.end - self.settings.start) / 20
        w = 1.0 / (1.0 + np.exp(-(t - self.drift_time[user]) / width))
        return np.asarray((1 - w) * self.taste_early[user] + w * self.taste_late[user])

    def _item(self, i: int) -> dict[str, Any]:
        rng = self.rng
        topic = TOPICS[self.item_topic[i]]
        fmt = topic.formats[rng.integers(len(topic.formats))]
        title = f"{rng.choice(topic.adjectives)} {rng.choice(topic.nouns)}"
        if rng.random() < 0.5:
            title = f"The {title}"
        themes = rng.choice(len(topic.themes), size=2, replace=False)
        description = f"A {fmt} about {topic.themes[themes[0]]}, with a chapter on {topic.themes[themes[1]]}."
        price = float(np.round(topic.price * rng.lognormal(0.0, 0.4), 2))
        return {
            "item_id": f"i{i:06d}",
            "title": f"{title} ({fmt})",
            "description": description,
            "categories": [topic.name, topic.subcategories[self.item_sub[i]]],
            "attributes": {"price": price, "format": fmt, "released_at": iso(self.item_created[i])},
        }

    def available(self, t: float) -> np.ndarray:
        return self.item_created <= t

    def choose_item(self, user: int, t: float, previous: int | None) -> int:
        if self.sampler is not None:
            return self.sampler.choose(self.taste(user, t), t, previous)
        rng = self.rng
        live = self.available(t)
        if previous is not None and rng.random() < self.settings.continue_share:
            same = live & (self.item_topic == self.item_topic[previous]) & (self.item_sub == self.item_sub[previous])
            same[previous] = False
            if same.any():
                weights = self.item_popularity * same
                return int(rng.choice(len(weights), p=weights / weights.sum()))
        taste = self.taste(user, t)
        topic = rng.choice(len(taste), p=taste)
        in_topic = live & (self.item_topic == topic)
        weights = self.item_popularity * (in_topic if in_topic.any() else live * taste[self.item_topic])
        return int(rng.choice(len(weights), p=weights / weights.sum()))

    def events(self) -> Iterator[dict[str, Any]]:
        """The stream, in time order, drawn as it is read."""
        s, rng = self.settings, self.rng
        times = np.sort(rng.uniform(s.start, self.end, size=s.events))
        users = rng.choice(s.users, size=s.events, p=self.activity)
        types = rng.choice(len(_TYPES), size=s.events, p=_TYPE_P)
        last: dict[int, int] = {}
        for n, (t, u, k) in enumerate(zip(times, users, types, strict=True)):
            u, kind = int(u), _TYPES[k]
            taste = self.taste(u, t)
            if kind is EventType.DISLIKE:
                avoid = 1.0 / (taste + 1e-3)
                if self.sampler is not None:
                    item = self.sampler.by_topic_weights(avoid, t)
                else:
                    weights = self.item_popularity * avoid[self.item_topic] * self.available(t)
                    item = int(rng.choice(len(weights), p=weights / weights.sum()))
            else:
                item = self.choose_item(u, t, last.get(u))
                last[u] = item
            event: dict[str, Any] = {
                "event_id": f"e{n:08d}",
                "user_id": f"u{u:05d}",
                "item_id": self.items[item]["item_id"],
                "type": kind.value,
                "timestamp": round(float(t), 3),
            }
            if kind is EventType.RATING:
                affinity = taste[self.item_topic[item]] / taste.max()
                stars = 1.0 + 4.0 * affinity + rng.normal(0.0, 0.6)
                event["value"] = float(np.clip(np.round(stars * 2) / 2, 0.5, 5.0))
            yield event

    def users(self) -> list[dict[str, Any]]:
        """Hidden truth per user (favourite topics early and late), for analysis."""
        names = [t.name for t in TOPICS]
        out = []
        for u in range(self.settings.users):
            out.append(
                {
                    "user_id": f"u{u:05d}",
                    "early_topics": [names[i] for i in np.argsort(-self.taste_early[u])[:3]],
                    "late_topics": [names[i] for i in np.argsort(-self.taste_late[u])[:3]],
                    "drift_time": round(float(self.drift_time[u]), 3),
                }
            )
        return out


class Group:
    """Items of one group (a topic, or a topic's sub-category), by creation time, with
    their running popularity sums: the items alive at ``t`` are a prefix."""

    def __init__(self, members: np.ndarray, created: np.ndarray, popularity: np.ndarray):
        order = np.argsort(created[members], kind="stable")
        self.members = members[order]
        self.created = created[self.members]
        self.running = np.cumsum(popularity[self.members])

    def alive(self, t: float) -> int:
        """How many of the group's items exist at ``t``."""
        return int(np.searchsorted(self.created, t, side="right"))

    def weight(self, t: float) -> float:
        n = self.alive(t)
        return float(self.running[n - 1]) if n else 0.0

    def draw(self, rng: np.random.Generator, t: float) -> int:
        """An item alive at ``t``, by popularity (the group must hold one)."""
        n = self.alive(t)
        at = int(np.searchsorted(self.running[:n], rng.random() * self.running[n - 1], side="right"))
        return int(self.members[min(at, n - 1)])


class GroupSampler:
    """The generator's draws for a large catalog, each from the same distribution as
    the exact way's but in logarithmic time: items are grouped by topic and by
    sub-category, so "an item of this group alive now, by popularity" is a binary
    search, and a draw over the whole catalog weighted by topic (a dislike; a topic
    with nothing alive yet) picks the topic first, by its alive popularity."""

    def __init__(self, world: World):
        self.world = world
        created, popularity = world.item_created, world.item_popularity
        topics, subs = world.item_topic, world.item_sub
        self.topics = [Group(np.flatnonzero(topics == k), created, popularity) for k in range(len(TOPICS))]
        self.subs = {
            (int(k), int(j)): Group(np.flatnonzero((topics == k) & (subs == j)), created, popularity)
            for k, j in {(int(k), int(j)) for k, j in zip(topics, subs, strict=True)}
        }

    def choose(self, taste: np.ndarray, t: float, previous: int | None) -> int:
        w, rng = self.world, self.world.rng
        if previous is not None and rng.random() < w.settings.continue_share:
            group = self.subs[(int(w.item_topic[previous]), int(w.item_sub[previous]))]
            if group.alive(t) > 1:  # the previous item is one of them: it was chosen before
                while True:  # the previous item left out: drawn again when drawn (rarely)
                    item = group.draw(rng, t)
                    if item != previous:
                        return item
        topic = int(rng.choice(len(taste), p=taste))
        if self.topics[topic].alive(t):
            return self.topics[topic].draw(rng, t)
        return self.by_topic_weights(taste, t)

    def by_topic_weights(self, weights: np.ndarray, t: float) -> int:
        """An alive item with probability proportional to its popularity times its topic's weight."""
        rng = self.world.rng
        mass = np.array([g.weight(t) for g in self.topics]) * weights
        topic = int(rng.choice(len(mass), p=mass / mass.sum()))
        return self.topics[topic].draw(rng, t)


def generate(settings: GeneratorSettings, out: Path) -> dict[str, Path]:
    """Write ``items.jsonl``, ``events.jsonl`` and ``users.jsonl`` into ``out``."""
    world = World(settings)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.jsonl" for name in ("items", "events", "users")}
    _write(paths["items"], world.items)
    _write(paths["events"], world.events())
    _write(paths["users"], world.users())
    return paths


def _write(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
