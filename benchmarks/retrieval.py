"""Candidate retrieval on large catalogs: recall and latency against exact scoring.

    python benchmarks/retrieval.py [--items 200000] [--users 1000] [--shared ../shared/data] [--data FOLDER]

Two served rankers over the same model snapshot and catalog, one scoring every item
(``[serve.retrieval] min_items`` above the catalog) and one ranking the candidates of the
inverted-file index (the defaults), calibrated on the first 256 requests as a server's
next build is: recall@10 of the exact top 10, over ``--users`` random users' requests
after those, with default options, and the latency of one request (unloaded, one
thread, as the server runs it), p50 and p99.

* a synthetic shop of ``--items`` items (hashing encoder: the text model's speed is left
  out), its network as initialised (text adapter only);
* ml-1m-part: the network after a warm start on the first 20% of the time-ordered log,
  requests from the histories of random users at the end of it;
* with ``--data``, the trained model in a data folder that ``scale.py`` left (resumed
  from its checkpoint), its catalog, and random users' stored histories.

On the synthetic shop's served vectors, the index against HNSW graphs (faiss on the
reduced vectors, as serving used before, and on the inner product; usearch too when
installed: ``pip install usearch``): build time, query time and how much of the exact
top 10 each finds among 200 candidates.

Writes the ``retrieval`` section of RESULTS.md (``retrieval-<items>`` for other sizes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from freshrec.domain import Event, EventType, Item
from freshrec.encoders import encoder_key
from freshrec.encoders.hashing import HashingEncoder
from freshrec.evaluate.log import EventLog, load_log
from freshrec.evaluate.replay import Sequences
from freshrec.evaluate.runner import catalog_text
from freshrec.learn.checkpoints import Checkpoints
from freshrec.learn.online import Learner
from freshrec.learn.recommender import build_freshrec
from freshrec.model.snapshot import Snapshot
from freshrec.serve.catalog import Catalog
from freshrec.serve.index import SHORTLIST, Index
from freshrec.serve.ranker import Options, Ranker
from freshrec.serve.request import encode
from freshrec.settings import EncoderSettings, LearnSettings, RetrievalSettings, Settings
from freshrec.storage import open_store
from harness import write_section

T0 = 1_700_000_000.0
CALIBRATION = 256
"""Requests served before the measured ones: the index's build calibrates on them."""
VOCAB = ["garden", "kitchen", "space", "music", "books", "games", "tools", "sport", "audio", "toys"]


def measure(name: str, snap: Snapshot, items: list[Item], text: np.ndarray, histories: list[list[Event]]) -> str:
    catalog = Catalog()
    catalog.put(items, text)
    return measure_catalog(name, snap, catalog, histories)


def measure_catalog(name: str, snap: Snapshot, catalog: Catalog, histories: list[list[Event]]) -> str:
    """Recall@10 of the index's list against exact scoring, and each one's latency (two
    rankers over one catalog: it is only read). The first ``CALIBRATION`` histories are
    served first, as a server's earlier traffic, and the index is built again calibrated
    on them (as a server's next build is); the rest are measured."""
    rankers = {}
    n_items = len(catalog.view)
    for kind, settings in (
        ("exact", RetrievalSettings(min_items=n_items + 1)),
        ("index", RetrievalSettings(min_items=0)),
    ):
        rankers[kind] = Ranker(catalog, settings)
        rankers[kind].publish(snap)
    retrieval = rankers["index"].retrieval
    retrieval.wait()
    for past in histories[:CALIBRATION]:
        rankers["index"].recommend(past, past[-1].timestamp + 1, Options(10))
    sc = rankers["index"].scoring
    assert sc.vectors is not None and sc.bias is not None
    started = time.perf_counter()
    retrieval.build_now(sc.vectors.numpy(), sc.bias.numpy(), np.array(retrieval.recent))
    build_s = time.perf_counter() - started
    index = retrieval.index
    assert index is not None
    found, latency = 0, {"exact": [], "index": []}
    measured = histories[CALIBRATION:]
    for past in measured:
        lists = {}
        for kind, ranker in rankers.items():
            t = time.perf_counter()
            lists[kind] = [r.item_id for r in ranker.recommend(past, past[-1].timestamp + 1, Options(10))]
            latency[kind].append((time.perf_counter() - t) * 1000)
        found += len(set(lists["exact"]) & set(lists["index"]))
    p = {k: np.percentile(v, [50, 99]) for k, v in latency.items()}
    recall = found / (10 * len(measured))
    print(f"{name}: recall {recall:.4f}, exact {p['exact']}, index {p['index']}, build {build_s:.1f} s", flush=True)
    return (
        f"| {name} | {n_items:,} | {len(measured):,} | {recall:.4f} | {index.probes} of {index.index.nlist} | "
        f"{p['exact'][0]:.2f} / {p['exact'][1]:.2f} | {p['index'][0]:.2f} / {p['index'][1]:.2f} | {build_s:.1f} |"
    )


