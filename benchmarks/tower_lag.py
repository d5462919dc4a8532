"""What a lagging item tower costs: the prequential replay of ``../shared/BENCHMARK.md``
with the network alone (``freshrec-net``, what serving ranks with on large catalogs),
scoring with an item tower (the adapter from each item's text to its vector, and the
text bias) taken from the learner only every ``LAG`` learned events.

    python benchmarks/tower_lag.py [--shared ../shared/data] [--lags 0,5000,20000,100000,-1]

Why: serving's candidate index is coded with one item tower, and a newer tower moves
every item's vector, so an index is built again after each one it is sent (a million
items: 20-35 s of a core beside the requests). Serving could keep a tower longer; this
measures what the recommendations lose by it. ``-1``: the tower the warm-up left, for
good. Everything else (ID rows, the sequence encoder, user vectors) is as fresh as in
the plain replay. Prints one row per data set and lag.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch

from freshrec.evaluate.log import load_log
from freshrec.evaluate.metrics import summarise
from freshrec.evaluate.replay import replay
from freshrec.evaluate.runner import Inputs, builder, catalog_text
from freshrec.model.base import Interactions
from freshrec.settings import load_settings


class LaggedTower:
    """Has ``model`` score with copies of its item tower refreshed every ``lag`` learned
    events (0: every time; -1: never after the warm-up)."""

    def __init__(self, model: Any, lag: int):
        self.model, self.lag, self.since = model, lag, 0
        self.net = model.net
        self.held: tuple[torch.nn.Module, torch.nn.Module] | None = None
        self._score, self._learn, self._fit = model.score, model.learn, model.fit
        model.score, model.learn, model.fit = self.score, self.learn, self.fit

    def fit(self, events: Interactions, *args: Any, **kwargs: Any) -> None:
        self._fit(events, *args, **kwargs)
        self._take()

    def _take(self) -> None:
        self.held = copy.deepcopy(self.net.adapter), copy.deepcopy(self.net.text_bias)
        self.since = 0
        self.model._table = None

    def learn(self, events: Interactions) -> None:
        self._learn(events)
        self.since += len(events)
        if self.held is None or (self.lag >= 0 and self.since >= self.lag):
            self._take()

    def score(self, queries: Interactions) -> Any:
        if self.held is None:
            return self._score(queries)
        adapter, bias = self.held

        def text_part(rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            text = self.net.text if rows is None else self.net.text[rows]
            return adapter(text), bias(text).squeeze(1)

        self.net.text_part = text_part
        try:
            return self._score(queries)
        finally:
            del self.net.text_part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--sets", default="ml-100k,steam-reviews,ml-1m-part")
    parser.add_argument("--lags", default="0,5000,20000,100000,-1")
    args = parser.parse_args()
    steam = args.shared / "steam-reviews"
    files = {
        "ml-100k": (args.shared / "ml-100k", None),
        "ml-1m-part": (args.shared / "ml-1m-part", None),
        "steam-reviews": (steam / "events.jsonl", steam / "items.jsonl"),
    }
    settings = load_settings()
    print("| data set | tower refreshed every | NDCG@10 | HR@10 | cold-item HR@10 | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.sets.split(","):
        log = load_log(*files[name])
        inputs = Inputs(settings, catalog_text(log, settings))
        for lag in (int(x) for x in args.lags.split(",")):
            started = time.perf_counter()
            model = builder("freshrec-net")(log, inputs)
            LaggedTower(model, lag)
            s = summarise(replay(model, log), log.n_items)
            every = "learned event" if lag == 0 else "never (the warm-up's)" if lag < 0 else f"{lag:,} events"
            print(
                f"| {name} | {every} | {s.ndcg_at_10:.4f} | {s.hr_at_10:.4f} | {s.cold_item_hr_at_10 or 0:.4f} "
                f"| {time.perf_counter() - started:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
