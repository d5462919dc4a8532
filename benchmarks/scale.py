"""A large shop on one machine: import, warm start, checkpoints, serving latency.

    python benchmarks/scale.py [--items 200000] [--users 5000] [--events 100000] [--data /tmp/freshrec-scale]

With the hashing encoder (the text model's speed is measured by ``encode.py``):
generates the shop (once: it is kept in ``DATA-shop-ITEMS-USERS-EVENTS+TAIL`` beside the
data folder; the log's last TAIL events are held back from the import for the load to
post), imports its items and events (timed), warm-starts the model
(``freshrec train``: time and peak RSS), then starts ``freshrec serve`` and measures
recommendation latency unloaded (500 requests, one at a time) and under 200
requests/s plus 500 events/s for 30 s, the publish figures (``/metrics``: building the
serving copy, the lag from the learner's micro-batch to the swap, snapshots whole and as
deltas), the size of a checkpoint version and of the data folder. Writes the ``scale`` section
of RESULTS.md (``scale-<items>`` for other sizes than the default), and prints each second's
p50 and p99 of the loaded requests (where the tail comes from: stalls or a slow climb).

``--warm-start-events N`` warm-starts on the log's most recent N events (the
``learn.warm_start_events`` setting). ``--reuse`` keeps the data folder of an earlier run
of the same shop and the phases it finished (their figures are in ``phases.json`` there),
runs the others and measures serving again: importing ten million events takes minutes.
``--rounds N`` runs the load N times back to back (what minutes of it do to the model the
learner serves) and reports each later round's p99. ``--sweep 200:0,100:500`` then runs
one more round at each of these requests/s and events/s (what one machine sustains, and
what the learner's events cost the requests).

``--load`` says what the load's events are: ``log`` (the default), the shop's own next
events, in order (its users go on as its log has them, and the model learns what a shop's
model learns); ``random``, clicks of uniformly random users on items drawn by a popularity
curve: noise, which over minutes moves the model's vectors apart (a stress case: its
candidate index then needs half its lists).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.client import Client
from harness import free_port, freshrec, wait_ready, write_section
from load import KEYS, learner_pid, percentiles, rss_mb, rss_parts_mb, run_load

RPS, EPS = 200.0, 500.0
"""The load: recommendations and events a second."""
EVENTS = {"log": "the shop's next events", "random": "random users' clicks"}
"""What the load's events are (``--load``)."""


def env() -> dict[str, str]:
    return {
        **os.environ,
        "FRESHREC_ENCODER__MODEL": "hashing",
        "FRESHREC_SERVE__READ_KEYS": f'["{KEYS["read"]}"]',
        "FRESHREC_SERVE__WRITE_KEYS": f'["{KEYS["write"]}"]',
    }


def timed(*command: str) -> tuple[float, float]:
    """Run ``command``; its wall time (s) and its own peak RSS (MB)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)", text, re.M)
    return float(found.group(1)) if found else 0.0


def quantile(text: str, name: str, q: float, since: str = "") -> str:
    """The histogram bucket that holds quantile ``q`` of the observations made after the
    ``/metrics`` text ``since`` was read, as the table writes it: "<= 50 ms", or "> 10000
    ms" where it is the last bucket, which has no upper bound."""

    def buckets(t: str) -> dict[float, float]:
        return {float(b): float(c) for b, c in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)', t, re.M)}

    now, then = buckets(text), buckets(since)
    counts = [(bound, count - then.get(bound, 0.0)) for bound, count in now.items()]
    total = counts[-1][1] if counts else 0.0
    n = next((n for n, (_, count) in enumerate(counts) if total and count >= q * total), None)
    if n is None:
        return "n/a"
    if math.isinf(counts[n][0]):
        return f"> {counts[n - 1][0] * 1000:.0f} ms" if n else "n/a"
    return f"<= {counts[n][0] * 1000:.0f} ms"


def published(text: str, since: str = "") -> dict[str, Any]:
    """Publish figures from the ``/metrics`` text ``text``, of the publishes after ``since``
    was read: the time to build the serving copy (mean, p50 and p99 by histogram bucket),
    the lag from the learner's micro-batch to the swap and to the snapshot's parse (before
    the publisher's wait and build), and the snapshots received whole
    and as deltas with their mean sizes."""

    def grown(name: str) -> float:
        return metric(text, name) - metric(since, name)

    build, lag = "freshrec_model_publish_seconds", "freshrec_model_publish_lag_seconds"
    count = grown(f"{build}_count")
    out = {"count": count, "mean": grown(f"{build}_sum") / max(count, 1)}
    received = "freshrec_model_receive_lag_seconds"
    out["received_mean"] = grown(f"{received}_sum") / max(grown(f"{received}_count"), 1)
    out["lag_mean"] = grown(f"{lag}_sum") / max(grown(f"{lag}_count"), 1)
    for q in (0.5, 0.99):
        out[f"p{round(q * 100)}"] = quantile(text, build, q, since)
        out[f"lag_p{round(q * 100)}"] = quantile(text, lag, q, since)
        out[f"received_p{round(q * 100)}"] = quantile(text, received, q, since)
    for kind in ("whole", "delta"):
        n = grown(f'freshrec_model_snapshots_received_total{{kind="{kind}"}}')
        out[kind] = n
        out[f"{kind}_mb"] = grown(f'freshrec_model_snapshot_bytes_total{{kind="{kind}"}}') / max(n, 1) / 2**20
    return out


