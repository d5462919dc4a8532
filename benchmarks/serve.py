"""Serving under load, freshness and model-update visibility, written into RESULTS.md.

    python benchmarks/serve.py [--data /tmp/freshrec-bench-serve] [--seconds 60] [--rps 200] [--eps 500]

1. Prepares (once, in ``DATA/prepared``; reused while it exists) a synthetic shop
   of 10,000 items and 1,000 users with 50,000 events of history, embedded with
   the configured text encoder, and warm-starts the model (``freshrec train``).
2. Copies it to ``DATA/run`` (every run starts from the same store; with ``--store``
   the prepared folder is served, and the store keeps what earlier runs added) and
   starts ``freshrec serve`` there as its own process, with API keys.
3. Load: from two separate load processes, GET recommendations at ``--rps``
   (open loop: each request's latency counts from the moment it was due, so a
   stalled server cannot hide behind a slowed-down client) while events stream
   in at ``--eps`` (batches of 10, one request each), for ``--seconds``.
4. Freshness: a user clicks their top recommendation; time from sending the
   event to the reply of the next recommendation request, which reflects it
   when its top 10 differs from the list before (both with ``exclude_seen=false``:
   the seen-items filter would drop the clicked item whatever the model did).
5. Visibility: events at 1,000/s for 30 s while ``/v1/status`` is polled every
   20 ms; for each log offset, the time from when it was stored to when the
   served model had learned it.

The section between ``<!-- serve:begin -->`` and ``<!-- serve:end -->`` in
RESULTS.md is replaced with the figures (``serve-replicas`` with ``--replicas N``,
``serve-replicas-pg`` with ``--replicas N --store postgresql://...``).

``--experiment`` serves an A/B experiment of two arms, the defaults and a history of
10 events instead of 20, learned side by side by the learner process; after both
arms serve, only the load runs, while the log's head and each model's learned offset
are sampled every half second: the ``experiment`` section of RESULTS.md.

``--soak`` instead runs only the load (by default 600 s of 100 recommendations/s
and 300 events/s) while sampling the resident memory of the API process and of
the learner process every 10 s, and reports their growth from the end of the
first minute (warm-up) to the end (the ``soak`` section of RESULTS.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from arms import EXPERIMENTING, experiment_load, write_experiment
from freshrec.bus import keys
from freshrec.client import Client
from freshrec.storage import redact
from harness import free_port, freshrec, wait_ready, write_section
from load import KEYS, event_load, learner_pid, percentiles, rss_mb, run_load


def env() -> dict[str, str]:
    return {
        **os.environ,
        "FRESHREC_SERVE__READ_KEYS": f'["{KEYS["read"]}"]',
        "FRESHREC_SERVE__WRITE_KEYS": f'["{KEYS["write"]}"]',
        "FRESHREC_SERVE__ADMIN_KEYS": f'["{KEYS["admin"]}"]',
    }


def prepare(data: Path, items: int, users: int, history: int, fresh: bool = True) -> Path:
    """The folder to serve from: the prepared shop in ``data/prepared`` (made once, then
    never served from, so it stays as made), copied to ``data/run`` for this run. Every
    run starts from the same store: a reused one grew by each earlier run's 30,000 events
    and more, its users' histories with it, and the same command's p99 drifted upwards run
    after run. Without ``fresh`` (a PostgreSQL store, which no copy of the folder resets)
    the prepared folder itself is served."""
    prepared = data / "prepared"
    if (prepared / "checkpoints" / "CURRENT").exists():
        print(f"reusing {prepared}")
    else:
        shutil.rmtree(prepared, ignore_errors=True)
        gen = data / "gen"
        subprocess.run(
            freshrec(prepared, "generate", "--out", str(gen), "--items", str(items), "--users", str(users),
                     "--events", str(history), "--days", "30"),
            check=True, env=env(),
        )  # fmt: skip
        for kind in ("items", "events"):
            subprocess.run(freshrec(prepared, "import", kind, str(gen / f"{kind}.jsonl")), check=True, env=env())
        started = time.perf_counter()
        subprocess.run(freshrec(prepared, "train"), check=True, env=env())
        print(f"warm start: {time.perf_counter() - started:.1f} s")
    if not fresh:
        return prepared
    run = data / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(prepared, run)
    return run


def soak(url: str, pid: int, args: argparse.Namespace, warmup_s: float = 60.0, every_s: float = 10.0) -> dict[str, Any]:
    """The load of :func:`run_load` while the server's memory is sampled."""
    import threading

    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(run_load(url, args)))
    started = time.monotonic()
    runner.start()
    learner = learner_pid(pid)
    samples: list[tuple[float, float, float]] = []
    while runner.is_alive():
        samples.append((time.monotonic() - started, rss_mb(pid), rss_mb(learner)))
        runner.join(timeout=every_s)
    after = [s for s in samples if s[0] >= warmup_s] or samples
    first, last = after[0], samples[-1]
    return {
        **result,
        "rss_api_mb": (round(first[1]), round(last[1]), round(max(s[1] for s in after))),
        "rss_learner_mb": (round(first[2]), round(last[2]), round(max(s[2] for s in after))),
        "growth_api": last[1] / first[1] - 1,
        "growth_learner": last[2] / first[2] - 1,
        "samples": samples,
    }


