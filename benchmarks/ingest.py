"""Batched ingest into the embedded SQLite store.

    python benchmarks/ingest.py [--events 300000] [--batch 1000]

Appends pre-validated events with unique event ids in batches (each batch one
durable transaction) into a fresh database file, for both durability modes,
and prints events/s, overall and by store size. Event ids that grow with time
(counters, UUIDv7, ULIDs, the ids the importer derives) keep the unique index
append-only; random UUIDv4 ids are measured too, since they cost a random
index page write each. Validation is measured separately (the import's other
cost). Target: >= 50,000 events/s on the 2-core reference machine.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from freshrec.domain import Event, EventType
from freshrec.ingest.validate import Validator
from freshrec.settings import IngestSettings, StorageSettings
from freshrec.storage import SQLiteStore

TYPES = list(EventType)


def make_events(n: int, seed: int = 0, random_ids: bool = False) -> list[Event]:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 10_000, n)
    items = rng.integers(0, 50_000, n)
    kinds = rng.integers(0, len(TYPES), n)
    t0 = 1_700_000_000.0
    return [
        Event(
            user_id=f"user-{u}",
            item_id=f"item-{i}",
            type=TYPES[k],
            timestamp=t0 + j,
            value=4.0 if TYPES[k] is EventType.RATING else None,
            event_id=str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | j, version=4))
            if random_ids
            else f"evt-{j:09d}",
        )
        for j, (u, i, k) in enumerate(zip(users, items, kinds, strict=True))
    ]


def bench_store(events: list[Event], batch: int, synchronous: str, segment: int) -> tuple[float, list[float]]:
    """Overall events/s, and events/s of each successive ``segment`` events
    (the rate falls as the per-user index outgrows what one batch touches)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db", StorageSettings(synchronous=synchronous))  # type: ignore[arg-type]
        start = mark = time.perf_counter()
        rates = []
        for i in range(0, len(events), batch):
            store.append_events(events[i : i + batch])
            if (i + batch) % segment == 0:
                now = time.perf_counter()
                rates.append(segment / (now - mark))
                mark = now
        elapsed = time.perf_counter() - start
        assert store.counts("x").events == len(events)
        store.close()
    return len(events) / elapsed, rates


def bench_validation(events: list[Event]) -> float:
    validator = Validator(IngestSettings())
    raw = [
        {"user_id": e.user_id, "item_id": e.item_id, "type": e.type.value, "timestamp": e.timestamp, "value": e.value}
        for e in events
    ]
    start = time.perf_counter()
    for r in raw:
        validator.event(r)
    return len(raw) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--segment", type=int, default=100_000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    events = make_events(args.events)
    for mode, ids in (("full", "sequential"), ("normal", "sequential"), ("full", "random UUIDv4")):
        if ids != "sequential":
            events = make_events(args.events, random_ids=True)
        rate, rates = bench_store(events, args.batch, mode, args.segment)
        print(f"sqlite append, synchronous={mode}, {ids} event ids, {args.batch}-event batches: {rate:,.0f} events/s")
        print(
            "  by store size: "
            + ", ".join(f"{(n + 1) * args.segment // 1000}k: {r:,.0f}/s" for n, r in enumerate(rates))
        )
    print(f"validation of raw events: {bench_validation(events[:100_000]):,.0f} events/s")


if __name__ == "__main__":
    main()
