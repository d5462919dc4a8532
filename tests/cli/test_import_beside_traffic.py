"""An import never blocks live traffic: during a 300,000-event ``freshrec import
events`` into the store a running ``freshrec serve`` uses, events posted every 100 ms
are each acknowledged within a second, on SQLite and on PostgreSQL (the import
commits chunks sized to hold the write lock for about 0.1 s each, one at a time)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from freshrec.client import Client
from tests.cli.test_cluster import ENV, FRESHREC, free_port, shop, start
from tests.serve.conftest import wait_for

EVENTS = 300_000


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, **ENV}
    if request.param == "postgresql":
        env["FRESHREC_STORAGE__URL"] = str(request.getfixturevalue("postgres_url"))
    else:
        env["FRESHREC_STORAGE__URL"] = f"sqlite:///{tmp_path / 'shop.db'}"
    return env


def test_events_posted_during_a_large_import_are_acknowledged_within_a_second(
    tmp_path: Path, env: dict[str, str]
) -> None:
    shop(tmp_path, env, items=200, users=50, events=500)
    big = tmp_path / "big.jsonl"
    with big.open("w") as fh:
        for n in range(EVENTS):
            fh.write(
                f'{{"user_id": "bulk{n % 3000}", "item_id": "i{n % 200:06d}", "type": "view", "timestamp": {n}}}\n'
            )
    port = free_port()
    server = start(tmp_path / "serve", env, "--port", str(port), "--insecure-no-auth")
    importing = None
    try:
        with Client(f"http://127.0.0.1:{port}") as c:
            wait_for(c.ready, timeout=60)
            importing = subprocess.Popen(
                [FRESHREC, "--data", str(tmp_path / "import"), "import", "events", str(big)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            waits, n = [], 0
            while importing.poll() is None:
                event = {"event_id": f"live-{n}", "user_id": "live", "item_id": f"i{n % 200:06d}", "type": "click"}
                started = time.monotonic()
                assert c.send_events(event)["accepted"] == 1
                waits.append(time.monotonic() - started)
                n += 1
                time.sleep(0.1)
            output = importing.communicate()[0]
            assert importing.returncode == 0, output
            assert f"stored {EVENTS:,}" in " ".join(output.split()), output
            assert len(waits) >= 10, "the import ended before it could be measured"
            assert max(waits) < 1.0, sorted(waits)[-5:]
            history = c.history("live", n=1000)["events"]
            assert len(history) == n  # every acknowledged event is there
    finally:
        for process in (importing, server):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
