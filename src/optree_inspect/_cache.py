"""The cache of structure indexes, keyed on a tree's `PyTreeDef` and the types of its leaves.

`index_and_leaves` says why a cached index can never describe another tree than the one it is used
for. The cache forgets everything when the registered state rules change (`_state_rules.register`).
"""

from __future__ import annotations

import collections
import contextvars
import threading
from collections.abc import Callable
from typing import Any

import jax

from ._build import build_index
from ._index import StructureIndex
from ._keycheck import keys_are_str
from ._paths import flatten
from ._registry import REGISTRY
from ._state_rules import active, on_change

_CACHE: collections.OrderedDict[Any, StructureIndex] = collections.OrderedDict()
_CACHE_SIZE = 32
_LOCK = threading.Lock()
_last: tuple[Any, tuple[type, ...], StructureIndex, Any, tuple[int, ...] | None] | None = None
"""The treedef, leaf types, index and outline (`_outline`) of the last lookup, and the leaves that
stand for the rest in its leaf check (`_one_of_each`): a training loop asks about one structure
every step."""


def clear_caches() -> None:
    """Forget every cached structure index, and what the modules that registered with
    `on_clear` cache beside it (for tests and long sessions)."""
    global _last
    with _LOCK:
        _CACHE.clear()
        _last = None
    for clear in _CLEARERS:
        clear()


_CLEARERS: list[Callable[[], None]] = []


def on_clear(clear: Callable[[], None]) -> None:
    """Have `clear_caches` call `clear` too (a module's own cache, of shardings say)."""
    _CLEARERS.append(clear)


_ONE_CALL: contextvars.ContextVar[dict[int, tuple[Any, StructureIndex, list[Any]]] | None] = (
    contextvars.ContextVar("optree_inspect_one_call", default=None)
)


class one_call:
    """Within it, each tree is checked against its structure once: a verb that reads a tree's
    index in several places (`find` of subtrees) does not check it again. Nothing may change a
    tree in place meanwhile. (A class rather than a generator: `get` enters it on every call.)"""

    __slots__ = ("token",)

    def __enter__(self) -> None:
        if hasattr(self, "token"):
            raise RuntimeError("one_call() is entered once; enter a new one_call()")
        self.token = None if _ONE_CALL.get() is not None else _ONE_CALL.set({})

    def __exit__(self, *exc: object) -> None:
        token = self.token
        del self.token
        if token is not None:
            _ONE_CALL.reset(token)


def structure_index(tree: Any) -> StructureIndex:
    """The structure index of `tree`, from the cache when a tree of the same structure was seen."""
    return index_and_leaves(tree)[0]


def index_and_leaves(tree: Any) -> tuple[StructureIndex, list[Any]]:
    """The structure index of `tree` and its leaves, from one structural pass.

    The cache is keyed on the tree's `PyTreeDef` and the types of its leaves. Two trees with equal
    treedefs have the same node types, aux data and children counts, so the same pre-order and leaf
    ranges; equal leaf types make the types of every node equal. An index is stored only when the
    keys of every node are fixed by the treedef (`_registry.keys_follow_structure`) and every dict key is a
    `str`: treedef equality compares dict keys with `==`, under which `0`, `0.0` and `False` are
    one key, but no other built-in type equals a `str`. So a cached index always describes exactly
    the tree it is used for. It is also stored only when the aux data of every node is inert
    (`_registry.aux_is_inert`), so that the cache never keeps a user's object alive.

    The last structure used is tried first with `flatten_up_to`, which raises on any difference of
    node type, arity, dict keys or aux data and returns, in place of each treedef leaf, whatever
    the tree has there; `all_leaves` then rules out a subtree standing where the treedef has a
    leaf, and the leaf types are compared. Together that is the cache key's equality, checked in
    one pass instead of building a treedef and comparing it (about half the cost). It is tried only
    where the tree's outline (its type and its children's) is the last tree's: on a difference,
    JAX's error message holds the repr of the subtree that differs, seconds for a large state, so a
    call that alternates between two structures (`diff`, `restore_like`, `migrate`) does not pay it.
    """
    seen = _ONE_CALL.get()
    if seen is not None:
        known = seen.get(id(tree))
        if known is not None and known[0] is tree:  # held here, so its id is not reused
            return known[1], known[2]
        index, leaves = _index_and_leaves(tree)
        seen[id(tree)] = (tree, index, leaves)
        return index, leaves
    return _index_and_leaves(tree)


