"""Conditions on a snapshot's JSON value, for ``rustrade-store ls --where``: a small JSON-path
language, evaluated client-side over the streamed snapshots.

Grammar (``and`` binds tighter than ``or``; words are lower case)::

    condition  := term ("or" term)*
    term       := factor ("and" factor)*
    factor     := "not" factor | "(" condition ")" | path [operator literal]
    path       := "$" ("." name | "[" integer "]" | "[" string "]")*
    operator   := "==" | "!=" | "<" | "<=" | ">" | ">="
    literal    := a JSON string, number, true, false or null

``$`` is the whole value, ``.name`` a member (a name is letters, digits and ``_``, not starting
with a digit; any other member name goes in brackets as a JSON string: ``$["loss-streak"]``),
``[0]`` an item of a list (``[-1]`` the last). A bare path holds when it exists and is neither
``false`` nor ``null`` (as in jq). A comparison on a path that does not exist is false, whatever
the operator; ``==`` and ``!=`` compare JSON values (``1 == 1.0``, but ``true`` is not ``1``);
``<``, ``<=``, ``>`` and ``>=`` compare two numbers or two strings, and are false otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from .codec import parse

if TYPE_CHECKING:
    from .codec import JSONValue

__all__ = ["MAX_NESTING", "Condition", "compile_condition"]

Condition = Callable[["JSONValue"], bool]
"""A compiled condition: true when the value meets it."""

_MISSING = object()
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\\x00-\x1f]|\\.)*")
      | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
      | (?P<op>==|!=|<=|>=|<|>)
      | (?P<punct>[$.\[\]()])
      | (?P<word>[^\W\d]\w*)
    )""",
    re.VERBOSE,
)
_WORDS = {"true": True, "false": False, "null": None}


MAX_NESTING = 100
"""The deepest a condition may nest ``not`` and parentheses: far past any condition a person
writes, well within Python's recursion limit for its parsing and its evaluation."""


class _Parser:
    """Recursive descent over the tokens of one expression."""

    __slots__ = ("_at", "_depth", "_text", "_tokens")

    def __init__(self, text: str) -> None:
        self._text = text
        self._tokens: list[tuple[str, str, int]] = []  # kind, text, column
        position = 0
        while position < len(text):
            if not text[position:].strip():
                break
            match = _TOKEN.match(text, position)
            if match is None or match.lastgroup is None:
                column = len(text) - len(text[position:].lstrip()) + 1
                hint = " (equality is ==)" if text[column - 1] == "=" else ""
                self._fail(f"unexpected {text[column - 1]!r}{hint}", column)
            kind = match.lastgroup
            self._tokens.append((kind, match.group(kind), match.start(kind) + 1))
            position = match.end()
        self._at = 0
        self._depth = 0

    def _fail(self, message: str, column: int | None = None) -> NoReturn:
        if column is None:
            column = self._tokens[self._at][2] if self._at < len(self._tokens) else 0
        where = f"at column {column}" if column else "at the end"
        raise ValueError(f"{message} {where} of {self._text!r}")

    def _peek(self) -> tuple[str, str] | None:
        if self._at < len(self._tokens):
            kind, text, _ = self._tokens[self._at]
            return kind, text
        return None

    def _take(self, text: str | None = None) -> bool:
        token = self._peek()
        if token is not None and (text is None or token[1] == text):
            self._at += 1
            return True
        return False

    def _expect(self, text: str, what: str) -> None:
        if not self._take(text):
            self._fail(f"expected {what}")

    def condition(self) -> Condition:
        result = self._or()
        if self._peek() is not None:
            self._fail("expected 'and', 'or' or the end")
        return result

    def _or(self) -> Condition:
        terms = [self._and()]
        while self._peek() == ("word", "or"):
            self._at += 1
            terms.append(self._and())
        if len(terms) == 1:
            return terms[0]
        return lambda value: any(term(value) for term in terms)

    def _and(self) -> Condition:
        factors = [self._factor()]
        while self._peek() == ("word", "and"):
            self._at += 1
            factors.append(self._factor())
        if len(factors) == 1:
            return factors[0]
        return lambda value: all(factor(value) for factor in factors)

    def _factor(self) -> Condition:
        token = self._peek()
        if token in (("word", "not"), ("punct", "(")):
            self._depth += 1
            if self._depth > MAX_NESTING:
                self._fail(f"nested deeper than {MAX_NESTING} levels of 'not' and '('")
            self._at += 1
            inner = self._factor() if token == ("word", "not") else self._group()
            self._depth -= 1
            if token == ("word", "not"):
                return lambda value: not inner(value)
            return inner
        if token != ("punct", "$"):
            self._fail("expected a path starting with '$', 'not' or '('")
        path = self._path()
        operator = self._peek()
        if operator is None or operator[0] != "op":
            return lambda value: _truthy(_follow(value, path))
        self._at += 1
        literal = self._literal()
        compare = _COMPARISONS[operator[1]]
        return lambda value: _holds(compare, _follow(value, path), literal)

    def _group(self) -> Condition:
        inner = self._or()
        self._expect(")", "')'")
        return inner

    def _path(self) -> list[str | int]:
        self._expect("$", "'$'")
        steps: list[str | int] = []
        while True:
            if self._take("."):
                token = self._peek()
                if token is None or token[0] != "word":
                    self._fail(
                        "expected a member name after '.' (other names go in brackets, "
                        'as in $["loss-streak"])'
                    )
                steps.append(token[1])
                self._at += 1
            elif self._take("["):
                token = self._peek()
                if token is not None and token[0] == "string":
                    steps.append(_json_string(token[1]))
                elif (
                    token is not None
                    and token[0] == "number"
                    and re.fullmatch(r"-?[0-9]+", token[1])
                ):
                    steps.append(int(token[1]))
                else:
                    self._fail("expected an index or a JSON string inside [ ]")
                self._at += 1
                self._expect("]", "']'")
            else:
                return steps

    def _literal(self) -> JSONValue:
        token = self._peek()
        if token is not None and token[0] in ("string", "number"):
            try:
                literal = parse(token[1])
            except ValueError as exc:
                self._fail(str(exc))
            self._at += 1
            return literal
        if token is not None and token[0] == "word" and token[1] in _WORDS:
            self._at += 1
            return _WORDS[token[1]]
        self._fail(
            "expected a JSON literal (a string in double quotes, a number, true, false or null)"
        )