def libraries(vectors: np.ndarray, bias: np.ndarray, users: np.ndarray) -> str:
    """The calibrated inverted file serving uses, against HNSW graphs (faiss, on the
    reduced vectors as serving used them and on the inner-product metric; usearch if
    installed) on the same rows: build time, query time and the share of the exact top 10
    among 200 candidates, on the users after the first ``CALIBRATION`` (those calibrate)."""
    calibrate, users = users[:CALIBRATION], users[CALIBRATION:]
    exact = np.argsort(-(users @ vectors.T + bias), axis=1)[:, :10]
    scored = np.hstack([vectors, bias[:, None]]).astype(np.float64)
    norms = (scored**2).sum(1)
    reduced = np.hstack([scored, np.sqrt(norms.max() - norms)[:, None]]).astype(np.float32)
    queries = np.hstack([users, np.ones((len(users), 1)), np.zeros((len(users), 1))]).astype(np.float32)
    plain, plain_q = scored.astype(np.float32), np.ascontiguousarray(queries[:, :-1])

    def timed(build: Any, search: Any, q: np.ndarray) -> tuple[float, float, list[np.ndarray]]:
        started = time.perf_counter()
        built = build()
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        found = [search(built, q[i : i + 1]).ravel() for i in range(len(q))]
        return build_s, (time.perf_counter() - started) / len(q) * 1000, found

    served: list[Index] = []

    def codes() -> Index:
        served.append(Index(vectors, bias, RetrievalSettings(), calibrate))
        return served[0]

    def floats() -> Any:
        """The inverted file of float vectors serving used before its codes, with the served
        index's lists and probes."""
        lists = served[0].index.nlist
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(reduced.shape[1]), reduced.shape[1], lists)
        index.train(reduced[np.random.default_rng(0).choice(len(reduced), min(len(reduced), lists * 64), False)])
        index.add(reduced)
        index.nprobe = served[0].probes
        return index

    def hnsw(rows: np.ndarray, metric: int) -> Any:
        graph = faiss.IndexHNSWFlat(rows.shape[1], 32, metric)
        graph.hnsw.efConstruction, graph.hnsw.efSearch = 80, 512
        graph.add(rows)
        return graph

    rows = [
        (f"faiss inverted file of 4-bit codes, calibrated (serving: up to {SHORTLIST * 200} candidates by code)",
         *timed(codes, lambda x, q: np.union1d(x.search(q, 200), x.head), users)),
        ("faiss inverted file of the vectors, as many lists probed, the same hits (serving before)",
         *timed(floats, lambda x, q: np.union1d(x.search(q, 200)[1], served[0].head), queries)),
        ("faiss HNSW, reduced to Euclidean (serving before the inverted file)",
         *timed(lambda: hnsw(reduced, faiss.METRIC_L2), lambda x, q: x.search(q, 200)[1], queries)),
        ("faiss HNSW, inner product",
         *timed(lambda: hnsw(plain, faiss.METRIC_INNER_PRODUCT), lambda x, q: x.search(q, 200)[1], plain_q)),
    ]  # fmt: skip
    try:
        from usearch.index import Index as USearch
    except ImportError:
        print("usearch is not installed: faiss alone")
    else:

        def usearch() -> Any:
            other = USearch(ndim=reduced.shape[1], metric="l2sq", connectivity=32, expansion_add=80)
            other.add(np.arange(len(reduced)), reduced, threads=1)
            other.expansion_search = 512
            return other

        rows.append(("usearch HNSW, reduced", *timed(usearch, lambda x, q: x.search(q[0], 200).keys[None], queries)))
    lines = [
        f"| {name} | {build:.1f} | {query:.3f} | "
        f"{np.mean([len(set(exact[i]) & set(got[i])) / 10 for i in range(len(users))]):.4f} |"
        for name, build, query, got in rows
    ]
    return (
        f"\nThe index, on the synthetic shop's served vectors ({len(vectors):,} items, one thread, "
        f"{len(users):,} users; the exact top 10 found among 200 candidates, or among the up to "
        f"{SHORTLIST * 200} that serving scores exactly of the index of codes; the inverted files' with the "
        "calibration's hits, which every request scores):\n\n"
        "| index | build s | query ms | recall@10 among the candidates |\n| --- | --- | --- | --- |\n"
        + "\n".join(lines)
        + "\n"
    )