def _index_and_leaves(tree: Any) -> tuple[StructureIndex, list[Any]]:
    global _last
    outline = _outline(tree)
    last = _last
    if last is not None and last[3] == outline:
        treedef, leaf_types, index, _, one_of_each = last
        try:
            leaves = treedef.flatten_up_to(tree)
        except Exception:  # any difference; JAX's message may repr a leaf, which can raise anything
            pass
        else:
            if (
                tuple(map(type, leaves)) == leaf_types
                and jax.tree_util.all_leaves(
                    leaves if one_of_each is None else list(map(leaves.__getitem__, one_of_each))
                )
                and keys_are_str(tree, index)
            ):
                return index, leaves
    leaves, treedef = flatten(tree)
    leaf_types = tuple(map(type, leaves))
    key = (_sketch(tree), treedef, leaf_types)
    try:
        with _LOCK:
            index = _CACHE.get(key)  # type: ignore[assignment]
    except TypeError:  # unhashable aux data
        return build_index(tree, leaves), leaves
    if index is not None and not keys_are_str(tree, index):
        return build_index(tree, leaves), leaves  # `str` subclass keys: not the cached tree's
    if index is None:
        rules = active()
        index = build_index(tree, leaves)
        if not index.cacheable or active() is not rules:  # rules registered during the build
            return index, leaves
        with _LOCK:
            _CACHE[key] = index
            while len(_CACHE) > _CACHE_SIZE:  # first in, first out: a hit costs one lookup
                _CACHE.popitem(last=False)
    _last = (treedef, leaf_types, index, outline, _one_of_each(leaf_types))
    return index, leaves


def _one_of_each(leaf_types: tuple[type, ...]) -> tuple[int, ...] | None:
    """The position of one leaf of each type, which stands for every leaf of its type in the check
    that no subtree stands where the treedef has a leaf; None where every leaf must be checked.

    JAX tells a leaf from a node by its type (its registry, then `None`), except that an instance
    of a tuple subclass is a NamedTuple node wherever it has a `_fields` attribute, which an
    instance may have alone."""
    kinds = set(leaf_types)
    if any(issubclass(kind, tuple) for kind in kinds):
        return None
    return tuple(map(leaf_types.index, kinds))


def _sketch(tree: Any, budget: int = 64) -> int:
    """A hash of the dict keys and aux data of the first `budget` nodes of `tree`, breadth first.

    `PyTreeDef`'s hash leaves out dict keys and aux data, so trees that differ only in their names
    (the same model under other parameter names) hash alike, and a lookup would compare the new
    treedef with each cached one of the same shape. With this beside it in the key, such trees
    differ by hash wherever their names differ near the root; equality is still the treedef's.
    """
    parts: list[int] = []
    queue = collections.deque([tree])
    while queue and budget:
        budget -= 1
        node = queue.popleft()
        if type(node) is dict:
            parts.append(hash(frozenset(node)))
            try:  # in the treedef's order, whatever order the keys were inserted in
                queue.extend(map(node.__getitem__, sorted(node)))
            except TypeError:
                queue.extend(node.values())
            continue
        try:
            flat = REGISTRY.flatten_one_level(node)
            if flat is not None:
                parts.append(hash((type(node), flat[1])))
        except Exception:  # unhashable aux data, or a flatten that fails: the treedef decides
            continue
        if flat is not None:
            queue.extend(flat[0])
    return hash(tuple(parts))


def _outline(tree: Any) -> tuple[type, tuple[type, ...]] | None:
    """The type of `tree` and of each of its children: two trees whose outlines differ differ."""
    try:
        flat = jax.tree_util.default_registry.flatten_one_level(tree)
    except Exception:  # a node JAX cannot flatten: the full flatten reports it
        return None
    return None if flat is None else (type(tree), tuple(map(type, flat[0])))


on_change(clear_caches)
