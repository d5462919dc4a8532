"""Validation of events and items arriving from outside.

Every public entry point (HTTP, file import, MovieLens loader) turns raw
mappings into :class:`~freshrec.domain.Event` / :class:`~freshrec.domain.Item`
here, so the rules live in one place and errors read the same everywhere:
a list of :class:`FieldError`, each naming the field and what is wrong with it.

Rules that depend on settings (rating scale, clock skew, size limits) come
from :class:`~freshrec.settings.IngestSettings`, passed to :class:`Validator`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from freshrec.domain import Event, EventType, Item
from freshrec.settings import IngestSettings

# Timestamps above this many seconds (year 5138) are almost certainly in
# milliseconds; say so instead of accepting a date millennia away.
_MS_HINT = 1e11


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidRecord(ValueError):
    """A record that breaks one or more rules; ``errors`` lists each of them."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def _limits(info: ValidationInfo) -> IngestSettings:
    limits = info.context.get("limits") if info.context else None
    if not isinstance(limits, IngestSettings):  # pragma: no cover - programming error
        raise TypeError("validation needs IngestSettings in context['limits']")
    return limits


def check_id(value: Any, max_length: int) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be a string, got {type(value).__name__}")
    text = str(value)
    if not text:
        raise ValueError("must not be empty")
    if len(text) > max_length:
        raise ValueError(f"is {len(text)} characters long; the limit is {max_length}")
    if text != text.strip():
        raise ValueError("has leading or trailing whitespace")
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cs", "Cn"):
            raise ValueError(f"contains the control or invalid character U+{ord(ch):04X}")
    return text


def _check_json_object(value: Any, name: str, max_bytes: int) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"is not valid JSON ({exc.msg} at position {exc.pos})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object, got {type(value).__name__}")
    try:
        size = len(json.dumps(value, allow_nan=False, ensure_ascii=False).encode())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot be stored as JSON: {exc}") from exc
    if size > max_bytes:
        raise ValueError(f"is {size} bytes as JSON; the limit for {name} is {max_bytes}")
    return value


def parse_timestamp(value: Any, now: float, max_future_skew_s: float) -> float:
    """Epoch seconds from a number, a numeric string or an ISO 8601 string.

    ISO strings without a zone are taken as UTC.
    """
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds or an ISO 8601 string, got bool")
    if isinstance(value, str):
        text = value.strip()
        try:
            ts = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError as exc:
                raise ValueError(f"{value!r} is neither epoch seconds nor an ISO 8601 date-time") from exc
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            ts = parsed.timestamp()
    elif isinstance(value, int | float):
        ts = float(value)
    elif isinstance(value, datetime):
        ts = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    else:
        raise ValueError(f"must be a number or an ISO 8601 string, got {type(value).__name__}")
    if not math.isfinite(ts):
        raise ValueError("must be finite")
    if ts < 0:
        raise ValueError("must not be before 1970-01-01T00:00:00Z")
    if ts > _MS_HINT:
        raise ValueError(f"{ts:.0f} is far in the future; epoch timestamps must be in seconds, not milliseconds")
    if ts > now + max_future_skew_s:
        raise ValueError(f"is {ts - now:.0f} s in the future; the allowed clock skew is {max_future_skew_s:.0f} s")
    return ts


def _with_list(context: dict[str, Any] | None, recommendation_id: str | None) -> dict[str, Any] | None:
    if recommendation_id is not None:
        return {**(context or {}), "recommendation_id": recommendation_id}
    return context or None


