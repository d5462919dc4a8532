"""Response bodies of the HTTP API (request bodies are the ingest models)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from freshrec.domain import EventType


class Accepted(BaseModel):
    accepted: int = Field(description="Events stored by this request.")
    duplicates: int = Field(description="Events skipped because their event_id was already stored.")


class RecordError(BaseModel):
    index: int = Field(
        description="Position of the record in the request's list (0 for a single object or a parameter)."
    )
    field: str = Field(description="Where: a field of the record, or `query.k`, `path.user_id`, ...")
    message: str


class ErrorBody(BaseModel):
    """Every error the service answers, whatever its status."""

    detail: str = Field(description="What was wrong, in a sentence.")
    errors: list[RecordError] = Field(default=[], description="One entry per bad field, where there are fields.")


class BecauseOut(BaseModel):
    item_id: str
    title: str
    type: EventType
    value: float | None
    weight: float = Field(description="How much this item's score drops without that history event.")


class RankedItem(BaseModel):
    item_id: str
    score: float
    title: str
    explanation: str | None = None
    because: list[BecauseOut] | None = Field(
        default=None, description="With explain=true: the history events that raised this item most."
    )


class Recommendations(BaseModel):
    user_id: str
    model_version: str | None = Field(description="'<checkpoint>.<online updates>'; null before a model exists.")
    items: list[RankedItem]


class GuestRecommendations(BaseModel):
    model_version: str | None = Field(description="'<checkpoint>.<online updates>'; null before a model exists.")
    items: list[RankedItem]


class Similar(BaseModel):
    item_id: str
    model_version: str | None
    items: list[RankedItem]


class TrendingItem(BaseModel):
    item_id: str
    title: str
    score: float = Field(
        description="How far the recent count lies above the usual rate's, in Poisson standard deviations."
    )
    recent: float = Field(description="Events in about the last window (decayed with the window as half-life).")
    usual: float = Field(description="What the item's usual rate (eight windows' half-life) predicts for one window.")


class Trending(BaseModel):
    window: Literal["hour", "day", "week"]
    items: list[TrendingItem]


class ItemOut(BaseModel):
    item_id: str
    title: str
    description: str
    categories: list[str]
    attributes: dict[str, Any]
    has_vector: bool
    created_at: float | None
    updated_at: float | None


class ItemsWritten(BaseModel):
    items: int
    job: dict[str, Any] | None = Field(
        default=None, description="For a large batch: the background embedding job (GET /v1/jobs/{job_id})."
    )


class EventOut(BaseModel):
    event_id: str | None
    item_id: str
    title: str | None
    type: EventType
    value: float | None
    timestamp: float
    offset: int | None


class History(BaseModel):
    user_id: str
    events: list[EventOut]
