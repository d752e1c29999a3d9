"""Exact paths through a tree, and walks of it, through JAX's registry: no index needed.

>>> path, node = walk_exact({"opt": [{"w": 1.0}]}, [Item("opt"), Item(0), Item("w")])
>>> jax.tree_util.keystr(path), node
("['opt'][0]['w']", 1.0)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import jax
from jax.tree_util import DictKey, GetAttrKey, SequenceKey

from ._errors import TreeTooDeepError
from ._keys import Attr, Item, KeyEntry, KeyPath, Step, candidate_keys, key_kind, step_matches
from ._registry import DICT_TYPES, children_with_keys, is_namedtuple, is_namedtuple_type, tree_error

_MISSING = object()


def child_at(node: Any, key: KeyEntry) -> Any:
    """The child of `node` under `key`, or `_MISSING`; O(1) for dicts, sequences and NamedTuples."""
    kind = type(node)
    if kind in DICT_TYPES:
        return node.get(key.key, _MISSING) if isinstance(key, DictKey) else _MISSING
    if kind is tuple or kind is list:
        if isinstance(key, SequenceKey) and 0 <= key.idx < len(node):
            return node[key.idx]
        return _MISSING
    if is_namedtuple(node) and isinstance(key, GetAttrKey):
        # JAX's children of a NamedTuple are its items (a property may shadow a field's name)
        return node[node._fields.index(key.name)] if key.name in node._fields else _MISSING
    for child_key, child in children_with_keys(node) or ():
        if child_key == key:
            return child
    return _MISSING


def exact_key(node: Any, step: Step | KeyEntry) -> KeyEntry | None:
    """The key of `node`'s child that `step` names, looked up in O(1) where JAX's layout allows."""
    if type(node) in DICT_TYPES and isinstance(step, DictKey | Item):
        stored = _stored_key(node, step.key)
        return None if stored is _MISSING else DictKey(stored)
    for key in candidate_keys(step):
        if child_at(node, key) is not _MISSING:
            return key
    for key, _ in children_with_keys(node) or ():
        if step_matches(step, key):
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


def walk_exact(tree: Any, steps: Sequence[Step | KeyEntry]) -> tuple[KeyPath, Any] | None:
    """The path and node that an exact path names, or None; O(depth) for JAX's own containers."""
    node, path = tree, []
    for step in steps:
        found = _exact_child(node, step)
        if found is None:
            return None
        key, node = found
        path.append(key)
    return tuple(path), node


def _exact_child(node: Any, step: Step | KeyEntry) -> tuple[KeyEntry, Any] | None:
    """The key and child of `node` that `step` names, or None: `exact_key` then `child_at`, with
    the steps of an optimizer state's exact paths (a dict's `str` key, a tuple's index, a
    NamedTuple's field) taken without building candidate keys."""
    kind = type(node)
    if isinstance(step, Item | DictKey):
        key = step.key
        if kind is dict and type(key) is str:  # only a str (or a subclass) equals a str
            child = node.get(key, _MISSING)
            return None if child is _MISSING else (DictKey(key), child)
        # `[0]` names a sequence's element; a key path's `DictKey(0)` names a dict's key only
        if (
            type(step) is Item
            and (kind is tuple or kind is list)
            and type(key) is int
            and 0 <= key < len(node)
        ):
            return SequenceKey(key), node[key]
    elif isinstance(step, Attr) and is_namedtuple_type(kind) and step.name in kind._fields:
        return GetAttrKey(step.name), node[kind._fields.index(step.name)]
    found = exact_key(node, step)
    return None if found is None else (found, child_at(node, found))


def value_at(tree: Any, path: KeyPath) -> Any:
    """The node at an exact key path that is known to exist."""
    node = tree
    for key in path:
        node = child_at(node, key)
    return node


def walk_with_paths(tree: Any) -> Iterator[tuple[KeyPath, Any]]:
    """Every `(path, node)` of `tree` in pre-order, for predicates that must see real nodes."""
    stack: list[tuple[KeyPath, Any]] = [((), tree)]
    while stack:
        path, node = stack.pop()
        yield path, node
        pairs = children_with_keys(node)
        for key, child in reversed(pairs or ()):
            stack.append(((*path, key), child))


def flatten(tree: Any) -> tuple[list[Any], Any]:
    """`jax.tree.flatten`, with JAX's own failures turned into documented errors."""
    try:
        return jax.tree.flatten(tree)
    except (ValueError, TypeError) as error:
        raise tree_error(tree, error) from None
    except (RecursionError, SystemError) as error:
        if isinstance(error, SystemError) and not isinstance(error.__context__, RecursionError):
            raise
        raise TreeTooDeepError(
            "The tree is nested deeper than JAX can flatten (about 1,000 levels on Python 3.11); no "
            "JAX function can take it. Look inside it with an exact path from a shallower node."
        ) from None
