"""Beyond one machine, end to end on the real PostgreSQL and Redis: two API replicas
(``serve --role api``) and one learner (``serve --role learner``), each a process of
its own with a data folder of its own, sharing nothing but the database and the bus."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from freshrec.bus import keys
from freshrec.client import Client
from freshrec.storage import open_store
from tests.faults import Proxy
from tests.learn.test_online import ENV as TINY_MODEL
from tests.serve.conftest import wait_for

ENV = {
    **TINY_MODEL,  # the learner's tests' small model, with the hashing encoder
    "FRESHREC_LEARN__MAX_WAIT_MS": "50",
    "FRESHREC_CLUSTER__POLL_MS": "100",
    "FRESHREC_CLUSTER__SNAPSHOT_INTERVAL_MS": "200",
}
FRESHREC = str(Path(sys.executable).parent / "freshrec")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cluster_env(postgres_url: str, redis_url: str) -> Iterator[dict[str, str]]:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield {
        **os.environ,
        **ENV,
        "FRESHREC_STORAGE__URL": postgres_url,
        "FRESHREC_CLUSTER__BUS_URL": redis_url,
        "FRESHREC_CLUSTER__PREFIX": prefix,
    }
    client = redis.Redis.from_url(redis_url)
    client.delete(*keys(prefix).values())
    client.close()


def shop(tmp_path: Path, env: dict[str, str], items: int, users: int, events: int) -> None:
    """A generated shop imported into the shared store."""
    gen = tmp_path / "gen"
    for step in (
        ["generate", "--out", str(gen), "--items", str(items), "--users", str(users), "--events", str(events)],
        ["import", "items", str(gen / "items.jsonl")],
        ["import", "events", str(gen / "events.jsonl")],
    ):
        subprocess.run([FRESHREC, "--data", str(tmp_path / "setup"), *step], env=env, check=True, capture_output=True)


def start(data: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [FRESHREC, "--data", str(data), "serve", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(data.parent / f"{data.name}.log", "wb"),
    )


def test_two_api_replicas_and_a_learner_share_events_and_model_versions(
    tmp_path: Path, cluster_env: dict[str, str]
) -> None:
    shop(tmp_path, cluster_env, items=80, users=20, events=800)
    ports = free_port(), free_port()
    processes = [start(tmp_path / "learner", cluster_env, "--role", "learner")]
    processes += [
        start(tmp_path / name, cluster_env, "--role", "api", "--port", str(port), "--insecure-no-auth")
        for name, port in zip("ab", ports, strict=True)
    ]
    a, b = (Client(f"http://127.0.0.1:{p}") for p in ports)

    def ready(c: Client) -> bool:
        return c.ready() and bool(c.readiness()["model_served"])

    try:
        wait_for(lambda: ready(a) and ready(b), timeout=120)  # both serve the learner's warm-started model
        first = a.status()["model_version"]
        assert b.status()["model_version"] == first and first is not None

        # an event posted to replica A changes what replica B recommends
        before = b.recommend("newcomer", k=10, explain=True)["items"]
        assert before and all(not i["because"] for i in before)  # no history: the fallback
        chosen = before[0]["item_id"]
        assert a.send_events({"user_id": "newcomer", "item_id": chosen, "type": "purchase"})["accepted"] == 1
        after = b.recommend("newcomer", k=10, explain=True)["items"]
        assert [i["item_id"] for i in after] != [i["item_id"] for i in before]
        assert chosen not in {i["item_id"] for i in after}  # seen, read from the shared store
        assert {b["item_id"] for i in after for b in i["because"] or ()} == {chosen}  # "because you bought X"

        # the learner learns it and its new model version reaches both replicas
        def moved() -> bool:
            va, vb = (c.status()["model_version"] for c in (a, b))
            return bool(va != first and va == vb)

        wait_for(moved, timeout=30)
        status = b.status()
        assert status["learner"] == "following" and status["learned_offset"] == status["log_offset"]
        for c in (a, b):  # the replicas rank with the blend (weights and counts came on the bus)
            listed = c.recommend("u00001", k=5, explain=True)["items"]
            assert listed and all(i["reason"] for i in listed), listed

        # an item written through B is recommendable through A
        item = {"item_id": "brand-new", "title": "A brand new thing", "categories": ["fresh"]}
        assert b.put_items([item])["items"] == 1
        wait_for(  # replica A reads the catalog replica B changed
            lambda: a.recommend("newcomer", k=5, categories=["fresh"])["items"], timeout=10
        )

        # a deletion through B reaches the learner over the bus, and the store
        b.delete_user("newcomer")
        assert a.history("newcomer")["events"] == []
        bus = redis.Redis.from_url(cluster_env["FRESHREC_CLUSTER__BUS_URL"])
        prefix = cluster_env["FRESHREC_CLUSTER__PREFIX"]
        wait_for(  # the learner carried out the deletion and acknowledged it
            lambda: (
                bus.xlen(f"{prefix}:commands") == 1 and bus.xpending(f"{prefix}:commands", "learner")["pending"] == 0
            ),
            timeout=30,
        )
        bus.close()
    finally:
        for p in processes:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=120) for p in processes]
        a.close()
        b.close()
    logs = [(tmp_path / f"{n}.log").read_text() for n in ("learner", "a", "b")]
    assert codes == [0, 0, 0], logs  # each shut down cleanly, not killed by the signal
    assert not any("Traceback" in text for text in logs), logs
    store = open_store(cluster_env["FRESHREC_STORAGE__URL"])
    try:
        assert store.user_history("newcomer", 10) == []
        assert store.published("snapshot") is not None
    finally:
        store.close()


def test_replicas_on_one_machine_can_share_a_port() -> None:
    from freshrec.serve.engine import shared_socket

    port = free_port()
    first, second = shared_socket("127.0.0.1", port), shared_socket("127.0.0.1", port)
    try:
        for sock in (first, second):
            sock.listen()
        accepted = 0
        for _ in range(8):  # the kernel hands each new connection to one of them
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
        for sock in (first, second):
            sock.settimeout(0.2)
            while True:
                try:
                    sock.accept()[0].close()
                    accepted += 1
                except TimeoutError:
                    break
        assert accepted == 8
    finally:
        first.close()
        second.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ValueError, match="cannot bind"):
            shared_socket("127.0.0.1", taken.getsockname()[1])


def test_a_second_learner_exits_while_the_first_holds_the_stores_lease(
    tmp_path: Path, cluster_env: dict[str, str]
) -> None:
    from freshrec.learn.lease import NAME

    store = open_store(cluster_env["FRESHREC_STORAGE__URL"])
    try:
        held = store.take_lease(NAME, "learner-host:99:abcd", ttl_s=30)
        started = time.monotonic()
        second = subprocess.run(
            [FRESHREC, "--data", str(tmp_path / "second"), "serve", "--role", "learner"],
            env=cluster_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode != 0 and time.monotonic() - started < 10, second.stdout + second.stderr
        assert "learner-host:99:abcd" in second.stdout + second.stderr
        assert store.published("checkpoint") is None and store.published("snapshot") is None
        store.release_lease(NAME, "learner-host:99:abcd", held.token)
    finally:
        store.close()


def test_sigterm_while_postgres_and_redis_are_away_exits_cleanly_and_loses_nothing(
    tmp_path: Path, cluster_env: dict[str, str]
) -> None:
    direct = cluster_env["FRESHREC_STORAGE__URL"]
    shop(tmp_path, cluster_env, items=40, users=10, events=300)
    pg, bus = urlsplit(direct), urlsplit(cluster_env["FRESHREC_CLUSTER__BUS_URL"])
    pg_proxy = Proxy(pg.hostname or "127.0.0.1", pg.port or 5432)
    bus_proxy = Proxy(bus.hostname or "127.0.0.1", bus.port or 6379)
    env = {
        **cluster_env,
        "FRESHREC_STORAGE__URL": direct.replace(f"{pg.hostname}:{pg.port}", f"127.0.0.1:{pg_proxy.port}"),
        "FRESHREC_CLUSTER__BUS_URL": cluster_env["FRESHREC_CLUSTER__BUS_URL"].replace(
            f"{bus.hostname}:{bus.port}", f"127.0.0.1:{bus_proxy.port}"
        ),
    }
    port = free_port()
    processes = [
        start(tmp_path / "learner", env, "--role", "learner"),
        start(tmp_path / "api", env, "--role", "api", "--port", str(port), "--insecure-no-auth"),
    ]
    acknowledged = []
    try:
        with Client(f"http://127.0.0.1:{port}") as c:
            wait_for(lambda: c.ready() and c.readiness()["model_served"], timeout=120)
            for n in range(5):
                event = {"event_id": f"kept-{n}", "user_id": "u-away", "item_id": f"i{n:06d}", "type": "click"}
                assert c.send_events(event)["accepted"] == 1
                acknowledged.append(event["event_id"])
        pg_proxy.cut()
        bus_proxy.cut()
        time.sleep(1.0)
        started = time.monotonic()
        for p in processes:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=30) for p in processes]
        took = time.monotonic() - started
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = {n: (tmp_path / f"{n}.log").read_text() for n in ("learner", "api")}
    assert codes == [0, 0] and took < 15, (codes, took, logs)
    said = [line for line in logs["learner"].splitlines() if line.startswith("stopped without being able to")]
    assert len(said) == 1 and "nothing acknowledged is lost" in said[0], logs  # one line names what was cut short
    store = open_store(direct)
    try:
        stored = {e.event_id for e in store.user_history("u-away", 10)}
    finally:
        store.close()
    assert stored == set(acknowledged)


def test_a_slow_database_holds_up_only_the_requests_that_wait_for_it(
    tmp_path: Path, cluster_env: dict[str, str]
) -> None:
    """An API replica reads PostgreSQL off its event loop: while recommendation requests
    wait for a database that answers in 0.5 s, a request that needs no database is
    answered at once (read on the loop, it waited behind every one of them)."""
    from concurrent.futures import ThreadPoolExecutor

    direct = cluster_env["FRESHREC_STORAGE__URL"]
    shop(tmp_path, cluster_env, items=40, users=10, events=300)
    pg = urlsplit(direct)
    proxy = Proxy(pg.hostname or "127.0.0.1", pg.port or 5432)
    env = {
        **cluster_env,
        "FRESHREC_STORAGE__URL": direct.replace(f"{pg.hostname}:{pg.port}", f"127.0.0.1:{proxy.port}"),
    }
    port = free_port()
    api = start(tmp_path / "api", env, "--role", "api", "--port", str(port), "--insecure-no-auth")
    try:
        with Client(f"http://127.0.0.1:{port}", timeout=30.0) as c:
            wait_for(c.ready, timeout=60)
            users = [f"u{n:05d}" for n in range(8)]
            for user in users:  # the async pool's connections are open before the database slows down
                assert c.recommend(user)["items"]
            proxy.delay_s = 0.5
            with ThreadPoolExecutor(8) as pool:
                waiting = [pool.submit(c.recommend, u) for u in users]
                time.sleep(0.2)  # they are all waiting for the database now
                started = time.monotonic()
                assert c.live()["status"] == "alive"
                live_s = time.monotonic() - started
                answers = [w.result() for w in waiting]
            assert all(a["items"] for a in answers)
            assert live_s < 0.25, f"/health/live took {live_s:.2f} s behind the slow reads"
    finally:
        api.terminate()
        api.wait(timeout=30)
