"""Business rules: expressions over an item's fields that filter or boost a list.

A small grammar, parsed by hand (never ``eval``), so a rule from a URL can do
nothing but compare an item's fields::

    rule       := disjunct ("or" disjunct)*
    disjunct   := conjunct ("and" conjunct)*
    conjunct   := "not" conjunct | comparison
    comparison := operand [operator operand]
    operator   := "==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in"
    operand    := field | string | number | "true" | "false" | "null" | list | "(" rule ")"
    list       := "[" [operand ("," operand)*] "]"
    field      := "item_id" | "title" | "categories" | "created_at" | "attributes" ("." name)+

Strings are quoted with ``"`` or ``'`` (a backslash escapes the next character);
names are letters, digits and ``_``. For example::

    attributes.price < 50 and "Indie" in categories and not attributes.early_access

Meaning, per item: a missing attribute is ``null``; ``<``, ``<=``, ``>``, ``>=``
compare two numbers or two strings and are false otherwise; ``==`` never makes
``true`` equal ``1``; ``x in categories`` ignores case, as the ``categories``
parameter does (and so does a string's membership in any list); ``x in "text"`` is
a substring test; a lone operand is true when
it is ``true``, a nonzero number, or a non-empty string or list.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_LENGTH = 2_000
"""Longest rule accepted (characters)."""
MAX_DEPTH = 32
"""Deepest nesting of parentheses, ``not`` and lists accepted."""
FIELDS = ("item_id", "title", "categories", "created_at", "attributes")
KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}
_TOKEN = re.compile(
    r"\s*(?:(?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,|\.)|(?P<string>[\"']))"
)


class RuleError(ValueError):
    """A rule that does not parse; ``position`` is the 0-based offset of the problem."""

    def __init__(self, message: str, position: int):
        super().__init__(f"{message} at position {position}")
        self.message = message
        self.position = position


@dataclass(frozen=True)
class Fields:
    """What a rule reads of one item."""

    item_id: str
    title: str
    categories: Sequence[str]
    created_at: float | None
    attributes: dict[str, Any]


Check = Callable[[Fields], Any]


@dataclass(frozen=True)
class Token:
    kind: str  # number, name, op, string, end
    text: str
    value: Any
    position: int


def tokens(rule: str) -> list[Token]:
    if len(rule) > MAX_LENGTH:
        raise RuleError(f"a rule may be at most {MAX_LENGTH} characters", MAX_LENGTH)
    out, at = [], 0
    while True:
        while at < len(rule) and rule[at].isspace():
            at += 1
        if at == len(rule):
            out.append(Token("end", "", None, at))
            return out
        found = _TOKEN.match(rule, at)
        if found is None or found.lastgroup is None:
            raise RuleError(f"unexpected {rule[at]!r}", at)
        start = found.start(found.lastgroup)
        if found.lastgroup == "string":
            text, at = _string(rule, start)
            out.append(Token("string", rule[start:at], text, start))
            continue
        text = found.group(found.lastgroup)
        value = float(text) if found.lastgroup == "number" else text
        out.append(Token(found.lastgroup, text, value, start))
        at = found.end()


def _string(rule: str, start: int) -> tuple[str, int]:
    quote, at, chars = rule[start], start + 1, []
    while at < len(rule):
        c = rule[at]
        if c == "\\" and at + 1 < len(rule):
            chars.append(rule[at + 1])
            at += 2
        elif c == quote:
            return "".join(chars), at + 1
        else:
            chars.append(c)
            at += 1
    raise RuleError("a string is not closed", start)


@functools.lru_cache(maxsize=256)
def parse(rule: str) -> Check:
    """A function of an item's :class:`Fields` that says whether the rule holds for it,
    or :class:`RuleError` with the position of the first problem. Cached: a shop sends
    the same few rules again and again."""
    parser = _Parser(tokens(rule))
    check = parser.rule(0)
    end = parser.peek()
    if end.kind != "end":
        raise RuleError(f"unexpected {end.text!r}", end.position)
    return lambda item: _truth(check(item))


class _Parser:
    def __init__(self, toks: list[Token]):
        self.toks = toks
        self.at = 0

    def peek(self) -> Token:
        return self.toks[self.at]

    def take(self) -> Token:
        token = self.toks[self.at]
        self.at += 1 if token.kind != "end" else 0
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token.kind == "name" and token.text == word:
            self.at += 1
            return True
        return False

    def expect(self, text: str) -> None:
        token = self.take()
        if token.text != text or token.kind not in ("op", "name"):
            raise RuleError(f"expected {text!r}, found {token.text or 'the end'!r}", token.position)

    def rule(self, depth: int) -> Check:
        if depth > MAX_DEPTH:
            raise RuleError(f"nested more than {MAX_DEPTH} deep", self.peek().position)
        parts = [self.disjunct(depth)]
        while self.keyword("or"):
            parts.append(self.disjunct(depth))
        return parts[0] if len(parts) == 1 else (lambda item: any(_truth(p(item)) for p in parts))

    def disjunct(self, depth: int) -> Check:
        parts = [self.conjunct(depth)]
        while self.keyword("and"):
            parts.append(self.conjunct(depth))
        return parts[0] if len(parts) == 1 else (lambda item: all(_truth(p(item)) for p in parts))

    def conjunct(self, depth: int) -> Check:
        if self.keyword("not"):
            if depth > MAX_DEPTH:
                raise RuleError(f"nested more than {MAX_DEPTH} deep", self.peek().position)
            inner = self.conjunct(depth + 1)
            return lambda item: not _truth(inner(item))
        return self.comparison(depth)

    def comparison(self, depth: int) -> Check:
        left = self.operand(depth)
        token = self.peek()
        negated = False
        if token.kind == "name" and token.text == "not" and self.toks[self.at + 1].text == "in":
            self.at += 1
            negated = True
            token = self.peek()
        if (token.kind == "op" and token.text in _COMPARE) or (token.kind == "name" and token.text == "in"):
            self.at += 1
            right = self.operand(depth)
            compare = _COMPARE["in" if token.text == "in" else token.text]
            if negated:
                return lambda item: not compare(left(item), right(item))
            return lambda item: compare(left(item), right(item))
        if negated:
            raise RuleError("expected 'in' after 'not'", token.position)
        return left

    def operand(self, depth: int) -> Check:
        token = self.take()
        if token.kind in ("number", "string"):
            value = token.value
            return lambda item: value
        if token.kind == "op" and token.text == "(":
            inner = self.rule(depth + 1)
            self.expect(")")
            return inner
        if token.kind == "op" and token.text == "[":
            return self.listing(depth + 1, token)
        if token.kind == "name":
            constants = {"true": True, "false": False, "null": None}
            if token.text in constants:
                constant = constants[token.text]
                return lambda item: constant
            return self.field(token)
        raise RuleError(f"expected a field or a value, found {token.text or 'the end'!r}", token.position)

    def listing(self, depth: int, opening: Token) -> Check:
        if depth > MAX_DEPTH:
            raise RuleError(f"nested more than {MAX_DEPTH} deep", opening.position)
        items: list[Check] = []
        if self.peek().text != "]":
            items.append(self.operand(depth))
            while self.peek().text == ",":
                self.at += 1
                items.append(self.operand(depth))
        self.expect("]")
        return lambda item: [i(item) for i in items]

    def field(self, token: Token) -> Check:
        name = token.text
        if name in KEYWORDS or name not in FIELDS:
            raise RuleError(f"unknown field {name!r}; the fields are {', '.join(FIELDS)}", token.position)
        if name != "attributes":
            return lambda item: getattr(item, name)
        path = []
        while self.peek().text == ".":
            self.at += 1
            part = self.take()
            if part.kind != "name":
                raise RuleError("expected an attribute name after '.'", part.position)
            path.append(part.text)
        if not path:
            raise RuleError("expected '.' and an attribute name after 'attributes'", self.peek().position)
        return lambda item: _lookup(item.attributes, path)


def _lookup(value: Any, path: list[str]) -> Any:
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _truth(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str | list | tuple | dict):
        return len(value) > 0
    return False


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _number(a) and _number(b):
        return float(a) == float(b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def _order(test: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        if _number(a) and _number(b):
            return test(float(a), float(b))
        if isinstance(a, str) and isinstance(b, str):
            return test(a, b)
        return False

    return compare


def _contains(a: Any, b: Any) -> bool:
    if isinstance(b, str):
        return isinstance(a, str) and a in b
    if isinstance(b, list | tuple):
        if isinstance(a, str):
            folded = a.casefold()
            return any(isinstance(x, str) and x.casefold() == folded for x in b)
        return any(_equal(a, x) for x in b)
    return False


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": _equal,
    "!=": lambda a, b: not _equal(a, b),
    "<": _order(lambda a, b: a < b),
    "<=": _order(lambda a, b: a <= b),
    ">": _order(lambda a, b: a > b),
    ">=": _order(lambda a, b: a >= b),
    "in": _contains,
}
