"""Models behind one small, batch-first interface: ``fit``, ``score``, ``learn``."""

from __future__ import annotations

from freshrec.model.base import Interactions, Recommender

__all__ = ["Interactions", "Recommender"]
