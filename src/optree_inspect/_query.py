"""Parsing the `query` argument of `find`, `get` and `set` into a query object (README: Queries).

Five forms: a key path (a tuple of JAX key entries), a keystr (a string that starts with `.` or `[`,
or is empty), a pattern (any other string), a type, and a predicate. Strings are read by a small
scanner, never by `eval`; bracketed literals are decoded with `ast.literal_eval`, which only reads
literals.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey, keystr

from ._errors import InvalidArgumentError, QuerySyntaxError

KeyEntry: TypeAlias = DictKey | SequenceKey | GetAttrKey | FlattenedIndexKey
KeyPath: TypeAlias = tuple[KeyEntry, ...]
KEY_TYPES = (DictKey, SequenceKey, GetAttrKey, FlattenedIndexKey)

SCHEDULE_BOOKKEEPING = "hyperparams_states"
"""The field of optax's inject state that patterns enter only when they name it."""

_GLOB_CHARS = frozenset("*?")
_NAME_STOP = frozenset(".[]")
_FLAT_INDEX = re.compile(r"<flat index (\d+)>")


@dataclass(frozen=True)
class Attr:
    """`.name` in a keystr: a `GetAttrKey`."""

    name: str


@dataclass(frozen=True)
class Item:
    """`[literal]` in a keystr or pattern: a `DictKey` with that key or, for an int, a `SequenceKey`."""

    key: Any


@dataclass(frozen=True)
class FlatIndex:
    """`[<flat index N>]`: the `FlattenedIndexKey` of an unkeyed custom node."""

    index: int


Step: TypeAlias = Attr | Item | FlatIndex


@dataclass(frozen=True)
class Name:
    """A pattern component that is a name or an fnmatch glob (`*`, `?`)."""

    text: str
    is_glob: bool


Component: TypeAlias = Name | Item


@dataclass(frozen=True)
class ExactQuery:
    """A path from the root, edge by edge: from a key path or a keystr."""

    steps: tuple[Step | KeyEntry, ...]
    text: str


@dataclass(frozen=True)
class PatternQuery:
    """Components that match a subsequence of a node's path, the last one its last edge."""

    components: tuple[Component, ...]
    text: str

    @property
    def enters_schedule_bookkeeping(self) -> bool:
        return any(isinstance(c, Name) and c.text == SCHEDULE_BOOKKEEPING for c in self.components)


@dataclass(frozen=True)
class TypeQuery:
    """Every node that is an instance of `cls`."""

    cls: type


@dataclass(frozen=True)
class PredicateQuery:
    """Every node for which `predicate(path, node)` is true."""

    predicate: Callable[[KeyPath, Any], bool]


ParsedQuery: TypeAlias = ExactQuery | PatternQuery | TypeQuery | PredicateQuery

Query: TypeAlias = str | KeyPath | type | Callable[[KeyPath, Any], bool]
"""What `find`, `get` and `set` accept: a keystr or pattern, a key path, a type or a predicate."""


def parse_query(query: object) -> ParsedQuery:
    """The query object for any of the five query forms.

    >>> parse_query("[1].hyperparams['learning_rate']").steps
    (Item(key=1), Attr(name='hyperparams'), Item(key='learning_rate'))
    >>> [c.text for c in parse_query("body.learning_rate").components]
    ['body', 'learning_rate']
    """
    if isinstance(query, str):
        # Long strings are parsed each time, so that the parse cache never pins much memory.
        return _parse_string(query) if len(query) <= _CACHED_LENGTH else _parse_string.__wrapped__(query)
    if isinstance(query, tuple) and all(isinstance(k, KEY_TYPES) for k in query):
        return ExactQuery(tuple(query), _keystr(query))
    if isinstance(query, type):
        return TypeQuery(query)
    if callable(query):
        return PredicateQuery(query)
    raise InvalidArgumentError(
        "A query is a key path (a tuple of jax.tree_util key entries), a string, a type or a "
        f"predicate `lambda path, node: ...`; got {type(query).__name__}."
    )


_CACHED_LENGTH = 256


