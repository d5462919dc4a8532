"""The learner process's sender: snapshots and messages share one pipe."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from freshrec.cli.learner_process import Sender
from freshrec.model.snapshot import Snapshot


class Payload:
    def to_bytes(self) -> bytes:
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

    sender = Sender(write, write, interval_s=0)
    sender.snapshot(cast(Snapshot, Payload()))
    assert started.wait(5)
    sender.message("state", "following")  # while the snapshot is being written
    sender.close()
    assert overlaps == []
    assert written == [b"snapshot", ("state", "following")]
