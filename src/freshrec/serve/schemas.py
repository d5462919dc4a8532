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
    reason: str | None = Field(
        default=None,
        description="With explain=true: the blend's feature that raised this item most above the items "
        "that would fill the list next (`network`, `transitions`, `co-occurrence`, `text-nearest`, `recency-7d`, ...); "
        "null where the network ranks alone or no model ranked the list.",
    )


class Recommendations(BaseModel):
    user_id: str
    model_version: str | None = Field(description="'<checkpoint>.<online updates>'; null before a model exists.")
    items: list[RankedItem]
    recommendation_id: str = Field(
        description="This list's id: an event that names it (`recommendation_id`) counts for it in an experiment."
    )
    variant: str = Field(description="The model variant that ranked it: an experiment's arm, or 'default'.")


class GuestRecommendations(BaseModel):
    model_version: str | None = Field(description="'<checkpoint>.<online updates>'; null before a model exists.")
    items: list[RankedItem]
    recommendation_id: str = Field(
        description="This list's id: an event that names it (`recommendation_id`) counts for it in an experiment."
    )
    variant: str = Field(description="The model variant that ranked it: an experiment's arm, or 'default'.")


class Similar(BaseModel):
    item_id: str
    model_version: str | None
    items: list[RankedItem]
    recommendation_id: str = Field(
        description="This list's id: an event that names it (`recommendation_id`) counts for it in an experiment."
    )
    variant: str = Field(description="The model variant that ranked it: an experiment's arm, or 'default'.")


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


class ArmOut(BaseModel):
    share: float = Field(description="The fraction of users assigned to this arm.")
    own_model: bool = Field(description="Whether the arm learns a model of its own (else the default model serves it).")
    model_version: str | None
    learned_offset: int | None = Field(description="The log offset the arm's served model has learned up to.")
    learner: str | None = Field(description="The state of the arm's learner.")
    lists: int = Field(description="Lists served by the arm.")
    clicked: int = Field(description="Lists with at least one attributed event.")
    attributed: int = Field(description="Events that named one of the arm's lists and counted for it.")
    hits: int = Field(description="Positive events of the arm's users on an item of the last list served to them.")
    trials: int = Field(description="Positive events of the arm's users who had been served a list.")
    click_through: float | None = Field(description="clicked / lists; null before a list was served.")
    click_through_interval: list[float] = Field(description="95% Wilson score interval of click_through.")
    hit_rate: float | None = Field(description="hits / trials: the online hit rate.")
    hit_rate_interval: list[float] = Field(description="95% Wilson score interval of hit_rate.")
    difference: float | None = Field(default=None, description="click_through minus the control's.")
    difference_interval: list[float] | None = Field(
        default=None, description="95% interval of the difference (Newcombe's hybrid score interval)."
    )
    significant: bool | None = Field(default=None, description="Whether that interval excludes zero.")


class ExperimentOut(BaseModel):
    name: str
    status: Literal["running", "stopped", "concluded"]
    winner: str | None = Field(description="The concluded experiment's winner, whose model serves every user.")
    changed_at: float = Field(description="When the status last changed (seconds since the epoch).")
    serving_arms: bool = Field(
        description="Whether the arms' models serve their users now (running, and every arm has a model)."
    )
    control: str = Field(description="The arm the others are compared with.")
    window_s: float = Field(description="How long after a list an event naming it counts for it.")
    arms: dict[str, ArmOut]


class Experiments(BaseModel):
    experiments: list[ExperimentOut]


class Conclusion(BaseModel):
    winner: str = Field(description="The arm whose model serves every user from now on.")
