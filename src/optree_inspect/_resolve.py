"""Resolving a query against a tree: `find` and `get` (README: Queries, The verbs)."""

from __future__ import annotations

import difflib
import fnmatch
import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey, keystr
from jaxtyping import PyTree

from ._closures import ConstantHyperparameter, Optimizer, read_optimizer
from ._errors import AmbiguousMatchError, DeletedArrayError, NoMatchError, bounded, listing, short_repr
from ._match import item_matches, key_kind, match, prefix_matches
from ._optax_states import missing_hyperparameter_hint
from ._query import (
    KEY_TYPES,
    SCHEDULE_BOOKKEEPING,
    Attr,
    Component,
    ExactQuery,
    FlatIndex,
    Item,
    KeyEntry,
    KeyPath,
    Name,
    ParsedQuery,
    PatternQuery,
    PredicateQuery,
    Query,
    Step,
    TypeQuery,
    parse_query,
)
from ._tree import (
    _DICT_TYPES,
    _MISSING,
    StructureIndex,
    child_at,
    children_with_keys,
    structure_index,
    value_at,
    walk_with_paths,
)

_UNSET: Any = object()
_CONTAINER_NAMES = frozenset({"tuple", "list", "dict", "OrderedDict", "defaultdict", "NoneType"})


class Match(NamedTuple):
    """One node that a query selects: its JAX key path and the node itself."""

    path: KeyPath
    value: Any


def find(tree: PyTree, query: Query, /, *, optimizer: Optimizer | None = None) -> list[Match]:
    """Every node of `tree` that `query` selects, in pre-order; `[]` when none does.

    **Arguments:**
    - `tree`: any JAX pytree, such as an optax optimizer state.
    - `query`: a key path, a keystr, a pattern, a type or a predicate (see the README).
    - `optimizer`: the optax optimizer of the state, to also see the hyperparameters it keeps in
      its closures (read-only), as fields of the state node of their transformation.

    **Returns:** a list of `Match(path, value)`, `path` a JAX key path.

    ```python
    >>> import jax.numpy as jnp, optax, optree_inspect as oi
    >>> state = optax.adam(1e-3).init({"w": jnp.zeros(2)})
    >>> [oi.keystr(m.path) for m in oi.find(state, "mu.*")]
    ["[0].mu['w']"]

    ```
    """
    return [Match(path, value) for path, value in _resolve(tree, parse_query(query), optimizer)]


def get(
    tree: PyTree, query: Query, /, default: Any = _UNSET, *, optimizer: Optimizer | None = None
) -> PyTree:
    """The single node of `tree` that `query` selects.

    **Raises:** `NoMatchError` when nothing matches and no `default` is given (with `default=`,
    even `None`, that is returned instead); `AmbiguousMatchError` when several nodes match.
    With `optimizer=`, hyperparameters held in the optimizer's closures match too (see `find`).

    ```python
    >>> import jax.numpy as jnp, optax, optree_inspect as oi
    >>> tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    >>> oi.get(tx.init({"w": jnp.zeros(2)}), "learning_rate")
    Array(0.001, dtype=float32)

    ```
    """
    parsed = parse_query(query)
    matches = _resolve(tree, parsed, optimizer)
    if len(matches) == 1:
        path, value = matches[0]
        if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer) and value.is_deleted():
            raise DeletedArrayError(
                f"The array at {bounded(keystr(path), 100) or '<root>'} was deleted (donated to a jitted "
                "function?): its data is gone. Use the state the jitted call returned."
            )
        return value
    if not matches:
        if default is not _UNSET:
            return default
        raise no_match_error(tree, parsed, optimizer)
    raise ambiguous_error(tree, parsed, [path for path, _ in matches], optimizer)


def resolve_one(tree: Any, query: ParsedQuery) -> tuple[KeyPath, Any]:
    """The path and node of the single match of `query`, with `get`'s errors."""
    matches = _resolve(tree, query)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise no_match_error(tree, query)
    raise ambiguous_error(tree, query, [path for path, _ in matches])


def resolve_all(tree: Any, query: ParsedQuery) -> list[tuple[KeyPath, Any]]:
    """The paths and nodes of every match of `query`."""
    return _resolve(tree, query)


