"""The `query` argument of `find`, `get` and `set`: parsed into one of five query forms, each of
which selects nodes, selects attached values, and explains a miss (docs/queries.md).

Five forms: a key path (a tuple of JAX key entries), a keystr (a string that starts with `.` or `[`,
or is empty), a pattern (any other string), a type, and a predicate. Strings are read by a small
scanner, never by `eval`; bracketed literals are decoded with `ast.literal_eval`, which only reads
literals.
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from jax.tree_util import GetAttrKey, keystr

from ._cache import structure_index
from ._errors import InvalidArgumentError, QuerySyntaxError, bounded, listing
from ._index import StructureIndex
from ._keys import (
    KEY_TYPES,
    Attr,
    Component,
    FlatIndex,
    Item,
    KeyEntry,
    KeyPath,
    Name,
    Step,
    path_text,
    step_matches,
    step_text,
)
from ._match import match, prefix_matches
from ._paths import child_at, exact_key, value_at, walk_exact, walk_with_paths
from ._registry import CONTAINER_TYPE_NAMES, children_with_keys
from ._state_rules import active

_GLOB_CHARS = frozenset("*?")
_NAME_STOP = frozenset(".[]>")
_FLAT_INDEX = re.compile(r"<flat index (\d+)>")
_CLOSE_NAMES = 8


class Attached(Protocol):
    """A value that is not in the tree but read beside it as a field of one of its nodes (a
    hyperparameter an optimizer keeps in its closures): queries select it like a node."""

    @property
    def node_path(self) -> KeyPath: ...

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> Any: ...

    @property
    def path(self) -> KeyPath: ...


Found: TypeAlias = list[tuple[KeyPath, Any]]


# Each query form owns its behaviour: what it selects in a tree, whether it selects a value
# attached beside the tree, what a miss says, and how a message names it. A new form is one class
# here and one entry in `parse_query`.


@dataclass(frozen=True)
class ExactQuery:
    """A path from the root, edge by edge: from a key path or a keystr."""

    steps: tuple[Step | KeyEntry, ...]
    text: str

    @property
    def label(self) -> str:
        return repr(bounded(self.text))

    def select(self, tree: Any) -> Found:
        found = walk_exact(tree, self.steps)
        return [] if found is None else [found]

    def selects_attached(self, tree: Any, attached: Attached) -> bool:
        if not self.steps or not step_matches(self.steps[-1], GetAttrKey(attached.name)):
            return False
        walked = walk_exact(tree, self.steps[:-1])
        return walked is not None and walked[0] == attached.node_path

    def explain_miss(self, tree: Any) -> list[str]:
        node, done = tree, list[KeyEntry]()
        for step in self.steps:
            key = exact_key(node, step)
            if key is None:
                where, what = path_text(tuple(done)), type(node).__name__
                children = [str(k) for k, _ in children_with_keys(node) or ()]
                if not children:
                    return [f"No node at {self.label}: {where} is a {what} with no children."]
                return [
                    f"No node at {self.label}: {where} ({what}) has no child {step_text(step)}; its "
                    f"children are:\n{listing(children)}"
                ]
            done.append(key)
            node = child_at(node, key)
        return [f"No node at {self.label}."]


@dataclass(frozen=True)
class PatternQuery:
    """Components that match a subsequence of a node's path, the last one its last edge; a
    component written after `>` matches the edge right after the previous component's."""

    components: tuple[Component, ...]
    text: str
    direct: tuple[bool, ...] = ()
    """For each component, whether it follows `>` (empty: none does)."""

    @property
    def label(self) -> str:
        return repr(bounded(self.text))

    @property
    def enters_hidden(self) -> bool:
        """Whether a component names a field that starts a hidden region (`match`)."""
        hidden_fields = active().hidden_fields
        return any(isinstance(c, Name) and c.text in hidden_fields for c in self.components)

    def nodes(self, index: StructureIndex) -> tuple[int, ...]:
        """The numbers of the nodes of `index` it selects, memoised on the index."""
        found = index.memo.results.get(self)
        if found is None:
            found = tuple(match(index, self.components, self.enters_hidden, self.direct))
            index.memo.results[self] = found
        return found

    def select(self, tree: Any) -> Found:
        index = structure_index(tree)
        return [(path, value_at(tree, path)) for path in map(index.path, self.nodes(index))]

    def selects_attached(self, tree: Any, attached: Attached) -> bool:
        last = self.components[-1]
        if not isinstance(last, Name) or not fnmatch.fnmatchcase(attached.name, last.text):
            return False
        index = structure_index(tree)
        node = index.number_of(attached.node_path)
        chain = [] if node is None else [*index.ancestors(node), node]
        direct = self.direct or (False,) * len(self.components)
        if node is None:
            return False
        return prefix_matches(index, self.components[:-1], chain, direct[:-1], ends_at_last=direct[-1])

    def explain_miss(self, tree: Any) -> list[str]:
        index = structure_index(tree)
        vocabulary = [name for name in index.by_text if 0 < len(name) <= 100] + [
            name
            for name in (*index.by_type_name, *index.by_state_name)
            if name not in CONTAINER_TYPE_NAMES and len(name) <= 100
        ]
        wanted = [
            c.text for c in self.components if isinstance(c, Name) and not c.is_glob and len(c.text) <= 100
        ]
        close = {s for w in wanted for s in difflib.get_close_matches(w, vocabulary, n=4)} - set(wanted)
        lines = [f"No node matches {self.label}."]
        if close:
            lines.append(f"Close names in the tree: {', '.join(sorted(close)[:_CLOSE_NAMES])}.")
        return lines