class EventIn(BaseModel):
    """Wire shape of an event. Validate through :class:`Validator`."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    item_id: str
    type: EventType
    value: float | None = None
    timestamp: float | None = None
    event_id: str | None = None
    context: dict[str, Any] | None = None
    recommendation_id: str | None = None
    """The served list this event follows (its ``recommendation_id``): stored in the
    event's context, it credits the list in an experiment."""

    @field_validator("user_id", "item_id", "event_id", "recommendation_id", mode="before")
    @classmethod
    def _ids(cls, v: Any, info: ValidationInfo) -> Any:
        return None if v is None else check_id(v, _limits(info).max_id_length)

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in EventType._value2member_map_:
            return v.strip().lower()
        allowed = ", ".join(t.value for t in EventType)
        raise ValueError(f"{v!r} is not an event type; expected one of {allowed}")

    @field_validator("value", mode="before")
    @classmethod
    def _value(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise ValueError(f"must be a number, got {type(v).__name__}")
        try:
            number = float(v)
        except ValueError as exc:
            raise ValueError(f"{v!r} is not a number") from exc
        if not math.isfinite(number):
            raise ValueError("must be finite")
        return number

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return None
        now = info.context.get("now") if info.context else None
        return parse_timestamp(v, now or time.time(), _limits(info).max_future_skew_s)

    @field_validator("context", mode="before")
    @classmethod
    def _context(cls, v: Any, info: ValidationInfo) -> Any:
        return _check_json_object(v, "context", _limits(info).max_json_bytes)


class ItemIn(BaseModel):
    """Wire shape of an item. Validate through :class:`Validator`."""

    model_config = ConfigDict(extra="forbid")

    item_id: str
    title: str = ""
    description: str = ""
    categories: list[str] = Field(default_factory=list)
    attributes: dict[str, Any] = Field(default_factory=dict)
    vector: list[float] | None = None

    @field_validator("item_id", mode="before")
    @classmethod
    def _id(cls, v: Any, info: ValidationInfo) -> Any:
        return check_id(v, _limits(info).max_id_length)

    @field_validator("title", "description", mode="before")
    @classmethod
    def _text(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return ""
        if not isinstance(v, str):
            raise ValueError(f"must be a string, got {type(v).__name__}")
        limits = _limits(info)
        limit = limits.max_title_length if info.field_name == "title" else limits.max_description_length
        if len(v) > limit:
            raise ValueError(f"is {len(v)} characters long; the limit is {limit}")
        if any(unicodedata.category(ch) == "Cs" for ch in v):
            raise ValueError("contains invalid (surrogate) characters")
        return v.strip()

    @field_validator("categories", mode="before")
    @classmethod
    def _categories(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return []
        if isinstance(v, str):
            v = [part for part in v.split("|")]
        if not isinstance(v, list | tuple):
            raise ValueError(f"must be a list of strings or a '|'-separated string, got {type(v).__name__}")
        limits = _limits(info)
        out: list[str] = []
        for i, cat in enumerate(v):
            if not isinstance(cat, str):
                raise ValueError(f"[{i}] must be a string, got {type(cat).__name__}")
            cat = cat.strip()
            if not cat:
                continue
            try:
                check_id(cat, limits.max_id_length)
            except ValueError as exc:
                raise ValueError(f"[{i}] {exc}") from None
            if cat not in out:
                out.append(cat)
        if len(out) > limits.max_categories:
            raise ValueError(f"has {len(out)} categories; the limit is {limits.max_categories}")
        return out

    @field_validator("attributes", mode="before")
    @classmethod
    def _attributes(cls, v: Any, info: ValidationInfo) -> Any:
        return _check_json_object(v, "attributes", _limits(info).max_json_bytes) or {}

    @field_validator("vector", mode="before")
    @classmethod
    def _vector(cls, v: Any) -> Any:
        if v is None or v == "":
            return None
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError as exc:
                raise ValueError("must be a JSON list of numbers") from exc
        if not isinstance(v, list | tuple) or not v:
            raise ValueError("must be a non-empty list of numbers")
        out = []
        for i, x in enumerate(v):
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                raise ValueError(f"[{i}] must be a finite number, got {x!r}")
            out.append(float(x))
        if not any(out):
            raise ValueError("must not be all zeros")
        return out

    @model_validator(mode="after")
    def _something_to_embed(self) -> ItemIn:
        """An item with neither text nor a vector cannot be placed among the others: it
        would be stored with no embedding and never recommended."""
        if not (self.title or self.description or self.categories or self.vector):
            raise ValueError("an item needs a title, a description, categories or a vector")
        return self


def _field_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "record"
        if err["type"] == "extra_forbidden":
            errors.append(FieldError(loc, "unknown field"))
        elif err["type"] == "missing":
            errors.append(FieldError(loc, "is required"))
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            errors.append(FieldError(loc, msg))
    return errors


class Validator:
    """Turns raw mappings into domain objects, or raises :class:`InvalidRecord`.

    Parameters
    ----------
    limits
        The ``[ingest]`` settings section: rating scale, clock skew, size limits.
    clock
        Returns the current epoch time; events without a timestamp get it, and
        it bounds future timestamps. Injected so tests control time.
    """

    def __init__(self, limits: IngestSettings, clock: Callable[[], float] = time.time):
        self.limits = limits
        self.clock = clock
        key = limits.pseudonymize_key
        self._key = key.get_secret_value().encode() if key is not None else None

    def user_key(self, user_id: str) -> str:
        """How ``user_id`` is stored: itself, or its pseudonym (``pseudonymize_key``)."""
        if self._key is None:
            return user_id
        digest = hmac.new(self._key, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        return f"p:{digest[:32]}"

    def event(self, raw: Mapping[str, Any]) -> Event:
        if not isinstance(raw, Mapping):
            raise InvalidRecord([FieldError("record", f"must be an object, got {type(raw).__name__}")])
        now = self.clock()
        try:
            parsed = EventIn.model_validate(raw, context={"limits": self.limits, "now": now})
        except ValidationError as exc:
            raise InvalidRecord(_field_errors(exc)) from None
        self._check_value(parsed)
        return Event(
            user_id=self.user_key(parsed.user_id),
            item_id=parsed.item_id,
            type=parsed.type,
            timestamp=now if parsed.timestamp is None else parsed.timestamp,
            value=parsed.value,
            event_id=parsed.event_id,
            context=_with_list(parsed.context, parsed.recommendation_id),
        )

    def _check_value(self, parsed: EventIn) -> None:
        lo, hi = self.limits.rating_min, self.limits.rating_max
        if parsed.type is EventType.RATING:
            if parsed.value is None:
                raise InvalidRecord([FieldError("value", f"is required for a rating (a number from {lo} to {hi})")])
            if not lo <= parsed.value <= hi:
                raise InvalidRecord([FieldError("value", f"{parsed.value} is outside the rating scale [{lo}, {hi}]")])
        elif parsed.value is not None:
            raise InvalidRecord(
                [
                    FieldError(
                        "value",
                        f"is only allowed for type 'rating', not {parsed.type.value!r}; "
                        "put other numbers (price, quantity, dwell time) in context",
                    )
                ]
            )

    def item(self, raw: Mapping[str, Any]) -> Item:
        if not isinstance(raw, Mapping):
            raise InvalidRecord([FieldError("record", f"must be an object, got {type(raw).__name__}")])
        if "id" in raw and "item_id" not in raw:
            raw = {("item_id" if k == "id" else k): v for k, v in raw.items()}
        try:
            parsed = ItemIn.model_validate(raw, context={"limits": self.limits})
        except ValidationError as exc:
            raise InvalidRecord(_field_errors(exc)) from None
        return Item(
            item_id=parsed.item_id,
            title=parsed.title,
            description=parsed.description,
            categories=tuple(parsed.categories),
            attributes=parsed.attributes,
            vector=tuple(parsed.vector) if parsed.vector is not None else None,
        )