def _resolve(tree: Any, query: ParsedQuery, optimizer: Any = None) -> list[tuple[KeyPath, Any]]:
    found = _resolve_state(tree, query)
    if optimizer is not None:
        found += constant_matches(tree, query, read_optimizer(optimizer, tree).constants)
    return found


def _resolve_state(tree: Any, query: ParsedQuery) -> list[tuple[KeyPath, Any]]:
    if isinstance(query, ExactQuery):
        found = _walk_exact(tree, query.steps)
        return [] if found is None else [found]
    if isinstance(query, PredicateQuery):
        return [(path, node) for path, node in walk_with_paths(tree) if query.predicate(path, node)]
    if isinstance(query, TypeQuery) and _has_custom_instancecheck(query.cls):
        return [(path, node) for path, node in walk_with_paths(tree) if isinstance(node, query.cls)]
    index = structure_index(tree)
    numbers = matching_nodes(index, query)
    return [(path, value_at(tree, path)) for path in map(index.path, numbers)]


def _has_custom_instancecheck(cls: type) -> bool:
    # jax.Array and ABCs accept instances (such as tracers) that are not subclasses.
    return type(cls).__instancecheck__ is not type.__instancecheck__


def matching_nodes(index: StructureIndex, query: PatternQuery | TypeQuery) -> tuple[int, ...]:
    """The numbers of the nodes of `index` that `query` selects, memoised on the index."""
    memo_key = query
    found = index.results.get(memo_key)
    if found is None:
        if isinstance(query, TypeQuery):
            found = tuple(n for n, kind in enumerate(index.types) if issubclass(kind, query.cls))
        else:
            found = tuple(match(index, query.components, query.enters_schedule_bookkeeping))
        index.results[memo_key] = found
    return found


def find_in_index(index: StructureIndex, pattern: str) -> tuple[int, ...]:
    """The nodes of `index` that the pattern string selects."""
    parsed = parse_query(pattern)
    assert isinstance(parsed, PatternQuery)
    return matching_nodes(index, parsed)


def constant_matches(
    tree: Any, query: ParsedQuery, constants: list[ConstantHyperparameter]
) -> list[tuple[KeyPath, Any]]:
    """The optimizer-held hyperparameters that `query` selects, each a field of its state node."""
    found = []
    for constant in constants:
        if isinstance(query, ExactQuery):
            if not query.steps or not _step_matches(query.steps[-1], GetAttrKey(constant.name)):
                continue
            walked = _walk_exact(tree, query.steps[:-1])
            if walked is not None and walked[0] == constant.node_path:
                found.append((constant.path, constant.value))
        elif isinstance(query, TypeQuery):
            if isinstance(constant.value, query.cls):
                found.append((constant.path, constant.value))
        elif isinstance(query, PredicateQuery):
            if query.predicate(constant.path, constant.value):
                found.append((constant.path, constant.value))
        elif isinstance(query, PatternQuery):
            last = query.components[-1]
            if not isinstance(last, Name) or not fnmatch.fnmatchcase(constant.name, last.text):
                continue
            index = structure_index(tree)
            node = index.number_of(constant.node_path)
            if node is not None and prefix_matches(
                index, query.components[:-1], [*index.ancestors(node), node]
            ):
                found.append((constant.path, constant.value))
    return found


# Exact paths -----------------------------------------------------------------------------------


def _step_matches(step: Step | KeyEntry, key: KeyEntry) -> bool:
    if isinstance(step, KEY_TYPES):
        return step == key
    if isinstance(step, Attr):
        return isinstance(key, GetAttrKey) and key.name == step.name
    if isinstance(step, FlatIndex):
        return isinstance(key, FlattenedIndexKey) and key.key == step.index
    return item_matches(step, key)


def _exact_key(node: Any, step: Step | KeyEntry) -> KeyEntry | None:
    """The key of `node`'s child that `step` names, looked up in O(1) where JAX's layout allows."""
    if type(node) in _DICT_TYPES and isinstance(step, DictKey | Item):
        stored = _stored_key(node, step.key)
        return None if stored is _MISSING else DictKey(stored)
    if isinstance(step, KEY_TYPES):
        return step if child_at(node, step) is not _MISSING else None
    if isinstance(step, Item):
        for key in (DictKey(step.key), SequenceKey(step.key) if type(step.key) is int else None):
            if key is not None and child_at(node, key) is not _MISSING:
                return key
    elif isinstance(step, Attr) and child_at(node, GetAttrKey(step.name)) is not _MISSING:
        return GetAttrKey(step.name)
    for key, _ in children_with_keys(node) or ():
        if _step_matches(step, key):
            return key
    return None


