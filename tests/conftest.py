from __future__ import annotations

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
