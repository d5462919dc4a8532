"""Business rules: the grammar, its meaning per item, and errors with positions."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.serve.request import promoted
from freshrec.serve.rules import MAX_DEPTH, Fields, RuleError, parse

GAME = Fields(
    "g1",
    "Dark Forest",
    ("Indie", "Strategy"),
    1_700_000_000.0,
    {"price": 19.99, "early_access": False, "tags": ["co-op", "Pixel"], "studio": {"size": 4}, "on_sale": True},
)


@pytest.mark.parametrize(
    ("rule", "holds"),
    [
        ('attributes.price < 50 and "Indie" in categories and not attributes.early_access', True),
        ('attributes.price < 10 or "indie" in categories', True),  # categories ignore case
        ("attributes.price >= 19.99 and attributes.price <= 19.99", True),
        ("attributes.missing == null and not attributes.missing", True),
        ("attributes.missing < 3 or attributes.missing > 3", False),  # null orders with nothing
        ("attributes.on_sale == true and attributes.on_sale != 1", True),  # true is not 1
        ('"Forest" in title and "forest" not in title', True),  # substring, case kept
        ('attributes.studio.size in [1, 2, 4] and item_id in ["g1", "g2"]', True),
        ('"pixel" in attributes.tags and "Racing" not in categories', True),
        ("created_at > 1600000000 and not (created_at > 1800000000)", True),
        ('title < "E" and title > "D"', True),
        ('attributes.price < "50"', False),  # a number and a string do not order
        ("attributes.tags", True),
        ("not attributes.missing.deeper", True),
        ("not not attributes.on_sale", True),
        ("[]", False),
        ("0 or 2.5e0 and -1", True),
    ],
)
def test_rules_mean_what_the_grammar_says(rule: str, holds: bool) -> None:
    assert parse(rule)(GAME) is holds


@pytest.mark.parametrize(
    ("rule", "position", "says"),
    [
        ("attributes.price <", 18, "expected a field or a value"),
        ("price < 50", 0, "unknown field 'price'"),
        ('"Indie" in categories and', 25, "expected a field or a value"),
        ("attributes.price < 50)", 21, "unexpected ')'"),
        ("(attributes.price < 50", 22, "expected ')'"),
        ('title == "open', 9, "not closed"),
        ("attributes", 10, "attribute name"),
        ("attributes.", 11, "attribute name"),
        ("title $ 3", 6, "unexpected '$'"),
        ('"a" not "b"', 4, "unexpected 'not'"),
        ("x" * 2_001, 2_000, "at most"),
        ("(" * (MAX_DEPTH + 2) + "true" + ")" * (MAX_DEPTH + 2), MAX_DEPTH + 1, "nested"),
    ],
)
def test_a_bad_rule_says_what_and_where(rule: str, position: int, says: str) -> None:
    with pytest.raises(RuleError, match=re.escape(says)) as caught:
        parse(rule)
    assert caught.value.position == position


@given(st.text(max_size=60))
@settings(max_examples=400, deadline=None)
def test_any_text_parses_or_fails_with_a_rule_error_never_otherwise(text: str) -> None:
    try:
        check = parse(text)
    except RuleError as exc:
        assert 0 <= exc.position <= len(text)
    else:
        assert check(GAME) in (True, False)


# -- round trips: a rule written from a tree means what the tree means ----------------------
VALUES = st.one_of(
    st.integers(-100, 100),
    st.floats(-100, 100, allow_nan=False, allow_infinity=False),
    st.text(alphabet="abcXYZ \"'\\", max_size=6),
    st.booleans(),
    st.none(),
)
OPERANDS = st.one_of(
    VALUES.map(lambda v: ("value", v)),
    st.sampled_from(["price", "on_sale", "tags", "studio.size", "missing"]).map(lambda a: ("attribute", a)),
    st.sampled_from(["title", "categories", "item_id", "created_at"]).map(lambda f: ("field", f)),
)
TREES = st.recursive(
    st.one_of(
        OPERANDS,
        st.tuples(st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in", "not in"]), OPERANDS, OPERANDS).map(
            lambda t: ("compare", *t)
        ),
    ),
    lambda inner: st.one_of(
        inner.map(lambda t: ("not", t)),
        st.tuples(st.sampled_from(["and", "or"]), inner, inner).map(lambda t: ("logic", *t)),
    ),
    max_leaves=8,
)


def write(tree: tuple[Any, ...]) -> str:
    kind = tree[0]
    if kind == "value":
        v = tree[1]
        if v is None or isinstance(v, bool):
            return {None: "null", True: "true", False: "false"}[v]
        if isinstance(v, str):
            return json.dumps(v)  # the grammar reads JSON's escapes of quotes and backslashes
        return repr(float(v)) if isinstance(v, float) else str(v)
    if kind == "attribute":
        return f"attributes.{tree[1]}"
    if kind == "field":
        return str(tree[1])
    if kind == "compare":
        return f"({write(tree[2])} {tree[1]} {write(tree[3])})"
    if kind == "not":
        return f"(not {write(tree[1])})"
    return f"({write(tree[2])} {tree[1]} {write(tree[3])})"


def meaning(tree: tuple[Any, ...], item: Fields) -> Any:
    """The rule's meaning, written apart from the parser (the documented semantics)."""
    kind = tree[0]
    if kind == "value":
        return float(tree[1]) if isinstance(tree[1], int) and not isinstance(tree[1], bool) else tree[1]
    if kind == "attribute":
        value: Any = item.attributes
        for part in tree[1].split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value
    if kind == "field":
        return getattr(item, tree[1])
    if kind == "not":
        return not truth(meaning(tree[1], item))
    if kind == "logic":
        a, b = truth(meaning(tree[2], item)), truth(meaning(tree[3], item))
        return (a and b) if tree[1] == "and" else (a or b)
    op, a, b = tree[1], meaning(tree[2], item), meaning(tree[3], item)
    if op in ("==", "!="):
        return equal(a, b) is (op == "==")
    if op in ("<", "<=", ">", ">="):
        if not ((number(a) and number(b)) or (isinstance(a, str) and isinstance(b, str))):
            return False
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    if isinstance(b, str):
        inside = isinstance(a, str) and a in b
    elif isinstance(b, list | tuple):
        if isinstance(a, str):
            inside = any(isinstance(x, str) and x.casefold() == a.casefold() for x in b)
        else:
            inside = any(equal(a, x) for x in b)
    else:
        inside = False
    return inside is (op == "in")


