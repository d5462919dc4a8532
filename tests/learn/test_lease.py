"""One learner per store: the lease is taken, renewed, lost to a takeover, and fences
the checkpoints of the learner that lost it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from freshrec.learn.checkpoints import Checkpoints, Fenced
from freshrec.learn.lease import NAME, Lease, LeaseHeld
from freshrec.storage import SQLiteStore


def test_a_second_learner_is_refused_until_the_first_stops_renewing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    first = Lease(store, ttl_s=3.0)
    first.take()
    assert first.valid
    second = Lease(store, ttl_s=3.0)
    with pytest.raises(LeaseHeld, match=first.holder) as held:
        second.take()
    assert held.value.state.age_s < 3.0
    time.sleep(1.5)  # renewed every second
    with pytest.raises(LeaseHeld):
        second.take()
    first.release()
    second.take()  # released: free at once
    assert second.valid and second.token == 2
    second.release()
    store.close()


def test_a_learner_whose_lease_was_taken_over_writes_no_checkpoint(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    lost: list[bool] = []
    old = Lease(store, ttl_s=3.0, on_lost=lambda: lost.append(True))
    old.take()
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    checkpoints.fence = lambda: old.valid
    checkpoints.save({"w": torch.zeros(2)}, offset=1, events_learned=1, loss=None)
    assert store.take_lease(NAME, "another:1", ttl_s=0).holder == "another:1"  # taken over (as if expired)
    deadline = time.monotonic() + 5
    while (old.valid or not lost) and time.monotonic() < deadline:  # its next renewal finds out
        time.sleep(0.05)
    assert not old.valid and lost == [True]
    with pytest.raises(Fenced):
        checkpoints.save({"w": torch.ones(2)}, offset=2, events_learned=2, loss=None)
    assert [v.version for v in checkpoints.list()] == [1]
    old.release()  # does not release the new holder's lease
    assert store.take_lease(NAME, "third:1", ttl_s=30).holder == "another:1"
    store.close()


def test_the_lease_of_a_dead_learner_of_this_machine_is_taken_over_at_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs (killed with its server, say)
    store.take_lease(NAME, f"{socket.gethostname()}:{dead.pid}:abcd1234", ttl_s=30)
    store.take_lease(NAME, "elsewhere:1:abcd1234", ttl_s=0)  # a live one of another machine...
    with pytest.raises(LeaseHeld):
        Lease(store, ttl_s=30).take()  # ...is waited for
    store.take_lease(NAME, f"{socket.gethostname()}:{dead.pid}:abcd1234", ttl_s=0)
    lease = Lease(store, ttl_s=30)
    lease.take()  # the dead local one is not
    assert lease.valid and lease.token == 4
    lease.release()
    store.close()