@functools.lru_cache(maxsize=1024)
def _parse_string(text: str) -> ExactQuery | PatternQuery:
    if text == "" or text[0] in ".[":
        return ExactQuery(tuple(_parse_keystr(text)), text)
    return PatternQuery(tuple(_parse_pattern(text)), text)


def _parse_keystr(text: str) -> list[Step]:
    steps: list[Step] = []
    pos = 0
    while pos < len(text):
        if text[pos] == ".":
            end = _scan_name(text, pos + 1)
            name = text[pos + 1 : end]
            if not name.isidentifier():
                raise QuerySyntaxError(text, pos + 1, "Expected an attribute name after '.'")
            steps.append(Attr(name))
            pos = end
        elif text[pos] == "[":
            step, pos = _parse_bracket(text, pos)
            steps.append(step)
        else:
            raise QuerySyntaxError(text, pos, f"Expected '.' or '[' but found {text[pos]!r}")
    return steps


def _parse_pattern(text: str) -> list[Component]:
    components: list[Component] = []
    pos = 0
    expect_component = True
    while pos < len(text):
        char = text[pos]
        if char == "[":
            step, pos = _parse_bracket(text, pos)
            if not isinstance(step, Item):
                raise QuerySyntaxError(text, pos - 1, "A pattern cannot name a flat index")
            components.append(step)
            expect_component = False
        elif char == ".":
            if expect_component:
                raise QuerySyntaxError(text, pos, "Empty pattern component")
            expect_component = True
            pos += 1
        elif char == "]":
            raise QuerySyntaxError(text, pos, "Unmatched ']'")
        else:
            if not expect_component:
                raise QuerySyntaxError(text, pos, "Expected '.' between pattern components")
            end = _scan_name(text, pos)
            name = text[pos:end]
            if name.strip() != name:
                raise QuerySyntaxError(text, pos, "Pattern components cannot start or end with spaces")
            components.append(Name(name, any(c in _GLOB_CHARS for c in name)))
            expect_component = False
            pos = end
    if expect_component:
        raise QuerySyntaxError(text, len(text), "Empty pattern component")
    return components


def _scan_name(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] not in _NAME_STOP:
        pos += 1
    return pos


def _parse_bracket(text: str, start: int) -> tuple[Step, int]:
    """The literal of the bracket that opens at `start`, and the position after its `]`."""
    pos = start + 1
    if pos < len(text) and text[pos] in "'\"":
        pos = _scan_string_literal(text, pos)
    else:
        depth = 0
        while pos < len(text) and not (text[pos] == "]" and depth == 0):
            if text[pos] in "([{":
                depth += 1
            elif text[pos] in ")]}":
                depth -= 1
            elif text[pos] in "'\"":
                pos = _scan_string_literal(text, pos) - 1
            pos += 1
    if pos >= len(text) or text[pos] != "]":
        raise QuerySyntaxError(text, min(pos, len(text)), "Unclosed '['")
    inner = text[start + 1 : pos]
    flat = _FLAT_INDEX.fullmatch(inner)
    if flat:
        return FlatIndex(int(flat.group(1))), pos + 1
    if not inner:
        raise QuerySyntaxError(text, start + 1, "Empty brackets")
    try:
        value = ast.literal_eval(inner)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise QuerySyntaxError(
            text, start + 1, "Expected a literal such as 0 or 'name' inside brackets"
        ) from None
    try:
        hash(value)
    except TypeError:
        raise QuerySyntaxError(text, start + 1, "A bracketed key must be hashable") from None
    return Item(value), pos + 1


def _scan_string_literal(text: str, pos: int) -> int:
    """The position just after the quoted string literal that starts at `pos`."""
    quote = text[pos]
    pos += 1
    while pos < len(text):
        if text[pos] == "\\":
            pos += 2
            continue
        if text[pos] == quote:
            return pos + 1
        pos += 1
    raise QuerySyntaxError(text, len(text), "Unterminated string literal")


def _keystr(path: Sequence[KeyEntry]) -> str:
    return keystr(tuple(path))