@dataclass(frozen=True)
class TypeQuery:
    """Every node that is an instance of `cls`."""

    cls: type

    @property
    def label(self) -> str:
        return bounded(self.cls.__name__)

    def select(self, tree: Any) -> Found:
        if type(self.cls).__instancecheck__ is not type.__instancecheck__:
            # jax.Array and ABCs accept instances (such as tracers) that are not subclasses.
            return [(path, node) for path, node in walk_with_paths(tree) if isinstance(node, self.cls)]
        index = structure_index(tree)
        found = index.memo.results.get(self)
        if found is None:
            kinds = [kind for kind in dict.fromkeys(index.types) if issubclass(kind, self.cls)]
            found = tuple(index.by_type_name.nodes_of_values(kinds))
            index.memo.results[self] = found
        return [(path, value_at(tree, path)) for path in map(index.path, found)]

    def selects_attached(self, tree: Any, attached: Attached) -> bool:
        return isinstance(attached.value, self.cls)

    def explain_miss(self, tree: Any) -> list[str]:
        return [f"No node of type {self.label} in the tree."]


@dataclass(frozen=True)
class PredicateQuery:
    """Every node for which `predicate(path, node)` is true."""

    predicate: Callable[[KeyPath, Any], bool]

    @property
    def label(self) -> str:
        return "the predicate"

    def select(self, tree: Any) -> Found:
        return [(path, node) for path, node in walk_with_paths(tree) if self.predicate(path, node)]

    def selects_attached(self, tree: Any, attached: Attached) -> bool:
        return bool(self.predicate(attached.path, attached.value))

    def explain_miss(self, tree: Any) -> list[str]:
        return ["No node satisfies the predicate."]


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
    components, direct = _parse_pattern(text)
    return PatternQuery(tuple(components), text, tuple(direct) if any(direct) else ())


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


def _parse_pattern(text: str) -> tuple[list[Component], list[bool]]:
    """The components of a pattern, and for each whether it follows `>`."""
    components: list[Component] = []
    direct: list[bool] = []
    pos = 0
    expect_component = True
    after_child = False
    while pos < len(text):
        char = text[pos]
        if char == "[":
            step, pos = _parse_bracket(text, pos)
            if not isinstance(step, Item):
                raise QuerySyntaxError(text, pos - 1, "A pattern cannot name a flat index")
            components.append(step)
            direct.append(after_child)
            expect_component, after_child = False, False
        elif char in ".>":
            if expect_component:
                raise QuerySyntaxError(text, pos, "Empty pattern component")
            expect_component, after_child = True, char == ">"
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
            direct.append(after_child)
            expect_component, after_child = False, False
            pos = end
    if expect_component:
        raise QuerySyntaxError(text, len(text), "Empty pattern component")
    return components, direct


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
