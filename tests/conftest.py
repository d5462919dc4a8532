from __future__ import annotations

import ctypes
import mmap
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from freshrec.domain import Event, EventType, Item
from freshrec.ingest.validate import Validator
from freshrec.settings import IngestSettings

T0 = 1_700_000_000.0


@pytest.fixture
def validator() -> Validator:
    return Validator(IngestSettings(), clock=lambda: T0 + 86_400)


def make_event(user: str = "u1", item: str = "i1", type_: EventType = EventType.CLICK, t: float = T0, **kw) -> Event:
    return Event(user_id=user, item_id=item, type=type_, timestamp=t, **kw)


def make_item(item_id: str = "i1", title: str = "A title", **kw) -> Item:
    return Item(item_id=item_id, title=title, **kw)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- the real PostgreSQL and Redis (127.0.0.1 here and in CI) ------------------------
POSTGRES = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _unavailable(what: str, exc: Exception) -> None:
    """Fail where the services must run (``.ci/run`` sets REQUIRE_TEST_SERVICES=1); skip elsewhere."""
    message = f"{what} is not reachable: {exc}"
    if os.environ.get("REQUIRE_TEST_SERVICES"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A store URL on the test database, in a schema of its own that is dropped afterwards."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        conn = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        _unavailable("PostgreSQL", exc)
    with conn:
        try:
            yield f"{POSTGRES}?schema={schema}"
        finally:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")  # type: ignore[arg-type]


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The test Redis database; the fixture's ``prefix`` keys are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        client.ping()
    except redis.RedisError as exc:
        _unavailable("Redis", exc)
    yield REDIS
    client.close()


def resident_share(path: Path) -> float:
    """The share of ``path``'s pages in the kernel's page cache (``mincore`` on a mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = mmap.PAGESIZE
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY) as mapped:
        size = len(mapped)
        pages = (size + page - 1) // page
        flags = ctypes.create_string_buffer(pages)
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        assert libc.mincore(ctypes.c_void_p(address), size, flags) == 0, os.strerror(ctypes.get_errno())
        share = sum(b & 1 for b in flags.raw) / pages
        del address  # the buffer export must end before the mapping closes
    return share
