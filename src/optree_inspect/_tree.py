"""Walking a pytree through JAX's registry, and the structure index that floating queries ride on.

The index records, for every node in pre-order, its edge from the parent, its type and its parent.
It is built by one walk of the tree and cached under the tree's `PyTreeDef`; see `structure_index`
for why a cached index can never describe another tree than the one it is used for.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
from jax.tree_util import DictKey, GetAttrKey, SequenceKey

from ._compat import is_nnx_variable_type
from ._errors import TreeError, TreeTooDeepError, bounded
from ._keys import Item, KeyEntry, KeyPath, Step, candidate_keys, edge_text, key_kind, step_matches
from ._optax.fields import (
    NOWHERE,
    OUTSIDE,
    children_where,
    field_name,
    is_inject_state_name,
    is_masked_node_type,
    restored_state_name,
    restored_state_names,
    typed_state_name,
)
from ._optax.names import SCHEDULE_BOOKKEEPING

_REGISTRY = jax.tree_util.default_registry
CONTAINER_TYPE_NAMES = frozenset({"tuple", "list", "dict", "OrderedDict", "defaultdict", "NoneType"})
"""JAX's own pytree containers: their type names say nothing a query could use."""
_DICT_TYPES = (dict, collections.OrderedDict, collections.defaultdict)
_MISSING = object()


def is_namedtuple(node: object) -> bool:
    return isinstance(node, tuple) and hasattr(type(node), "_fields")


def children_with_keys(node: Any) -> list[tuple[KeyEntry, Any]] | None:
    """The `(key, child)` pairs of `node` in flatten order, or `None` for a leaf.

    >>> children_with_keys({"b": 1, "a": 2})
    [(DictKey(key='a'), 2), (DictKey(key='b'), 1)]
    """
    try:
        flat = _REGISTRY.flatten_one_level_with_keys(node)
    except (ValueError, TypeError) as error:
        raise _tree_error(node, error) from None
    if flat is None:
        return None
    pairs = list(flat[0])
    if is_namedtuple(node) and len(pairs) > 1 and pairs[0][0] == pairs[1][0]:
        # jax 0.10.2 gives every NamedTuple child the first field's key (jax issue 39297).
        pairs = [
            (GetAttrKey(name), child) for name, (_, child) in zip(type(node)._fields, pairs, strict=True)
        ]
    return pairs


def child_at(node: Any, key: KeyEntry) -> Any:
    """The child of `node` under `key`, or `_MISSING`; O(1) for dicts, sequences and NamedTuples."""
    kind = type(node)
    if kind in _DICT_TYPES:
        return node.get(key.key, _MISSING) if isinstance(key, DictKey) else _MISSING
    if kind is tuple or kind is list:
        if isinstance(key, SequenceKey) and 0 <= key.idx < len(node):
            return node[key.idx]
        return _MISSING
    if is_namedtuple(node) and isinstance(key, GetAttrKey):
        return getattr(node, key.name) if key.name in kind._fields else _MISSING
    for child_key, child in children_with_keys(node) or ():
        if child_key == key:
            return child
    return _MISSING


def exact_key(node: Any, step: Step | KeyEntry) -> KeyEntry | None:
    """The key of `node`'s child that `step` names, looked up in O(1) where JAX's layout allows."""
    if type(node) in _DICT_TYPES and isinstance(step, DictKey | Item):
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
        key = exact_key(node, step)
        if key is None:
            return None
        path.append(key)
        node = child_at(node, key)
    return tuple(path), node


def value_at(tree: Any, path: KeyPath) -> Any:
    """The node at an exact key path that is known to exist."""
    node = tree
    for key in path:
        node = child_at(node, key)
    return node


def _keys_follow_structure(node: Any, pairs: list[tuple[KeyEntry, Any]]) -> bool:
    """Whether the keys of `node` are fixed by its treedef (its type and aux data).

    True for JAX's built-in containers and NamedTuples, for dataclass-based nodes keyed by their
    fields (`register_dataclass`, `flax.struct`, `eqx.Module`), for nnx Variables and for mapping
    nodes that keep their keys in their aux data (`nnx.State`). Any other custom node could in
    principle derive keys from something the treedef does not see.
    """
    kind = type(node)
    if kind in _DICT_TYPES or kind is tuple or kind is list or node is None or is_namedtuple(node):
        return True
    if dataclasses.is_dataclass(kind):
        names = {f.name for f in dataclasses.fields(kind)}
        return all(isinstance(k, GetAttrKey) and k.name in names for k, _ in pairs)
    if is_nnx_variable_type(kind):
        return True
    if all(isinstance(k, DictKey) for k, _ in pairs):
        aux = _REGISTRY.flatten_one_level(node)
        keys = aux[1] if aux is not None else None
        return isinstance(keys, tuple) and list(keys) == [k.key for k, _ in pairs]
    return False


