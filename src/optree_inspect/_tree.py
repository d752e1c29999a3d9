"""Walking a pytree through JAX's registry, and the structure index that floating queries ride on.

The index records, for every node in pre-order, its edge from the parent, its type and its parent.
It is built by one walk of the tree and cached under the tree's `PyTreeDef`; see `structure_index`
for why a cached index can never describe another tree than the one it is used for.
"""

from __future__ import annotations

import collections
import functools
import itertools
import operator
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.tree_util import DictKey, GetAttrKey, SequenceKey

from ._errors import TreeTooDeepError
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
from ._registry import (
    DICT_TYPES,
    REGISTRY,
    cacheable_node,
    children_with_keys,
    flatten_one_level,
    is_namedtuple,
    tree_error,
)
from ._runs import LEAF_TYPE, Signatures, Template, interleaved, signature, template_of

CONTAINER_TYPE_NAMES = frozenset({"tuple", "list", "dict", "OrderedDict", "defaultdict", "NoneType"})
"""JAX's own pytree containers: their type names say nothing a query could use."""
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
        return getattr(node, key.name) if key.name in kind._fields else _MISSING
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


class NodesByName:
    """The nodes of each name (an edge's text, a type's name), in pre-order. The first few names
    asked for are found by a scan in C; from the `SCANS`-th on (naming every row of a description
    asks for dozens) the whole table is built in one pass. A table built up front would cost a
    Python step for every node of a large tree on every first call, most of which ask for one name.

    >>> table = NodesByName(["", "mu", "w", "nu", "w"])
    >>> table.get("w"), "nu" in table, list(table)
    ([2, 4], True, ['', 'mu', 'w', 'nu'])
    """

    def __init__(self, values: list[Any], name_of: Callable[[Any], str] | None = None) -> None:
        self._values = values
        self._name_of = name_of
        self._found: dict[str, list[int]] = {}
        self._scans = 0
        self._table: dict[Any, list[int]] | None = None

    @functools.cached_property
    def _values_by_name(self) -> dict[str, list[Any]]:
        table: dict[str, list[Any]] = {}
        for value in dict.fromkeys(self._values):
            table.setdefault(value if self._name_of is None else self._name_of(value), []).append(value)
        return table

    def __iter__(self) -> Iterator[str]:
        return iter(self._values_by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._values_by_name

    def get(self, name: str, default: list[int] | None = None) -> list[int]:
        """The nodes of `name`, or `default` (an empty list) where there are none."""
        found = self._found.get(name)
        if found is None:
            values = [name] if self._name_of is None else self._values_by_name.get(name, [])
            found = self._found[name] = self.nodes_of_values(values)
        return found or ([] if default is None else default)

    def nodes_of(self, names: Collection[str]) -> list[int]:
        """The nodes of any of `names`, in pre-order."""
        values = [value for name in names for value in self._values_by_name.get(name, ())]
        return self.nodes_of_values(values)

    SCANS = 4

    def nodes_of_values(self, values: Collection[Any]) -> list[int]:
        positions = range(len(self._values))
        if not values:
            return []
        if self._table is None and self._scans == self.SCANS:
            self._table = {}
            for position, value in enumerate(self._values):
                self._table.setdefault(value, []).append(position)
        if self._table is not None:
            found = [self._table.get(value, []) for value in values]
            return list(found[0]) if len(found) == 1 else sorted(itertools.chain.from_iterable(found))
        self._scans += 1
        if len(values) == 1:
            [value] = values
            equal = map(operator.eq, self._values, itertools.repeat(value))
            return list(itertools.compress(positions, equal))
        wanted = set(values)
        return list(itertools.compress(positions, map(wanted.__contains__, self._values)))


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
    arities: list[int] = field(default_factory=list)
    """How many children each node has."""
    depths: list[int] = field(default_factory=list)
    """How many edges lead from the root to each node."""
    signatures: list[int] = field(default_factory=list)
    """A number two nodes share exactly when their subtrees have one structure: node types and
    keys, with leaves and masked holes alike (`_runs.Signatures`)."""
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
    key_check: KeyCheck | None = None
    """For a cacheable index that has mappings: how to check, on a later tree of its structure,
    that every key a treedef compares with `==` is a `str` (`keys_are_str`)."""
    memo: IndexMemo = field(default_factory=lambda: IndexMemo())
    """What later calls derive from the structure alone, kept for the next call on it."""

    @functools.cached_property
    def by_text(self) -> NodesByName:
        """The nodes of each edge text."""
        return NodesByName(self.texts)

    @functools.cached_property
    def by_type_name(self) -> NodesByName:
        """The nodes of each type name."""
        return NodesByName(self.types, operator.attrgetter("__name__"))

    @functools.cached_property
    def leaf_starts(self) -> list[int]:
        """The flat index (in `jax.tree.leaves` order) of each node's first leaf."""
        return list(itertools.accumulate(self.is_leaf[:-1], initial=0))

    @functools.cached_property
    def leaf_nodes(self) -> list[int]:
        """The node number of each leaf, in `jax.tree.leaves` order."""
        return list(itertools.compress(range(len(self.keys)), self.is_leaf))

    @functools.cached_property
    def holds_state(self) -> list[bool]:
        """Whether each node's subtree holds an optax state node, itself included: the nodes that
        hold none are params and moments, or shaped like them."""
        holds = [False] * len(self.keys)
        for node in itertools.compress(range(len(self.keys)), self.state_names):
            while node >= 0 and not holds[node]:
                holds[node] = True
                node = self.parents[node]
        return holds

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


def build_index(tree: Any, leaves: list[Any]) -> StructureIndex:
    """One pre-order walk of `tree` through JAX's registry (`leaves` are its `jax.tree.leaves`).

    Siblings whose subtrees have one structure are recorded in bulk from one member's records
    (`_runs.template_of`); optax states, and nodes whose children differ, are visited alone.
    """
    walk = _Walk(StructureIndex())
    walk.run(tree)
    index = walk.index
    if walk.leaves_from_runs:  # a template records leaves as `LEAF_TYPE`: read their own types
        collections.deque(map(index.types.__setitem__, index.leaf_nodes, map(type, leaves)), maxlen=0)
    if index.cacheable:
        index.key_check = key_check(index, tree)
        index.cacheable = index.key_check is not _UNCHECKABLE
        if not index.cacheable:
            index.key_check = None
    return index


class Region(NamedTuple):
    """Part of a tree between a mapping (or the root) and the mappings below it: `treedef` is its
    structure with each mapping below it, and each subtree holding none, cut to a leaf."""

    treedef: Any
    parent: int
    """The region whose cut leaves hold this one's root, or -1 for the tree's root."""
    position: int
    """Which of the parent's cut leaves is this region's root."""
    dicts: tuple[int, ...] | None
    """The cut leaves that are dicts (None: every one)."""
    customs: tuple[int, ...]
    """The cut leaves that are custom mapping nodes (their keys are in their aux data)."""


class KeyCheck(NamedTuple):
    """Every mapping of a tree structure, reached by regions (`Region`) in C passes."""

    root: str | None
    """"dict" or "custom" when the root itself is a mapping."""
    regions: tuple[Region, ...]


_UNCHECKABLE: Any = KeyCheck(None, ())
_STR = frozenset({str})


def key_check(index: StructureIndex, tree: Any) -> KeyCheck | None:
    """How to reach every mapping node (a dict, or a custom node keyed by `DictKey`s from its aux
    data) of trees of `tree`'s structure; None when there are none, `_UNCHECKABLE` when JAX did
    not visit the nodes as the index has them.

    A treedef compares dict keys (and aux data) with `==`, under which a `str` equals its
    subclasses (a `(str, Enum)` member, `np.str_`): a later tree of equal treedef may hold such
    keys where the indexed tree had `str`s, and its own index must be built."""
    count = len(index.keys)
    with_dict_key = map(operator.is_, map(type, index.keys), itertools.repeat(DictKey))
    mapping = [False] * count
    for parent in set(itertools.compress(index.parents, with_dict_key)):
        mapping[parent] = True
    if not any(mapping):
        return None
    holds = [False] * count  # whether a node's subtree holds a mapping, itself included
    below = [False] * count  # whether it holds one strictly below it
    for node in itertools.compress(range(count), mapping):
        holds[node] = True
        parent = index.parents[node]
        while parent >= 0 and not below[parent]:
            below[parent] = holds[parent] = True
            parent = index.parents[parent]
    root_kind = None if not mapping[0] else "dict" if index.types[0] in DICT_TYPES else "custom"
    regions: list[Region] = []
    pending: list[tuple[int, Any, int, int]] = [(0, tree, -1, 0)]
    while pending:
        root, node, parent, position = pending.pop()
        cuts: list[int] = []
        cursor = [root]

        def cut(_: Any, root: int = root, cuts: list[int] = cuts, cursor: list[int] = cursor) -> bool:
            number = cursor[0]
            if number != root and (mapping[number] or not holds[number]):
                cuts.append(number)
                cursor[0] = number + index.sizes[number]
                return True
            cursor[0] = number + 1
            return False

        treedef: Any = jax.tree.structure(node, is_leaf=cut)
        if cursor[0] != root + index.sizes[root] or treedef.num_leaves != len(cuts):
            return _UNCHECKABLE
        number = len(regions)
        found = treedef.flatten_up_to(node) if any(map(below.__getitem__, cuts)) else []
        dicts = [i for i, n in enumerate(cuts) if mapping[n] and index.types[n] in DICT_TYPES]
        customs = tuple(i for i, n in enumerate(cuts) if mapping[n] and index.types[n] not in DICT_TYPES)
        every = len(dicts) == len(cuts)
        regions.append(Region(treedef, parent, position, None if every else tuple(dicts), customs))
        pending.extend((n, found[i], number, i) for i, n in enumerate(cuts) if below[n])
    return KeyCheck(root_kind, tuple(regions))


def _aux_keys(node: Any) -> Any:
    """The keys a custom mapping node keeps in its aux data (`_registry.keys_follow_structure`)."""
    flat = REGISTRY.flatten_one_level(node)
    return () if flat is None else flat[1]


def keys_are_str(tree: Any, check: KeyCheck | None) -> bool:
    """Whether every mapping key of `tree`, a tree of the structure `check` was made for, is a `str`."""
    if check is None:
        return True
    try:
        if check.root == "dict" and not set(map(type, tree)) <= _STR:
            return False
        if check.root == "custom" and not set(map(type, _aux_keys(tree))) <= _STR:
            return False
        found_in: list[list[Any]] = []
        for region in check.regions:
            node = tree if region.parent < 0 else found_in[region.parent][region.position]
            found = region.treedef.flatten_up_to(node)
            found_in.append(found)
            dicts = found if region.dicts is None else map(found.__getitem__, region.dicts)
            if not set(map(type, itertools.chain.from_iterable(dicts))) <= _STR:
                return False
            for position in region.customs:
                if not set(map(type, _aux_keys(found[position]))) <= _STR:
                    return False
    except Exception:  # a custom flatten that fails now: no answer from this index
        return False
    return True


_GROUPED = 4
"""Siblings of differing structures are split into runs of one structure from this many on."""
_MAX_PERIOD = 8
"""Siblings that alternate between at most this many structures (a Sequential's Linear, ReLU,
Linear, ReLU; a dict's `block0_attn`, `block0_mlp`, `block1_attn`) make one run."""
_BULK = 4
"""Fewer nodes than this in a run are visited one by one: recording them in bulk costs more."""


def _stretches(children: list[Any], wheres: list[int]) -> list[tuple[int, int, int]]:
    """The `(start, stop, period)` of each stretch of consecutive children that repeat `period`
    shapes in turn (a shape: a type, and keys or a length for JAX's containers, and a place), the
    longest first, for `template_of` to try on each of the `period` columns."""
    numbers: dict[Any, int] = {}
    shapes = [
        numbers.setdefault(
            (
                where,
                kind,
                frozenset(child) if kind is dict else len(child) if kind in (list, tuple) else None,
            ),
            len(numbers),
        )
        for child, where, kind in zip(children, wheres, map(type, children), strict=True)
    ]
    stretches, start, count = [], 0, len(shapes)
    while start < count:
        best_stop, best_period = start + 1, 1
        for period in range(1, min(_MAX_PERIOD, (count - start) // 2) + 1):
            if shapes[start + period] != shapes[start]:
                continue
            first, stop = shapes[start : start + period], start + period
            while stop + period <= count and shapes[stop : stop + period] == first:
                stop += period
            if stop - start >= 2 * period and stop > best_stop:
                best_stop, best_period = stop, period
        stretches.append((start, best_stop, best_period))
        start = best_stop
    return stretches


_Node = tuple[Any, KeyEntry | None, int, int, bool, int, bool]
"""A node to visit: the node, its key, parent and depth, whether it is in schedule bookkeeping,
where it is (`fields.NOWHERE` ...) and whether it is in the params-shaped field of a restored
state."""
_Run = tuple[Template, list[KeyEntry], list[str], int, int, bool]
"""Siblings to record from a template: their keys and texts, parent, depth and bookkeeping."""
_Close = tuple[int, int, bool]
"""A node whose subtree is complete: its number, the leaves before it, whether it is a hole."""


class _Walk:
    """The state of one `build_index` walk: the index so far and what it has not recorded yet."""

    def __init__(self, index: StructureIndex) -> None:
        self.index = index
        self.interned: Signatures = {}
        self.leaf_signature = signature(self.interned, ())
        self.leaves_seen = 0
        self.leaves_from_runs = False
        self.dict_keys: dict[tuple[str, ...], list[KeyEntry]] = {}
        self.one_run: dict[int, int] = {}
        """The nodes whose children are one run, with its template's size."""

    def run(self, tree: Any) -> None:
        stack: list[tuple[str, Any]] = [("node", (tree, None, -1, 0, False, OUTSIDE, False))]
        while stack:
            what, frame = stack.pop()
            if what == "node":
                self.visit(frame, stack)
            elif what == "run":
                self.record_run(*frame)
            else:
                self.close(*frame)

    def visit(self, frame: _Node, stack: list[tuple[str, Any]]) -> None:
        node, key, parent, depth, bookkeeping, where, in_data = frame
        index = self.index
        number = len(index.keys)
        kind = type(node)
        name = typed_state_name(kind)
        if name is None and kind is dict and where != NOWHERE:
            name = restored_state_name(node, where)
        plain = kind is dict and set(map(type, node)) <= {str}
        keys, texts, children, aux = self.children(node, plain)
        is_leaf = children is None
        hole = (node is None and in_data) or is_masked_node_type(kind)
        index.keys.append(key)
        index.texts.append(edge_text(key))
        index.types.append(kind)
        index.parents.append(parent)
        index.is_leaf.append(is_leaf)
        index.leaf_counts.append(1)
        index.sizes.append(1)
        index.arities.append(0 if children is None else len(children))
        index.depths.append(depth)
        index.signatures.append(self.leaf_signature)
        index.in_bookkeeping.append(bookkeeping)
        index.state_names.append(name)
        if hole:
            index.holes.append(number)
        if children is None:
            self.leaves_seen += 1
            return
        stack.append(("close", (number, self.leaves_seen, hole)))
        if index.cacheable and not plain:  # a dict of str keys always is
            index.cacheable = cacheable_node(kind, keys, aux)
        if name is None:
            template = template_of(children, where, in_data, self.interned) if len(children) > 1 else None
            if template is not None:
                stack.append(("run", (template, keys, texts, number, depth + 1, bookkeeping)))
                self.one_run[number] = template.size
                return
            pairs = list(zip(keys, children, strict=True))
            wheres = [where] * len(pairs) if where != OUTSIDE else children_where(None, where, pairs)
            whole = [(0, len(children), 1)]
            stretches = _stretches(children, wheres) if len(children) >= _GROUPED else whole
            for start, stop, period in reversed(stretches):
                template = None
                if stop - start > period and stretches != whole:
                    template = self.stretch_template(children, wheres, in_data, start, stop, period)
                if template is not None:
                    run = (template, keys[start:stop], texts[start:stop], number, depth + 1, bookkeeping)
                    stack.append(("run", run))
                    continue
                for position in reversed(range(start, stop)):
                    child = (children[position], keys[position], number, depth + 1, bookkeeping)
                    stack.append(("node", (*child, wheres[position], in_data)))
            return
        aliases = restored_state_names(node) if kind is dict else (name,)
        if kind is dict:
            index.restored_names[number] = aliases
        for alias in aliases:
            index.by_state_name.setdefault(alias, []).append(number)
        enters = is_inject_state_name(name)
        pairs = list(zip(keys, children, strict=True))
        wheres = children_where(name, where, pairs)
        for (child_key, child), child_where in zip(reversed(pairs), reversed(wheres), strict=True):
            child_bookkeeping = bookkeeping or (enters and field_name(child_key) == SCHEDULE_BOOKKEEPING)
            child_in_data = kind is dict and child_where == NOWHERE
            child_frame = (child, child_key, number, depth + 1, child_bookkeeping, child_where, child_in_data)
            stack.append(("node", child_frame))

    def stretch_template(
        self, children: list[Any], wheres: list[int], in_data: bool, start: int, stop: int, period: int
    ) -> Template | None:
        """The template of the siblings `children[start:stop]`, which repeat `period` shapes in
        turn, or None where their structures differ or they are too few to gain from a run."""
        templates = []
        for first in range(start, start + period):
            template = template_of(children[first:stop:period], wheres[first], in_data, self.interned)
            if template is None:
                return None
            templates.append(template)
        template = templates[0] if period == 1 else interleaved(templates)
        return template if template.size * (stop - start) // period >= _BULK else None

    def children(self, node: Any, plain: bool) -> tuple[list[KeyEntry], list[str], list[Any] | None, Any]:
        """The keys, texts and children of `node` in flatten order (children None for a leaf), and
        its aux data; for a `plain` node (a dict of str keys) without a Python step for each child."""
        if plain:
            names = sorted(node)
            keys = self.dict_keys.get(tuple(names))
            if keys is None:
                keys = self.dict_keys[tuple(names)] = list(map(DictKey, names))
            return keys, names, list(map(node.__getitem__, names)), names
        flat = flatten_one_level(node)
        if flat is None:
            return [], [], None, None
        keys = [key for key, _ in flat[0]]
        return keys, list(map(edge_text, keys)), [child for _, child in flat[0]], flat[1]

    def record_run(
        self,
        template: Template,
        keys: list[KeyEntry],
        texts: list[str],
        parent: int,
        depth: int,
        bookkeeping: bool,
    ) -> None:
        """Record siblings whose subtrees all have `template`'s records, with list and NumPy
        operations (no Python step for each node)."""
        index, size, roots = self.index, template.size, template.roots
        count, start = len(keys) // len(roots), len(index.keys)
        index.keys.extend(template.keys * count)
        index.texts.extend(template.texts * count)
        for position, root in enumerate(roots):  # each member's own keys, at its roots
            index.keys[start + root :: size] = keys[position :: len(roots)]
            index.texts[start + root :: size] = texts[position :: len(roots)]
        index.types.extend(template.types * count)
        offsets = np.arange(start, start + count * size, size)[:, None]
        parents = offsets + np.asarray(template.parents)[None, :]
        parents[:, list(roots)] = parent
        index.parents.extend(parents.ravel().tolist())
        index.is_leaf.extend(template.is_leaf * count)
        index.leaf_counts.extend(template.leaf_counts * count)
        index.sizes.extend(template.sizes * count)
        index.arities.extend(template.arities * count)
        index.depths.extend([depth + d for d in template.depths] * count)
        index.signatures.extend(template.signatures * count)
        index.in_bookkeeping.extend([bookkeeping] * (count * size))
        index.state_names.extend([None] * (count * size))
        if template.holes:
            index.holes.extend((offsets + np.asarray(template.holes)[None, :]).ravel().tolist())
        self.leaves_seen += template.leaf_count * count
        index.cacheable = index.cacheable and template.cacheable
        self.leaves_from_runs = self.leaves_from_runs or LEAF_TYPE in template.types

    def close(self, number: int, leaves_before: int, hole: bool) -> None:
        """Sizes, leaf count and signature of `number`, now that its subtree is recorded."""
        index = self.index
        index.sizes[number] = len(index.keys) - number
        index.leaf_counts[number] = self.leaves_seen - leaves_before
        structure: tuple[Any, ...] = ()
        if not hole:
            step = self.one_run.pop(number, 0)
            if step:  # the children are one run: every `step`-th node
                keys = tuple(index.keys[number + 1 :: step])
                signatures = tuple(index.signatures[number + 1 :: step])
            else:
                children = list(index.children(number))
                keys = tuple(index.keys[c] for c in children)
                signatures = tuple(index.signatures[c] for c in children)
            structure = (index.types[number], keys, signatures)
        index.signatures[number] = signature(self.interned, structure)


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
        except Exception:  # any difference; JAX's message may repr a leaf, which can raise anything
            pass
        else:
            if (
                tuple(map(type, leaves)) == leaf_types
                and jax.tree_util.all_leaves(leaves)
                and keys_are_str(tree, index.key_check)
            ):
                return index, leaves
    leaves, treedef = flatten(tree)
    leaf_types = tuple(map(type, leaves))
    key = (treedef, leaf_types)
    try:
        with _LOCK:
            index = _CACHE.get(key)  # type: ignore[assignment]
    except TypeError:  # unhashable aux data
        return build_index(tree, leaves), leaves
    if index is not None and not keys_are_str(tree, index.key_check):
        return build_index(tree, leaves), leaves  # `str` subclass keys: not the cached tree's
    if index is None:
        index = build_index(tree, leaves)
        if not index.cacheable:
            return index, leaves
        with _LOCK:
            _CACHE[key] = index
            while len(_CACHE) > _CACHE_SIZE:  # first in, first out: a hit costs one lookup
                _CACHE.popitem(last=False)
    _last = (treedef, leaf_types, index)
    return index, leaves


def walk_with_paths(tree: Any) -> Iterator[tuple[KeyPath, Any]]:
    """Every `(path, node)` of `tree` in pre-order, for predicates that must see real nodes."""
    stack: list[tuple[KeyPath, Any]] = [((), tree)]
    while stack:
        path, node = stack.pop()
        yield path, node
        pairs = children_with_keys(node)
        for key, child in reversed(pairs or ()):
            stack.append(((*path, key), child))
