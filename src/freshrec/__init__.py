"""freshrec: a real-time recommender that learns from every event as it arrives."""

from __future__ import annotations

from freshrec.domain import Event, EventType, Item

__all__ = ["Event", "EventType", "Item", "__version__"]
__version__ = "0.1.0"