def _cacheable_node(node: Any, pairs: list[tuple[KeyEntry, Any]]) -> bool:
    """Whether an index holding `node` may be cached under its treedef (see `index_and_leaves`)."""
    if not _keys_follow_structure(node, pairs):
        return False
    if any(isinstance(k, DictKey) and type(k.key) is not str for k, _ in pairs):
        return False
    kind = type(node)
    if kind in _DICT_TYPES or kind is tuple or kind is list or is_namedtuple(node):
        return True
    flat = _REGISTRY.flatten_one_level(node)
    return flat is None or _aux_is_inert(flat[1])


@dataclass
class IndexMemo:
    """Answers derived from one structure index, filled in as calls need them. The index itself is
    not changed after `build_index`, so these stay right for every tree it describes."""

    results: dict[object, Any] = field(default_factory=dict)
    """Query results (node numbers) and pattern-component candidates."""
    short_queries: dict[int, str] = field(default_factory=dict)
    """The shortest query of each node named so far."""
    layout: list[Any] | None = None
    """The plan of `describe`: which nodes are shown, folded, "like" another or in a run."""


@dataclass
class StructureIndex:
    """Every node of one tree structure, in pre-order, as parallel lists indexed by node number."""

    keys: list[KeyEntry | None] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    types: list[type] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    is_leaf: list[bool] = field(default_factory=list)
    leaf_counts: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    """How many nodes each node's subtree holds, itself included (pre-order: a contiguous run)."""
    in_bookkeeping: list[bool] = field(default_factory=list)
    state_names: list[str | None] = field(default_factory=list)
    """The optax state type each node is, or stands for in a restored checkpoint, or None."""
    by_state_name: dict[str, list[int]] = field(default_factory=dict)
    """The nodes of each optax state type, typed or restored (a restored one under every type with
    its fields)."""
    holes: list[int] = field(default_factory=list)
    """The masked-out parameters, in pre-order: `MaskedNode`s, and `None`s in the params-shaped
    fields of a restored state (orbax restores a `MaskedNode` as `None`)."""
    restored_names: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """For each restored state, the optax state types it may stand for: patterns match their names
    as they match a typed node's type name."""
    cacheable: bool = True
    by_text: dict[str, list[int]] = field(default_factory=dict)
    by_type_name: dict[str, list[int]] = field(default_factory=dict)
    memo: IndexMemo = field(default_factory=lambda: IndexMemo())
    """What later calls derive from the structure alone, kept for the next call on it."""

    @functools.cached_property
    def leaf_starts(self) -> list[int]:
        """The flat index (in `jax.tree.leaves` order) of each node's first leaf."""
        starts, seen = [], 0
        for number in range(len(self.keys)):
            starts.append(seen)
            seen += self.is_leaf[number]
        return starts

    @functools.cached_property
    def leaf_nodes(self) -> list[int]:
        """The node number of each leaf, in `jax.tree.leaves` order."""
        return [node for node in range(len(self.keys)) if self.is_leaf[node]]

    @functools.cached_property
    def depths(self) -> list[int]:
        """How many edges lead from the root to each node."""
        depths = [0] * len(self.keys)
        for number in range(1, len(self.keys)):
            depths[number] = depths[self.parents[number]] + 1
        return depths

    @functools.cached_property
    def has_bookkeeping(self) -> bool:
        return any(self.in_bookkeeping)

    @functools.cached_property
    def max_depth(self) -> int:
        return max(self.depths)

    @functools.cached_property
    def longest_name(self) -> int:
        """The length of the longest edge text or type name: no glob needing more can match."""
        return max(
            len(name) for names in (self.by_text, self.by_type_name, self.by_state_name) for name in names
        )

    def __len__(self) -> int:
        return len(self.keys)

    def path(self, node: int) -> KeyPath:
        keys: list[KeyEntry | None] = []
        while node > 0:
            keys.append(self.keys[node])
            node = self.parents[node]
        return tuple(k for k in reversed(keys) if k is not None)

    def ancestors(self, node: int) -> list[int]:
        """The ancestors of `node`, root first, not including `node`."""
        chain = []
        while node > 0:
            node = self.parents[node]
            chain.append(node)
        return chain[::-1]

    def number_of(self, path: KeyPath) -> int | None:
        """The node at `path`, or None."""
        node = 0
        for key in path:
            node = next((c for c in self.children(node) if self.keys[c] == key), -1)
            if node < 0:
                return None
        return node

    def children(self, node: int) -> Iterator[int]:
        """The children of `node` in flatten order."""
        child, end = node + 1, node + self.sizes[node]
        while child < end:
            yield child
            child += self.sizes[child]