def write_soak(args: argparse.Namespace, r: dict[str, Any]) -> None:
    today = dt.date.today().isoformat()
    p50, p95, p99, top = r["latency_ms"]
    e50, e95, e99, etop = r["event_latency_ms"]
    api, learner = r["rss_api_mb"], r["rss_learner_mb"]
    command = f"python benchmarks/serve.py --soak --seconds {args.seconds:g} --rps {args.rps:g} --eps {args.eps:g}"
    body = f"""`{command}`, run on {today}: {args.seconds:g} s of {args.rps:g} recommendations/s and {args.eps:g} events/s (batches of 10).

| what | p50 | p95 | p99 | max | errors |
| --- | --- | --- | --- | --- | --- |
| GET recommendations, ms | {p50:.1f} | {p95:.1f} | {p99:.1f} | {top:.1f} | {r["errors"]} of {r["requests"]:,} |
| POST events, ms | {e50:.1f} | {e95:.1f} | {e99:.1f} | {etop:.1f} | {r["event_errors"]} of {r["event_requests"]:,} |

| process | RSS after the first minute, MB | at the end | largest | growth (target < 10%) |
| --- | --- | --- | --- | --- |
| API | {api[0]} | {api[1]} | {api[2]} | {100 * r["growth_api"]:.1f}% |
| learner | {learner[0]} | {learner[1]} | {learner[2]} | {100 * r["growth_learner"]:.1f}% |"""  # noqa: E501
    write_section("soak", "Soak (issue 6)", body)


# -- freshness and visibility -------------------------------------------------------------
def freshness(url: str, users: int, samples: int = 200) -> dict[str, Any]:
    """A user clicks their top item; the next recommendation reflects it when its top 10
    differs from the list before. ``exclude_seen=false``: with the seen-items filter
    the clicked item would drop out of the list whatever the model did."""
    rng = np.random.default_rng(3)
    times, reflected = [], 0
    with Client(url, key=KEYS["write"]) as c:
        for _ in range(samples):
            user = f"u{rng.integers(users):05d}"
            before = [i["item_id"] for i in c.recommend(user, k=10, exclude_seen=False)["items"]]
            started = time.perf_counter()
            c.send_events({"user_id": user, "item_id": before[0], "type": "click"})
            after = [i["item_id"] for i in c.recommend(user, k=10, exclude_seen=False)["items"]]
            times.append((time.perf_counter() - started) * 1000)
            reflected += after != before
    return {"samples": samples, "reflected": reflected, "ms": percentiles(times)}


