"""How the served explanations spread over a list, written into benchmarks/RESULTS.md.

    python benchmarks/explanations.py [--dataset ../shared/data/ml-100k] [--lists 1000] [--checked 100]

Warm-starts the default model on the whole log (as `freshrec serve` does on an
imported store), publishes it with its blend (weights and counts) to a ranker over
the catalog with its text vectors, and
asks for ``--lists`` lists of 10 with ``explain=true``, each for a random user's last
``history_length`` events an hour after the latest. Reports the mean share of a list's
items under its most frequent explanation, how often the named event is the user's
latest one, and, on the first ``--checked`` lists, whether removing the named event
lowers the item's score more than removing any other event of the history (each
history without each event, scored again through the ranker with the blend's weights
of the whole history's context held, as explanations hold them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections import Counter
from pathlib import Path

import numpy as np

from freshrec.domain import Event, EventType, Item
from freshrec.evaluate.log import load_log
from freshrec.evaluate.replay import Sequences
from freshrec.evaluate.runner import catalog_text
from freshrec.learn.recommender import build_freshrec
from freshrec.model.snapshot import Snapshot
from freshrec.serve.catalog import Catalog
from freshrec.serve.ranker import Options, Ranker
from freshrec.settings import load_settings
from harness import write_section

K = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("../shared/data/ml-100k"))
    parser.add_argument("--lists", type=int, default=1_000)
    parser.add_argument("--checked", type=int, default=100)
    args = parser.parse_args()
    started = time.monotonic()
    settings = load_settings()
    log = load_log(args.dataset)
    text = catalog_text(log, settings)
    model = build_freshrec(log.n_items, text, settings.model, settings.learn, settings.feedback, settings.ingest)
    sequences, length = Sequences(log), settings.model.history_length
    model.fit(sequences.batch(np.arange(len(log)), length))
    ids = log.catalog.item_ids
    catalog = Catalog()
    catalog.put([Item(i, title=t) for i, t in zip(ids, log.catalog.titles, strict=True)], text.astype(np.float32))
    ranker = Ranker(catalog)
    part = model.blend_part()
    if part is not None and model.signals is not None:
        part["signals"] = model.signals.state()
    ranker.publish(Snapshot.of(model.net, ids, [], checkpoint=1, updates=0, offset=len(log), blend=part))

    counts = np.bincount(log.user, minlength=log.n_users)
    rng = np.random.default_rng(0)
    shares, latest, named, checked, faithful = [], 0, 0, 0, 0
    reasons: Counter[str | None] = Counter()
    for n, user in enumerate(rng.choice(np.flatnonzero(counts), args.lists)):
        rows = sequences.order[sequences.start[user] : sequences.start[user] + counts[user]][-length:]
        past = [
            Event(log.user_ids[user], ids[log.item[e]], EventType.RATING, float(log.time[e]), float(log.value[e]))
            for e in rows
        ]
        now = past[-1].timestamp + 3_600
        listed = ranker.recommend(past, now, Options(K, explain=True))
        shares.append(max(Counter(r.explanation for r in listed).values()) / len(listed))
        reasons.update(r.reason for r in listed)
        for r in listed:
            if r.because:
                named += 1
                latest += r.because[0].item_id == past[-1].item_id
        if n < args.checked:
            rescored = [
                {
                    x.item_id: x.score
                    for x in ranker.recommend(past[:j] + past[j + 1 :], now, everything(log.n_items), held=past)
                }
                for j in range(len(past))
            ]
            for r in listed:
                if r.because:
                    drops = [r.score - scores[r.item_id] for scores in rescored]
                    where = [j for j, e in enumerate(past) if e.item_id == r.because[0].item_id]
                    checked += 1
                    faithful += max(drops[j] for j in where) >= max(drops) - 1e-5
    body = (
        f"`python benchmarks/explanations.py --dataset {args.dataset} --lists {args.lists} --checked {args.checked}`, "
        f"run on {dt.date.today()} in {time.monotonic() - started:.0f} s: the default model warm-started on the "
        f"whole log, lists of {K} with `explain=true` for random users an hour after their latest event.\n\n"
        "| lists | mean share of a list under its most frequent explanation | named event is the user's latest "
        "| removing the named event lowers the item's score most |\n| --- | --- | --- | --- |\n"
        f"| {args.lists:,} | {np.mean(shares):.3f} | {latest / max(named, 1):.1%} of {named:,} explained items "
        f"| {faithful:,} of {checked:,} items (the first {args.checked} lists) |\n\n"
        "What placed the listed items (the blend's feature that raised each most above the next items): "
        + ", ".join(
            f"{name or 'the network alone'} {count / sum(reasons.values()):.1%}"
            for name, count in reasons.most_common()
        )
        + "."
    )
    write_section("explanations", "Explanations (issue 19)", body)


def everything(n_items: int) -> Options:
    """Every item with its score (the seen ones too)."""
    return Options(n_items, exclude_seen=False)


if __name__ == "__main__":
    main()