def build_index(tree: Any) -> StructureIndex:
    """One pre-order walk of `tree` through JAX's registry."""
    index = StructureIndex()
    Frame = tuple[Any, KeyEntry | None, int, bool, int, bool]
    stack: list[Frame] = [(tree, None, -1, False, OUTSIDE, False)]
    while stack:
        node, key, parent, bookkeeping, where, in_restored_data = stack.pop()
        number = len(index.keys)
        pairs = children_with_keys(node)
        kind = type(node)
        name = typed_state_name(kind)
        if name is None and kind is dict and where != NOWHERE:
            name = restored_state_name(node, where)
        index.keys.append(key)
        index.texts.append(edge_text(key))
        index.types.append(kind)
        index.parents.append(parent)
        index.is_leaf.append(pairs is None)
        index.leaf_counts.append(1 if pairs is None else 0)
        index.sizes.append(1)
        index.in_bookkeeping.append(bookkeeping)
        index.state_names.append(name)
        index.by_text.setdefault(index.texts[-1], []).append(number)
        index.by_type_name.setdefault(kind.__name__, []).append(number)
        if (node is None and in_restored_data) or is_masked_node_type(kind):
            index.holes.append(number)
        if pairs is None:
            continue
        if index.cacheable and not _cacheable_node(node, pairs):
            index.cacheable = False
        if name is None and where != OUTSIDE:  # most nodes: params and moments
            for child_key, child in reversed(pairs):
                stack.append((child, child_key, number, bookkeeping, where, in_restored_data))
            continue
        if name is not None:
            aliases = restored_state_names(node) if kind is dict else (name,)
            if kind is dict:
                index.restored_names[number] = aliases
            for alias in aliases:
                index.by_state_name.setdefault(alias, []).append(number)
        enters = is_inject_state_name(name)
        wheres = children_where(name, where, pairs)
        for (child_key, child), child_where in zip(reversed(pairs), reversed(wheres), strict=True):
            child_bookkeeping = bookkeeping or (enters and field_name(child_key) == SCHEDULE_BOOKKEEPING)
            child_in_data = in_restored_data if name is None else kind is dict and child_where == NOWHERE
            stack.append((child, child_key, number, child_bookkeeping, child_where, child_in_data))
    for number in range(len(index.keys) - 1, 0, -1):
        parent = index.parents[number]
        index.leaf_counts[parent] += index.leaf_counts[number]
        index.sizes[parent] += index.sizes[number]
    return index


_CACHE: collections.OrderedDict[Any, StructureIndex] = collections.OrderedDict()
_CACHE_SIZE = 32
_LOCK = threading.Lock()
_last: tuple[Any, tuple[type, ...], StructureIndex] | None = None
"""The treedef, leaf types and index of the last lookup: a training loop asks about one structure
every step."""


def clear_caches() -> None:
    """Forget every cached structure index (for tests and long sessions)."""
    global _last
    with _LOCK:
        _CACHE.clear()
        _last = None


def structure_index(tree: Any) -> StructureIndex:
    """The structure index of `tree`, from the cache when a tree of the same structure was seen."""
    return index_and_leaves(tree)[0]


def _tree_error(node: Any, error: Exception) -> TreeError:
    return TreeError(
        f"JAX cannot flatten a {bounded(type(node).__name__, 60)} in this tree: "
        f"{bounded(str(error), 200)} (a dict's keys must be sortable, such as all str or all int)."
    )


def flatten(tree: Any) -> tuple[list[Any], Any]:
    """`jax.tree.flatten`, with JAX's own failures turned into documented errors."""
    try:
        return jax.tree.flatten(tree)
    except (ValueError, TypeError) as error:
        raise _tree_error(tree, error) from None
    except (RecursionError, SystemError) as error:
        if isinstance(error, SystemError) and not isinstance(error.__context__, RecursionError):
            raise
        raise TreeTooDeepError(
            "The tree is nested deeper than JAX can flatten (about 1,000 levels on Python 3.11); no "
            "JAX function can take it. Look inside it with an exact path from a shallower node."
        ) from None