def metrics_text(url: str) -> str:
    with Client(url) as c:
        return c.metrics()


def prepare(args: argparse.Namespace, gen: Path) -> dict[str, float]:
    """Import the shop and warm-start the model; each phase's figures are kept in
    ``phases.json`` as it ends, and with ``--reuse`` a phase already there is not run again."""
    phases = args.data / "phases.json"
    if not (args.reuse and phases.exists()):
        shutil.rmtree(args.data, ignore_errors=True)
        args.data.mkdir(parents=True)
        phases.write_text("{}")
    figures: dict[str, float] = json.loads(phases.read_text())
    steps = {
        "import_items_s": ("import", "items", str(gen / "items.jsonl")),
        "import_events_s": ("import", "events", str(gen / "events.jsonl")),
        "warm_s": ("train",),
    }
    for name, command in steps.items():
        if name not in figures:
            figures[name], figures[name.replace("_s", "_rss_mb")] = timed(*freshrec(args.data, *command))
            phases.write_text(json.dumps(figures))
    return figures


def wait_for_index(url: str, items: int, timeout: float) -> float:
    """Seconds until the server's candidate index holds the catalog (large catalogs only)."""
    started = time.monotonic()
    with Client(url) as c:
        while metric(c.metrics(), "freshrec_candidate_index_items") < items * 0.99:
            if time.monotonic() - started > timeout:
                raise RuntimeError("the candidate index was not built in time")
            time.sleep(1.0)
    return time.monotonic() - started


def hold_back(events: Path, keep: int, tail: Path) -> None:
    """Keep the first ``keep`` lines of ``events`` there and move the rest to ``tail``."""
    kept = events.with_suffix(".head")
    with events.open() as fh, kept.open("w") as head, tail.open("w") as rest:
        head.writelines(itertools.islice(fh, keep))
        rest.writelines(fh)
    kept.replace(events)


def seconds(load: dict[str, Any]) -> str:
    """Each second's p50 / p99 of a load (where a round's tail comes from: a few seconds, or all)."""
    return ", ".join(f"{a:.0f}/{b:.0f}" for a, b in load["each_second_ms"])


def shares(cores: dict[str, float]) -> str:
    """The cores each process used during a round, as the table shows them."""
    return " / ".join(f"{c:.2f}" for c in cores.values())


def round_args(args: argparse.Namespace, n: int, rps: float = RPS, eps: float = EPS) -> argparse.Namespace:
    """The load of round ``n`` (from 0; the sweep's rounds follow the others): its own
    events, random (seeded by the round) or the log's next ones."""
    rates = [(RPS, EPS)] * args.rounds + args.sweep
    posted = sum(e for _, e in rates[:n]) * args.seconds  # the log's events the rounds before posted
    return argparse.Namespace(
        rps=rps, eps=eps, seconds=args.seconds, users=args.users, items=args.items, seed=2 + n,
        log=(args.log, int(posted)) if args.log else None,
    )  # fmt: skip


