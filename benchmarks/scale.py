"""A large shop on one machine: import, warm start, checkpoints, serving latency.

    python benchmarks/scale.py [--items 200000] [--users 5000] [--events 100000] [--data /tmp/freshrec-scale]

With the hashing encoder (the text model's speed is measured by ``encode.py``):
generates the shop (once: it is kept in ``DATA-shop-ITEMS-USERS-EVENTS`` beside the
data folder), imports its items and events (timed), warm-starts the model
(``freshrec train``: time and peak RSS), then starts ``freshrec serve`` and measures
recommendation latency unloaded (500 requests, one at a time) and under 200
requests/s plus 500 events/s for 30 s, the publish figures (``/metrics``: building the
serving copy, the lag from the learner's micro-batch to the swap, snapshots whole and as
deltas), the size of a checkpoint version and of the data folder. Writes the ``scale`` section
of RESULTS.md (``scale-<items>`` for other sizes than the default).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from freshrec.client import Client
from harness import free_port, freshrec, wait_ready, write_section
from load import KEYS, percentiles, run_load


def env() -> dict[str, str]:
    return {
        **os.environ,
        "FRESHREC_ENCODER__MODEL": "hashing",
        "FRESHREC_SERVE__READ_KEYS": f'["{KEYS["read"]}"]',
        "FRESHREC_SERVE__WRITE_KEYS": f'["{KEYS["write"]}"]',
    }


def timed(*command: str) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)", text, re.M)
    return float(found.group(1)) if found else 0.0


def quantile(text: str, name: str, q: float) -> float:
    """The upper bound of the histogram bucket that holds quantile ``q`` (seconds)."""
    buckets = [(float(b), float(c)) for b, c in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)', text, re.M)]
    total = buckets[-1][1] if buckets else 0.0
    return next((bound for bound, count in buckets if count >= q * total), float("nan"))


def published(url: str) -> dict[str, float]:
    """Publish figures from ``/metrics``: the time to build the serving copy (mean, p50 and
    p99 by histogram bucket), the lag from the learner's micro-batch to the swap, and the
    snapshots received whole and as deltas with their mean sizes."""
    with Client(url) as c:
        text = c.metrics()
    build, lag = "freshrec_model_publish_seconds", "freshrec_model_publish_lag_seconds"
    count = metric(text, f"{build}_count")
    out = {"count": count, "mean": metric(text, f"{build}_sum") / max(count, 1)}
    for q in (0.5, 0.99):
        out[f"p{round(q * 100)}"], out[f"lag_p{round(q * 100)}"] = quantile(text, build, q), quantile(text, lag, q)
    for kind in ("whole", "delta"):
        n = metric(text, f'freshrec_model_snapshots_received_total{{kind="{kind}"}}')
        out[kind] = n
        out[f"{kind}_mb"] = metric(text, f'freshrec_model_snapshot_bytes_total{{kind="{kind}"}}') / max(n, 1) / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--data", type=Path, default=Path("/tmp/freshrec-scale"))
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    shutil.rmtree(args.data, ignore_errors=True)
    # the generated shop is kept beside the data folder: generating 200,000 items' events takes minutes
    gen = args.data.parent / f"{args.data.name}-shop-{args.items}-{args.users}-{args.events}"
    if not (gen / "events.jsonl").exists():
        subprocess.run(
            freshrec(args.data, "generate", "--out", str(gen), "--items", str(args.items), "--users", str(args.users),
                     "--events", str(args.events), "--days", "30"),
            check=True, env=env(), stdout=subprocess.DEVNULL,
        )  # fmt: skip
    import_items = timed(*freshrec(args.data, "import", "items", str(gen / "items.jsonl")))
    import_events = timed(*freshrec(args.data, "import", "events", str(gen / "events.jsonl")))
    warm = timed(*freshrec(args.data, "train"))
    warm_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    checkpoint = max(p.stat().st_size for p in (args.data / "checkpoints").glob("*.state")) / 2**20
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(freshrec(args.data, "serve", "--port", str(port)), env=env())
    try:
        wait_ready(url, server, timeout=900)
        time.sleep(max(5.0, args.items / 5_000))  # the candidate index is built in the background (35 s at 200,000)
        rng = np.random.default_rng(0)
        unloaded = []
        with Client(url, key=KEYS["read"]) as client:
            for user in rng.integers(0, args.users, 500):
                started = time.perf_counter()
                client.recommend(f"u{user:05d}", k=10)
                unloaded.append((time.perf_counter() - started) * 1000)
        load = run_load(
            url, argparse.Namespace(rps=200.0, eps=500.0, seconds=args.seconds, users=args.users, items=args.items)
        )
        publish = published(url)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=180)
    p_un = percentiles(unloaded)
    p_load = load["latency_ms"]
    body = (
        f"`python benchmarks/scale.py --items {args.items} --users {args.users} --events {args.events}`, run on "
        f"{dt.date.today()}, hashing encoder, default settings otherwise.\n\n"
        "| figure | value |\n| --- | --- |\n"
        f"| import items / events | {import_items:.1f} s / {import_events:.1f} s |\n"
        f"| warm start (`freshrec train`) | {warm:.1f} s, peak RSS {warm_rss:,.0f} MB |\n"
        f"| checkpoint version | {checkpoint:,.1f} MB |\n"
        f"| recommendation, unloaded (500, one at a time) | p50 {p_un[0]:.1f} ms, p99 {p_un[2]:.1f} ms |\n"
        f"| recommendation under 200 req/s + 500 events/s for {args.seconds:.0f} s | p50 {p_load[0]:.1f} ms, "
        f"p99 {p_load[2]:.1f} ms, {load['errors']} errors of {load['requests']:,} |\n"
        f"| publish: building the serving copy | mean {publish['mean'] * 1000:.0f} ms, "
        f"p50 <= {publish['p50'] * 1000:.0f} ms, p99 <= {publish['p99'] * 1000:.0f} ms "
        f"over {publish['count']:,.0f} publishes |\n"
        f"| publish: end of a micro-batch to serving's swap | p50 <= {publish['lag_p50'] * 1000:.0f} ms, "
        f"p99 <= {publish['lag_p99'] * 1000:.0f} ms |\n"
        f"| snapshots received whole / as deltas | {publish['whole']:,.0f} of {publish['whole_mb']:.1f} MB / "
        f"{publish['delta']:,.0f} of {publish['delta_mb']:.2f} MB (means) |\n"
        f"| data folder after the run | {size_mb(args.data):,.0f} MB |\n"
    )
    name = "scale" if args.items == 200_000 else f"scale-{args.items}"
    write_section(name, f"A large shop on one machine ({args.items:,} items, issue 18)", body)


if __name__ == "__main__":
    main()