def synthetic(n: int, users: int, compare: bool) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    ids = [f"i{k:07d}" for k in range(n)]
    titles = [f"{VOCAB[k % 10]} {VOCAB[(k // 10) % 10]} item {k % 997} number {k}" for k in range(n)]
    text = HashingEncoder(64).encode(titles)
    items = [Item(i, title=t) for i, t in zip(ids, titles, strict=True)]
    model = build_freshrec(n, text, Settings().model, LearnSettings())
    snap = Snapshot.of(model.net, ids, [], checkpoint=1, updates=0, offset=0)
    histories = [
        [Event(f"u{u}", ids[p], EventType.CLICK, T0 + j) for j, p in enumerate(rng.choice(n, size=rng.integers(1, 20)))]
        for u in range(users + CALIBRATION)
    ]
    row = measure("synthetic shop, network as initialised", snap, items, text, histories)
    if not compare:
        return row, ""
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
    pool = np.unique(log.user[:warm])
    chosen = rng.choice(pool, size=min(users + CALIBRATION, len(pool)), replace=False)
    histories = []
    for u in chosen:
        rows = np.flatnonzero(log.user[:warm] == u)[-settings.model.history_length :]
        histories.append(
            [Event(str(u), ids[log.item[r]], EventType.RATING, float(log.time[r]), float(log.value[r])) for r in rows]
        )
    return measure("ml-1m-part, after a warm start on its first 20%", snap, items, text, histories)


def trained(data: Path, users: int) -> str:
    """The model a learner resumes from the checkpoint of a ``freshrec`` data folder (one
    that ``benchmarks/scale.py`` left, hashing encoder), over its store's catalog, for
    the stored histories of random users."""
    settings = Settings(data_dir=data, encoder=EncoderSettings(model="hashing"))
    store = open_store(settings.store_url, settings.storage)
    learner = Learner(store, settings, Checkpoints(data / "checkpoints"))
    learner.resume()
    snap = learner.snapshot()
    catalog = Catalog()
    catalog.load(store, encoder_key(settings.encoder))
    rng = np.random.default_rng(0)
    known = [u for u in learner.users.ids if u is not None]
    histories = []
    for u in rng.choice(len(known), size=min(users + CALIBRATION, len(known)), replace=False):
        past = store.user_history(known[u], settings.model.history_length)
        if past:
            histories.append(past)
    store.close()
    return measure_catalog(f"synthetic shop of `scale.py`, its trained model ({data.name})", snap, catalog, histories)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--data", type=Path, help="also a trained model: the data folder scale.py left")
    parser.add_argument(
        "--no-compare",
        dest="compare",
        action="store_false",
        help="leave out the HNSW graphs (minutes each at 1M items)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    shop, compared = synthetic(args.items, args.users, args.compare)
    rows = [shop, movielens(args.shared, args.users)]
    if args.data is not None:
        rows.append(trained(args.data, args.users))
    r = RetrievalSettings()
    body = (
        f"`python benchmarks/retrieval.py --items {args.items} --users {args.users}"
        f"{f' --data {args.data}' if args.data else ''}{'' if args.compare else ' --no-compare'}`, "
        f"run on {dt.date.today()} in "
        f"{time.perf_counter() - started:.0f} s. Two rankers over the same snapshot and catalog: every item scored "
        f"exactly, or the candidates of the inverted-file index (faiss; defaults: {r.candidates} candidates, "
        f"the fewest probed lists that find {r.target_recall} of the exact top 10 of the {CALIBRATION} requests "
        "served before) scored exactly. Recall@10: the share of the exact top 10 the index's list holds, over the "
        "random users' requests after those, with default options; latency of one request, unloaded, one torch "
        "thread; build: the calibrated build, calibration included.\n\n"
        "| catalog | items | requests | recall@10 | lists probed | exact p50 / p99 ms | index p50 / p99 ms "
        "| index build s |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n" + compared
    )
    name = "retrieval" if args.items == 200_000 else f"retrieval-{args.items}"
    write_section(name, f"Candidate retrieval on large catalogs ({args.items:,} items, issue 18)", body)


if __name__ == "__main__":
    main()
