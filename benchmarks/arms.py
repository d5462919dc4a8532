"""``python benchmarks/serve.py --experiment``: two experiment arms under load (see serve.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import threading
import time
from typing import Any

import numpy as np

from freshrec.client import Client
from harness import write_section
from load import KEYS, run_load

EXPERIMENT_ARMS = '{"control": {"share": 0.5}, "short": {"share": 0.5, "model": {"history_length": 10}}}'
EXPERIMENTING = {"FRESHREC_EXPERIMENT__NAME": "history", "FRESHREC_EXPERIMENT__ARMS": EXPERIMENT_ARMS}


def experiment_load(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Wait until both arms serve and follow the log (the second arm's warm start runs in
    the server's learner process, and publishes on the way), then the load of
    :func:`run_load` while each model's lag behind the log is sampled; then how long
    each takes to learn the whole log."""

    def settled(summary: dict[str, Any]) -> bool:
        own = [row for row in summary["arms"].values() if row["own_model"]]
        return bool(summary["serving_arms"]) and all(row["learner"] == "following" for row in own)

    with Client(url, key=KEYS["read"]) as c:
        started = time.monotonic()
        while not settled(c.experiment("history")):
            time.sleep(1.0)
        arms_ready_s = time.monotonic() - started
        before = {arm: row["lists"] for arm, row in c.experiment("history")["arms"].items()}  # earlier runs'
        result: dict[str, Any] = {}
        runner = threading.Thread(target=lambda: result.update(run_load(url, args)))
        runner.start()
        lags: dict[str, list[int]] = {"control": [], "short": []}
        while runner.is_alive():
            head = c.status()["log_offset"]
            for arm, row in c.experiment("history")["arms"].items():
                lags[arm].append(head - (row["learned_offset"] or 0))
            runner.join(timeout=0.5)
        end = c.status()["log_offset"]
        caught_up: dict[str, float] = {}
        ended = time.monotonic()
        while len(caught_up) < 2 and time.monotonic() - ended < 120:
            for arm, row in c.experiment("history")["arms"].items():
                if arm not in caught_up and (row["learned_offset"] or 0) >= end:
                    caught_up[arm] = time.monotonic() - ended
            time.sleep(0.1)
        summary = c.experiment("history")
    return {
        **result,
        "arms_ready_s": arms_ready_s,
        "lag_events": {arm: (int(np.median(v)), max(v)) for arm, v in lags.items()},
        "caught_up_s": caught_up,
        "lists": {arm: row["lists"] - before[arm] for arm, row in summary["arms"].items()},
    }


def write_experiment(args: argparse.Namespace, r: dict[str, Any]) -> None:
    today = dt.date.today().isoformat()
    p50, p95, p99, top = r["latency_ms"]
    e50, _, e99, _ = r["event_latency_ms"]
    command = (
        f"python benchmarks/serve.py --experiment --seconds {args.seconds:g} --rps {args.rps:g} --eps {args.eps:g}"
    )
    rows = "\n".join(
        f"| {arm} | {r['lists'][arm]:,} | {lag[0]:,} | {lag[1]:,} | "
        + (f"{r['caught_up_s'][arm]:.1f} s" if arm in r["caught_up_s"] else "not within 120 s")
        + " |"
        for arm, lag in r["lag_events"].items()
    )
    body = f"""`{command}`, run on {today}: an experiment of two arms (the defaults, and `history_length = 10`), each learned online by the learner process beside `freshrec serve`, on the 10,000-item shop; {args.rps:g} recommendations/s and {args.eps:g} events/s for {args.seconds:g} s once both arms served and followed the log ({r["arms_ready_s"]:.0f} s after the server answered: the second arm's warm start, or its resumption from its checkpoint).

| requests | errors | p50 ms | p95 ms | p99 ms | max ms | events p50 / p99 ms |
| --- | --- | --- | --- | --- | --- | --- |
| {r["requests"]:,} | {r["errors"]} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {top:.1f} | {e50:.1f} / {e99:.1f} |

| arm | lists served | lag behind the log, median (events) | largest | all learned after the load ended |
| --- | --- | --- | --- | --- |
{rows}"""  # noqa: E501
    write_section("experiment", "Two experiment arms under load (issue 20)", body)
