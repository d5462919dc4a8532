"""Two API replicas and one learner over PostgreSQL and Redis, written into RESULTS.md.

    python benchmarks/cluster.py [--seconds 20] [--postgres URL] [--redis URL]

1. Prepares a fresh store in its own PostgreSQL schema (``freshrec_bench`` in the
   database ``test`` by default; dropped first) with a synthetic shop of
   10,000 items, 1,000 users and 50,000 events of history. Items are embedded
   by the hashing encoder at 384 dimensions (the width of all-MiniLM-L6-v2, so
   the model and its snapshots have their real size; what is measured is
   ingest, the bus and publication, not the language model).
2. Starts ``freshrec serve --role learner`` and two ``freshrec serve --role api``
   replicas, each a process with a data folder of its own; the learner
   warm-starts from the log.
3. Ingest: two load processes, one per replica, each posting batches of 100
   events from 4 connections as fast as they are acknowledged, for
   ``--seconds``. Reports acknowledged events/s through both replicas, the
   learner's lag (log offset minus learned offset, sampled every 0.5 s) and
   how long it took to catch up after the load stopped.
4. Propagation: 200 events/s through both replicas for ``--seconds`` while
   both replicas' ``/v1/status`` is polled every 20 ms; for each model version,
   the time from its creation in the learner to the first poll that finds it
   served by each replica.

Everything, PostgreSQL and Redis included, shares the machine's cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import redis

from freshrec.bus import keys
from freshrec.client import Client, FreshrecError
from harness import free_port, freshrec, wait_ready, write_section

ENV = {
    "FRESHREC_ENCODER__MODEL": "hashing",
    "FRESHREC_ENCODER__HASHING_DIM": "384",
    "FRESHREC_CLUSTER__PREFIX": "freshrec-bench",
}


def prepare(data: Path, env: dict[str, str], args: argparse.Namespace) -> None:
    shutil.rmtree(data, ignore_errors=True)  # a checkpoint left by an earlier run belongs to the dropped store
    conninfo, schema = args.postgres.split("?schema=")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")  # type: ignore[arg-type]
    client = redis.Redis.from_url(args.redis)
    # the streams, and the snapshot an earlier run's learner left (it belongs to the dropped store)
    client.delete(*keys(ENV["FRESHREC_CLUSTER__PREFIX"]).values())
    client.close()
    gen = data / "gen"
    for step in (
        ["generate", "--out", str(gen), "--items", "10000", "--users", "1000", "--events", "50000", "--seed", "7"],
        ["import", "items", str(gen / "items.jsonl")],
        ["import", "events", str(gen / "events.jsonl")],
    ):
        subprocess.run(freshrec(data / "setup", *step), env=env, check=True, capture_output=True)


def post_load(url: str, seconds: float, rate: float | None, seed: int, out: Any) -> None:
    """Batches of 100 events: from 4 connections as fast as acknowledged, or at ``rate`` events/s."""
    rng = np.random.default_rng(seed)
    acked, errors = 0, 0
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def worker(n: int) -> None:
        nonlocal acked, errors
        with Client(url, timeout=30.0) as c:
            due = time.monotonic()
            while time.monotonic() < end:
                batch = [
                    {"user_id": f"u{rng.integers(1000):05d}", "item_id": f"i{rng.integers(10000):06d}", "type": "click"}
                    for _ in range(100)
                ]
                try:
                    accepted = c.send_events(batch)["accepted"]
                except FreshrecError:
                    accepted = -1
                with lock:
                    if accepted >= 0:
                        acked += accepted
                    else:
                        errors += 1
                if rate is not None:
                    due += 100 / rate
                    time.sleep(max(due - time.monotonic(), 0))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4 if rate is None else 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((acked, errors))


def status(c: Client) -> dict[str, Any]:
    return c.status()


def ingest(urls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=post_load, args=(u, args.seconds, None, n, q)) for n, u in enumerate(urls)]
    lags: list[int] = []
    with Client(urls[0]) as c:
        before = status(c)["log_offset"]
        started = time.monotonic()
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            s = status(c)
            lags.append(s["log_offset"] - s["learned_offset"])
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        results = [q.get() for _ in procs]
        stopped = time.monotonic()
        head = status(c)["log_offset"]
        while status(c)["learned_offset"] < head:
            time.sleep(0.05)
        drain = time.monotonic() - stopped
        after = status(c)["log_offset"]
    acked = sum(a for a, _ in results)
    return {
        "acked": acked,
        "errors": sum(e for _, e in results),
        "events_per_s": acked / elapsed,
        "stored": after - before,
        "lag_p50": float(np.percentile(lags, 50)),
        "lag_max": max(lags),
        "drain_s": drain,
    }


def propagation(urls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=post_load, args=(u, args.seconds, 100.0, 10 + n, q)) for n, u in enumerate(urls)]
    delays: list[float] = []
    clients = [Client(u) for u in urls]
    seen: list[set[str]] = [set() for _ in urls]
    for p in procs:
        p.start()
    while any(p.is_alive() for p in procs):
        for n, c in enumerate(clients):
            s = status(c)
            if s["model_version"] not in seen[n]:
                seen[n].add(s["model_version"])
                delays.append(time.time() - s["model_created"])
        time.sleep(0.02)
    posted = [q.get() for _ in procs]
    for c in clients:
        c.close()
    return {
        "events": sum(a for a, _ in posted),
        "errors": sum(e for _, e in posted),
        "versions": len(seen[0] | seen[1]),
        "p50": float(np.percentile(delays, 50)),
        "p95": float(np.percentile(delays, 95)),
        "max": max(delays),
        "samples": len(delays),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/tmp/freshrec-bench-cluster"))
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test?schema=freshrec_bench")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--no-write", action="store_true", help="Print only; leave RESULTS.md alone.")
    args = parser.parse_args()
    env = {**os.environ, **ENV, "FRESHREC_STORAGE__URL": args.postgres, "FRESHREC_CLUSTER__BUS_URL": args.redis}
    prepare(args.data, env, args)
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    learner = subprocess.Popen(freshrec(args.data / "learner", "serve", "--role", "learner"), env=env)
    replicas = [
        subprocess.Popen(
            freshrec(args.data / f"api{n}", "serve", "--role", "api", "--port", str(p), "--insecure-no-auth"), env=env
        )
        for n, p in enumerate(ports)
    ]
    try:
        started = time.monotonic()
        for url, proc in zip(urls, replicas, strict=True):
            wait_ready(url, proc, timeout=900)
        print(f"warm start and both replicas ready in {time.monotonic() - started:.0f} s")
        load = ingest(urls, args)
        print("ingest:", load)
        spread = propagation(urls, args)
        print("propagation:", spread)
    finally:
        for proc in [*replicas, learner]:
            proc.send_signal(signal.SIGTERM)
        for proc in [*replicas, learner]:
            proc.wait(timeout=120)
    if not args.no_write:
        write(args, load, spread)


def write(args: argparse.Namespace, load: dict[str, Any], spread: dict[str, Any]) -> None:
    today = dt.date.today().isoformat()
    body = f"""`python benchmarks/cluster.py --seconds {args.seconds:g}`, run on {today}: PostgreSQL 15 and Redis 7 on
127.0.0.1, one learner and two API replicas as separate processes, load from two more processes, all on the same
2 cores; 10,000 items, 1,000 users, 50,000 events of history (hashing encoder, 384 dimensions).

| what | result |
| --- | --- |
| events acknowledged through two replicas (batches of 100, 4 connections each) | {load["events_per_s"]:,.0f} events/s ({load["acked"]:,} in {args.seconds:g} s, {load["errors"]} errors; {load["stored"]:,} stored) |
| learner lag meanwhile (log offset minus learned offset) | median {load["lag_p50"]:,.0f} events, max {load["lag_max"]:,} |
| learner catch-up after the load stopped | {load["drain_s"]:.1f} s |
| model version propagation, learner to each replica, at 200 events/s | p50 {spread["p50"]:.2f} s, p95 {spread["p95"]:.2f} s, max {spread["max"]:.2f} s ({spread["samples"]} sightings of {spread["versions"]} versions; {spread["events"]:,} events posted meanwhile, {spread["errors"]} errors; target <= 2 s) |"""  # noqa: E501
    write_section("cluster", "Beyond one machine (issue 7)", body)


if __name__ == "__main__":
    main()
