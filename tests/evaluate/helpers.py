from __future__ import annotations

from freshrec.domain import Event, EventType, Item
from freshrec.evaluate.log import EventLog, build_log


def tiny_log(rows: list[tuple[str, str, float]], items: list[str], name: str = "tiny") -> EventLog:
    """A log from ``(user, item, time)`` clicks over a catalog of item ids."""
    catalog = [Item(item_id=i, title=f"Item {i}") for i in items]
    events = [Event(user_id=u, item_id=i, type=EventType.CLICK, timestamp=t) for u, i, t in rows]
    log, unknown = build_log(name, catalog, events)
    assert unknown == 0
    return log
