"""Crash safety: SIGKILL the server while events stream in, restart it, count losses.

    python benchmarks/crash.py [--runs 20] [--data /tmp/freshrec-bench-crash] [--seed 0] [--out result.json]

Each run starts ``freshrec serve`` (API and learner process) on the same store,
streams batches of 10 events with unique ``event_id`` over HTTP from a client
thread, kills the whole process group with SIGKILL at a random moment (0.5 -
3 s in), restarts the server and checks:

* every event acknowledged with a 2xx is stored (losses must be 0);
* nothing is stored twice, found as a client would: once the server is back, the
  client posts every batch again, acknowledged or not, with the same ``event_id``s.
  Each re-posted event that was already stored must be answered as a duplicate
  (``accepted`` counts the others: an acknowledged event accepted again was stored
  twice), and afterwards every event the client sent is stored;
* the learner resumed from its current checkpoint version (the first model
  version served is ``<that version>.<updates>``, not a new warm start) and
  caught up with the log.

It reports, per run and in total, the acknowledged events, losses, events stored
twice, events stored without their acknowledgement reaching the client (the kill came
between the commit and the reply: the retry reports them as duplicates), and the
recovery time (restart until ready; until the learner has caught up). The store uses
the hashing text encoder and a small synthetic catalog: what is measured is the
storage and restart path, not the model. Exit status 1 if any acknowledged event was
lost or stored twice, an event was still missing after the retry, or the learner did
not resume.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from freshrec.client import Client, FreshrecError
from harness import free_port, freshrec, wait_ready

KEY = "crash-benchmark-key-0123456789"
ENV = {
    "FRESHREC_ENCODER__MODEL": "hashing",
    "FRESHREC_ENCODER__HASHING_DIM": "32",
    "FRESHREC_MODEL__DIM": "16",
    "FRESHREC_MODEL__HISTORY_LENGTH": "8",
    "FRESHREC_LEARN__EPOCHS": "1",
    "FRESHREC_LEARN__MAX_WAIT_MS": "50",
    "FRESHREC_SERVE__ADMIN_KEYS": f'["{KEY}"]',
    # every event the server acknowledges must be stored: no repeat is dropped as a duplicate
    "FRESHREC_INGEST__REPEAT_WINDOW_S": "0",
}


def env() -> dict[str, str]:
    return {**os.environ, **ENV}


def prepare(data: Path) -> None:
    if (data / "checkpoints" / "CURRENT").is_file():
        return
    gen = data / "gen"
    for step in (
        ["generate", "--out", str(gen), "--items", "100", "--users", "30", "--events", "1000", "--seed", "5"],
        ["import", "items", str(gen / "items.jsonl")],
        ["import", "events", str(gen / "events.jsonl")],
        ["train"],
    ):
        subprocess.run(freshrec(data, *step), env=env(), check=True, capture_output=True, timeout=600)


class Server:
    def __init__(self, data: Path, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            freshrec(data, "serve", "--port", str(port)),
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the learner dies with it
        )

    def wait_ready(self) -> None:
        wait_ready(self.url, self.process, timeout=120.0)

    def status(self) -> dict[str, Any]:
        with Client(self.url, key=KEY, timeout=5.0) as c:
            return c.status()

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(timeout=120)


class Stream(threading.Thread):
    """Posts batches of 10 events until the server stops answering; remembers what was acknowledged."""

    def __init__(self, url: str, run: int, rng: random.Random):
        super().__init__(daemon=True)
        self.url, self.run_id, self.rng = url, run, rng
        self.acked: list[str] = []
        self.batches: list[list[dict[str, str]]] = []
        """Every batch posted (acknowledged or not): what a client would retry."""
        self.sent = 0

    def run(self) -> None:
        with Client(self.url, key=KEY, timeout=5.0) as c:
            n = 0
            while True:
                batch = [
                    {
                        "event_id": f"crash-{self.run_id}-{n + k}",
                        "user_id": f"u{self.rng.randrange(30):05d}",
                        "item_id": f"i{self.rng.randrange(100):06d}",
                        "type": "click",
                    }
                    for k in range(10)
                ]
                n += 10
                self.batches.append(batch)
                try:
                    c.send_events(batch)
                except FreshrecError:  # not acknowledged
                    self.sent += 10
                    continue
                except httpx.TransportError:
                    return
                self.sent += 10
                self.acked += [e["event_id"] for e in batch]


def stored_ids(data: Path, run: int) -> set[str]:
    with sqlite3.connect(f"file:{data / 'freshrec.db'}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT event_id FROM events WHERE event_id LIKE ?", (f"crash-{run}-%",)).fetchall()
    return {r[0] for r in rows}


def retry(url: str, batches: list[list[dict[str, str]]], stored: set[str], acked: set[str]) -> tuple[int, int]:
    """Post every event again, as a client retrying after the outage would, with the
    same ids. Returns (acknowledged events accepted again: stored twice, events stored
    without an acknowledgement: answered as duplicates). Events already stored are
    posted in batches of their own, so that the answer's ``accepted`` counts only them."""
    events = [e for batch in batches for e in batch]
    there = [e for e in events if e["event_id"] in stored]
    rest = [e for e in events if e["event_id"] not in stored]
    twice = unacknowledged = 0
    with Client(url, key=KEY, timeout=30.0) as c:
        for start in range(0, len(there), 500):
            chunk = there[start : start + 500]
            twice += c.send_events(chunk)["accepted"]
            unacknowledged += sum(e["event_id"] not in acked for e in chunk)
        for start in range(0, len(rest), 500):
            c.send_events(rest[start : start + 500])
    return twice, unacknowledged