def _json_string(text: str) -> str:
    value = parse(text)
    assert isinstance(value, str)
    return value


def _follow(value: object, path: list[str | int]) -> object:
    for step in path:
        if isinstance(step, str):
            if type(value) is not dict or step not in value:
                return _MISSING
            value = value[step]
        else:
            if type(value) is not list or not -len(value) <= step < len(value):
                return _MISSING
            value = value[step]
    return value


def _truthy(found: object) -> bool:
    return found is not _MISSING and found is not None and found is not False


def _number(value: object) -> bool:
    return type(value) is int or type(value) is float


def _same(left: object, right: object) -> bool:
    """JSON equality: numbers by value, everything else by type and value."""
    if _number(left) and _number(right):
        return left == right
    if type(left) is not type(right):
        return False
    if type(left) is list:
        assert isinstance(right, list)
        return len(left) == len(right) and all(map(_same, left, right))
    if type(left) is dict:
        assert isinstance(right, dict)
        return left.keys() == right.keys() and all(_same(left[k], right[k]) for k in left)
    return left == right


def _ordered(left: object, right: object) -> bool:
    return (_number(left) and _number(right)) or (type(left) is str and type(right) is str)


_COMPARISONS: dict[str, Callable[[object, object], bool]] = {
    "==": _same,
    "!=": lambda left, right: not _same(left, right),
    "<": lambda left, right: _ordered(left, right) and left < right,  # type: ignore[operator]
    "<=": lambda left, right: _ordered(left, right) and left <= right,  # type: ignore[operator]
    ">": lambda left, right: _ordered(left, right) and left > right,  # type: ignore[operator]
    ">=": lambda left, right: _ordered(left, right) and left >= right,  # type: ignore[operator]
}


def _holds(compare: Callable[[object, object], bool], found: object, literal: object) -> bool:
    return found is not _MISSING and compare(found, literal)


def compile_condition(text: str) -> Condition:
    """Compile ``text`` (the grammar above); raise ``ValueError`` naming the column at fault."""
    return _Parser(text).condition()
