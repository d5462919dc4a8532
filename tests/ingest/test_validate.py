from __future__ import annotations

import hashlib
import hmac
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from freshrec.domain import EventType
from freshrec.ingest.validate import InvalidRecord, Validator
from freshrec.settings import IngestSettings
from tests.conftest import T0

NOW = T0 + 86_400


def errors_of(call: Any, raw: Any) -> dict[str, str]:
    with pytest.raises(InvalidRecord) as info:
        call(raw)
    return {e.field: e.message for e in info.value.errors}


def test_a_valid_event(validator: Validator) -> None:
    e = validator.event(
        {
            "user_id": "u",
            "item_id": 42,
            "type": "Rating",
            "value": "4.5",
            "timestamp": "2023-11-14T22:13:20Z",
            "context": '{"page": "home"}',
        }
    )
    assert (e.user_id, e.item_id, e.type, e.value, e.timestamp, e.context) == (
        "u",
        "42",
        EventType.RATING,
        4.5,
        T0,
        {"page": "home"},
    )


def test_missing_timestamp_means_now(validator: Validator) -> None:
    assert validator.event({"user_id": "u", "item_id": "i", "type": "click"}).timestamp == NOW


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ({"item_id": "i", "type": "click"}, "user_id", "is required"),
        ({"user_id": "", "item_id": "i", "type": "click"}, "user_id", "must not be empty"),
        ({"user_id": "u\x00", "item_id": "i", "type": "click"}, "user_id", "U+0000"),
        ({"user_id": " u", "item_id": "i", "type": "click"}, "user_id", "whitespace"),
        ({"user_id": "u", "item_id": "x" * 300, "type": "click"}, "item_id", "limit is 256"),
        ({"user_id": "u", "item_id": True, "type": "click"}, "item_id", "must be a string"),
        ({"user_id": "u", "item_id": "i", "type": "like"}, "type", "not an event type"),
        ({"user_id": "u", "item_id": "i", "type": "rating"}, "value", "required for a rating"),
        (
            {"user_id": "u", "item_id": "i", "type": "rating", "value": 6},
            "value",
            "outside the rating scale [0.5, 5.0]",
        ),
        ({"user_id": "u", "item_id": "i", "type": "rating", "value": 0}, "value", "outside the rating scale"),
        ({"user_id": "u", "item_id": "i", "type": "rating", "value": float("nan")}, "value", "finite"),
        ({"user_id": "u", "item_id": "i", "type": "rating", "value": "inf"}, "value", "finite"),
        ({"user_id": "u", "item_id": "i", "type": "click", "value": 1}, "value", "only allowed for type 'rating'"),
        ({"user_id": "u", "item_id": "i", "type": "click", "timestamp": NOW + 3600}, "timestamp", "in the future"),
        ({"user_id": "u", "item_id": "i", "type": "click", "timestamp": T0 * 1000}, "timestamp", "milliseconds"),
        ({"user_id": "u", "item_id": "i", "type": "click", "timestamp": -1}, "timestamp", "before 1970"),
        ({"user_id": "u", "item_id": "i", "type": "click", "timestamp": "yesterday"}, "timestamp", "ISO 8601"),
        ({"user_id": "u", "item_id": "i", "type": "click", "context": [1]}, "context", "JSON object"),
        ({"user_id": "u", "item_id": "i", "type": "click", "context": "{bad"}, "context", "not valid JSON"),
        (
            {"user_id": "u", "item_id": "i", "type": "click", "context": {"s": "x" * 20_000}},
            "context",
            "limit for context",
        ),
        (
            {"user_id": "u", "item_id": "i", "type": "click", "context": {"x": float("inf")}},
            "context",
            "cannot be stored as JSON",
        ),
        ({"user_id": "u", "item_id": "i", "type": "click", "colour": "red"}, "colour", "unknown field"),
    ],
)
def test_event_errors_name_the_field(validator: Validator, raw: dict[str, Any], field: str, fragment: str) -> None:
    errors = errors_of(validator.event, raw)
    assert field in errors, errors
    assert fragment in errors[field]


def test_all_problems_are_reported_at_once(validator: Validator) -> None:
    errors = errors_of(validator.event, {"user_id": "", "type": "nope"})
    assert set(errors) == {"user_id", "item_id", "type"}


def test_rating_scale_comes_from_settings() -> None:
    ten_point = Validator(IngestSettings(rating_min=1, rating_max=10), clock=lambda: NOW)
    assert ten_point.event({"user_id": "u", "item_id": "i", "type": "rating", "value": 9}).value == 9
    assert "value" in errors_of(ten_point.event, {"user_id": "u", "item_id": "i", "type": "rating", "value": 0.5})