def visibility(url: str, args: argparse.Namespace, seconds: float = 30.0, rate: float = 1000.0) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=event_load, args=(url, rate, seconds, args.users, args.items, 50, q))
    proc.start()
    stored_at: dict[int, float] = {}
    learned_at: dict[int, float] = {}
    last_log = last_learned = 0
    lags = []
    with Client(url, key=KEYS["read"]) as c:
        end = time.monotonic() + seconds + 5
        while time.monotonic() < end:
            s = c.status()
            now = time.monotonic()
            if s["log_offset"] > last_log:
                stored_at[s["log_offset"]] = now
                last_log = s["log_offset"]
            if s["learned_offset"] > last_learned:
                learned_at[s["learned_offset"]] = now
                last_learned = s["learned_offset"]
            lags.append(s["log_offset"] - s["learned_offset"])
            time.sleep(0.02)
    results = q.get()
    proc.join()
    learned = sorted(learned_at.items())
    delays = []
    for offset, t in stored_at.items():
        seen = next((when for o, when in learned if o >= offset), None)
        if seen is not None:
            delays.append(seen - t)
    return {
        "events": sum(status == 202 for _, status in results) * 50,
        "errors": sum(status != 202 for _, status in results),
        "seconds": percentiles(delays) if delays else (float("nan"),) * 4,
        "unlearned": len(stored_at) - len(delays),
        "lag_events_max": max(lags),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/tmp/freshrec-bench-serve"))
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--history", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rps", type=float, default=200.0)
    parser.add_argument("--eps", type=float, default=500.0)
    parser.add_argument("--no-write", action="store_true", help="Print only; leave RESULTS.md alone.")
    parser.add_argument("--load-only", action="store_true", help="Skip the freshness and visibility phases.")
    parser.add_argument("--soak", action="store_true", help="Long load with memory sampling (see above).")
    parser.add_argument(
        "--guests",
        action="store_true",
        help="Guests' requests (POST /v1/recommendations with 1-20 clicks inline) instead of stored users'; "
        "the load phase only, written into the 'guests' section.",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=0,
        help="Serve with this many API replicas on one port and a separate learner (needs Redis; see --redis).",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="The bus for --replicas.")
    parser.add_argument("--experiment", action="store_true", help="An A/B experiment of two arms (see above).")
    parser.add_argument(
        "--store",
        help="A store URL (postgresql://...?schema=bench) instead of the SQLite file in --data; "
        "use a --data folder of its own for it (its checkpoints belong to that store).",
    )
    args = parser.parse_args()
    if args.store:
        os.environ["FRESHREC_STORAGE__URL"] = args.store  # every step below: prepare, serve, replicas
    if args.soak and args.replicas:
        parser.error("--soak samples the memory of one server and its learner; leave out --replicas")
    if args.soak:
        defaults = {"seconds": 60.0, "rps": 200.0, "eps": 500.0}
        long_run = {"seconds": 600.0, "rps": 100.0, "eps": 300.0}
        for name, value in long_run.items():
            if getattr(args, name) == defaults[name]:
                setattr(args, name, value)
    args.data = prepare(args.data, args.items, args.users, args.history, fresh=not args.store)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    servers = start_servers(args, port)
    server = servers[-1]
    try:
        for proc in servers[1:] if args.replicas else servers:
            wait_ready(url, proc)
        if args.experiment:
            result = experiment_load(url, args)
            print("experiment:", result)
            if not args.no_write:
                write_experiment(args, result)
            return
        if args.soak:
            result = soak(url, server.pid, args)
            print("soak:", result)
            if not args.no_write:
                write_soak(args, result)
            return
        load = run_load(url, args)
        print("load:", load)
        if args.guests and not args.no_write:
            write_guests(args, load)
        if args.load_only or args.guests:
            return
        fresh = freshness(url, args.users)
        print("freshness:", fresh)
        visible = visibility(url, args)
        print("visibility:", visible)
    finally:
        for proc in servers:
            proc.send_signal(signal.SIGINT)
        for proc in servers:
            proc.wait(timeout=60)
    if not args.no_write:
        write(args, load, fresh, visible)


def write_guests(args: argparse.Namespace, load: dict[str, Any]) -> None:
    p50, p95, p99, top = load["latency_ms"]
    e50, _, e99, _ = load["event_latency_ms"]
    body = (
        f"`python benchmarks/serve.py --guests --seconds {args.seconds:g} --rps {args.rps:g} --eps {args.eps:g}`, "
        f"run on {dt.date.today().isoformat()}: {args.rps:g} guests' requests/s (`POST /v1/recommendations`, "
        f"an inline history of 1 to 20 clicks on items drawn by popularity, k=10) and {args.eps:g} events/s "
        f"for {args.seconds:g} s against `freshrec serve` on the {args.items:,}-item catalog.\n\n"
        "| requests | errors | p50 ms | p95 ms | p99 ms | max ms | events p50 / p99 ms |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
        f"| {load['requests']:,} | {load['errors']} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {top:.1f} "
        f"| {e50:.1f} / {e99:.1f} |\n"
    )
    write_section("guests", "Guest recommendations under load (issue 19)", body)