def one_run(data: Path, run: int, rng: random.Random, port: int) -> dict[str, Any]:
    server = Server(data, port)
    server.wait_ready()
    stream = Stream(server.url, run, rng)
    stream.start()
    time.sleep(rng.uniform(0.5, 3.0))
    server.kill()
    stream.join(timeout=30)
    current = int((data / "checkpoints" / "CURRENT").read_text())

    restarted = time.monotonic()
    server = Server(data, port)
    try:
        server.wait_ready()
        ready_s = time.monotonic() - restarted
        first_version = server.status()["model_version"]
        deadline = time.monotonic() + 120
        while (s := server.status())["learned_offset"] < s["log_offset"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the learner did not catch up within two minutes")
            time.sleep(0.05)
        caught_up_s = time.monotonic() - restarted
        stored = stored_ids(data, run)
        acked = set(stream.acked)
        twice, unacknowledged = retry(server.url, stream.batches, stored, acked)
        missing = {e["event_id"] for batch in stream.batches for e in batch} - stored_ids(data, run)
    finally:
        server.stop()
    return {
        "run": run,
        "sent": stream.sent,
        "acknowledged": len(acked),
        "stored": len(stored),
        "lost": len(acked - stored),
        "stored_twice": twice,
        "stored_unacknowledged": unacknowledged,
        "missing_after_retry": len(missing),
        "resumed_from": current,
        "first_version": first_version,
        "resumed": str(first_version).split(".")[0] == str(current),
        "ready_s": round(ready_s, 2),
        "caught_up_s": round(caught_up_s, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--data", type=Path, default=Path("/tmp/freshrec-bench-crash"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="Also write the results as JSON here.")
    args = parser.parse_args()
    prepare(args.data)
    rng = random.Random(args.seed)
    runs = []
    for run in range(args.runs):
        result = one_run(args.data, run, rng, free_port())
        print(json.dumps(result), flush=True)
        runs.append(result)
    ready = sorted(r["ready_s"] for r in runs)
    caught = sorted(r["caught_up_s"] for r in runs)
    summary = {
        "runs": len(runs),
        "acknowledged": sum(r["acknowledged"] for r in runs),
        "lost": sum(r["lost"] for r in runs),
        "stored_twice": sum(r["stored_twice"] for r in runs),
        "stored_unacknowledged": sum(r["stored_unacknowledged"] for r in runs),
        "missing_after_retry": sum(r["missing_after_retry"] for r in runs),
        "not_resumed": sum(not r["resumed"] for r in runs),
        "ready_s_median": ready[len(ready) // 2],
        "ready_s_max": ready[-1],
        "caught_up_s_median": caught[len(caught) // 2],
        "caught_up_s_max": caught[-1],
    }
    print("summary:", json.dumps(summary), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    failed = summary["lost"] or summary["stored_twice"] or summary["missing_after_retry"] or summary["not_resumed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
