"""The learner process: its sender (snapshots and messages share one pipe), and its
life tied to its server's."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from freshrec.client import Client
from freshrec.learn.sender import Sender
from freshrec.model.snapshot import Snapshot


class Payload:
    blend = None

    def to_bytes(self, key: bytes | None = None) -> bytes:
        return b"snapshot"


def test_a_message_waits_for_the_snapshot_being_written() -> None:
    writing, started = threading.Lock(), threading.Event()
    written: list[Any] = []
    overlaps: list[Any] = []

    def write(item: Any) -> None:  # a pipe: two writers at once interleave their bytes
        if not writing.acquire(blocking=False):
            overlaps.append(item)
            return
        try:
            started.set()
            time.sleep(0.05)
            written.append(item)
        finally:
            writing.release()

    sender = Sender(lambda data, start: write(data), write, interval_s=0).start()
    sender.snapshot(cast(Snapshot, Payload()))
    assert started.wait(5)
    sender.message("state", "following")  # while the snapshot is being written
    sender.close()
    assert overlaps == []
    assert written == [b"snapshot", ("state", "following")]


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def outliving(pids: list[int], within_s: float) -> list[int]:
    """Those of ``pids`` still alive after waiting up to ``within_s`` for all to end."""
    deadline = time.monotonic() + within_s
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be read


ENV = {
    "FRESHREC_ENCODER__MODEL": "hashing",
    "FRESHREC_ENCODER__HASHING_DIM": "32",
    "FRESHREC_MODEL__DIM": "16",
    "FRESHREC_MODEL__HISTORY_LENGTH": "8",
}


def prepared(data: Path, events: int) -> list[str]:
    """A store with a generated log; returns the command line prefix for it."""
    cli = [str(Path(sys.executable).parent / "freshrec"), "--data", str(data)]
    gen = data / "gen"
    for step in (
        ["generate", "--out", str(gen), "--items", "60", "--users", "20", "--events", str(events), "--seed", "1"],
        ["import", "items", str(gen / "items.jsonl")],
        ["import", "events", str(gen / "events.jsonl")],
    ):
        subprocess.run([*cli, *step], env={**os.environ, **ENV}, check=True, capture_output=True, timeout=300)
    return cli


@contextlib.contextmanager
def serving(cli: list[str], env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``freshrec serve`` in its own process group, once it answers ``/health/ready``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [*cli, "serve", "--port", str(port), "--insecure-no-auth"],
        env={**os.environ, **ENV, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group, so that a kill reaches the server alone
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        with Client(url, timeout=2.0) as c:
            while not c.ready():
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        yield server, url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_learner_dies_within_seconds_of_a_sigkill_of_the_server_alone(tmp_path: Path) -> None:
    with serving(prepared(tmp_path, 400)) as (server, _):
        helpers = children(server.pid)  # the learner and multiprocessing's resource tracker
        assert helpers, "the server started no learner process"
        server.send_signal(signal.SIGKILL)
        server.wait()
        assert not outliving(helpers, 5.0), "a helper outlived its server by 5 s"


def test_sigterm_during_a_warm_start_stops_within_seconds_and_says_so(tmp_path: Path) -> None:
    slow = {"FRESHREC_LEARN__EPOCHS": "50", "FRESHREC_LEARN__PATIENCE": "50", "FRESHREC_LEARN__WARM_PUBLISH_S": "600"}
    with serving(prepared(tmp_path, 6000), slow) as (server, url):
        with Client(url, timeout=5.0) as c:
            deadline = time.monotonic() + 60
            while c.status()["learner"] != "warm start":
                assert time.monotonic() < deadline, "the warm start did not begin"
                time.sleep(0.1)
        time.sleep(1.0)
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=15)
        assert time.monotonic() - started < 15 and server.returncode == 0, output
        assert output.count("warm start was interrupted") == 1, output
    assert not list((tmp_path / "checkpoints").glob("model-*"))


def test_sigterm_during_an_import_keeps_what_was_committed_and_a_rerun_adds_the_rest(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    with events.open("w") as fh:
        for n in range(300_000):
            fh.write(f'{{"user_id": "u{n % 500}", "item_id": "i{n % 900}", "type": "click", "timestamp": {n}}}\n')
    cli = [str(Path(sys.executable).parent / "freshrec"), "--data", str(tmp_path / "data")]
    env = {**os.environ, **ENV}
    importing = subprocess.Popen(
        [*cli, "import", "events", str(events)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    # well into the file: its first chunks are in the database (the command's start
    # alone, torch's import included, takes about 3 s here: a fixed sleep raced it)
    deadline = time.monotonic() + 60
    while sum(p.stat().st_size for p in (tmp_path / "data").glob("freshrec.db*")) < 2 << 20:
        assert time.monotonic() < deadline and importing.poll() is None, "the import stored nothing or ended"
        time.sleep(0.05)
    assert importing.poll() is None, "the import ended too soon to be interrupted"
    started = time.monotonic()
    importing.send_signal(signal.SIGTERM)
    output, _ = importing.communicate(timeout=15)
    assert time.monotonic() - started < 15 and importing.returncode == 0, output
    said = re.search(r"interrupted by SIGTERM: ([\d,]+) events stored", " ".join(output.split()))
    assert said is not None, output
    kept = int(said.group(1).replace(",", ""))
    assert 0 < kept < 300_000  # the chunk in progress rolled back: what is stored is what was said (below)

    def stored() -> int:
        stats = subprocess.run([*cli, "stats", "--json"], env=env, capture_output=True, text=True, check=True)
        return int(json.loads(stats.stdout)["events"])

    assert stored() == kept
    again = subprocess.run([*cli, "import", "events", str(events)], env=env, capture_output=True, text=True, check=True)
    summary = " ".join((again.stdout + again.stderr).split())
    assert f"stored {300_000 - kept:,}, unchanged/duplicate {kept:,}" in summary, summary
    assert stored() == 300_000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_evaluations_worker_dies_within_seconds_of_a_sigkill_of_its_parent(tmp_path: Path) -> None:
    """``freshrec evaluate`` replays each model in a worker process: killed, it must not
    leave the worker replaying on (one did, for minutes, beside the next benchmark)."""
    cli = [str(Path(sys.executable).parent / "freshrec")]
    env = {**os.environ, **ENV}
    gen = tmp_path / "gen"
    subprocess.run(
        [*cli, "generate", "--out", str(gen), "--items", "200", "--users", "100", "--events", "20000"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    evaluation = subprocess.Popen(
        [
            *cli,
            "evaluate",
            "--dataset",
            str(gen / "events.jsonl"),
            "--items",
            str(gen / "items.jsonl"),
            "--models",
            "freshrec",
            "--out",
            str(tmp_path / "r.json"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(helpers := children(evaluation.pid)) < 2:  # the replay's worker and the resource tracker
            assert evaluation.poll() is None and time.monotonic() < deadline, "no worker process started"
            time.sleep(0.1)
        time.sleep(1.0)  # the worker is replaying
        evaluation.send_signal(signal.SIGKILL)
        evaluation.wait()
        assert not outliving(helpers, 5.0), "a worker outlived its evaluation by 5 s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(evaluation.pid, signal.SIGKILL)