def start_servers(args: argparse.Namespace, port: int) -> list[subprocess.Popen[bytes]]:
    """``freshrec serve``; with ``--replicas N``, one ``--role learner`` and N ``--role api``
    replicas sharing the port (``--reuse-port``), over the same SQLite file and a Redis bus."""
    if not args.replicas:
        extra = EXPERIMENTING if args.experiment else {}
        return [subprocess.Popen(freshrec(args.data, "serve", "--port", str(port)), env={**env(), **extra})]
    prefix = "freshrec-bench-serve"
    client = redis.Redis.from_url(args.redis)
    client.delete(*keys(prefix).values())  # what an earlier run left
    client.close()
    cluster = {
        **env(),
        "FRESHREC_CLUSTER__BUS_URL": args.redis,
        "FRESHREC_CLUSTER__PREFIX": prefix,
        "FRESHREC_STORAGE__URL": args.store or f"sqlite:///{args.data.resolve() / 'freshrec.db'}",
    }
    servers = [subprocess.Popen(freshrec(args.data, "serve", "--role", "learner"), env=cluster)]
    for _ in range(args.replicas):
        servers.append(
            subprocess.Popen(
                freshrec(args.data, "serve", "--role", "api", "--port", str(port), "--reuse-port"), env=cluster
            )
        )
    return servers


def write(args: argparse.Namespace, load: dict[str, Any], fresh: dict[str, Any], visible: dict[str, Any]) -> None:
    today = dt.date.today().isoformat()
    p50, p95, p99, top = load["latency_ms"]
    e50, e95, e99, etop = load["event_latency_ms"]
    f50, f95, f99, ftop = fresh["ms"]
    v50, v95, v99, vtop = visible["seconds"]
    command = f"python benchmarks/serve.py --seconds {args.seconds:g} --rps {args.rps:g} --eps {args.eps:g}"
    store = "PostgreSQL" if args.store else "the SQLite file"
    what = "`freshrec serve` (the API process and its learner process)"
    if args.replicas:
        command += f" --replicas {args.replicas}"
        what = (
            f"{args.replicas} `freshrec serve --role api --reuse-port` replicas on one port and a"
            f" `--role learner` process, over {store} and Redis (default [cluster] cadence),"
        )
        if args.store:
            command += f" --store {redact(args.store)}"
    body = f"""`{command}`, run on {today}: {args.items:,} items, {args.users:,} users, {args.history:,} events of history;
{what} and two load processes on the same 2 cores.

| what | p50 | p95 | p99 | max | errors | target |
| --- | --- | --- | --- | --- | --- | --- |
| GET recommendations (k=10), {args.rps:g}/s for {args.seconds:g} s, open loop, ms | {p50:.1f} | {p95:.1f} | {p99:.1f} | {top:.1f} | {load["errors"]} of {load["requests"]:,} | p99 <= 25 ms, 0 errors |
| POST events meanwhile, {args.eps:g} events/s in batches of 10, ms | {e50:.1f} | {e95:.1f} | {e99:.1f} | {etop:.1f} | {load["event_errors"]} of {load["event_requests"]:,} | |
| event to the next recommendation that reflects it, ms ({fresh["reflected"]} of {fresh["samples"]} reflected) | {f50:.1f} | {f95:.1f} | {f99:.1f} | {ftop:.1f} | | reflected: all |
| stored event to served model update at 1,000 events/s, s ({visible["events"]:,} events, largest lag {visible["lag_events_max"]:,} events) | {v50:.2f} | {v95:.2f} | {v99:.2f} | {vtop:.2f} | {visible["errors"]} | <= 1 s |"""  # noqa: E501
    if args.replicas and args.store:
        write_section("serve-replicas-pg", "API replicas on PostgreSQL on one machine (issue 16)", body)
    elif args.replicas:
        write_section("serve-replicas", "Serving with API replicas on one machine (issues 5 and 7)", body)
    else:
        write_section("serve", "Serving (issue 5)", body)


if __name__ == "__main__":
    main()
