"""The structure index: every node of one tree structure in pre-order, as parallel lists indexed
by node number, with what the registered state rules (`_state_rules`) say of each node.

It is built by one walk (`_build`) and cached under the tree's `PyTreeDef` (`_cache`); floating
queries, naming and `describe` read it instead of the tree.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from jax.tree_util import DictKey

from ._compat import RESTORED_VARIABLE_KEY, is_nnx_variable_type
from ._keycheck import KeyCheck
from ._keys import KeyEntry, KeyPath


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
    hidden: list[bool] = field(default_factory=list)
    """Whether each node is in a region a state hides (`StateRules.hides`: optax's schedule
    bookkeeping), which a pattern enters only when it names the region's field."""
    state_names: list[str | None] = field(default_factory=list)
    """The state type each node is (by the registered `StateRules`), or stands for as a state
    restored without its type, or None."""
    by_state_name: dict[str, list[int]] = field(default_factory=dict)
    """The nodes of each state type, typed or restored (a restored one under every type it may
    stand for)."""
    holes: list[int] = field(default_factory=list)
    """The masked-out parameters, in pre-order: nodes of a hole type (optax's `MaskedNode`), and
    `None`s in the data fields of a restored state (a checkpoint restores a placeholder as `None`)."""
    restored_names: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """For each restored state, the state types it may stand for: patterns match their names as
    they match a typed node's type name."""
    cacheable: bool = True
    key_check: KeyCheck | None = None
    """For a cacheable index: how to check, on a later tree of its structure, that every key a
    treedef compares with `==` is a `str` (`keys_are_str`); None when it has no mappings,
    `_keycheck.PENDING` until its first reuse plans it."""
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
        """Whether each node's subtree holds a state node, itself included: the nodes that hold
        none are params and moments, or shaped like them."""
        holds = [False] * len(self.keys)
        for node in itertools.compress(range(len(self.keys)), self.state_names):
            while node >= 0 and not holds[node]:
                holds[node] = True
                node = self.parents[node]
        return holds

    @functools.cached_property
    def variables(self) -> list[bool]:
        """Whether each node is an nnx Variable: of a Variable type, or a dict that holds one leaf
        (or `None`, a masked parameter) under the key `'value'`, in a part of the tree (the root's
        child that holds it, or the whole tree) where every leaf is so held: an nnx state that
        orbax restored without its target. Either is one value to the verbs."""
        kinds = {kind: is_nnx_variable_type(kind) for kind in set(self.types)}
        found = list(map(kinds.__getitem__, self.types))
        key = DictKey(RESTORED_VARIABLE_KEY)
        named = map(operator.eq, self.texts, itertools.repeat(RESTORED_VARIABLE_KEY))  # a C pass first
        wrappers = [
            parent
            for node in itertools.compress(range(len(self.keys)), named)
            if node
            and self.keys[node] == key
            and (self.is_leaf[node] or self.types[node] is type(None))
            and self.types[parent := self.parents[node]] is dict
            and self.arities[parent] == 1
        ]
        if not wrappers:
            return found
        wrapped_leaves = {self.leaf_starts[parent] for parent in wrappers if self.leaf_counts[parent]}
        parts = [0] if self.leaf_counts[0] == len(wrapped_leaves) else list(self.children(0))
        for part in parts:
            start, count = self.leaf_starts[part], self.leaf_counts[part]
            if count and all(leaf in wrapped_leaves for leaf in range(start, start + count)):
                for parent in wrappers:
                    if part <= parent < part + self.sizes[part]:
                        found[parent] = True
        return found

    @functools.cached_property
    def has_variables(self) -> bool:
        """Whether any node is an nnx Variable (`variables`)."""
        return any(self.variables)

    @functools.cached_property
    def restored_variables(self) -> bool:
        """Whether the Variables of this tree are restored dicts (`variables`)."""
        return any(
            kind is dict and variable for kind, variable in zip(self.types, self.variables, strict=True)
        )

    @functools.cached_property
    def has_hidden(self) -> bool:
        """Whether any node is in a hidden region."""
        return any(self.hidden)

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