def _stored_key(node: dict[Any, Any], key: Any) -> Any:
    """The key of the dict `node` that equals `key` and is of its kind (`0` is not `False`)."""
    try:
        if key not in node:
            return _MISSING
    except TypeError:  # unhashable
        return _MISSING
    if isinstance(key, str):
        return key  # only a str (or a subclass) equals a str
    for stored in node:
        if key_kind(stored) == key_kind(key) and stored == key:
            return stored
    return _MISSING


def _walk_exact(tree: Any, steps: Sequence[Step | KeyEntry]) -> tuple[KeyPath, Any] | None:
    node, path = tree, []
    for step in steps:
        key = _exact_key(node, step)
        if key is None:
            return None
        path.append(key)
        node = child_at(node, key)
    return tuple(path), node


# Errors ----------------------------------------------------------------------------------------


def _query_text(query: ParsedQuery) -> str:
    if isinstance(query, (ExactQuery, PatternQuery)):
        return repr(bounded(query.text))
    if isinstance(query, TypeQuery):
        return query.cls.__name__
    return "the predicate"


def no_match_error(tree: Any, query: ParsedQuery, optimizer: Any = None) -> NoMatchError:
    """A NoMatchError that says where an exact path stops, or suggests names that exist."""
    text = _query_text(query)
    if isinstance(query, ExactQuery):
        node, done = tree, list[KeyEntry]()
        for step in query.steps:
            key = _exact_key(node, step)
            if key is None:
                children = [str(k) for k, _ in children_with_keys(node) or ()]
                where = keystr(tuple(done)) or "the root"
                what = type(node).__name__
                if not children:
                    return NoMatchError(f"No node at {text}: {where} is a {what} with no children.")
                return NoMatchError(
                    f"No node at {text}: {where} ({what}) has no child {_step_text(step)}; its "
                    f"children are:\n{listing(children)}"
                )
            done.append(key)
            node = child_at(node, key)
    if isinstance(query, PredicateQuery):
        return NoMatchError("No node satisfies the predicate.")
    if isinstance(query, TypeQuery):
        return NoMatchError(f"No node of type {text} in the tree.")
    assert isinstance(query, PatternQuery)
    index = structure_index(tree)
    lines = [f"No node matches {text}."]
    last = query.components[-1]
    if isinstance(last, Name) and optimizer is not None:
        unread = read_optimizer(optimizer, tree).unmatched
        if unread:
            lines.append(f"Not read from the optimizer:\n{listing(unread[:3], len(unread))}")
    if isinstance(last, Name):
        hint = missing_hyperparameter_hint(index, last.text, optimizer is not None)
        if hint:
            lines.append(hint)
    vocabulary = [name for name in index.by_text if 0 < len(name) <= 100] + [
        name for name in index.by_type_name if name not in _CONTAINER_NAMES and len(name) <= 100
    ]
    wanted = [
        c.text for c in query.components if isinstance(c, Name) and not c.is_glob and len(c.text) <= 100
    ]
    close = sorted({s for w in wanted for s in difflib.get_close_matches(w, vocabulary, n=4)} - set(wanted))
    if close:
        lines.append(f"Close names in the tree: {', '.join(close[:8])}.")
    if any(index.in_bookkeeping) and not query.enters_schedule_bookkeeping:
        in_schedules = [n for n in match(index, query.components, True) if index.in_bookkeeping[n]]
        if in_schedules:
            lines.append(
                f"It matches schedule bookkeeping, which a pattern enters only when it names "
                f"{SCHEDULE_BOOKKEEPING!r}: {shortest_query(index, in_schedules[0])!r}."
            )
    return NoMatchError("\n".join(lines))


def _step_text(step: Step | KeyEntry) -> str:
    if isinstance(step, Attr):
        return bounded(f".{step.name}")
    if isinstance(step, Item):
        return f"[{short_repr(step.key)}]"
    if isinstance(step, FlatIndex):
        return f"[<flat index {step.index}>]"
    return bounded(str(step))


