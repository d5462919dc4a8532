"""Load for ``benchmarks/serve.py``: an HTTP/1.1 client that keeps its own
connection, open-loop request and event streams in separate processes, and the
processes' memory.

Open loop: each request's latency counts from the moment it was due, so a
stalled server cannot hide behind a slowed-down client.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import multiprocessing as mp
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

KEYS = {"read": "bench-read-key-0000000", "write": "bench-write-key-000000", "admin": "bench-admin-key-000000"}


def percentiles(values: list[float]) -> tuple[float, float, float, float]:
    a = np.asarray(values)
    return tuple(float(x) for x in (np.percentile(a, 50), np.percentile(a, 95), np.percentile(a, 99), a.max()))  # type: ignore[return-value]


# -- load processes ---------------------------------------------------------------------
class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    httpx costs a few milliseconds of CPU per request here, so at 200 requests/s
    it measured itself more than the server; this costs tens of microseconds,
    like wrk, and leaves the cores to the server.
    """

    def __init__(self, url: str, headers: dict[str, str], connections: int = 64):
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self.connections = connections
        self.opened = 0

    async def open(self, n: int) -> None:
        """Open ``n`` connections up front, as a load balancer holds them: with several
        API replicas on one port, the kernel spreads connections, not requests."""
        for _ in range(min(n, self.connections) - self.opened):
            self.opened += 1
            self.free.put_nowait(await asyncio.open_connection(self.host, self.port))

    async def request(self, method: str, path: str, body: bytes = b"") -> int:
        if self.free.empty() and self.opened < self.connections:
            self.opened += 1
            self.free.put_nowait(await asyncio.open_connection(self.host, self.port))
        reader, writer = await self.free.get()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.extra}"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        header = await reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        length = int(re.search(rb"(?i)content-length: *(\d+)", header).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        self.free.put_nowait((reader, writer))
        return status


async def _open_loop(
    url: str, rate: float, seconds: float, request: Any, headers: dict[str, str]
) -> list[tuple[float, int]]:
    loop = asyncio.get_running_loop()
    client = RawClient(url, headers)
    await client.open(16)
    start = loop.time() + 0.2

    async def one(n: int, due: float) -> tuple[float, int]:
        try:
            status = await request(client, n)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            status = 0
        return loop.time() - due, status

    tasks = []
    for n in range(int(rate * seconds)):
        due = start + n / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        tasks.append(asyncio.create_task(one(n, due)))
    return list(await asyncio.gather(*tasks))


def recommend_load(url: str, rate: float, seconds: float, users: int, out: Any, guest_items: int = 0) -> None:
    """Stored users' requests; with ``guest_items``, guests' (``POST /v1/recommendations``
    with an inline history of 1 to 20 clicks on items drawn by popularity)."""
    rng = np.random.default_rng(1)
    picks = rng.integers(0, users, size=int(rate * seconds) + 1)
    bodies: list[bytes] = []
    if guest_items:
        popularity = 1.0 / (1.0 + np.arange(guest_items)) ** 0.8
        for _ in range(len(picks)):
            items = rng.choice(guest_items, size=int(rng.integers(1, 21)), p=popularity / popularity.sum())
            history = [{"item_id": f"i{i:06d}", "type": "click"} for i in items]
            bodies.append(json.dumps({"history": history, "k": 10}).encode())

    async def request(client: RawClient, n: int) -> int:
        if bodies:
            return await client.request("POST", "/v1/recommendations", bodies[n])
        return await client.request("GET", f"/v1/users/u{picks[n]:05d}/recommendations?k=10")

    out.put(asyncio.run(_open_loop(url, rate, seconds, request, {"X-API-Key": KEYS["read"]})))


def event_load(
    url: str,
    rate: float,
    seconds: float,
    users: int,
    items: int,
    batch: int,
    out: Any,
    seed: int = 2,
    log: tuple[Path, int] | None = None,
) -> None:
    """Clicks of random users on items drawn by popularity; ``seed`` picks them (the same
    seed posts the same events again: a learner then learns them again). With ``log``
    (a JSONL file of events and how many of them to skip), that file's events in order
    instead, stamped by the server (their own times are dropped)."""
    posts = int(rate / batch * seconds) + 1
    body: Callable[[int], bytes]
    if log is not None:
        path, skip = log
        with path.open() as fh:
            rows = [json.loads(line) for line in itertools.islice(fh, skip, skip + posts * batch)]
        if len(rows) < posts * batch:
            raise ValueError(f"{path} holds {skip + len(rows):,} events, {skip + posts * batch:,} wanted")
        for row in rows:
            row.pop("timestamp", None)
        bodies = [json.dumps(rows[n * batch : (n + 1) * batch]).encode() for n in range(posts)]
        body = bodies.__getitem__
    else:
        rng = np.random.default_rng(seed)
        popularity = 1.0 / (1.0 + np.arange(items)) ** 0.8
        popularity /= popularity.sum()
        # drawn up front, in one call: a draw of one item with ``p`` costs a pass over the
        # catalog (9 ms at 1,000,000 items), which made this process the bottleneck it measured
        who = rng.integers(users, size=(posts, batch))
        what = rng.choice(items, size=(posts, batch), p=popularity)

        def body(n: int) -> bytes:  # built as posted: an hour's soak up front would take hundreds of MB
            clicks = [
                {"user_id": f"u{u:05d}", "item_id": f"i{i:06d}", "type": "click"}
                for u, i in zip(who[n], what[n], strict=True)
            ]
            return json.dumps(clicks).encode()

    async def request(client: RawClient, n: int) -> int:
        return await client.request("POST", "/v1/events", body(n))

    out.put(asyncio.run(_open_loop(url, rate / batch, seconds, request, {"X-API-Key": KEYS["write"]})))