def test_a_valid_item_and_its_normalisation(validator: Validator) -> None:
    item = validator.item(
        {
            "id": 7,
            "title": "  Heat (1995) ",
            "categories": "Action| Crime||Action",
            "attributes": '{"year": 1995}',
            "vector": [1, 0],
        }
    )
    assert (item.item_id, item.title, item.categories, item.attributes, item.vector) == (
        "7",
        "Heat (1995)",
        ("Action", "Crime"),
        {"year": 1995},
        (1.0, 0.0),
    )


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ({"title": "x"}, "item_id", "is required"),
        ({"item_id": "a", "title": "x" * 1001}, "title", "limit is 1000"),
        ({"item_id": "a", "title": 5}, "title", "must be a string"),
        ({"item_id": "a", "categories": [1]}, "categories", "[0] must be a string"),
        ({"item_id": "a", "categories": {"a": 1}}, "categories", "list of strings"),
        ({"item_id": "a", "vector": [0, 0]}, "vector", "all zeros"),
        ({"item_id": "a", "vector": [1, "x"]}, "vector", "[1] must be a finite number"),
        ({"item_id": "a", "vector": [1, float("nan")]}, "vector", "[1] must be a finite number"),
        ({"item_id": "a", "attributes": [1]}, "attributes", "JSON object"),
        ({"item_id": "a", "title": "bad \udcff byte"}, "title", "surrogate"),
        ({"item_id": "a", "price": 3}, "price", "unknown field"),
    ],
)
def test_item_errors_name_the_field(validator: Validator, raw: dict[str, Any], field: str, fragment: str) -> None:
    errors = errors_of(validator.item, raw)
    assert field in errors, errors
    assert fragment in errors[field]


def test_non_mapping_input_is_rejected(validator: Validator) -> None:
    assert "record" in errors_of(validator.event, ["u", "i"])
    assert "record" in errors_of(validator.item, "item")


# -- properties ---------------------------------------------------------------


def valid_or_field_errors(check: Any, raw: Any) -> Any:
    """The validated object, or ``None`` after checking that every error names a field and says why."""
    try:
        return check(raw)
    except InvalidRecord as exc:
        assert exc.errors and all(e.field and e.message for e in exc.errors)
        return None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from(["user_id", "item_id", "type", "value", "timestamp", "event_id", "context", "extra"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(field_names, json_values, max_size=8))
def test_arbitrary_input_gives_an_event_or_a_field_error(raw: dict[str, Any]) -> None:
    event = valid_or_field_errors(Validator(IngestSettings(), clock=lambda: NOW).event, raw)
    if event is None:
        return
    assert event.user_id and event.item_id and math.isfinite(event.timestamp)
    assert 0 <= event.timestamp <= NOW + 300
    assert (event.value is not None) == (event.type is EventType.RATING)


ids = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Cn", "Zs", "Zl", "Zp")), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    user=ids,
    item=ids,
    type_=st.sampled_from(list(EventType)),
    value=st.floats(0.5, 5.0),
    ts=st.floats(0, NOW),
    context=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4),
)
def test_valid_events_keep_their_values(
    user: str, item: str, type_: EventType, value: float, ts: float, context: dict[str, Any]
) -> None:
    validator = Validator(IngestSettings(), clock=lambda: NOW)
    raw: dict[str, Any] = {"user_id": user, "item_id": item, "type": type_.value, "timestamp": ts, "context": context}
    if type_ is EventType.RATING:
        raw["value"] = value
    event = validator.event(raw)
    assert (event.user_id, event.item_id, event.type, event.timestamp) == (user, item, type_, ts)
    assert event.value == (value if type_ is EventType.RATING else None)
    assert event.context == (context or None)


@settings(max_examples=200, deadline=None)
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_rating_values_are_accepted_exactly_on_the_scale(value: float) -> None:
    validator = Validator(IngestSettings(), clock=lambda: NOW)
    raw = {"user_id": "u", "item_id": "i", "type": "rating", "value": value}
    if math.isfinite(value) and 0.5 <= value <= 5.0:
        assert validator.event(raw).value == value
    else:
        assert "value" in errors_of(validator.event, raw)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["item_id", "id", "title", "description", "categories", "attributes", "vector", "x"]),
        json_values,
        max_size=7,
    )
)
def test_arbitrary_items_give_an_item_or_a_field_error(raw: dict[str, Any]) -> None:
    item = valid_or_field_errors(Validator(IngestSettings(), clock=lambda: NOW).item, raw)
    if item is None:
        return
    assert item.item_id
    assert item.vector is None or all(math.isfinite(x) for x in item.vector)


def test_pseudonyms_are_keyed_hmacs_of_the_user_id() -> None:
    raw = {"user_id": "bob", "item_id": "i1", "type": "click", "timestamp": 1_700_000_000}
    plain = Validator(IngestSettings()).event(raw)
    a = Validator(IngestSettings(pseudonymize_key=SecretStr("key-a"))).event(raw)
    again = Validator(IngestSettings(pseudonymize_key=SecretStr("key-a"))).event(raw)
    b = Validator(IngestSettings(pseudonymize_key=SecretStr("key-b"))).event(raw)
    assert plain.user_id == "bob"
    assert a.user_id == again.user_id and a.user_id != b.user_id
    expected = hmac.new(b"key-a", b"bob", hashlib.sha256).hexdigest()[:32]
    assert a.user_id == f"p:{expected}"