def ambiguous_error(
    tree: Any, query: ParsedQuery, paths: list[KeyPath], optimizer: Any = None
) -> AmbiguousMatchError:
    """An AmbiguousMatchError that lists (capped) candidates, each with a query for it alone."""
    index = structure_index(tree)
    constants = (
        {c.path: c for c in read_optimizer(optimizer, tree).constants} if optimizer is not None else {}
    )
    rows = []
    for path in paths[:8]:
        path_text = keystr(path) or "<root>"
        if path in constants:
            query_for = repr(constant_query(tree, index, constants[path], list(constants.values())))
        else:
            query_for = repr(shortest_query(index, index.number_of(path) or 0))
        rows.append(f"{path_text}  ->  get(tree, {query_for})")
    return AmbiguousMatchError(
        f"{_query_text(query)} matches {len(paths)} nodes; use a query that selects one:\n"
        f"{listing(rows, len(paths))}"
    )


# Shortest unique query -------------------------------------------------------------------------


def _name_component(text: str) -> bool:
    return bool(text) and text.strip() == text and not any(c in text for c in ".[]*?")


def _options(index: StructureIndex, node: int) -> list[tuple[str, Component]]:
    """The pattern components that match the edge into `node`: its key, then its type's name."""
    options: list[tuple[str, Component]] = []
    key = index.keys[node]
    text = index.texts[node]
    if node > 0 and _name_component(text):
        options.append((text, Name(text, False)))
    elif isinstance(key, DictKey):
        options.append((f"[{key.key!r}]", Item(key.key)))
    type_name = index.types[node].__name__
    if type_name not in _CONTAINER_NAMES and not index.is_leaf[node] and type_name != text:
        options.append((type_name, Name(type_name, False)))
    return options


def _join(parts: Sequence[str]) -> str:
    return "".join(p if i == 0 or p.startswith("[") else "." + p for i, p in enumerate(parts))


def shortest_query(index: StructureIndex, node: int) -> str:
    """The shortest pattern that selects `node` alone (fewest components, then fewest indices and
    characters), or its keystr when no pattern of up to four components does."""
    cached = index.short_queries.get(node)
    if cached is not None:
        return cached
    best = _search_shortest(index, node)
    if best is None:
        best = keystr(index.path(node))
    index.short_queries[node] = best
    return best


def _search_shortest(index: StructureIndex, node: int) -> str | None:
    if node == 0:
        return None
    ancestor_options = [opt for a in index.ancestors(node) for opt in _options(index, a)]
    for size in range(0, 4):
        found = []
        for last_text, last in _options(index, node):
            for prefix in itertools.combinations(ancestor_options, size):
                parts = [*(t for t, _ in prefix), last_text]
                if parts[0].startswith("["):
                    continue
                components = [*(c for _, c in prefix), last]
                enters = SCHEDULE_BOOKKEEPING in parts
                if index.in_bookkeeping[node] and not enters:
                    continue
                if match(index, components, enters) == [node]:
                    found.append(_join(parts))
        if found:
            return min(found, key=lambda q: (sum(p.isdigit() for p in q.split(".")), len(q), q))
    return None


def constant_query(
    tree: Any,
    index: StructureIndex,
    constant: ConstantHyperparameter,
    constants: list[ConstantHyperparameter],
) -> str:
    """The shortest pattern that selects an optimizer-held hyperparameter alone, or its keystr."""
    node = index.number_of(constant.node_path)
    if node is None:
        return keystr(constant.path)
    options = [opt for a in [*index.ancestors(node), node] for opt in _options(index, a)]
    for size in range(0, 4):
        found = []
        for prefix in itertools.combinations(options, size):
            parts = [*(t for t, _ in prefix), constant.name]
            if parts[0].startswith("["):
                continue
            pattern = PatternQuery((*(c for _, c in prefix), Name(constant.name, False)), _join(parts))
            if not matching_nodes(index, pattern) and constant_matches(tree, pattern, constants) == [
                (constant.path, constant.value)
            ]:
                found.append(pattern.text)
        if found:
            return min(found, key=lambda q: (sum(p.isdigit() for p in q.split(".")), len(q), q))
    return keystr(constant.path)