def index_and_leaves(tree: Any) -> tuple[StructureIndex, list[Any]]:
    """The structure index of `tree` and its leaves, from one structural pass.

    The cache is keyed on the tree's `PyTreeDef` and the types of its leaves. Two trees with equal
    treedefs have the same node types, aux data and children counts, so the same pre-order and leaf
    ranges; equal leaf types make the types of every node equal. An index is stored only when the
    keys of every node are fixed by the treedef (`_keys_follow_structure`) and every dict key is a
    `str`: treedef equality compares dict keys with `==`, under which `0`, `0.0` and `False` are
    one key, but no other built-in type equals a `str`. So a cached index always describes exactly
    the tree it is used for. It is also stored only when the aux data of every node is inert
    (`_aux_is_inert`), so that the cache never keeps a user's object alive.

    The last treedef used is tried first with `flatten_up_to`, which raises on any difference of
    node type, arity, dict keys or aux data and returns, in place of each treedef leaf, whatever
    the tree has there; `all_leaves` then rules out a subtree standing where the treedef has a
    leaf, and the leaf types are compared. Together that is the cache key's equality, checked in
    one pass instead of building a treedef and comparing it (about half the cost).
    """
    global _last
    last = _last
    if last is not None:
        treedef, leaf_types, index = last
        try:
            leaves = treedef.flatten_up_to(tree)
        except (ValueError, TypeError, RecursionError, SystemError):
            pass
        else:
            if tuple(map(type, leaves)) == leaf_types and jax.tree_util.all_leaves(leaves):
                return index, leaves
    leaves, treedef = flatten(tree)
    leaf_types = tuple(map(type, leaves))
    key = (treedef, leaf_types)
    try:
        with _LOCK:
            index = _CACHE.get(key)  # type: ignore[assignment]
    except TypeError:  # unhashable aux data
        return build_index(tree), leaves
    if index is None:
        index = build_index(tree)
        if not index.cacheable:
            return index, leaves
        with _LOCK:
            _CACHE[key] = index
            while len(_CACHE) > _CACHE_SIZE:  # first in, first out: a hit costs one lookup
                _CACHE.popitem(last=False)
    _last = (treedef, leaf_types, index)
    return index, leaves


_TYPING_MODULES = frozenset({"typing", "types", "typing_extensions"})
_INERT_SCALARS = (type(None), bool, int, float, complex, str, bytes, type)


def _aux_is_inert(aux: Any, depth: int = 0) -> bool:
    """Whether `aux` holds only values whose lifetime no tree controls: literals, types, and
    functions or objects defined at module level (a module keeps them alive anyway)."""
    if isinstance(aux, _INERT_SCALARS) or aux is dataclasses.MISSING:
        return True
    if depth > 8:
        return False
    if isinstance(aux, tuple | list | frozenset):
        return all(_aux_is_inert(item, depth + 1) for item in aux)
    if type(aux) is dict:
        return all(_aux_is_inert(k, depth + 1) and _aux_is_inert(v, depth + 1) for k, v in aux.items())
    if isinstance(aux, enum.Enum) or _holds_nothing(aux) or _is_module_level(aux):
        return True
    if type(aux).__module__ in _TYPING_MODULES:  # annotations: they hold types and literals
        return True
    attributes = _own_attributes(aux)
    return attributes is not None and all(_aux_is_inert(value, depth + 1) for value in attributes)


def _own_attributes(value: Any) -> list[Any] | None:
    """The values an object holds in its `__dict__` and slots (equinox's flattened aux data is such
    a record), or None for an object of a builtin or C type that may hold anything."""
    kind = type(value)
    if kind.__module__ == "builtins":
        return None
    found = list(getattr(value, "__dict__", {}).values())
    for klass in kind.__mro__:
        slots = getattr(klass, "__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(value, name):
                found.append(getattr(value, name))
    return found


def _holds_nothing(value: Any) -> bool:
    """An object with no attributes of its own (a sentinel): keeping it pins nothing else."""
    kind = type(value)
    return (
        not getattr(value, "__dict__", None)
        and all(not getattr(k, "__slots__", ()) for k in kind.__mro__ if k is not object)
        and kind.__module__ != "builtins"
    )


def _is_module_level(value: Any) -> bool:
    module = sys.modules.get(getattr(value, "__module__", None) or "")
    qualname = getattr(value, "__qualname__", None)
    if module is None or not isinstance(qualname, str) or "<locals>" in qualname:
        return False
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is value


def walk_with_paths(tree: Any) -> Iterator[tuple[KeyPath, Any]]:
    """Every `(path, node)` of `tree` in pre-order, for predicates that must see real nodes."""
    stack: list[tuple[KeyPath, Any]] = [((), tree)]
    while stack:
        path, node = stack.pop()
        yield path, node
        pairs = children_with_keys(node)
        for key, child in reversed(pairs or ()):
            stack.append(((*path, key), child))
