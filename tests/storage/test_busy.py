"""A write that cannot get the store's write lock within ``busy_timeout_ms`` fails fast
with :class:`StoreBusy` (nothing written), on both backends, instead of waiting as long
as another process holds the lock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from freshrec.settings import StorageSettings
from freshrec.storage import open_store
from freshrec.storage.base import StoreBusy
from tests.conftest import make_event


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'store.db'}"


def test_a_write_behind_another_process_lock_fails_fast_with_store_busy(url: str) -> None:
    holder = open_store(url)
    waiter = open_store(url, StorageSettings(busy_timeout_ms=200))
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.transaction():
            holder.append_events([make_event("holder", "a")])  # takes the append lock
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        with pytest.raises(StoreBusy, match="ms"):
            waiter.append_events([make_event("live", "b")])
        assert time.monotonic() - started < 2.0
    finally:
        release.set()
        thread.join(10)
    waiter.append_events([make_event("live", "b")])  # free again: retrying works
    assert sorted(e.user_id for e in waiter.read_events()) == ["holder", "live"]
    holder.close()
    waiter.close()
