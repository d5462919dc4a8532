"""The learner's cost per micro-batch on a large catalog: the optimizer step, and the
snapshot it hands to serving, built three ways.

    python benchmarks/learner.py --items 1000000

Builds the default freshrec model over ``--items`` items (random 256-wide text vectors, as
the hashing encoder's), then learns ``--batches`` micro-batches of 256 events, each naming
items drawn from a popular fifth of the catalog (``--hot``), with histories of up to the
model's history length, on one torch thread (the learner's share of two cores). After each
micro-batch it times: a whole snapshot (``Snapshot.of``: a copy of every item row), a delta
found by comparing that copy with the one before (how the sender made deltas until
2026-12-04), and a delta built from the rows the model says it changed (``delta_of``, what
the learner hands over now), with their sizes as sent. Prints a Markdown table.

``--step-only`` times the step alone, and runs on versions before the learner's deltas
(``git show HEAD:benchmarks/learner.py > /tmp/learner.py``, check out the older commit,
``python /tmp/learner.py --step-only``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from freshrec.learn.recommender import build_freshrec
from freshrec.model.base import Interactions
from freshrec.model.snapshot import Snapshot
from freshrec.settings import ModelSettings


def batches(n_items: int, hot: int, length: int, count: int, seed: int = 0) -> list[Interactions]:
    rng = np.random.default_rng(seed)
    popular = rng.choice(n_items, size=hot, replace=False)
    out = []
    for b in range(count):
        size, pos = 256, b * 256
        items = popular[rng.integers(0, hot, (size, length + 1))].astype(np.int32)
        history = items[:, :length].copy()
        history[np.arange(length)[None, :] < rng.integers(0, length, (size, 1))] = -1
        out.append(
            Interactions(
                user=rng.integers(0, 100_000, size).astype(np.int32),
                item=items[:, length],
                type=np.zeros(size, np.int8),
                value=np.full(size, np.nan, np.float32),
                time=np.full(size, 1.7e9 + pos, np.float64),
                hist_item=history,
                hist_type=np.where(history >= 0, 0, -1).astype(np.int8),
                hist_value=np.full((size, length), np.nan, np.float32),
                hist_time=np.where(history >= 0, 1.7e9 + pos - 600.0, np.nan),
                position=np.arange(pos, pos + size, dtype=np.int64),
            )
        )
    return out


def ms(seconds: list[float]) -> str:
    return f"{statistics.mean(seconds) * 1000:.1f} / {statistics.median(seconds) * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--hot", type=float, default=0.2, help="share of the catalog the events name")
    parser.add_argument("--step-only", action="store_true", help="time the step alone (runs on older versions too)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = args.items
    text = np.random.default_rng(1).standard_normal((n, 256)).astype(np.float32)
    model = build_freshrec(n, text, ModelSettings())
    model.drop_blend()  # as the learner does above [model.blend] max_items
    ids, info = [f"item-{i}" for i in range(n)], {"checkpoint": 1, "updates": 0, "offset": 0}
    work = batches(n, max(1, int(n * args.hot)), model.history_length, args.batches + 2)
    model.learn(work[0])
    if args.step_only:
        times = []
        for batch in work[1:]:
            start = time.perf_counter()
            model.learn(batch)
            times.append(time.perf_counter() - start)
        print(f"{n:,} items: optimizer step (`FreshRec.learn`) mean / p50 {ms(times)} ms")
        return
    from freshrec.model.deltas import delta_of, delta_since  # delta_of: not in versions before 2026-12-04

    model.trainer.changed.take()
    base = Snapshot.of(model.net, ids, [], **info)
    parent = (base.serial, n)
    step, whole, compared, built = [], [], [], []
    sizes: dict[str, list[int]] = {"whole": [], "compared": [], "built": []}
    for batch in work[1:]:
        start = time.perf_counter()
        model.learn(batch)
        step.append(time.perf_counter() - start)
        start = time.perf_counter()
        changed = model.trainer.changed.take()
        assert changed is not None, "a dense step: no rows to build a delta from"
        delta = delta_of(model.net, parent, changed, item_ids=ids, user_ids=[], **info)
        built.append(time.perf_counter() - start)
        start = time.perf_counter()
        snapshot = Snapshot.of(model.net, ids, [], **info)
        whole.append(time.perf_counter() - start)
        start = time.perf_counter()
        found = delta_since(snapshot, base)
        compared.append(time.perf_counter() - start + whole[-1])
        assert found is not None and bool(torch.isin(found.rows, delta.rows).all()), "a changed row is missing"
        sizes["built"].append(len(delta.to_bytes()))
        sizes["compared"].append(len(found.to_bytes()))
        base, parent = snapshot, (delta.serial, n)
    sizes["whole"].append(len(base.to_bytes()))
    rows = [
        ("optimizer step (`FreshRec.learn`)", ms(step), "-"),
        ("whole snapshot (`Snapshot.of`)", ms(whole), f"{statistics.mean(sizes['whole']) / 1e6:.1f} MB"),
        ("delta by comparing copies (until now)", ms(compared), f"{statistics.mean(sizes['compared']) / 1e6:.2f} MB"),
        ("delta of the changed rows (`delta_of`)", ms(built), f"{statistics.mean(sizes['built']) / 1e6:.2f} MB"),
    ]
    print(f"{n:,} items, {args.batches} micro-batches of 256 events, one torch thread\n")
    print("| per micro-batch | mean / p50 ms | sent |\n| --- | --- | --- |")
    for name, value, size in rows:
        print(f"| {name} | {value} | {size} |")


if __name__ == "__main__":
    main()
