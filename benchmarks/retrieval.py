"""Candidate retrieval on large catalogs: recall and latency against exact scoring.

    python benchmarks/retrieval.py [--items 200000] [--users 1000] [--shared ../shared/data]

Two served rankers over the same model snapshot and catalog, one scoring every item
(``[serve.retrieval] min_items`` above the catalog) and one ranking the HNSW index's
candidates (the defaults): recall@10 of the exact top 10, over ``--users`` random
users' requests with default options, and the latency of one request (unloaded,
one thread, as the server runs it), p50 and p99.

* a synthetic shop of ``--items`` items (hashing encoder: the text model's speed is left
  out), its network as initialised (text adapter only);
* ml-1m-part: the network after a warm start on the first 20% of the time-ordered log,
  requests from the histories of random users at the end of it.

With usearch installed (``pip install usearch``), also builds the same index with it
on the synthetic shop's served vectors, for the choice of library: build time, query
time and how much of the exact top 10 each finds among 200 candidates.

Writes the ``retrieval`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np
import torch

from freshrec.domain import Event, EventType, Item
from freshrec.encoders.hashing import HashingEncoder
from freshrec.evaluate.log import EventLog, load_log
from freshrec.evaluate.replay import Sequences
from freshrec.evaluate.runner import catalog_text
from freshrec.learn.recommender import build_freshrec
from freshrec.model.snapshot import Snapshot
from freshrec.serve.catalog import Catalog
from freshrec.serve.ranker import Options, Ranker, encode
from freshrec.serve.retrieval import Index
from freshrec.settings import LearnSettings, RetrievalSettings, Settings
from harness import write_section

T0 = 1_700_000_000.0
VOCAB = ["garden", "kitchen", "space", "music", "books", "games", "tools", "sport", "audio", "toys"]


def measure(name: str, snap: Snapshot, items: list[Item], text: np.ndarray, histories: list[list[Event]]) -> str:
    rankers = {}
    for kind, settings in (
        ("exact", RetrievalSettings(min_items=len(items) + 1)),
        ("index", RetrievalSettings(min_items=0)),
    ):
        catalog = Catalog()
        catalog.put(items, text)
        rankers[kind] = Ranker(catalog, settings)
        rankers[kind].publish(snap)
    started = time.perf_counter()
    while rankers["index"].retrieval.index is None:
        time.sleep(0.05)
    build_s = time.perf_counter() - started
    found, latency = 0, {"exact": [], "index": []}
    for past in histories:
        lists = {}
        for kind, ranker in rankers.items():
            t = time.perf_counter()
            lists[kind] = [r.item_id for r in ranker.recommend(past, past[-1].timestamp + 1, Options(10))]
            latency[kind].append((time.perf_counter() - t) * 1000)
        found += len(set(lists["exact"]) & set(lists["index"]))
    p = {k: np.percentile(v, [50, 99]) for k, v in latency.items()}
    recall = found / (10 * len(histories))
    print(f"{name}: recall {recall:.4f}, exact {p['exact']}, index {p['index']}, build {build_s:.1f} s", flush=True)
    return (
        f"| {name} | {len(items):,} | {recall:.4f} | {p['exact'][0]:.2f} / {p['exact'][1]:.2f} | "
        f"{p['index'][0]:.2f} / {p['index'][1]:.2f} | {build_s:.1f} |"
    )


def libraries(vectors: np.ndarray, bias: np.ndarray, users: np.ndarray) -> str:
    """faiss (what serving uses) and usearch on the same rows and the same reduction."""
    settings = RetrievalSettings()
    exact = np.argsort(-(users @ vectors.T + bias), axis=1)[:, :10]
    rows = []
    started = time.perf_counter()
    index = Index(vectors, bias, settings)
    build = time.perf_counter() - started
    started = time.perf_counter()
    found = np.stack([index.search(u[None], 200)[0] for u in users])
    query = (time.perf_counter() - started) / len(users) * 1000
    rows.append(("faiss", build, query, found))
    try:
        from usearch.index import Index as USearch
    except ImportError:
        print("usearch is not installed: faiss alone")
    else:
        scored = np.hstack([vectors, bias[:, None]]).astype(np.float64)
        norms = (scored**2).sum(1)
        items = np.hstack([scored, np.sqrt(norms.max() - norms)[:, None]]).astype(np.float32)
        queries = np.hstack([users, np.ones((len(users), 1)), np.zeros((len(users), 1))]).astype(np.float32)
        started = time.perf_counter()
        other = USearch(ndim=items.shape[1], metric="l2sq", connectivity=settings.connectivity, expansion_add=80)
        other.add(np.arange(len(items)), items, threads=1)
        other.expansion_search = settings.search_depth
        build = time.perf_counter() - started
        started = time.perf_counter()
        keys = np.stack([other.search(q, 200).keys for q in queries])
        query = (time.perf_counter() - started) / len(users) * 1000
        rows.append(("usearch", build, query, keys))
    lines = [
        f"| {name} | {build:.1f} | {query:.3f} | "
        f"{np.mean([len(set(exact[i]) & set(got[i])) / 10 for i in range(len(users))]):.4f} |"
        for name, build, query, got in rows
    ]
    return (
        f"\nThe library, on the synthetic shop's served vectors ({len(vectors):,} items, one thread, "
        f"{len(users):,} users; the exact top 10 found among 200 candidates):\n\n"
        "| library | build s | query ms | recall@10 in 200 |\n| --- | --- | --- | --- |\n" + "\n".join(lines) + "\n"
    )


def synthetic(n: int, users: int) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    ids = [f"i{k:07d}" for k in range(n)]
    titles = [f"{VOCAB[k % 10]} {VOCAB[(k // 10) % 10]} item {k % 997} number {k}" for k in range(n)]
    text = HashingEncoder(64).encode(titles)
    items = [Item(i, title=t) for i, t in zip(ids, titles, strict=True)]
    model = build_freshrec(n, text, Settings().model, LearnSettings())
    snap = Snapshot.of(model.net, ids, [], checkpoint=1, updates=0, offset=0)
    histories = [
        [Event(f"u{u}", ids[p], EventType.CLICK, T0 + j) for j, p in enumerate(rng.choice(n, size=rng.integers(1, 20)))]
        for u in range(users)
    ]
    row = measure("synthetic shop, network as initialised", snap, items, text, histories)
    ranker = Ranker(Catalog(), RetrievalSettings(min_items=n + 1))
    ranker.catalog.put(items, text)
    ranker.publish(snap)
    sc = ranker.scoring
    assert sc.vectors is not None and sc.bias is not None
    requests = [ranker.plan(h, h[-1].timestamp + 1, Options(10)) for h in histories]
    encode(requests)
    user_vectors = np.stack([r.users[0].numpy() for r in requests if r.users is not None])
    return row, libraries(sc.vectors.numpy(), sc.bias.numpy(), user_vectors)


def movielens(shared: Path, users: int) -> str:
    log: EventLog = load_log(shared / "ml-1m-part")
    settings = Settings()
    text = catalog_text(log, settings)
    warm = int(len(log) * 0.2)
    model = build_freshrec(log.n_items, text, settings.model, settings.learn)
    model.fit(Sequences(log).batch(np.arange(warm, dtype=np.int64), settings.model.history_length))
    ids = log.catalog.item_ids
    snap = Snapshot.of(model.net, ids, [], checkpoint=1, updates=0, offset=warm)
    items = [Item(i, title=t) for i, t in zip(ids, log.catalog.titles, strict=True)]
    rng = np.random.default_rng(0)
    chosen = rng.choice(np.unique(log.user[:warm]), size=min(users, len(np.unique(log.user[:warm]))), replace=False)
    histories = []
    for u in chosen:
        rows = np.flatnonzero(log.user[:warm] == u)[-settings.model.history_length :]
        histories.append(
            [Event(str(u), ids[log.item[r]], EventType.RATING, float(log.time[r]), float(log.value[r])) for r in rows]
        )
    return measure("ml-1m-part, after a warm start on its first 20%", snap, items, text, histories)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    shop, compared = synthetic(args.items, args.users)
    rows = [shop, movielens(args.shared, args.users)]
    r = RetrievalSettings()
    body = (
        f"`python benchmarks/retrieval.py --items {args.items} --users {args.users}`, run on {dt.date.today()} in "
        f"{time.perf_counter() - started:.0f} s. Two rankers over the same snapshot and catalog: every item scored "
        f"exactly, or the candidates of the HNSW index (faiss; defaults: {r.candidates} candidates, "
        f"connectivity {r.connectivity}, search depth {r.search_depth}) scored exactly. Recall@10: the share of the "
        f"exact top 10 the index's list holds, over {args.users:,} random users' requests with default options; "
        "latency of one request, unloaded, one torch thread.\n\n"
        "| catalog | items | recall@10 | exact p50 / p99 ms | index p50 / p99 ms | index build s |\n"
        "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n" + compared
    )
    write_section("retrieval", "Candidate retrieval on large catalogs (issue 18)", body)


if __name__ == "__main__":
    main()