def number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if number(a) and number(b):
        return float(a) == float(b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def truth(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return v != 0
    if isinstance(v, str | list | tuple | dict):
        return len(v) > 0
    return False


@given(TREES)
@settings(max_examples=300, deadline=None)
def test_a_written_rule_means_what_its_tree_means(tree: tuple[Any, ...]) -> None:
    rule = write(tree)
    assert parse(rule)(GAME) is truth(meaning(tree, GAME)), rule


def test_a_boost_gives_its_items_places_at_their_own_rank() -> None:
    scores = np.arange(10, 0, -1, dtype=np.float64)  # item c scores 10 - c
    everything = np.ones(10, dtype=bool)
    boosted = np.zeros(10, dtype=bool)
    boosted[[6, 8]] = True
    assert promoted(scores, everything, boosted, [0, 1, 2, 3, 4], 2) == [0, 1, 2, 6, 8]
    assert promoted(scores, everything, boosted, [0, 1, 2, 6, 8], 2) == [0, 1, 2, 6, 8]  # enough already
    assert promoted(scores, everything, boosted, [0, 1, 2, 3, 4], 4) == [0, 1, 2, 6, 8]  # only two exist
    barred = everything.copy()
    barred[6] = False  # a boosted item the filter (or exclusions) leave out stays out
    assert promoted(scores, barred, boosted, [0, 1, 2, 3, 4], 2) == [0, 1, 2, 3, 8]