def rates(text: str) -> list[tuple[float, float]]:
    """``--sweep``'s ``RPS:EPS`` pairs."""
    try:
        return [(float(r), float(e)) for r, e in (pair.split(":") for pair in text.split(",") if pair)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected RPS:EPS pairs separated by commas, got {text!r}") from None


def swept(url: str, args: argparse.Namespace, watch: dict[str, int]) -> list[str]:
    """One round at each of ``--sweep``'s rates, after the others: each one's line of the table."""
    out = []
    for n, (rps, eps) in enumerate(args.sweep, start=args.rounds):
        before = metrics_text(url)
        load = run_load(url, round_args(args, n, rps, eps), watch)
        p50, _, p99, _ = load["latency_ms"]
        out.append(
            f"{rps:.0f} req/s + {eps:.0f} events/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({load['errors']} errors; "
            f"{shares(load['cores'])}; {index_work(before, url)})"
        )
        print(f"sweep: {out[-1]}\n  each second, p50 / p99 ms: {seconds(load)}", flush=True)
    return out


def index_work(before: str, url: str) -> str:
    """The candidate index's builds and rows coded anew, and the whole snapshots served (each
    brings a newer item tower, which the index's rows lack), since the ``/metrics`` text
    ``before``."""
    after = metrics_text(url)
    builds, rows = ("freshrec_candidate_index_builds", "freshrec_candidate_index_updated_rows")
    whole = 'freshrec_model_snapshots_received_total{kind="whole"}'
    return (
        f"index builds {metric(after, builds) - metric(before, builds):.0f}, "
        f"rows coded anew {metric(after, rows) - metric(before, rows):,.0f}, "
        f"whole snapshots {metric(after, whole) - metric(before, whole):.0f}"
    )


def later_rounds(url: str, args: argparse.Namespace, watch: dict[str, int]) -> list[tuple[float, int, str]]:
    """The p99 (ms) of the answered recommendations and the requests refused (503: the
    server shed them, over capacity) of each round of the load after the first, until
    ``--rounds`` or one whose p99 passes ten seconds (the server fell behind: the next
    would only take longer). Each round posts other events than the rounds before (a
    round that repeated them had the learner learn the same random clicks again and
    again)."""
    out: list[tuple[float, int, str]] = []
    for n in range(1, args.rounds):
        before = metrics_text(url)
        load = run_load(
            url,
            round_args(args, n),
            watch,
        )
        out.append((load["latency_ms"][2], load["errors"], f"{shares(load['cores'])}; {index_work(before, url)}"))
        print(f"round {n + 1}: p50 / p99 {load['latency_ms'][0]:.1f} / {load['latency_ms'][2]:.1f} ms, "
              f"{load['errors']} errors, cores {load['cores']}, {index_work(before, url)}", flush=True)  # fmt: skip
        print(f"  each second, p50 / p99 ms: {seconds(load)}", flush=True)
        if out[-1][0] > 10_000:
            break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--data", type=Path, default=Path("/tmp/freshrec-scale"))
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warm-start-events", type=int, default=None)
    parser.add_argument("--reuse", action="store_true", help="serve the data folder of an earlier run again")
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds of the load, back to back (the first is the table's)"
    )
    parser.add_argument(
        "--load", choices=["log", "random"], default="log",
        help="the events the load posts: the shop's own, held back from its import, or random users' clicks",
    )  # fmt: skip
    parser.add_argument(
        "--sweep", type=rates, default=[], help="RPS:EPS pairs, one more round at each rate after the others"
    )
    args = parser.parse_args()
    args.log = None
    if args.warm_start_events:
        os.environ["FRESHREC_LEARN__WARM_START_EVENTS"] = str(args.warm_start_events)
    # the generated shop is kept beside the data folder: generating 200,000 items' events takes minutes
    # a round posts a batch more than its seconds' worth
    tail = int((args.seconds + 1) * (EPS * args.rounds + sum(e for _, e in args.sweep)))
    gen = args.data.parent / f"{args.data.name}-shop-{args.items}-{args.users}-{args.events}+{tail}"
    if not (gen / "tail.jsonl").exists():
        subprocess.run(
            freshrec(args.data, "generate", "--out", str(gen), "--items", str(args.items), "--users", str(args.users),
                     "--events", str(args.events + tail), "--days", "30"),
            check=True, env=env(), stdout=subprocess.DEVNULL,
        )  # fmt: skip
        hold_back(gen / "events.jsonl", args.events, gen / "tail.jsonl")
    if args.load == "log":
        args.log = gen / "tail.jsonl"
    figures = prepare(args, gen)
    checkpoint = max(p.stat().st_size for p in (args.data / "checkpoints").glob("*.state")) / 2**20
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    server = subprocess.Popen(freshrec(args.data, "serve", "--port", str(port)), env=env())
    try:
        wait_ready(url, server, timeout=1800)
        ready = time.monotonic() - started
        index = wait_for_index(url, args.items, timeout=1800) if args.items >= 20_000 else 0.0
        rng = np.random.default_rng(0)
        unloaded = []
        with Client(url, key=KEYS["read"]) as client:
            for user in rng.integers(0, args.users, 500):
                started = time.perf_counter()
                client.recommend(f"u{user:05d}", k=10)
                unloaded.append((time.perf_counter() - started) * 1000)
        before = metrics_text(url)
        watch = {"API": server.pid, "learner": learner_pid(server.pid)}
        memory = {name: [rss_parts_mb(pid)] for name, pid in watch.items()}
        load = run_load(
            url,
            round_args(args, 0),
            watch,
        )
        after = metrics_text(url)
        first = index_work(before, url)
        print(f"each second of the load, p50 / p99 ms: {seconds(load)}")
        print(f"round 1: {first}", flush=True)
        later = later_rounds(url, args, watch)
        sweep = swept(url, args, watch)
        spikes = metric(metrics_text(url), "freshrec_reverted_spikes_total")
        publish, since_start = published(after, before), published(after)
        api_mb, learner_mb = rss_mb(watch["API"]), rss_mb(watch["learner"])
        for name, pid in watch.items():
            memory[name].append(rss_parts_mb(pid))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=180)
    p_un = percentiles(unloaded)
    p_load = load["latency_ms"]
    limit = f" --warm-start-events {args.warm_start_events}" if args.warm_start_events else ""
    body = (
        f"`python benchmarks/scale.py --items {args.items} --users {args.users} --events {args.events}{limit}"
        f"{f' --seconds {args.seconds:g}' if args.seconds != 30 else ''}"
        f"{f' --rounds {args.rounds}' if args.rounds > 1 else ''}{' --load random' if args.load == 'random' else ''}"
        f"{' --sweep ' + ','.join(f'{r:.0f}:{e:.0f}' for r, e in args.sweep) if args.sweep else ''}`, "
        f"run on {dt.date.today()}, hashing encoder, default settings otherwise.\n\n"
        "| figure | value |\n| --- | --- |\n"
        f"| import items / events | {figures['import_items_s']:.1f} s / {figures['import_events_s']:.1f} s |\n"
        f"| warm start (`freshrec train`) | {figures['warm_s']:.1f} s, peak RSS {figures['warm_rss_mb']:,.0f} MB |\n"
        f"| checkpoint version | {checkpoint:,.1f} MB |\n"
        f"| `freshrec serve` start: ready / candidate index built | {ready:.1f} s / {ready + index:.1f} s |\n"
        f"| recommendation, unloaded (500, one at a time) | p50 {p_un[0]:.1f} ms, p99 {p_un[2]:.1f} ms |\n"
        f"| recommendation under 200 req/s + 500 events/s ({EVENTS[args.load]}) for {args.seconds:.0f} s | "
        f"p50 {p_load[0]:.1f} ms, "
        f"p99 {p_load[2]:.1f} ms, {load['errors']} errors of {load['requests']:,} |\n"
        f"| cores used meanwhile: API / learner / load generator | {shares(load['cores'])} |\n"
        f"| candidate index meanwhile | {first} |\n"
        f"| event posts (10 events each) under that load | p50 {load['event_latency_ms'][0]:.1f} ms, "
        f"p99 {load['event_latency_ms'][2]:.1f} ms, {load['event_errors']} errors of {load['event_requests']:,} |\n"
        + "".join(
            f"| publish ({when}): building the serving copy | mean {p['mean'] * 1000:.0f} ms, "
            f"p50 {p['p50']}, p99 {p['p99']} over {p['count']:,.0f} publishes |\n"
            f"| publish ({when}): end of a micro-batch to serving's swap (of it, to the snapshot parsed) | mean "
            f"{p['lag_mean'] * 1000:.0f} ms, p50 {p['lag_p50']}, p99 {p['lag_p99']} (mean "
            f"{p['received_mean'] * 1000:.0f} ms, p50 {p['received_p50']}, p99 {p['received_p99']}) |\n"
            f"| snapshots received ({when}) whole / as deltas | {p['whole']:,.0f} of {p['whole_mb']:.1f} MB / "
            f"{p['delta']:,.0f} of {p['delta_mb']:.2f} MB (means) |\n"
            for when, p in (("under the load", publish), ("since the server started", since_start))
        )
        + (
            f"| {len(later)} later rounds of that load, back to back: recommendation p99 each (errors; cores "
            f"used by the API / learner / load generator; the candidate index's builds and rows coded anew, "
            "whole snapshots) | "
            f"{', '.join(f'{p99:,.1f} ms ({errors}; {cores})' for p99, errors, cores in later)} |\n"
            if later
            else ""
        )
        + (
            "| then a round at each rate: recommendation p50 and p99 (errors; cores used by the API / learner / "
            f"load generator; the candidate index's work) | {'; '.join(sweep)} |\n"
            if sweep
            else ""
        )
        + f"| loss spikes the learner reverted since the server started | {spikes:,.0f} |\n"
        + f"| memory after the load: API / learner process (RSS) | {api_mb:,.0f} MB / {learner_mb:,.0f} MB |\n"
        + "".join(
            f"| {name} process's RSS before / after the load: anonymous, mapped files, shared | "
            f"{' / '.join(', '.join(f'{mb:,.0f}' for mb in parts) + ' MB' for parts in memory[name])} |\n"
            for name in memory
        )
        + f"| data folder after the run | {size_mb(args.data):,.0f} MB |\n"
    )
    name = "scale" if args.items == 200_000 else f"scale-{args.items}"
    write_section(name, f"A large shop on one machine ({args.items:,} items, issue 18)", body)


if __name__ == "__main__":
    main()