def each_second(results: list[tuple[float, int]], rate: float) -> list[tuple[float, float]]:
    """p50 and p99 (ms) of the answered requests due in each second of an open loop at
    ``rate`` (results in the order they were due): a tail made of a few stalls shows as a
    few bad seconds, a server that cannot keep up as a rise that does not come down."""
    per = max(1, round(rate))
    out = []
    for start in range(0, len(results), per):
        ms = [lat * 1000 for lat, status in results[start : start + per] if status == 200]
        out.append(percentiles(ms)[::2] if ms else (math.nan, math.nan))  # p50, p99
    return out


def cpu_s(pid: int) -> float:
    """Processor seconds (user and system, every thread) a running process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(url: str, args: argparse.Namespace, watch: dict[str, int] | None = None) -> dict[str, Any]:
    """The load of ``args`` against ``url``; with ``watch`` (names of processes and their
    pids), ``cores``: the cores each used on average meanwhile, and the load generator's
    own (its processes, started and ended within)."""
    watch = watch or {}
    before = {name: cpu_s(pid) for name, pid in watch.items()}
    ours, started = os.times(), time.monotonic()
    ctx = mp.get_context("spawn")
    recs_q, events_q = ctx.Queue(), ctx.Queue()
    guest_items = args.items if getattr(args, "guests", False) else 0
    procs = [ctx.Process(target=recommend_load, args=(url, args.rps, args.seconds, args.users, recs_q, guest_items))]
    if args.eps > 0:
        procs.append(
            ctx.Process(
                target=event_load,
                args=(url, args.eps, args.seconds, args.users, args.items, 10, events_q, getattr(args, "seed", 2)),
                kwargs={"log": getattr(args, "log", None)},
            )
        )
    for p in procs:
        p.start()
    recs = recs_q.get()
    events = events_q.get() if args.eps > 0 else []
    for p in procs:
        p.join()
    wall, now = time.monotonic() - started, os.times()
    cores = {name: (cpu_s(pid) - before[name]) / wall for name, pid in watch.items()}
    cores["load generator"] = (sum(now[:4]) - sum(ours[:4])) / wall
    latencies = [lat * 1000 for lat, status in recs if status == 200]
    event_latencies = [lat * 1000 for lat, status in events if status == 202]
    return {
        "cores": cores,
        "requests": len(recs),
        "errors": sum(status != 200 for _, status in recs),
        "latency_ms": percentiles(latencies),
        "each_second_ms": each_second(recs, args.rps),
        "event_requests": len(events),
        "event_errors": sum(status != 202 for _, status in events),
        "event_latency_ms": percentiles(event_latencies) if event_latencies else (float("nan"),) * 4,
    }


# -- soak ---------------------------------------------------------------------------------
def _status_mb(pid: int, keys: tuple[str, ...]) -> list[float]:
    """Fields of ``/proc/PID/status`` given in kB, in MB (NaN where absent)."""
    found: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in keys:
                found[key] = int(value.split()[0]) / 1024
    return [found.get(key, float("nan")) for key in keys]


def rss_mb(pid: int) -> float:
    return _status_mb(pid, ("VmRSS",))[0]


def rss_parts_mb(pid: int) -> tuple[float, float, float]:
    """A process's resident memory by kind, MB: anonymous (its heap and arrays), mapped files
    (libraries, memory-mapped files), shared memory (SQLite's WAL index)."""
    anonymous, files, shared = _status_mb(pid, ("RssAnon", "RssFile", "RssShmem"))
    return anonymous, files, shared


def learner_pid(pid: int) -> int:
    """The server's learner process (not multiprocessing's resource tracker)."""
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        for child in (int(p) for p in fh.read().split()):
            if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
    raise RuntimeError("the server has no learner process")
