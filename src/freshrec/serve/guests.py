"""Recommendations for someone the store does not know: a guest, a session before
login, a visitor who declined tracking. Their history comes in the request's body
and goes nowhere else: nothing about them is stored, logged or remembered."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from freshrec.domain import Event
from freshrec.ingest.validate import FieldError, InvalidRecord, Validator
from freshrec.serve.http import valid_boost, valid_rule
from freshrec.serve.intake import Problem, problems
from freshrec.serve.ranker import Options

MAX_HISTORY = 1_000
"""Events a guest request may carry (the model reads its last ``history_length``)."""
GUEST = "guest"
"""The user id the validator sees for a guest's events (never stored)."""
EVENT_FIELDS = {"item_id", "type", "timestamp", "value"}


class GuestEvent(BaseModel):
    """One event of a guest's history, oldest first (the same rules as ``POST /v1/events``)."""

    model_config = ConfigDict(extra="forbid")
    item_id: str
    type: str = Field(description="An event type, as in POST /v1/events.")
    timestamp: float | None = Field(default=None, description="Seconds since the epoch; default: now.")
    value: float | None = Field(default=None, description="For ratings.")


class GuestIn(BaseModel):
    """The body of ``POST /v1/recommendations``: a history and the list's options."""

    model_config = ConfigDict(extra="forbid")
    history: list[GuestEvent] = Field(default_factory=list, max_length=MAX_HISTORY)
    k: int = Field(default=10, ge=1, description="Length of the list (at most [serve] max_k).")
    categories: list[str] = Field(default_factory=list, description="Only items in any of these.")
    exclude: list[str] = Field(default_factory=list, description="Item ids never to return.")
    exclude_seen: bool = Field(default=True, description="Leave out the items of the history.")
    explain: bool = False
    filter: str = Field(default="", max_length=2_000, description="A business rule (or a [serve] rules name).")
    boost: str = Field(default="", max_length=2_000, description="RULE:SHARE, as on the stored path.")


def parse(raw: Any, validator: Validator, max_k: int, rules: dict[str, str]) -> tuple[list[Event], Options]:
    """The history (oldest first) and options of a guest request, or :class:`Problem` 422
    with every bad field (a history event's by its index)."""
    if not isinstance(raw, Mapping):
        raise Problem(422, "the body must be an object with a history and options")
    history = raw.get("history", [])
    try:
        body = GuestIn.model_validate({**raw, "history": []})
    except ValidationError as exc:
        errors = [{"index": 0, "field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
        raise Problem(422, "the request is invalid", tuple(errors)) from None
    if not isinstance(history, list):
        raise Problem(422, "history must be a list of events")
    if len(history) > MAX_HISTORY:
        raise Problem(422, f"{len(history):,} history events; at most {MAX_HISTORY:,}")
    if body.k > max_k:
        raise Problem(422, f"k is {body.k}; at most {max_k}")
    rule, boost = valid_rule(body.filter, rules), valid_boost(body.boost, rules)

    def event(record: Any) -> Event:
        if isinstance(record, Mapping) and (extra := set(record) - EVENT_FIELDS):
            raise InvalidRecord([FieldError(sorted(extra)[0], "is not a field of a guest's event")])
        return validator.event({**record, "user_id": GUEST} if isinstance(record, Mapping) else record)

    events, errors = problems(history, event)
    if errors:
        raise Problem(422, f"{len(history) - len(events)} of {len(history)} history events are invalid", tuple(errors))
    events.sort(key=lambda e: e.timestamp)  # stable: events of one moment keep their order
    exclude = (*body.exclude, *(e.item_id for e in events)) if body.exclude_seen else tuple(body.exclude)
    return events, Options(body.k, tuple(exclude), tuple(body.categories), body.exclude_seen, body.explain, rule, boost)
